package zimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"

	"github.com/klauspost/compress/zstd"
)

// Defaults chosen by measurement (docs/delta-updates.md, BENCHMARKS.md).
const (
	DefaultFullFrameSize = 16 << 20 // ≤ 1.05× one solid zstd -19 --long=27 stream; 16 MiB of decoder window
	DefaultBlockSize     = 4 << 10  // the ext4 block: smaller finds no more, larger finds much less
	DefaultFrameSize     = 16 << 10 // delta frames: fewest bytes fetched, ~100 requests per GiB (BENCHMARKS.md sweep)
)

// Options shape what Build writes. The zero value is a full part only (files and binaries).
type Options struct {
	FullFrameSize int64
	Delta         bool // also write the delta frames and the block index (slot images)
	BlockSize     int64
	FrameSize     int64
	Encoder       Encoder // default GoEncoder
	Batch         int     // raw bytes handed to the encoder at once, default 64 MiB
}

// Build writes raw (rawSize bytes) as a compressed object to out and returns the manifest to
// sign. It reads raw twice when Delta is set (once per part).
func Build(ctx context.Context, raw io.ReaderAt, rawSize int64, out io.Writer, opt Options) (Manifest, error) {
	if rawSize <= 0 {
		return Manifest{}, fmt.Errorf("build: the image is empty")
	}
	opt.FullFrameSize = or64(opt.FullFrameSize, DefaultFullFrameSize)
	opt.BlockSize = or64(opt.BlockSize, DefaultBlockSize)
	opt.FrameSize = or64(opt.FrameSize, DefaultFrameSize)
	opt.Batch = or(opt.Batch, 64<<20)
	if opt.Encoder == nil {
		opt.Encoder = GoEncoder{}
	}
	w := &countingWriter{w: out, h: sha256.New()}
	rawHash := sha256.New()

	// the full part
	if err := encodeRange(ctx, raw, rawSize, opt.FullFrameSize, opt, func(chunk, frame []byte) error {
		rawHash.Write(chunk)
		_, err := w.Write(frame)
		return err
	}); err != nil {
		return Manifest{}, err
	}
	m := Manifest{
		Compression: CompressionZstd, FullFrameSize: opt.FullFrameSize,
		Raw:  Digest{Size: rawSize, SHA256: hex.EncodeToString(rawHash.Sum(nil))},
		Full: Digest{Size: w.n, SHA256: hex.EncodeToString(w.h.Sum(nil))},
	}
	if opt.Delta {
		if err := buildDelta(ctx, raw, rawSize, w, opt, &m); err != nil {
			return Manifest{}, err
		}
	}
	m.Stored = Digest{Size: w.n, SHA256: hex.EncodeToString(w.h.Sum(nil))}
	if err := m.Validate(); err != nil {
		return Manifest{}, fmt.Errorf("build: the result does not validate: %w", err)
	}
	return m, nil
}

func buildDelta(ctx context.Context, raw io.ReaderAt, rawSize int64, w *countingWriter, opt Options, m *Manifest) error {
	d := &Delta{BlockSize: opt.BlockSize, FrameSize: opt.FrameSize}
	if d.BlockSize < MinBlockSize || d.BlockSize > MaxBlockSize || d.BlockSize&(d.BlockSize-1) != 0 ||
		d.FrameSize%d.BlockSize != 0 || d.FrameSize > MaxFrameSize {
		return fmt.Errorf("build: block size %d and frame size %d: want a power of two and a multiple of it (≤ %d)", d.BlockSize, d.FrameSize, MaxFrameSize)
	}
	var hashes bytes.Buffer // 16 bytes per block: 4 MiB per GiB, on the build host
	var sizes []byte
	first := w.n
	if err := encodeRange(ctx, raw, rawSize, opt.FrameSize, opt, func(chunk, frame []byte) error {
		for off := 0; off < len(chunk); off += int(d.BlockSize) {
			s := BlockHash(chunk[off:min(len(chunk), off+int(d.BlockSize))])
			hashes.Write(s[:])
		}
		sizes = binary.LittleEndian.AppendUint32(sizes, uint32(len(frame)))
		if _, err := w.Write(skippableHeader(deltaFrameMagic, int64(len(frame)))); err != nil {
			return err
		}
		_, err := w.Write(frame)
		return err
	}); err != nil {
		return err
	}
	blocks, frames := d.Blocks(rawSize), d.DeltaFrames(rawSize)
	ix := append(encodeIndexHeader(rawSize, d.BlockSize, d.FrameSize, blocks, frames, first), hashes.Bytes()...)
	ix = append(ix, sizes...)
	z, err := encodeIndex(ix)
	if err != nil {
		return err
	}
	d.Index.Offset = w.n
	sum := sha256.New()
	wrapped := io.MultiWriter(w, sum)
	if _, err := wrapped.Write(skippableHeader(indexFrameMagic, int64(len(z)))); err != nil {
		return err
	}
	if _, err := wrapped.Write(z); err != nil {
		return err
	}
	d.Index.Size = w.n - d.Index.Offset
	d.Index.SHA256 = hex.EncodeToString(sum.Sum(nil))
	m.Delta = d
	return nil
}

// encodeRange cuts raw into frameSize chunks, encodes them a batch at a time and hands each
// chunk and its frame to emit in order.
func encodeRange(ctx context.Context, raw io.ReaderAt, rawSize, frameSize int64, opt Options, emit func(chunk, frame []byte) error) error {
	per := max(1, int64(opt.Batch)/frameSize)
	buf := make([]byte, per*frameSize)
	for off := int64(0); off < rawSize; off += per * frameSize {
		n := min(per*frameSize, rawSize-off)
		if _, err := raw.ReadAt(buf[:n], off); err != nil && !(err == io.EOF && n > 0) {
			return fmt.Errorf("build: reading the image at %d: %w", off, err)
		}
		var chunks [][]byte
		for c := int64(0); c < n; c += frameSize {
			chunks = append(chunks, buf[c:min(n, c+frameSize)])
		}
		frames, err := opt.Encoder.EncodeFrames(ctx, chunks)
		if err != nil {
			return fmt.Errorf("build: %w", err)
		}
		for i := range chunks {
			if err := emit(chunks[i], frames[i]); err != nil {
				return fmt.Errorf("build: writing: %w", err)
			}
		}
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}

func or64(v, d int64) int64 {
	if v == 0 {
		return d
	}
	return v
}

// IndexWindow is the window the index is compressed with: hashes do not compress, only the runs
// of identical ones (zero blocks) do, and those need no more. It bounds the device's decoder.
const IndexWindow = 1 << 20

func encodeIndex(ix []byte) ([]byte, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(true), zstd.WithWindowSize(IndexWindow), zstd.WithSingleSegment(false))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	return enc.EncodeAll(ix, nil), nil
}
