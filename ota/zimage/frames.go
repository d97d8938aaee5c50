package zimage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// zstd framing (RFC 8878 §3.1): what the device needs to find frame boundaries in a stream
// without decoding it, so that a resume can restart at one.
const (
	zstdMagic         = 0xFD2FB528
	skippableMagicLo  = 0x184D2A50
	skippableMagicHi  = 0x184D2A5F
	skipHeaderSize    = 8
	maxBlockContent   = 128 << 10 // Block_Maximum_Size
	maxFrameHeader    = 18
	deltaFrameMagic   = 0x184D2A5D // skippable frame wrapping one delta frame
	indexFrameMagic   = 0x184D2A5C // skippable frame holding the block index
	blockHeaderSize   = 3
	checksumFieldSize = 4
)

// ErrFrame marks bytes that are not the zstd framing they should be.
var ErrFrame = errors.New("malformed zstd frame")

// FrameHeader is what a zstd frame header says about the frame.
type FrameHeader struct {
	ContentSize    int64 // Frame_Content_Size, -1 when absent
	WindowSize     int64
	HasChecksum    bool
	HasDictionary  bool
	HeaderSize     int // bytes of the header itself (magic included)
	SkippableMagic uint32
	SkippableSize  int64 // for a skippable frame: the bytes after its 8-byte header
}

// Skippable reports whether the header is a skippable frame's.
func (h FrameHeader) Skippable() bool { return h.SkippableMagic != 0 }

// ParseFrameHeader reads one frame header from the start of b (which holds at least
// maxFrameHeader bytes, or the rest of the stream).
func ParseFrameHeader(b []byte) (FrameHeader, error) {
	var h FrameHeader
	if len(b) < 4 {
		return h, fmt.Errorf("%w: %d bytes, no magic number", ErrFrame, len(b))
	}
	magic := binary.LittleEndian.Uint32(b)
	if magic >= skippableMagicLo && magic <= skippableMagicHi {
		if len(b) < skipHeaderSize {
			return h, fmt.Errorf("%w: short skippable frame header", ErrFrame)
		}
		h.SkippableMagic, h.SkippableSize, h.HeaderSize = magic, int64(binary.LittleEndian.Uint32(b[4:])), skipHeaderSize
		h.ContentSize = 0
		return h, nil
	}
	if magic != zstdMagic {
		return h, fmt.Errorf("%w: magic %#08x", ErrFrame, magic)
	}
	if len(b) < 5 {
		return h, fmt.Errorf("%w: short frame header", ErrFrame)
	}
	fhd := b[4]
	if fhd&0x18 != 0 {
		return h, fmt.Errorf("%w: reserved bits set in the frame header", ErrFrame)
	}
	single := fhd&0x20 != 0
	h.HasChecksum = fhd&0x04 != 0
	didSize := []int{0, 1, 2, 4}[fhd&3]
	h.HasDictionary = didSize > 0
	fcsSize := []int{0, 2, 4, 8}[fhd>>6]
	if fhd>>6 == 0 && single {
		fcsSize = 1
	}
	n := 5
	if !single {
		n++
	}
	h.HeaderSize = n + didSize + fcsSize
	if len(b) < h.HeaderSize {
		return h, fmt.Errorf("%w: short frame header", ErrFrame)
	}
	if !single {
		wd := b[5]
		base := int64(1) << (10 + wd>>3)
		h.WindowSize = base + base/8*int64(wd&7)
	}
	fcs := b[n+didSize : h.HeaderSize]
	switch fcsSize {
	case 0:
		h.ContentSize = -1
	case 1:
		h.ContentSize = int64(fcs[0])
	case 2:
		h.ContentSize = int64(binary.LittleEndian.Uint16(fcs)) + 256
	case 4:
		h.ContentSize = int64(binary.LittleEndian.Uint32(fcs))
	case 8:
		v := binary.LittleEndian.Uint64(fcs)
		if v > 1<<62 {
			return h, fmt.Errorf("%w: content size %d", ErrFrame, v)
		}
		h.ContentSize = int64(v)
	}
	if single {
		h.WindowSize = h.ContentSize
	}
	return h, nil
}

// FrameReader hands out one frame at a time from a stream of frames: each Next returns a reader
// of exactly that frame's bytes (header included), which ends at the frame's last byte. It reads
// only block headers, never decodes, and never reads past the frame it hands out.
type FrameReader struct {
	src io.Reader
	hdr [maxFrameHeader]byte
	cur *frameBody
}

// NewFrameReader reads frames from src.
func NewFrameReader(src io.Reader) *FrameReader { return &FrameReader{src: src} }

