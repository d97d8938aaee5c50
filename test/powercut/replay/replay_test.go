package replay

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/fieldota/fieldota/test/powercut/wlog"
)

// makeLog builds a log of ops: "wN" writes sector N (one sector, filled with a byte that names
// the op's position), "f" flushes.
func makeLog(t *testing.T, ops ...string) *wlog.Log {
	t.Helper()
	var buf bytes.Buffer
	buf.Write(make([]byte, 512))
	le := binary.LittleEndian
	for i, op := range ops {
		h := make([]byte, 512)
		var sector, n, flags uint64
		var data []byte
		if op == "f" {
			flags = wlog.Flush
		} else {
			var sectorsN int
			if _, err := fmt.Sscanf(op, "w%d+%d", &sector, &sectorsN); err != nil {
				if _, err := fmt.Sscanf(op, "w%d", &sector); err != nil {
					t.Fatalf("op %q", op)
				}
				sectorsN = 1
			}
			n = uint64(sectorsN)
			data = bytes.Repeat([]byte{byte('A' + i)}, 512*sectorsN)
		}
		le.PutUint64(h[0:], sector)
		le.PutUint64(h[8:], n)
		le.PutUint64(h[16:], flags)
		buf.Write(h)
		buf.Write(data)
	}
	raw := buf.Bytes()
	le.PutUint64(raw[0:], wlog.Magic)
	le.PutUint64(raw[8:], wlog.Version)
	le.PutUint64(raw[16:], uint64(len(ops)))
	le.PutUint32(raw[24:], 512)
	l, err := wlog.Parse(bytes.NewReader(raw), int64(len(raw)), 64*512)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestIntervalsEndAtEachFlush(t *testing.T) {
	l := makeLog(t, "w1", "w2", "f", "f", "w3", "f", "w4")
	ivs := Intervals(l)
	want := []Interval{{0, 3, []int{0, 1}}, {3, 4, nil}, {4, 6, []int{4}}, {6, 7, []int{6}}}
	if fmt.Sprint(ivs) != fmt.Sprint(want) {
		t.Fatalf("intervals %v, want %v", ivs, want)
	}
	p := NewPlan(l, Options{Exhaustive: 8})
	// Flush points: after w1 w2, after w3 (the empty second flush gives the same disk again);
	// one between point (w1 or w2 alone: 2 subsets); the unflushed tail is the end point.
	if p.FlushEntries != 3 || p.FlushPoints != 2 || p.BetweenPoints != 2 {
		t.Fatalf("plan: %d flush entries, %d flush points, %d between; want 3, 2, 2", p.FlushEntries, p.FlushPoints, p.BetweenPoints)
	}
	if last := p.Points[len(p.Points)-1]; last.Kind != KindEnd || last.Prefix != 7 {
		t.Fatalf("last point %s, want the end with all 7 entries", last.Name())
	}
}

func TestSmallIntervalsAreEnumeratedWholly(t *testing.T) {
	l := makeLog(t, "w1", "w2", "w3", "w4", "f")
	pts := Between(l, Intervals(l)[0], Options{Exhaustive: 4})
	if len(pts) != 1<<4-2 {
		t.Fatalf("%d between points, want every proper non-empty subset (14)", len(pts))
	}
	seen := map[string]bool{}
	for _, p := range pts {
		if seen[fmt.Sprint(p.Applied)] {
			t.Fatalf("subset %v twice", p.Applied)
		}
		seen[fmt.Sprint(p.Applied)] = true
		if p.Issued != p.Applied[len(p.Applied)-1]+1 {
			t.Fatalf("%s: issued %d, want right after its last write", p.Name(), p.Issued)
		}
	}
}

func TestSamplesAreReproducibleFromTheSeed(t *testing.T) {
	ops := []string{}
	for i := 1; i <= 20; i++ {
		ops = append(ops, fmt.Sprintf("w%d+3", i))
	}
	l := makeLog(t, append(ops, "f")...)
	names := func(seed uint64) string {
		var s []string
		for _, p := range Between(l, Intervals(l)[0], Options{Seed: seed, PerInterval: 10, Tears: 3}) {
			s = append(s, p.Name())
		}
		return fmt.Sprint(s)
	}
	if a, b := names(7), names(7); a != b {
		t.Fatalf("same seed, different samples:\n%s\n%s", a, b)
	}
	if names(7) == names(8) {
		t.Fatal("two seeds gave the same sample")
	}
	torn := 0
	for _, p := range Between(l, Intervals(l)[0], Options{Seed: 7, PerInterval: 10, Tears: 3}) {
		if p.Torn >= 0 {
			torn++
			if len(p.TornPages) == 0 || len(p.TornPages) >= 3 {
				t.Fatalf("%s: a torn write must keep some but not all of its sectors", p.Name())
			}
		}
	}
	if torn == 0 {
		t.Fatal("no torn write among the samples")
	}
}

func TestDiskAtAppliesPrefixAndSubsetAndUndoes(t *testing.T) {
	l := makeLog(t, "w1", "f", "w2", "w3+2", "w5", "f")
	base := make([]byte, 64*512)
	d := NewDisk(base, l, []Region{{Name: "low", Start: 0, Size: 3 * 512}, {Name: "high", Start: 3 * 512, Size: 61 * 512}})
	sector := func(i int) byte { return d.Buf[i*512] }

	p := Point{Kind: KindBetween, Prefix: 2, Issued: 5, Applied: []int{3}, Torn: -1}
	undo, err := d.At(p)
	if err != nil {
		t.Fatal(err)
	}
	// w1 (entry 0) is in the prefix; of w2 w3 w5 only w3 (entry 3, sectors 3-4) reached the disk.
	if sector(1) != 'A' || sector(2) != 0 || sector(3) != 'D' || sector(4) != 'D' || sector(5) != 0 {
		t.Fatalf("sectors 1-5: %q", []byte{sector(1), sector(2), sector(3), sector(4), sector(5)})
	}
	if !d.Dirty(0) || !d.Dirty(1) {
		t.Fatal("both regions were written")
	}
	d.Clean(0)
	d.Clean(1)
	undo()
	if sector(3) != 0 || sector(4) != 0 || !d.Dirty(1) || d.Dirty(0) {
		t.Fatal("undo did not restore the subset's sectors (or mark only their region)")
	}

	// A torn write: only its second sector.
	undo, err = d.At(Point{Kind: KindBetween, Prefix: 2, Issued: 4, Applied: []int{3}, Torn: 3, TornPages: []int{1}})
	if err != nil {
		t.Fatal(err)
	}
	if sector(3) != 0 || sector(4) != 'D' {
		t.Fatalf("torn write: sectors 3-4 = %q %q", sector(3), sector(4))
	}
	undo()

	if _, err := d.At(Point{Kind: KindFlush, Prefix: 6}); err != nil {
		t.Fatal(err)
	}
	if sector(2) != 'C' || sector(3) != 'D' || sector(5) != 'E' {
		t.Fatal("flush point: not every write before the flush is on the disk")
	}
	if _, err := d.At(Point{Kind: KindFlush, Prefix: 2}); err == nil {
		t.Fatal("going back in the log must be refused")
	}
}

func TestHalvesTearEveryMultiSectorWriteBothWays(t *testing.T) {
	l := makeLog(t, "w1", "w2+4", "w8", "w9+2", "f")
	pts := Between(l, Intervals(l)[0], Options{Halves: true})
	var got []string
	for _, p := range pts {
		got = append(got, p.Name())
	}
	want := []string{
		"between#0..1{0,1(torn:[0 1])}seed=0", "between#0..1{0,1(torn:[2 3])}seed=0",
		"between#0..3{0,1,2,3(torn:[0])}seed=0", "between#0..3{0,1,2,3(torn:[1])}seed=0",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("halves:\n%v\nwant\n%v", got, want)
	}
}
