package delta

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"sort"

	"github.com/fieldota/fieldota/ota/zimage"
)

// none marks an unset block number.
const none = ^uint32(0)

// group is the blocks of the new image that share one content (most groups have one block).
type group struct {
	first  uint32 // lowest new block with this content: once written, the others copy it
	active uint32 // a block of the active slot holding it, or none
	target uint32 // a block of the target slot holding it (valid while not overwritten), or none
}

// plan is where each block of the new image comes from. It is about 28 bytes per block (7 MiB
// for a 1 GiB image at 4 KiB): the hashes themselves stay in the index file.
type plan struct {
	ix      *zimage.Index
	zero    []byte   // SHA-256 of a zero block (full length)
	zeroEnd []byte   // of the last block's length, when shorter
	groupOf []uint32 // per new block: its group, or none for a zero block
	groups  []group
	keys    []uint64 // sorted first 8 bytes of each group's hash…
	keyGrp  []uint32 // …and the group it names
	inPlace []uint64 // bitset: target block already holds the new block

	readTarget, readActive int64 // bytes read from each slot while planning (the scans run at once)
}

func newPlan(ix *zimage.Index) (*plan, error) {
	p := &plan{ix: ix, groupOf: make([]uint32, ix.Blocks), inPlace: make([]uint64, (ix.Blocks+63)/64)}
	z := zimage.BlockHash(make([]byte, ix.BlockSize))
	p.zero = z[:]
	if l := ix.BlockLen(ix.Blocks - 1); l != ix.BlockSize {
		z := zimage.BlockHash(make([]byte, l))
		p.zeroEnd = z[:]
	}
	type entry struct {
		key uint64
		blk uint32
	}
	var entries []entry
	r := bufio.NewReaderSize(ix.HashReader(), 64<<10)
	var h [zimage.BlockHashSize]byte
	for b := range ix.Blocks {
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return nil, fmt.Errorf("reading the index: %w", err)
		}
		if p.isZeroHash(int64(b), h[:]) {
			p.groupOf[b] = none
			continue
		}
		entries = append(entries, entry{binary.BigEndian.Uint64(h[:]), uint32(b)})
	}
	slices.SortFunc(entries, func(a, b entry) int {
		if a.key != b.key {
			return cmpU64(a.key, b.key)
		}
		return cmpU64(uint64(a.blk), uint64(b.blk))
	})
	// Equal keys are (almost always) equal hashes; split them by the full hash.
	var hi, hj [zimage.BlockHashSize]byte
	for i := 0; i < len(entries); {
		j := i + 1
		for j < len(entries) && entries[j].key == entries[i].key {
			j++
		}
		for k := i; k < j; k++ {
			b := entries[k].blk
			placed := false
			if j-i > 1 {
				if err := ix.Hashes(int64(b), hj[:]); err != nil {
					return nil, err
				}
				for g := len(p.groups) - 1; g >= 0 && p.keys[g] == entries[k].key; g-- {
					if err := ix.Hashes(int64(p.groups[g].first), hi[:]); err != nil {
						return nil, err
					}
					if hi == hj {
						p.groupOf[b] = uint32(g)
						placed = true
						break
					}
				}
			}
			if !placed {
				p.groupOf[b] = uint32(len(p.groups))
				p.groups = append(p.groups, group{first: b, active: none, target: none})
				p.keys = append(p.keys, entries[k].key)
				p.keyGrp = append(p.keyGrp, uint32(len(p.groups)-1))
			}
		}
		i = j
	}
	return p, nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (p *plan) isZeroHash(b int64, h []byte) bool {
	if p.zeroEnd != nil && b == p.ix.Blocks-1 {
		return bytes.Equal(h, p.zeroEnd)
	}
	return bytes.Equal(h, p.zero)
}

// lookup returns the group whose content hashes to h, or none.
func (p *plan) lookup(h []byte) (uint32, error) {
	key := binary.BigEndian.Uint64(h)
	i := sort.Search(len(p.keys), func(i int) bool { return p.keys[i] >= key })
	var full [zimage.BlockHashSize]byte
	for ; i < len(p.keys) && p.keys[i] == key; i++ {
		g := p.keyGrp[i]
		if err := p.ix.Hashes(int64(p.groups[g].first), full[:]); err != nil {
			return none, err
		}
		if bytes.Equal(full[:], h) {
			return g, nil
		}
	}
	return none, nil
}

func (p *plan) setInPlace(b int64)     { p.inPlace[b/64] |= 1 << (b % 64) }
func (p *plan) isInPlace(b int64) bool { return b < p.ix.Blocks && p.inPlace[b/64]&(1<<(b%64)) != 0 }

// scanTarget hashes the target slot's blocks: a block that already holds the new image's block
// at the same place is left alone (a resumed install finds its own work this way), any other
// known block is a source until it is overwritten.
func (p *plan) scanTarget(ctx context.Context, r io.ReaderAt, size int64) error {
	hashes := bufio.NewReaderSize(p.ix.HashReader(), 64<<10)
	var want [zimage.BlockHashSize]byte
	return p.scan(ctx, r, size, &p.readTarget, func(b int64, blk []byte, zero bool) error {
		if b < p.ix.Blocks {
			if _, err := io.ReadFull(hashes, want[:]); err != nil {
				return err
			}
			l := p.ix.BlockLen(b)
			if int64(len(blk)) >= l {
				if zero {
					if p.isZeroHash(b, want[:]) {
						p.setInPlace(b)
					}
					return nil // a zero block is never a source: zeros are written, not copied
				}
				if h := zimage.BlockHash(blk[:l]); bytes.Equal(h[:], want[:]) {
					p.setInPlace(b)
					if g := p.groupOf[b]; g != none && p.groups[g].target == none {
						p.groups[g].target = uint32(b)
					}
					return nil
				}
			}
		}
		if zero || int64(len(blk)) != p.ix.BlockSize {
			return nil
		}
		h := zimage.BlockHash(blk)
		return p.note(h[:], b, false)
	})
}