// Next returns the next frame's header and a reader of its bytes; whatever the previous frame's
// reader had not handed out is read past. At the end of the stream it returns io.EOF.
func (fr *FrameReader) Next() (FrameHeader, io.Reader, error) {
	if fr.cur != nil && !fr.cur.done {
		// A decoder may stop right after the last block without asking for the end.
		if _, err := io.Copy(io.Discard, fr.cur); err != nil {
			return FrameHeader{}, nil, err
		}
	}
	// The header's size is known only after its first 5 bytes (6 for a skippable frame).
	n, err := io.ReadFull(fr.src, fr.hdr[:5])
	if err == io.EOF {
		return FrameHeader{}, nil, io.EOF
	}
	if err != nil {
		return FrameHeader{}, nil, fmt.Errorf("%w: %v", ErrFrame, noEOF(err))
	}
	need := headerSizeFrom(fr.hdr[:5])
	if need > n {
		if _, err := io.ReadFull(fr.src, fr.hdr[n:need]); err != nil {
			return FrameHeader{}, nil, fmt.Errorf("%w: %v", ErrFrame, noEOF(err))
		}
	}
	h, err := ParseFrameHeader(fr.hdr[:need])
	if err != nil {
		return h, nil, err
	}
	fr.cur = &frameBody{src: fr.src, head: append([]byte(nil), fr.hdr[:need]...), hdr: h}
	if h.Skippable() {
		fr.cur.skipLeft = h.SkippableSize
	}
	return h, fr.cur, nil
}

// headerSizeFrom is the header length that the first five bytes announce (or 5 for anything
// else, which ParseFrameHeader then refuses).
func headerSizeFrom(b []byte) int {
	magic := binary.LittleEndian.Uint32(b)
	if magic >= skippableMagicLo && magic <= skippableMagicHi {
		return skipHeaderSize
	}
	if magic != zstdMagic {
		return 5
	}
	fhd := b[4]
	single := fhd&0x20 != 0
	n := 5 + []int{0, 1, 2, 4}[fhd&3] + []int{0, 2, 4, 8}[fhd>>6]
	if !single {
		n++
	} else if fhd>>6 == 0 {
		n++
	}
	return n
}

type frameBody struct {
	src      io.Reader
	head     []byte // header bytes not yet handed out
	hdr      FrameHeader
	skipLeft int64 // skippable frame: payload bytes left

	blockLeft int64 // bytes of the current block's content left
	last      bool  // the current block is the frame's last
	tail      []byte
	tailLeft  int // checksum bytes left
	started   bool
	bh        [blockHeaderSize]byte
	pending   []byte // a block header read but not yet handed out
	done      bool
}

func (f *frameBody) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(f.head) > 0 {
		n := copy(p, f.head)
		f.head = f.head[n:]
		return n, nil
	}
	if len(f.pending) > 0 {
		n := copy(p, f.pending)
		f.pending = f.pending[n:]
		return n, nil
	}
	if f.done {
		return 0, io.EOF
	}
	if f.hdr.Skippable() {
		return f.readN(p, &f.skipLeft, func() { f.done = true })
	}
	if f.blockLeft > 0 {
		return f.readN(p, &f.blockLeft, nil)
	}
	if f.tailLeft > 0 {
		left := int64(f.tailLeft)
		n, err := f.readN(p, &left, func() { f.done = true })
		f.tailLeft = int(left)
		return n, err
	}
	if f.started && f.last {
		f.done = true
		return 0, io.EOF
	}
	// the next block header
	if _, err := io.ReadFull(f.src, f.bh[:]); err != nil {
		return 0, fmt.Errorf("%w: block header: %v", ErrFrame, noEOF(err))
	}
	f.started = true
	v := uint32(f.bh[0]) | uint32(f.bh[1])<<8 | uint32(f.bh[2])<<16
	f.last = v&1 != 0
	size := int64(v >> 3)
	switch (v >> 1) & 3 {
	case 0, 2: // raw, compressed
		f.blockLeft = size
	case 1: // RLE: one byte stands for size bytes
		f.blockLeft = 1
		size = 1
	case 3:
		return 0, fmt.Errorf("%w: reserved block type", ErrFrame)
	}
	if size > maxBlockContent {
		return 0, fmt.Errorf("%w: block of %d bytes", ErrFrame, size)
	}
	if f.last && f.hdr.HasChecksum {
		f.tailLeft = checksumFieldSize
	}
	f.pending = f.bh[:]
	n := copy(p, f.pending)
	f.pending = f.pending[n:]
	return n, nil
}

func (f *frameBody) readN(p []byte, left *int64, atEnd func()) (int, error) {
	if int64(len(p)) > *left {
		p = p[:*left]
	}
	n, err := f.src.Read(p)
	*left -= int64(n)
	if *left == 0 && atEnd != nil {
		atEnd()
	}
	if err == io.EOF {
		if *left > 0 {
			return n, fmt.Errorf("%w: stream ends inside a frame", ErrFrame)
		}
		err = nil
	}
	return n, err
}

func noEOF(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return errors.New("stream ends inside a frame header")
	}
	return err
}
