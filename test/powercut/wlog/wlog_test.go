package wlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// logBuilder writes a dm-log-writes log the way QEMU's blklogwrites does: superblock in sector
// 0, then per entry a header sector followed by the data sectors.
type logBuilder struct {
	ss      int
	buf     bytes.Buffer
	entries int
}

func newLog(ss int) *logBuilder {
	b := &logBuilder{ss: ss}
	b.buf.Write(make([]byte, ss))
	return b
}

func (b *logBuilder) entry(sector, n, flags uint64, data []byte) *logBuilder {
	h := make([]byte, b.ss)
	le := binary.LittleEndian
	le.PutUint64(h[0:], sector)
	le.PutUint64(h[8:], n)
	le.PutUint64(h[16:], flags)
	b.buf.Write(h)
	b.buf.Write(data)
	b.entries++
	return b
}

// super writes the superblock counting the first count entries.
func (b *logBuilder) super(count int) []byte {
	out := append([]byte(nil), b.buf.Bytes()...)
	le := binary.LittleEndian
	le.PutUint64(out[0:], Magic)
	le.PutUint64(out[8:], Version)
	le.PutUint64(out[16:], uint64(count))
	le.PutUint32(out[24:], uint32(b.ss))
	return out
}

func sectors(n int, fill byte) []byte { return bytes.Repeat([]byte{fill}, 512*n) }

func TestParseReadsWritesFlushesAndDiscardsInOrder(t *testing.T) {
	b := newLog(512).entry(8, 2, 0, sectors(2, 'a')).entry(0, 0, Flush, nil).entry(100, 4, Discard, nil).entry(3, 1, 0, sectors(1, 'b'))
	raw := b.super(4)
	l, err := Parse(bytes.NewReader(raw), int64(len(raw)), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		off, n int64
		write  bool
		flush  bool
	}{{8 * 512, 1024, true, false}, {0, 0, false, true}, {100 * 512, 2048, false, false}, {3 * 512, 512, true, false}}
	if len(l.Entries) != len(want) {
		t.Fatalf("%d entries, want %d", len(l.Entries), len(want))
	}
	for i, w := range want {
		e := l.Entries[i]
		if e.Offset != w.off || e.Length != w.n || e.IsWrite() != w.write || e.IsFlush() != w.flush || e.Index != i {
			t.Errorf("entry %d = %s (%+v), want %+v", i, e, e, w)
		}
	}
	data, err := l.ReadData(l.Entries[3])
	if err != nil || !bytes.Equal(data, sectors(1, 'b')) {
		t.Fatalf("data of entry 3: %q, %v", data[:4], err)
	}
}

// A guest killed after its last flush leaves entries past the superblock's count: they are the
// unflushed tail and are kept; zeroed space after them ends the log.
func TestUnflushedTailPastTheCountIsKept(t *testing.T) {
	b := newLog(512).entry(8, 1, 0, sectors(1, 'a')).entry(0, 0, Flush, nil).entry(9, 1, 0, sectors(1, 'c'))
	raw := append(b.super(2), make([]byte, 4096)...)
	l, err := Parse(bytes.NewReader(raw), int64(len(raw)), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if l.Counted != 2 || len(l.Entries) != 3 {
		t.Fatalf("counted %d, entries %d; want 2 and 3", l.Counted, len(l.Entries))
	}
}

// A tail entry cut short (the log file ends inside its data) is not a write that happened.
func TestTornTailEntryEndsTheLog(t *testing.T) {
	b := newLog(512).entry(8, 1, 0, sectors(1, 'a')).entry(0, 0, Flush, nil).entry(9, 4, 0, sectors(4, 'c'))
	raw := b.super(2)
	raw = raw[:len(raw)-512]
	l, err := Parse(bytes.NewReader(raw), int64(len(raw)), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Entries) != 2 {
		t.Fatalf("%d entries, want the 2 counted ones", len(l.Entries))
	}
}

func TestCorruptLogsAreRefused(t *testing.T) {
	good := newLog(512).entry(8, 1, 0, sectors(1, 'a')).entry(0, 0, Flush, nil)
	for _, tc := range []struct {
		name string
		raw  func() []byte
	}{
		{"bad magic", func() []byte { r := good.super(2); r[0] ^= 1; return r }},
		{"bad version", func() []byte { r := good.super(2); r[8] = 2; return r }},
		{"sector size not a power of two", func() []byte {
			r := good.super(2)
			binary.LittleEndian.PutUint32(r[24:], 1000)
			return r
		}},
		{"counted entry past the end", func() []byte { return good.super(3) }},
		{"counted entry with unknown flags", func() []byte {
			return newLog(512).entry(8, 1, 1<<9, sectors(1, 'a')).super(1)
		}},
		{"counted entry outside the disk", func() []byte {
			return newLog(512).entry(1<<30, 1, 0, sectors(1, 'a')).super(1)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := tc.raw()
			if _, err := Parse(bytes.NewReader(raw), int64(len(raw)), 1<<20); !errors.Is(err, ErrFormat) {
				t.Fatalf("err = %v, want ErrFormat", err)
			}
		})
	}
}

// Offsets and lengths are in units of the log's sector size, as QEMU's log-sector-size sets it.
func TestSectorSizeScalesOffsets(t *testing.T) {
	raw := newLog(4096).entry(3, 1, FUA, bytes.Repeat([]byte{'z'}, 4096)).super(1)
	l, err := Parse(bytes.NewReader(raw), int64(len(raw)), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	e := l.Entries[0]
	if l.SectorSize != 4096 || e.Offset != 3*4096 || e.Length != 4096 || !e.IsFlush() || !e.IsWrite() {
		t.Fatalf("entry %s (%+v)", e, e)
	}
}
