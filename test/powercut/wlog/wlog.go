// Package wlog reads the dm-log-writes format: the write log that Linux's dm-log-writes target
// and QEMU's blklogwrites block driver keep of every write a guest makes to its disk, in order,
// with the flush and FUA marks that tell which writes the disk had to make durable when.
//
// Layout (all little-endian, in units of the log's sector size): sector 0 holds the superblock
// {magic, version, nr_entries, sectorsize}; from sector 1 on, each entry is one sector
// {sector, nr_sectors, flags, data_len} followed, for a write, by its nr_sectors sectors of data.
// A flush is an entry with the FLUSH flag and no data; a discard carries no data either.
//
// QEMU updates nr_entries only at a flush (and every 4096 entries), so a log whose guest was
// killed holds valid entries past the count: Read keeps those too, as the unflushed tail, as
// long as each parses (known flags, a target inside the disk, data inside the file).
package wlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// Flags of an entry.
const (
	Flush    = 1 << 0
	FUA      = 1 << 1
	Discard  = 1 << 2
	Mark     = 1 << 3
	Metadata = 1 << 4 // dm-log-writes only; QEMU never sets it
	flagMask = Flush | FUA | Discard | Mark | Metadata
)

// Magic and Version of the superblock.
const (
	Magic   = 0x6a736677736872
	Version = 1
)

// Entry is one logged operation. Offset and Length are in bytes on the logged disk; Pos is where
// its header sector is in the log file, Data where its bytes start (writes only).
type Entry struct {
	Index  int
	Offset int64
	Length int64
	Flags  uint64
	Pos    int64
	Data   int64
}

// IsFlush tells whether the entry is a flush (a cache flush of the disk, or a FUA write, which
// makes itself and everything completed before it durable).
func (e Entry) IsFlush() bool { return e.Flags&(Flush|FUA) != 0 }

// IsWrite tells whether the entry carries data to write (discards carry none).
func (e Entry) IsWrite() bool { return e.Length > 0 && e.Flags&Discard == 0 }

func (e Entry) String() string {
	switch {
	case e.Flags&Flush != 0 && e.Length == 0:
		return fmt.Sprintf("#%d flush", e.Index)
	case e.Flags&Discard != 0:
		return fmt.Sprintf("#%d discard %d+%d", e.Index, e.Offset, e.Length)
	}
	s := fmt.Sprintf("#%d write %d+%d", e.Index, e.Offset, e.Length)
	if e.Flags&FUA != 0 {
		s += " fua"
	}
	if e.Flags&Flush != 0 {
		s += " preflush"
	}
	return s
}

// Log is a parsed write log.
type Log struct {
	SectorSize int64
	Entries    []Entry
	// Counted is the superblock's nr_entries: entries past it were logged after the last
	// superblock update (the guest's last flush), when the recording ended.
	Counted int
	r       io.ReaderAt
	f       *os.File
}

// ErrFormat is returned for a file that is not a write log.
var ErrFormat = errors.New("not a dm-log-writes log")

// Open parses the log at path. diskSize bounds the targets of entries (0: no bound); an entry
// past the counted ones that does not parse ends the log.
func Open(path string, diskSize int64) (*Log, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	l, err := Parse(f, fi.Size(), diskSize)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	l.f = f
	return l, nil
}

// Close releases the file opened by Open.
func (l *Log) Close() error {
	if l.f != nil {
		return l.f.Close()
	}
	return nil
}

// Parse reads a log of size bytes from r.
func Parse(r io.ReaderAt, size, diskSize int64) (*Log, error) {
	var sb [28]byte
	if _, err := r.ReadAt(sb[:], 0); err != nil {
		return nil, fmt.Errorf("%w: superblock: %v", ErrFormat, err)
	}
	le := binary.LittleEndian
	if le.Uint64(sb[0:]) != Magic {
		return nil, fmt.Errorf("%w: bad magic %#x", ErrFormat, le.Uint64(sb[0:]))
	}
	if v := le.Uint64(sb[8:]); v != Version {
		return nil, fmt.Errorf("%w: version %d", ErrFormat, v)
	}
	counted := le.Uint64(sb[16:])
	ss := int64(le.Uint32(sb[24:]))
	if ss < 512 || ss&(ss-1) != 0 || ss > 1<<20 {
		return nil, fmt.Errorf("%w: sector size %d", ErrFormat, ss)
	}
	l := &Log{SectorSize: ss, r: r}
	if counted > uint64(size/ss) {
		return nil, fmt.Errorf("%w: %d entries cannot fit in %d bytes", ErrFormat, counted, size)
	}
	l.Counted = int(counted)
	pos := ss
	var eb [32]byte
	for i := 0; ; i++ {
		inCount := i < l.Counted
		if pos+ss > size {
			if inCount {
				return nil, fmt.Errorf("%w: entry %d of %d past the end of the log", ErrFormat, i, counted)
			}
			break
		}
		if _, err := r.ReadAt(eb[:], pos); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		e := Entry{Index: i, Pos: pos, Offset: int64(le.Uint64(eb[0:])) * ss, Length: int64(le.Uint64(eb[8:])) * ss, Flags: le.Uint64(eb[16:])}
		bad := ""
		switch {
		case e.Flags&^flagMask != 0:
			bad = fmt.Sprintf("unknown flags %#x", e.Flags)
		case e.Length < 0 || e.Offset < 0 || diskSize > 0 && e.Offset+e.Length > diskSize:
			bad = fmt.Sprintf("target %d+%d outside the disk", e.Offset, e.Length)
		case e.Flags&Flush != 0 && e.Length == 0 && eb[0]|eb[1]|eb[2]|eb[3] != 0:
			bad = "flush with a sector"
		case e.Flags == 0 && e.Length == 0:
			bad = "empty entry" // also what zeroed space past the last entry looks like
		}
		pos += ss
		if e.IsWrite() {
			e.Data = pos
			pos += e.Length
			if pos > size {
				bad = fmt.Sprintf("data of %d bytes past the end of the log", e.Length)
			}
		}
		if bad != "" {
			if inCount {
				return nil, fmt.Errorf("%w: entry %d: %s", ErrFormat, i, bad)
			}
			break
		}
		l.Entries = append(l.Entries, e)
	}
	return l, nil
}

// ReadData returns the bytes entry e wrote.
func (l *Log) ReadData(e Entry) ([]byte, error) {
	if !e.IsWrite() {
		return nil, nil
	}
	b := make([]byte, e.Length)
	if _, err := l.r.ReadAt(b, e.Data); err != nil {
		return nil, fmt.Errorf("data of %s: %w", e, err)
	}
	return b, nil
}

// ReadDataInto reads the bytes entry e wrote into b (len(b) == e.Length).
func (l *Log) ReadDataInto(e Entry, b []byte) error {
	if int64(len(b)) != e.Length {
		return fmt.Errorf("data of %s: buffer of %d bytes", e, len(b))
	}
	if _, err := l.r.ReadAt(b, e.Data); err != nil {
		return fmt.Errorf("data of %s: %w", e, err)
	}
	return nil
}
