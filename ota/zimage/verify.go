package zimage

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"

	"github.com/fieldota/fieldota/ota/reason"
)

// Verify checks a whole object against its manifest offline (what `fieldota verify` needs): the
// stored and full-part digests, that the full part decodes to the raw image, and, with a delta
// part, the index digest and every delta frame against the index's block hashes. tmpDir holds
// the decompressed index for the duration.
func Verify(ctx context.Context, obj io.ReaderAt, m Manifest, tmpDir string) error {
	if err := m.Validate(); err != nil {
		return err
	}
	bad := func(format string, args ...any) error { return reason.Errorf(reason.DigestMismatch, format, args...) }
	if got, err := sumRange(obj, 0, m.Stored.Size); err != nil || got != m.Stored.SHA256 {
		return bad("object: sha256 %s, signed %s (%v)", got, m.Stored.SHA256, err)
	}
	if got, err := sumRange(obj, 0, m.Full.Size); err != nil || got != m.Full.SHA256 {
		return bad("full part: sha256 %s, signed %s (%v)", got, m.Full.SHA256, err)
	}
	if err := checkFullFrames(obj, m); err != nil {
		return err
	}
	dec, err := zstd.NewReader(bufio.NewReader(io.NewSectionReader(obj, 0, m.Full.Size)), zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(uint64(2*m.FullFrameSize)))
	if err != nil {
		return err
	}
	defer dec.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(dec, m.Raw.Size+1))
	if err != nil || n != m.Raw.Size || hex.EncodeToString(h.Sum(nil)) != m.Raw.SHA256 {
		return bad("full part decodes to %d bytes with sha256 %x, signed %d bytes %s (%v)", n, h.Sum(nil), m.Raw.Size, m.Raw.SHA256, err)
	}
	if m.Delta == nil {
		return nil
	}
	d := m.Delta
	wrapped := make([]byte, d.Index.Size)
	if _, err := obj.ReadAt(wrapped, d.Index.Offset); err != nil {
		return bad("index: %v", err)
	}
	if s := sha256.Sum256(wrapped); hex.EncodeToString(s[:]) != d.Index.SHA256 {
		return bad("index: sha256 %x, signed %s", s, d.Index.SHA256)
	}
	if err := IndexWrapperCheck(wrapped[:skipHeaderSize], d.Index.Size-skipHeaderSize); err != nil {
		return bad("index: %v", err)
	}
	f, err := os.CreateTemp(tmpDir, "fieldota-index-") // scratch space, removed below: not state
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	idec, err := zstd.NewReader(bytes.NewReader(wrapped[skipHeaderSize:]), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(IndexWindow))
	if err != nil {
		return err
	}
	defer idec.Close()
	if n, err := io.Copy(f, io.LimitReader(idec, m.IndexRawSize()+1)); err != nil || n != m.IndexRawSize() {
		return bad("index decodes to %d bytes, want %d (%v)", n, m.IndexRawSize(), err)
	}
	ix, err := OpenIndex(f, m)
	if err != nil {
		return err
	}
	fdec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(d.FrameSize)), zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		return err
	}
	defer fdec.Close()
	want := make([]byte, ix.BlocksPerFrame()*hashSize)
	raw := make([]byte, 0, d.FrameSize)
	for fr := range ix.Frames {
		if err := ctx.Err(); err != nil {
			return err
		}
		off, size := ix.WrappedRange(fr, fr+1)
		buf := make([]byte, size)
		if _, err := obj.ReadAt(buf, off); err != nil {
			return bad("delta frame %d: %v", fr, err)
		}
		if err := CheckDeltaWrapper(buf[:skipHeaderSize], size-skipHeaderSize); err != nil {
			return bad("delta frame %d: %v", fr, err)
		}
		rawLen := min(d.FrameSize, m.Raw.Size-fr*d.FrameSize)
		raw, err = fdec.DecodeAll(buf[skipHeaderSize:], raw[:0:rawLen])
		if err != nil || int64(len(raw)) != rawLen {
			return bad("delta frame %d decodes to %d bytes, want %d (%v)", fr, len(raw), rawLen, err)
		}
		first := fr * ix.BlocksPerFrame()
		nb := min(ix.BlocksPerFrame(), ix.Blocks-first)
		if err := ix.Hashes(first, want[:nb*hashSize]); err != nil {
			return err
		}
		for k := range nb {
			blk := raw[k*d.BlockSize : min(int64(len(raw)), (k+1)*d.BlockSize)]
			if s := BlockHash(blk); !bytes.Equal(s[:], want[k*hashSize:(k+1)*hashSize]) {
				return bad("delta frame %d: block %d does not match the index", fr, first+k)
			}
		}
	}
	return nil
}

// checkFullFrames walks the full part's frame headers as the device's install does: each frame a
// zstd frame (no dictionary, no skippable frame), declaring exactly its share of the raw size at
// the signed frame size, with a window no larger than that, and nothing after the last.
func checkFullFrames(obj io.ReaderAt, m Manifest) error {
	fr := NewFrameReader(bufio.NewReader(io.NewSectionReader(obj, 0, m.Full.Size)))
	wcap := windowFor(int(m.FullFrameSize))
	for i, left := int64(0), m.Raw.Size; ; i++ {
		h, body, err := fr.Next()
		if errors.Is(err, io.EOF) {
			if left != 0 {
				return reason.Errorf(reason.SizeMismatch, "full part: %d frames hold %d bytes less than the signed raw size %d", i, left, m.Raw.Size)
			}
			return nil
		}
		if err != nil {
			return reason.Errorf(reason.DigestMismatch, "full part: frame %d: %v", i, err)
		}
		want := min(m.FullFrameSize, left)
		switch {
		case h.Skippable() || h.HasDictionary:
			return reason.Errorf(reason.DigestMismatch, "full part: frame %d is skippable or needs a dictionary", i)
		case h.ContentSize > want:
			return reason.Errorf(reason.DecompressionBomb, "full part: frame %d declares %d raw bytes, %d are left of the signed %d at frames of %d", i, h.ContentSize, want, m.Raw.Size, m.FullFrameSize)
		case h.ContentSize != want:
			return reason.Errorf(reason.SizeMismatch, "full part: frame %d declares %d raw bytes, want %d (signed frames of %d)", i, h.ContentSize, want, m.FullFrameSize)
		case h.WindowSize > int64(wcap):
			return reason.Errorf(reason.DigestMismatch, "full part: frame %d asks for a %d-byte window, the signed frames are %d bytes", i, h.WindowSize, m.FullFrameSize)
		}
		if _, err := io.Copy(io.Discard, body); err != nil {
			return reason.Errorf(reason.DigestMismatch, "full part: frame %d: %v", i, err)
		}
		left -= want
	}
}

func sumRange(r io.ReaderAt, off, n int64) (string, error) {
	h := sha256.New()
	got, err := io.Copy(h, io.NewSectionReader(r, off, n))
	if err == nil && got != n {
		err = errors.New("short object")
	}
	return hex.EncodeToString(h.Sum(nil)), err
}
