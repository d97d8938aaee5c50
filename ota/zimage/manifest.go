// Package zimage is the format of a compressed release file (docs/delta-updates.md): what the
// release tool writes, what the device reads, and the values the release statement signs.
//
// One object per file, read through the one presigned URL:
//
//	[full part]   independent zstd frames of FullFrameSize raw bytes each: a full install reads
//	              this prefix in one ranged GET and decompresses it as it arrives
//	[delta part]  (slots only) the same image again in small frames of FrameSize raw bytes, each
//	              wrapped in a skippable frame, so that a plain `zstd -d` of the object still
//	              yields the image exactly once
//	[index]       (slots only) a skippable frame holding the zstd-compressed block index: the
//	              SHA-256 of every BlockSize block of the raw image and the size of every delta
//	              frame, which is where a delta install finds the frames it lacks
//
// The full part is separate from the delta frames because small frames compress worse (measured
// in BENCHMARKS.md): a full install must not pay for the delta's granularity.
package zimage

import (
	"encoding/hex"
	"fmt"

	"github.com/fieldota/fieldota/ota/reason"
)

// CompressionZstd is the only compression there is.
const CompressionZstd = "zstd"

// Limits a device accepts; a manifest outside them is refused before any byte is fetched.
const (
	MinBlockSize     = 512
	MaxBlockSize     = 1 << 20
	MaxFrameSize     = 4 << 20  // a delta frame is decoded in memory: bounded
	MinFullFrameSize = 64 << 10 // below this the full part is mostly frame overhead
	MaxFullFrameSize = 64 << 20 // the decoder keeps one frame's window: this bounds its memory
)

// Manifest is every value about one compressed file that the release statement signs. The
// device takes them only from the verified statement, never from the job document or the object.
type Manifest struct {
	Compression   string `json:"compression"`   // "zstd"
	Stored        Digest `json:"stored"`        // the object as S3 holds it (the statement's file size and sha256)
	Raw           Digest `json:"raw"`           // the installed, decompressed bytes
	Full          Digest `json:"full"`          // the object's first Full.Size bytes: what a full install reads
	FullFrameSize int64  `json:"fullFrameSize"` // raw bytes per frame of the full part (the last may be shorter)
	Delta         *Delta `json:"delta,omitempty"`
}

// Delta describes the block index and the small frames of a delta-capable image.
type Delta struct {
	BlockSize int64 `json:"blockSize"` // raw bytes per indexed block
	FrameSize int64 `json:"frameSize"` // raw bytes per delta frame, a multiple of BlockSize
	Index     Range `json:"index"`     // where the index sits in the object, and its digest
}

// Digest is a size and a SHA-256 (lower-case hex).
type Digest struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Range is a digest of the bytes at an offset of the object.
type Range struct {
	Offset int64  `json:"offset"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Sum returns the digest's bytes (Validate has checked it).
func (d Digest) Sum() []byte { b, _ := hex.DecodeString(d.SHA256); return b }

// Sum returns the range's digest bytes (Validate has checked it).
func (r Range) Sum() []byte { b, _ := hex.DecodeString(r.SHA256); return b }

// Frames is the number of full-part frames.
func (m Manifest) Frames() int64 { return ceilDiv(m.Raw.Size, m.FullFrameSize) }

// Blocks is the number of indexed blocks (Delta must be set).
func (d Delta) Blocks(raw int64) int64 { return ceilDiv(raw, d.BlockSize) }

// DeltaFrames is the number of delta frames (Delta must be set).
func (d Delta) DeltaFrames(raw int64) int64 { return ceilDiv(raw, d.FrameSize) }

// IndexRawSize is the exact size of the decompressed index for this manifest.
func (m Manifest) IndexRawSize() int64 {
	d := m.Delta
	return indexHeaderSize + d.Blocks(m.Raw.Size)*hashSize + d.DeltaFrames(m.Raw.Size)*frameEntrySize
}

// Validate checks every field strictly; each refusal names the field and why. It is meant to
// run on the signed values while the job is still QUEUED, so that a manifest the device cannot
// or will not handle is REJECTED before the first byte.
func (m Manifest) Validate() error {
	bad := func(field, format string, args ...any) error {
		return reason.Errorf(reason.InvalidDocument, "compression manifest: %s: "+format, append([]any{field}, args...)...)
	}
	if m.Compression != CompressionZstd {
		return bad("compression", "%q is not supported (want %q)", m.Compression, CompressionZstd)
	}
	for _, d := range []struct {
		name string
		v    Digest
	}{{"stored", m.Stored}, {"raw", m.Raw}, {"full", m.Full}} {
		if d.v.Size <= 0 {
			return bad(d.name+".size", "%d, must be positive", d.v.Size)
		}
		if err := checkHex(d.v.SHA256); err != nil {
			return bad(d.name+".sha256", "%v", err)
		}
	}
	if m.Full.Size > m.Stored.Size {
		return bad("full.size", "%d exceeds the stored object's %d bytes", m.Full.Size, m.Stored.Size)
	}
	if m.FullFrameSize < MinFullFrameSize || m.FullFrameSize > MaxFullFrameSize {
		return bad("fullFrameSize", "%d outside [%d, %d]", m.FullFrameSize, MinFullFrameSize, MaxFullFrameSize)
	}
	// A frame header is at least 6 bytes: more frames than that allows cannot be honest.
	if m.Frames() > m.Full.Size/6+1 {
		return bad("fullFrameSize", "%d frames cannot fit in %d bytes", m.Frames(), m.Full.Size)
	}
	if m.Delta == nil {
		if m.Full.Size != m.Stored.Size {
			return bad("full.size", "%d, but without a delta part the object is the full part (%d bytes)", m.Full.Size, m.Stored.Size)
		}
		if m.Full.SHA256 != m.Stored.SHA256 {
			return bad("full.sha256", "differs from stored.sha256, but without a delta part they are the same bytes")
		}
		return nil
	}
	d := *m.Delta
	if d.BlockSize < MinBlockSize || d.BlockSize > MaxBlockSize || d.BlockSize&(d.BlockSize-1) != 0 {
		return bad("delta.blockSize", "%d, want a power of two in [%d, %d]", d.BlockSize, MinBlockSize, MaxBlockSize)
	}
	if d.FrameSize < d.BlockSize || d.FrameSize > MaxFrameSize || d.FrameSize%d.BlockSize != 0 {
		return bad("delta.frameSize", "%d, want a multiple of the block size %d, at most %d", d.FrameSize, d.BlockSize, MaxFrameSize)
	}
	if d.Index.Offset < m.Full.Size || d.Index.Size <= skipHeaderSize || d.Index.Offset > m.Stored.Size-d.Index.Size {
		return bad("delta.index", "[%d, +%d) is not inside the object after the full part (%d of %d bytes)", d.Index.Offset, d.Index.Size, m.Full.Size, m.Stored.Size)
	}
	if err := checkHex(d.Index.SHA256); err != nil {
		return bad("delta.index.sha256", "%v", err)
	}
	if m.IndexRawSize() > maxIndexRawSize {
		return bad("delta", "an index of %d bytes (%d blocks) is beyond what a device holds (%d)", m.IndexRawSize(), d.Blocks(m.Raw.Size), int64(maxIndexRawSize))
	}
	return nil
}

func checkHex(s string) error {
	if len(s) != 64 {
		return fmt.Errorf("%d hex digits, want 64", len(s))
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%q is not lower-case hex", s)
		}
	}
	return nil
}

func ceilDiv(a, b int64) int64 {
	if b <= 0 {
		return 0
	}
	return (a + b - 1) / b
}
