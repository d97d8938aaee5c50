package zimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/fieldota/fieldota/ota/reason"
)

// The block index, decompressed (all integers little-endian):
//
//	header   64 bytes: "FOTAIDX1", raw size u64, block size u32, frame size u32, blocks u64,
//	         delta frames u64, object offset of the first delta frame u64, zero padding
//	hashes   blocks × 16 bytes: SHA-256 of each raw block truncated to 128 bits (the last
//	         block may be shorter)
//	frames   delta frames × u32: the compressed size of each delta frame (without its
//	         8-byte skippable wrapper); frame i+1 starts right after frame i
//
// In the object it is one zstd frame inside one skippable frame (magic 0x184D2A5C).
const (
	indexHeaderSize = 64
	hashSize        = BlockHashSize
	frameEntrySize  = 4
	maxIndexRawSize = 1 << 30 // 32 GiB of image at 4 KiB blocks
)

var indexMagic = [8]byte{'F', 'O', 'T', 'A', 'I', 'D', 'X', '1'}

// BlockHashSize is the bytes of SHA-256 kept per block: 128 bits, as zchunk's sha512_128. The
// index is signed, so a block hash needs second-preimage resistance (2^128), not collision
// resistance; the whole image is checked against its full SHA-256 as well. It halves the part
// of a delta that is index.
const BlockHashSize = 16

// BlockHash is the index's hash of one block.
func BlockHash(b []byte) [BlockHashSize]byte {
	s := sha256.Sum256(b)
	return [BlockHashSize]byte(s[:BlockHashSize])
}

// Index is a parsed, checked block index. Its hashes stay in the ReaderAt they came from (a
// file in the state directory): a device does not hold 8 MiB of hashes per GiB in memory.
type Index struct {
	RawSize   int64
	BlockSize int64
	FrameSize int64
	Blocks    int64
	Frames    int64
	src       io.ReaderAt
	frameOff  []int64 // object offset of each delta frame's zstd bytes, and one past the last
}

// OpenIndex checks a decompressed index held by src against the signed manifest: every field
// must agree with it and the frames must tile the object's delta part exactly, from the end of
// the full part to the start of the index.
func OpenIndex(src io.ReaderAt, m Manifest) (*Index, error) {
	if m.Delta == nil {
		return nil, reason.Errorf(reason.Internal, "index: the manifest has no delta part")
	}
	bad := func(format string, args ...any) error {
		return reason.Errorf(reason.DigestMismatch, "block index: "+format, args...)
	}
	var h [indexHeaderSize]byte
	if _, err := src.ReadAt(h[:], 0); err != nil {
		return nil, bad("header: %v", err)
	}
	le := binary.LittleEndian
	ix := &Index{
		RawSize: int64(le.Uint64(h[8:])), BlockSize: int64(le.Uint32(h[16:])), FrameSize: int64(le.Uint32(h[20:])),
		Blocks: int64(le.Uint64(h[24:])), Frames: int64(le.Uint64(h[32:])), src: src,
	}
	first := int64(le.Uint64(h[40:]))
	d := m.Delta
	switch {
	case !bytes.Equal(h[:8], indexMagic[:]):
		return nil, bad("magic %q", h[:8])
	case !bytes.Equal(h[48:], make([]byte, indexHeaderSize-48)):
		return nil, bad("padding is not zero")
	case ix.RawSize != m.Raw.Size:
		return nil, bad("raw size %d, the manifest says %d", ix.RawSize, m.Raw.Size)
	case ix.BlockSize != d.BlockSize || ix.FrameSize != d.FrameSize:
		return nil, bad("block/frame size %d/%d, the manifest says %d/%d", ix.BlockSize, ix.FrameSize, d.BlockSize, d.FrameSize)
	case ix.Blocks != d.Blocks(m.Raw.Size) || ix.Frames != d.DeltaFrames(m.Raw.Size):
		return nil, bad("%d blocks and %d frames, the manifest implies %d and %d", ix.Blocks, ix.Frames, d.Blocks(m.Raw.Size), d.DeltaFrames(m.Raw.Size))
	case first != m.Full.Size:
		return nil, bad("delta frames start at %d, the full part ends at %d", first, m.Full.Size)
	}
	sizes := make([]byte, ix.Frames*frameEntrySize)
	if _, err := src.ReadAt(sizes, indexHeaderSize+ix.Blocks*hashSize); err != nil {
		return nil, bad("frame table: %v", err)
	}
	ix.frameOff = make([]int64, ix.Frames+1)
	off := first
	for i := range ix.Frames {
		c := int64(le.Uint32(sizes[i*frameEntrySize:]))
		if c < 6 || c > 2*ix.FrameSize+1024 {
			return nil, bad("delta frame %d is %d bytes", i, c)
		}
		ix.frameOff[i] = off + skipHeaderSize
		off += skipHeaderSize + c
	}
	ix.frameOff[ix.Frames] = off + skipHeaderSize
	if off != d.Index.Offset {
		return nil, bad("delta frames end at %d, the index starts at %d", off, d.Index.Offset)
	}
	return ix, nil
}