// scanActive hashes the active slot's blocks: every block there is a source for good.
func (p *plan) scanActive(ctx context.Context, r io.ReaderAt, size int64) error {
	return p.scan(ctx, r, size, &p.readActive, func(b int64, blk []byte, zero bool) error {
		if zero || int64(len(blk)) != p.ix.BlockSize {
			return nil
		}
		h := zimage.BlockHash(blk)
		return p.note(h[:], b, true)
	})
}

func (p *plan) note(h []byte, b int64, active bool) error {
	g, err := p.lookup(h)
	if err != nil || g == none {
		return err
	}
	if active && p.groups[g].active == none {
		p.groups[g].active = uint32(b)
	}
	if !active && p.groups[g].target == none {
		p.groups[g].target = uint32(b)
	}
	return nil
}

// scan reads r's first size bytes in 1 MiB reads and hands each block to fn. The target and the
// active scan run at the same time: the one writes only groups' target fields and inPlace, the
// other only their active fields.
func (p *plan) scan(ctx context.Context, r io.ReaderAt, size int64, read *int64, fn func(b int64, blk []byte, zero bool) error) error {
	bs := p.ix.BlockSize
	buf := make([]byte, max(1<<20, bs))
	buf = buf[:len(buf)/int(bs)*int(bs)]
	for off := int64(0); off < size; off += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := r.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
		*read += int64(n)
		if err != nil && !(err == io.EOF && off+int64(n) == size) {
			return &readError{off: off + int64(n), err: err}
		}
		for i := 0; i < n; i += int(bs) {
			blk := buf[i:min(n, i+int(bs))]
			if err := fn((off+int64(i))/bs, blk, zimage.IsZero(blk)); err != nil {
				return err
			}
		}
	}
	return nil
}

// readError is a slot that cannot be read: a reason to fall back, not to fail.
type readError struct {
	off int64
	err error
}

func (e *readError) Error() string { return fmt.Sprintf("read error at byte %d: %v", e.off, e.err) }
func (e *readError) Unwrap() error { return e.err }

// source is where block b comes from while blocks [0, b) are already written.
type source struct {
	kind int // srcInPlace, srcZero, srcActive, srcTarget, srcFetch
	blk  int64
}

const (
	srcInPlace = iota
	srcZero
	srcActive
	srcTarget
	srcFetch
)

// decide picks block b's source. It depends only on the plan and on b, so planning and applying
// agree: blocks are written in ascending order, a target block o stays intact until b reaches
// it (o > b) or forever when it already holds its own new content, and a content's first block,
// once written, is there for the others.
func (p *plan) decide(b int64) source {
	if p.isInPlace(b) {
		return source{kind: srcInPlace}
	}
	g := p.groupOf[b]
	if g == none {
		return source{kind: srcZero}
	}
	gr := p.groups[g]
	switch {
	case gr.active != none:
		return source{srcActive, int64(gr.active)}
	case gr.target != none && (int64(gr.target) > b || p.isInPlace(int64(gr.target))):
		return source{srcTarget, int64(gr.target)}
	case int64(gr.first) < b:
		return source{srcTarget, int64(gr.first)}
	}
	return source{kind: srcFetch}
}

// neededFrames lists the delta frames holding a block that has no local source.
func (p *plan) neededFrames() []int64 {
	bpf := p.ix.BlocksPerFrame()
	var need []int64
	for f := range p.ix.Frames {
		for b := f * bpf; b < min((f+1)*bpf, p.ix.Blocks); b++ {
			if p.decide(b).kind == srcFetch {
				need = append(need, f)
				break
			}
		}
	}
	return need
}

// span is delta frames [first, end) fetched with one GET.
type span struct{ first, end int64 }

// coalesce groups the needed frames into at most maxReq GETs: runs of needed frames, joined
// across gaps of at most mergeGap bytes, then across the smallest gaps until few enough.
func coalesce(ix *zimage.Index, need []int64, maxReq int, mergeGap int64) []span {
	if len(need) == 0 {
		return nil
	}
	var runs []span
	for _, f := range need {
		if n := len(runs); n > 0 && runs[n-1].end == f {
			runs[n-1].end++
			continue
		}
		runs = append(runs, span{f, f + 1})
	}
	gap := func(i int) int64 { // bytes between runs i and i+1
		_, s := ix.WrappedRange(runs[i].end, runs[i+1].first)
		return s
	}
	order := make([]int, len(runs)-1)
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmpU64(uint64(gap(a)), uint64(gap(b))) })
	join := make([]bool, len(runs))
	for k, i := range order {
		if gap(i) <= mergeGap || len(runs)-k > maxReq {
			join[i] = true
		}
	}
	var out []span
	for i, r := range runs {
		if i > 0 && join[i-1] {
			out[len(out)-1].end = r.end
			continue
		}
		out = append(out, r)
	}
	return out
}
