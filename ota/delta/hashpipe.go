package delta

import (
	"crypto/sha256"
	"hash"
)

// hashPipe hashes the image as it is settled on a second core: the whole-image SHA-256 is
// as long as the slot (1 GiB) while most of it is copies and zeros that cost nothing else.
type hashPipe struct {
	h    hash.Hash
	full chan []byte
	free chan []byte
	cur  []byte
	done chan struct{}
}

const hashBatch = 1 << 20

func newHashPipe() *hashPipe {
	p := &hashPipe{h: sha256.New(), full: make(chan []byte, 3), free: make(chan []byte, 4), done: make(chan struct{})}
	for range 4 {
		p.free <- make([]byte, 0, hashBatch)
	}
	p.cur = <-p.free
	go func() {
		defer close(p.done)
		for b := range p.full {
			p.h.Write(b)
			p.free <- b[:0]
		}
	}()
	return p
}

// Write copies b into the current batch (b may be reused at once).
func (p *hashPipe) Write(b []byte) {
	for len(b) > 0 {
		n := min(len(b), hashBatch-len(p.cur))
		p.cur = append(p.cur, b[:n]...)
		b = b[n:]
		if len(p.cur) == hashBatch {
			p.full <- p.cur
			p.cur = <-p.free
		}
	}
}

// Sum ends the pipe and returns the digest of everything written.
func (p *hashPipe) Sum() []byte {
	if len(p.cur) > 0 {
		p.full <- p.cur
	}
	close(p.full)
	<-p.done
	return p.h.Sum(nil)
}

// Stop ends the pipe without a digest (an install that failed).
func (p *hashPipe) Stop() {
	close(p.full)
	<-p.done
}