// FrameRange returns where delta frame i's zstd bytes are in the object.
func (ix *Index) FrameRange(i int64) (off, size int64) {
	return ix.frameOff[i], ix.frameOff[i+1] - skipHeaderSize - ix.frameOff[i]
}

// WrappedRange returns delta frames [i, j) with their skippable wrappers: the bytes one GET of
// those frames asks for.
func (ix *Index) WrappedRange(i, j int64) (off, size int64) {
	return ix.frameOff[i] - skipHeaderSize, ix.frameOff[j] - ix.frameOff[i]
}

// BlockLen is the raw length of block b (the last may be short).
func (ix *Index) BlockLen(b int64) int64 { return min(ix.BlockSize, ix.RawSize-b*ix.BlockSize) }

// BlocksPerFrame is FrameSize / BlockSize.
func (ix *Index) BlocksPerFrame() int64 { return ix.FrameSize / ix.BlockSize }

// Hashes reads the block hashes of blocks [first, first+len(dst)/BlockHashSize) into dst.
func (ix *Index) Hashes(first int64, dst []byte) error {
	if len(dst)%hashSize != 0 || first < 0 || first+int64(len(dst)/hashSize) > ix.Blocks {
		return fmt.Errorf("index: hashes [%d, +%d) out of range", first, len(dst)/hashSize)
	}
	_, err := ix.src.ReadAt(dst, indexHeaderSize+first*hashSize)
	return err
}

// HashReader streams every block hash in order.
func (ix *Index) HashReader() io.Reader {
	return io.NewSectionReader(ix.src, indexHeaderSize, ix.Blocks*hashSize)
}

// CheckDeltaWrapper checks the 8-byte skippable header in front of delta frame i.
func CheckDeltaWrapper(hdr []byte, size int64) error {
	if len(hdr) != skipHeaderSize || binary.LittleEndian.Uint32(hdr) != deltaFrameMagic || int64(binary.LittleEndian.Uint32(hdr[4:])) != size {
		return fmt.Errorf("%w: delta frame wrapper % x, want magic %#x and size %d", ErrFrame, hdr, deltaFrameMagic, size)
	}
	return nil
}

// WrapperSize is the size of the skippable header in front of every delta frame and the index.
const WrapperSize = skipHeaderSize

func encodeIndexHeader(rawSize, blockSize, frameSize, blocks, frames, first int64) []byte {
	h := make([]byte, indexHeaderSize)
	copy(h, indexMagic[:])
	le := binary.LittleEndian
	le.PutUint64(h[8:], uint64(rawSize))
	le.PutUint32(h[16:], uint32(blockSize))
	le.PutUint32(h[20:], uint32(frameSize))
	le.PutUint64(h[24:], uint64(blocks))
	le.PutUint64(h[32:], uint64(frames))
	le.PutUint64(h[40:], uint64(first))
	return h
}

func skippableHeader(magic uint32, size int64) []byte {
	h := make([]byte, skipHeaderSize)
	binary.LittleEndian.PutUint32(h, magic)
	binary.LittleEndian.PutUint32(h[4:], uint32(size))
	return h
}

// IndexWrapperCheck checks the skippable header of the index frame.
func IndexWrapperCheck(hdr []byte, size int64) error {
	if len(hdr) != skipHeaderSize || binary.LittleEndian.Uint32(hdr) != indexFrameMagic || int64(binary.LittleEndian.Uint32(hdr[4:])) != size {
		return fmt.Errorf("%w: index wrapper % x", ErrFrame, hdr)
	}
	return nil
}
