package delta

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"

	"github.com/klauspost/compress/zstd"

	"github.com/fieldota/fieldota/download"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/zimage"
)

// applier writes the new image in ascending block order: fetched frames, copied blocks, zeros.
type applier struct {
	in             *installer
	ix             *zimage.Index
	p              *plan
	target, active *os.File
	ranges         *download.Ranges

	dec      *zstd.Decoder
	wrapped  []byte // one delta frame as fetched
	frameRaw []byte // one delta frame decoded
	blk      []byte
	zero     []byte
	hashes   []byte // the index hashes of the current frame's blocks
	rawH     *hashPipe
	done     int64
	baseRep  Report
	fetchedF int64 // the frame held in frameRaw, or -1
}

func (a *applier) run(ctx context.Context, spans []span) error {
	ix := a.ix
	fs := ix.FrameSize
	var err error
	a.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(uint64(fs)), zstd.WithDecoderMaxWindow(uint64(1)<<bits.Len64(uint64(fs-1))), zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		return reason.Wrap(reason.Internal, err)
	}
	defer a.dec.Close()
	a.wrapped = make([]byte, 0, 2*fs+1024+zimage.WrapperSize)
	a.frameRaw = make([]byte, 0, fs)
	a.blk = make([]byte, ix.BlockSize)
	a.zero = make([]byte, ix.BlockSize)
	a.hashes = make([]byte, ix.BlocksPerFrame()*zimage.BlockHashSize)
	a.rawH = newHashPipe()
	summed := false
	defer func() {
		if !summed {
			a.rawH.Stop()
		}
	}()
	a.baseRep = a.in.rep
	a.fetchedF = -1

	bpf := ix.BlocksPerFrame()
	si := 0
	var body io.ReadCloser
	defer func() {
		if body != nil {
			body.Close()
		}
	}()
	for f := range ix.Frames {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("delta install: stopped at frame %d of %d: %w", f, ix.Frames, err)
		}
		first, end := f*bpf, min((f+1)*bpf, ix.Blocks)
		if err := ix.Hashes(first, a.hashes[:(end-first)*zimage.BlockHashSize]); err != nil {
			return reason.Wrap(reason.InstallFailed, err)
		}
		if si < len(spans) && f >= spans[si].first {
			if f == spans[si].first {
				off, n := ix.WrappedRange(spans[si].first, spans[si].end)
				body = a.ranges.Open(ctx, off, n)
			}
			if err := a.readFrame(ctx, body, f, a.needs(first, end)); err != nil {
				return err
			}
			if f == spans[si].end-1 {
				body.Close()
				body = nil
				si++
				if err := a.checkpoint(); err != nil {
					return err
				}
			}
		}
		for b := first; b < end; b++ {
			if err := a.block(ctx, f, b, a.hashes[(b-first)*zimage.BlockHashSize:][:zimage.BlockHashSize]); err != nil {
				return err
			}
		}
	}
	summed = true
	if got := a.rawH.Sum(); subtle.ConstantTimeCompare(got, a.in.m.Raw.Sum()) != 1 {
		return reason.Errorf(reason.DigestMismatch, "delta install: the image written has sha256 %x, signed %s", got, a.in.m.Raw.SHA256)
	}
	if fi, err := a.target.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() != ix.RawSize {
		if err := a.target.Truncate(ix.RawSize); err != nil {
			return reason.Errorf(reason.InstallFailed, "delta install: truncate target: %w", err)
		}
	}
	if err := a.target.Sync(); err != nil {
		return reason.Errorf(reason.InstallFailed, "delta install: sync target: %w", err)
	}
	return nil
}

// needs reports whether any block in [first, end) has no local source.
func (a *applier) needs(first, end int64) bool {
	for b := first; b < end; b++ {
		if a.p.decide(b).kind == srcFetch {
			return true
		}
	}
	return false
}

// readFrame reads delta frame f from the span's body; it is decoded when decode is set (a frame
// fetched only to bridge a gap is read past).
func (a *applier) readFrame(ctx context.Context, body io.Reader, f int64, decode bool) error {
	_, size := a.ix.FrameRange(f)
	buf := a.wrapped[:zimage.WrapperSize+size]
	if _, err := io.ReadFull(body, buf); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("delta install: stopped in frame %d: %w", f, ctx.Err())
		}
		return err
	}
	if !decode {
		return nil
	}
	return a.decode(f, buf)
}

