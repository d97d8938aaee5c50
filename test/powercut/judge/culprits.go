package judge

import (
	"encoding/binary"
	"fmt"
	"path/filepath"

	"github.com/fieldota/fieldota/test/powercut/replay"
	"github.com/fieldota/fieldota/test/powercut/wlog"
)

// Culprit is a logged write that a failing point depends on, named by the file it belonged to.
type Culprit struct {
	Entry int
	Fate  string // "dropped", "torn", "last before the flush"
	Where string // partition and file
}

func (c Culprit) String() string { return fmt.Sprintf("write #%d (%s): %s", c.Entry, c.Fate, c.Where) }

// Culprits names the writes behind point p: for a between point the writes it leaves off the
// medium (and the torn one), for a flush point the writes of the interval the flush ended. d
// must be at p, so that the layout the names come from is the one at the cut.
func (j *Judge) Culprits(d *replay.Disk, l *wlog.Log, p replay.Point) []Culprit {
	var ids []int
	fate := map[int]string{}
	switch p.Kind {
	case replay.KindBetween:
		for _, i := range p.Dropped() {
			if l.Entries[i].IsWrite() {
				ids = append(ids, i)
				fate[i] = "dropped"
			}
		}
		if p.Torn >= 0 {
			ids = append(ids, p.Torn)
			fate[p.Torn] = fmt.Sprintf("torn: sectors %v of %d applied", p.TornPages, (l.Entries[p.Torn].Length+replay.TearUnit-1)/replay.TearUnit)
		}
	default:
		for i := p.Prefix - 1; i >= 0 && len(ids) < 8; i-- {
			e := l.Entries[i]
			if e.IsFlush() && i != p.Prefix-1 {
				break
			}
			if e.IsWrite() {
				ids = append(ids, i)
				fate[i] = "last before the cut"
			}
		}
	}
	names := j.where(d, l, ids)
	out := make([]Culprit, 0, len(ids))
	for _, i := range ids {
		out = append(out, Culprit{Entry: i, Fate: fate[i], Where: names[i]})
	}
	return out
}

// where names the file each write belonged to, from the FAT and ext4 layouts on d.
func (j *Judge) where(d *replay.Disk, l *wlog.Log, ids []int) map[int]string {
	L := j.rec.Layout
	out := map[int]string{}
	var blocks []int64
	blockOf := map[int][]int64{}
	for _, i := range ids {
		e := l.Entries[i]
		switch {
		case overlaps(e, L.Boot):
			vol, err := openFAT(d.Buf[L.Boot.Start : L.Boot.Start+L.Boot.Size])
			if err != nil {
				out[i] = "boot partition (FAT unreadable)"
			} else {
				out[i] = "boot partition: " + vol.owner(e.Offset-L.Boot.Start, e.Length)
			}
		case overlaps(e, L.SlotA):
			out[i] = fmt.Sprintf("slot a, bytes %d+%d", e.Offset-L.SlotA.Start, e.Length)
		case overlaps(e, L.SlotB):
			out[i] = fmt.Sprintf("slot b, bytes %d+%d of the image", e.Offset-L.SlotB.Start, e.Length)
		case overlaps(e, L.Data):
			bs := ext4BlockSize(d.Buf[L.Data.Start : L.Data.Start+L.Data.Size])
			first := (e.Offset - L.Data.Start) / bs
			last := (e.Offset - L.Data.Start + e.Length - 1) / bs
			for b := first; b <= last && b < first+4; b++ {
				blocks = append(blocks, b)
				blockOf[i] = append(blockOf[i], b)
			}
		default:
			out[i] = fmt.Sprintf("outside the partitions, disk bytes %d+%d", e.Offset, e.Length)
		}
	}
	if len(blocks) > 0 {
		img := filepath.Join(j.work, "culprit-data.img")
		owners := map[int64]string{}
		if err := writeImage(img, d.Buf[L.Data.Start:L.Data.Start+L.Data.Size]); err == nil {
			x := ext4Image{img}
			_ = x.recover()
			owners = x.owners(blocks)
		}
		for i, bs := range blockOf {
			s := "data partition:"
			seen := map[string]bool{}
			for _, b := range bs {
				n := owners[b]
				if n == "" {
					n = "metadata or free space"
				}
				if !seen[n] {
					seen[n] = true
					s += fmt.Sprintf(" block %d %s", b, n)
				}
			}
			out[i] = s
		}
	}
	return out
}

func overlaps(e wlog.Entry, r replay.Region) bool {
	return e.Offset < r.Start+r.Size && r.Start < e.Offset+e.Length
}

// ext4BlockSize reads s_log_block_size from the superblock (at byte 1024).
func ext4BlockSize(part []byte) int64 {
	if len(part) < 2048 {
		return 1024
	}
	return 1024 << binary.LittleEndian.Uint32(part[1024+24:])
}