func (a *applier) decode(f int64, wrapped []byte) error {
	_, size := a.ix.FrameRange(f)
	if err := zimage.CheckDeltaWrapper(wrapped[:zimage.WrapperSize], size); err != nil {
		return reason.Errorf(reason.DigestMismatch, "delta frame %d: %w", f, err)
	}
	want := min(a.ix.FrameSize, a.ix.RawSize-f*a.ix.FrameSize)
	out, err := a.dec.DecodeAll(wrapped[zimage.WrapperSize:], a.frameRaw[:0:want])
	switch {
	case errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrFrameSizeExceeded):
		return reason.Errorf(reason.DecompressionBomb, "delta frame %d decompresses past its %d bytes", f, want)
	case err != nil:
		return reason.Errorf(reason.DigestMismatch, "delta frame %d does not decode: %w", f, err)
	case int64(len(out)) != want:
		return reason.Errorf(reason.SizeMismatch, "delta frame %d decodes to %d bytes, want %d", f, len(out), want)
	}
	a.frameRaw = out
	a.fetchedF = f
	return nil
}

// repair fetches frame f on its own: a local copy did not hash as the index says.
func (a *applier) repair(ctx context.Context, f int64) error {
	a.in.rep.Repairs++
	off, n := a.ix.WrappedRange(f, f+1)
	buf := a.wrapped[:n]
	if _, err := io.ReadFull(a.ranges.Open(ctx, off, n), buf); err != nil {
		return err
	}
	return a.decode(f, buf)
}

// block settles block b of frame f: verified against its index hash, written unless in place.
func (a *applier) block(ctx context.Context, f, b int64, want []byte) error {
	ix := a.ix
	l := ix.BlockLen(b)
	off := b * ix.BlockSize
	src := a.p.decide(b)
	var content []byte
	fromFrame := func() ([]byte, error) {
		k := (b - f*ix.BlocksPerFrame()) * ix.BlockSize
		c := a.frameRaw[k : k+l]
		if h := zimage.BlockHash(c); !bytes.Equal(h[:], want) {
			return nil, reason.Errorf(reason.DigestMismatch, "delta frame %d: block %d has sha256 %x, the signed index says %x", f, b, h, want)
		}
		return c, nil
	}
	local := func(r io.ReaderAt, at int64) ([]byte, bool, error) {
		c := a.blk[:l]
		n, err := r.ReadAt(c, at)
		a.in.rep.ReadOld += int64(n)
		if err != nil && !(err == io.EOF && int64(n) == l) {
			return nil, false, nil // unreadable now: fetch it instead
		}
		h := zimage.BlockHash(c)
		return c, bytes.Equal(h[:], want), nil
	}
	write := true
	switch {
	case a.fetchedF == f:
		c, err := fromFrame()
		if err != nil {
			return err
		}
		content, write = c, src.kind != srcInPlace
	case src.kind == srcZero:
		content = a.zero[:l]
	case src.kind == srcInPlace && a.p.groupOf[b] == none:
		// a zero block already zero on the target (the scan saw it, the caller's read-back sees it
		// again): reading it back here would cost a read of every empty block of the slot
		content, write = a.zero[:l], false
	default:
		var r io.ReaderAt = a.target
		at := src.blk * ix.BlockSize
		switch src.kind {
		case srcInPlace:
			at, write = off, false
		case srcActive:
			r = a.active
		case srcFetch:
			return reason.Errorf(reason.Internal, "delta install: block %d has no source and frame %d was not fetched", b, f)
		}
		c, ok, err := local(r, at)
		if err != nil {
			return err
		}
		if !ok {
			if err := a.repair(ctx, f); err != nil {
				return err
			}
			if c, err = fromFrame(); err != nil {
				return err
			}
			write = true
		}
		content = c
	}
	if write {
		if _, err := a.target.WriteAt(content, off); err != nil {
			return reason.Errorf(reason.InstallFailed, "delta install: writing block %d: %w", b, err)
		}
		a.in.rep.Written += l
	}
	if a.fetchedF != f && src.kind != srcZero {
		a.in.rep.Reused += l
	}
	a.rawH.Write(content)
	a.done += l
	if a.in.req.Progress != nil {
		a.in.req.Progress(a.done, ix.RawSize)
	}
	return nil
}

// checkpoint makes the blocks written so far durable and records the counters.
func (a *applier) checkpoint() error {
	if err := a.target.Sync(); err != nil {
		return reason.Errorf(reason.InstallFailed, "delta install: sync target: %w", err)
	}
	st := a.ranges.Stats()
	saved := a.in.rep
	a.in.rep.Fetched = a.baseRep.Fetched + st.BytesOnWire
	a.in.rep.Requests = a.baseRep.Requests + st.Requests
	err := a.in.saveProgress()
	a.in.rep.Fetched, a.in.rep.Requests = saved.Fetched, saved.Requests
	return err
}
