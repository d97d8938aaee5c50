// Package replay rebuilds the disk a recorded guest would have left behind had its power been
// cut at a given moment: from the disk as it was when the recording started and the write log
// (test/powercut/wlog), at every flush point (everything before the flush durable, nothing
// after it) and at sampled points between two flushes, where the disk's volatile cache had
// taken some of the writes since the last flush and lost or reordered the others: a seeded
// random subset of them is applied, optionally with one write torn (only some of its sectors
// on the medium).
//
// Writes are whole sectors as the log gives them; a discard leaves the sectors as they were
// (their content is unspecified after a discard, and the guests here issue none).
package replay

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"

	"github.com/fieldota/fieldota/test/powercut/wlog"
)

// Kind of a replay point.
type Kind string

const (
	// KindStart is the disk before the first logged write.
	KindStart Kind = "start"
	// KindFlush is the disk right after a flush: every write logged before it applied.
	KindFlush Kind = "flush"
	// KindBetween is the disk between two flushes: the writes up to the last flush, plus a
	// subset of the writes issued since.
	KindBetween Kind = "between"
	// KindEnd is the disk with every logged write applied, the unflushed tail included (what the
	// recording itself left on the host).
	KindEnd Kind = "end"
)

// TearUnit is the granularity at which a torn write reaches the medium: one sector, the unit a
// disk writes atomically.
const TearUnit = 512

// Point is one moment of a power cut.
type Point struct {
	Kind Kind
	// Prefix: entries [0, Prefix) are applied in full (for a flush point, Prefix-1 is the flush).
	Prefix int
	// Issued: for a between point, entries [Prefix, Issued) had been issued when the power
	// went; Applied lists those of them (indexes) that reached the medium.
	Issued  int
	Applied []int
	// Torn, when ≥ 0, is the index of an applied write of which only the pages in TornPages
	// (indexes of TearUnit sectors within the write) reached the medium.
	Torn      int
	TornPages []int
	// Seed reproduces the sample (with the interval's first entry): see Between.
	Seed uint64
}

// Name identifies the point in reports, e.g. "flush#812" or "between#812..830{815,818}seed=7".
func (p Point) Name() string {
	switch p.Kind {
	case KindStart:
		return "start"
	case KindFlush:
		return fmt.Sprintf("flush#%d", p.Prefix-1)
	case KindEnd:
		return fmt.Sprintf("end#%d", p.Prefix)
	}
	var ids []string
	for _, i := range p.Applied {
		s := fmt.Sprint(i)
		if i == p.Torn {
			s += fmt.Sprintf("(torn:%v)", p.TornPages)
		}
		ids = append(ids, s)
	}
	return fmt.Sprintf("between#%d..%d{%s}seed=%d", p.Prefix, p.Issued-1, strings.Join(ids, ","), p.Seed)
}

// Dropped lists the entries issued before the cut that a between point leaves off the medium.
func (p Point) Dropped() []int {
	in := map[int]bool{}
	for _, i := range p.Applied {
		in[i] = true
	}
	var out []int
	for i := p.Prefix; i < p.Issued; i++ {
		if !in[i] {
			out = append(out, i)
		}
	}
	return out
}

// Interval is the run of entries after one flush up to and including the next one (or to the
// end of the log).
type Interval struct {
	Start, End int // entries [Start, End); End-1 is the flush unless the interval ends the log
	Writes     []int
}

// Intervals splits the log at its flushes.
func Intervals(l *wlog.Log) []Interval {
	var out []Interval
	cur := Interval{}
	for _, e := range l.Entries {
		if e.IsWrite() {
			cur.Writes = append(cur.Writes, e.Index)
		}
		if e.IsFlush() {
			cur.End = e.Index + 1
			out = append(out, cur)
			cur = Interval{Start: e.Index + 1}
		}
	}
	cur.End = len(l.Entries)
	if cur.End > cur.Start {
		out = append(out, cur)
	}
	return out
}

// Plan lists the points to try.
type Plan struct {
	Points []Point
	// FlushEntries counts the log's flushes; FlushPoints the distinct disks they give (a flush
	// with no write since the previous one gives the same disk again and is tried once).
	FlushEntries, FlushPoints, BetweenPoints int
}

// Options of a plan.
type Options struct {
	Seed uint64
	// Exhaustive: an interval with at most this many writes gets a point for every subset of
	// them (2^n − 2 points: none and all are the flush points' disks); bigger intervals are
	// sampled.
	Exhaustive int
	// PerInterval bounds the between points sampled in each bigger interval.
	PerInterval int
	// Tears adds, per interval with a write of several sectors, this many points where a random
	// subset is applied and one of its multi-sector writes is torn.
	Tears int
	// Halves adds, for every write of several sectors, the two points where the power went in
	// its middle: the interval's writes before it on the medium, and of it only the first half
	// of its sectors, or only the second (a drive that writes sectors out of order).
	Halves bool
}

// NewPlan makes the plan for a log: the start, every distinct flush point, the between points
// of each interval, and the end.
func NewPlan(l *wlog.Log, o Options) Plan {
	var p Plan
	p.Points = append(p.Points, Point{Kind: KindStart, Torn: -1})
	for _, iv := range Intervals(l) {
		flushed := iv.End > 0 && l.Entries[iv.End-1].IsFlush()
		if flushed {
			p.FlushEntries++
		}
		p.Points = append(p.Points, Between(l, iv, o)...)
		if flushed && len(iv.Writes) > 0 {
			p.FlushPoints++
			p.Points = append(p.Points, Point{Kind: KindFlush, Prefix: iv.End, Torn: -1})
		}
	}
	if n := len(l.Entries); n > 0 && !l.Entries[n-1].IsFlush() {
		p.Points = append(p.Points, Point{Kind: KindEnd, Prefix: n, Torn: -1})
	}
	for _, pt := range p.Points {
		if pt.Kind == KindBetween {
			p.BetweenPoints++
		}
	}
	return p
}

// Between lists the between points of one interval: every subset of its writes when it is small
// enough (the power went right after the last write of the subset was issued), else a seeded
// sample (the power went after a random number of its writes were issued; each of those reached
// the medium or not), plus torn samples. The sample depends only on the seed and the interval's
// first entry, so a point is reproduced from its name.
func Between(l *wlog.Log, iv Interval, o Options) []Point {
	w := iv.Writes
	if len(w) < 2 && o.Tears == 0 || len(w) == 0 {
		return nil
	}
	rng := rand.New(rand.NewPCG(o.Seed, uint64(iv.Start)))
	seen := map[string]bool{}
	var out []Point
	add := func(pt Point) {
		if len(pt.Applied) == 0 || len(pt.Applied) == len(w) && pt.Torn < 0 {
			return // a flush point's disk
		}
		if key := pt.Name(); !seen[key] {
			seen[key] = true
			out = append(out, pt)
		}
	}
	if len(w) <= o.Exhaustive {
		for mask := 1; mask < 1<<len(w)-1; mask++ {
			var applied []int
			for k, i := range w {
				if mask&(1<<k) != 0 {
					applied = append(applied, i)
				}
			}
			add(Point{Kind: KindBetween, Prefix: iv.Start, Issued: applied[len(applied)-1] + 1, Applied: applied, Torn: -1, Seed: o.Seed})
		}
	} else {
		for try := 0; len(out) < o.PerInterval && try < 4*o.PerInterval; try++ {
			add(sample(rng, l, iv, o, false))
		}
	}
	var multi bool
	for k, i := range w {
		e := l.Entries[i]
		multi = multi || e.Length > TearUnit
		if !o.Halves || e.Length <= TearUnit {
			continue
		}
		n := int(e.Length / TearUnit)
		var first, second []int
		for s := 0; s < n; s++ {
			if s < n/2 {
				first = append(first, s)
			} else {
				second = append(second, s)
			}
		}
		for _, half := range [][]int{first, second} {
			add(Point{Kind: KindBetween, Prefix: iv.Start, Issued: i + 1, Applied: append([]int(nil), w[:k+1]...),
				Torn: i, TornPages: half, Seed: o.Seed})
		}
	}
	for k := 0; multi && k < o.Tears; k++ {
		add(sample(rng, l, iv, o, true))
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].Issued < out[b].Issued })
	return out
}

// sample draws one between point: c of the interval's writes issued, each applied or not, and
// with tear one applied multi-page write torn (only some of its pages on the medium).
func sample(rng *rand.Rand, l *wlog.Log, iv Interval, o Options, tear bool) Point {
	w := iv.Writes
	c := 1 + rng.IntN(len(w))
	var applied []int
	for _, i := range w[:c] {
		if rng.IntN(2) == 1 {
			applied = append(applied, i)
		}
	}
	pt := Point{Kind: KindBetween, Prefix: iv.Start, Issued: w[c-1] + 1, Applied: applied, Torn: -1, Seed: o.Seed}
	if !tear {
		return pt
	}
	var multi []int
	for _, i := range applied {
		if l.Entries[i].Length > TearUnit {
			multi = append(multi, i)
		}
	}
	if len(multi) == 0 {
		return pt
	}
	t := multi[rng.IntN(len(multi))]
	pages := int((l.Entries[t].Length + TearUnit - 1) / TearUnit)
	for pg := 0; pg < pages; pg++ {
		if rng.IntN(2) == 1 {
			pt.TornPages = append(pt.TornPages, pg)
		}
	}
	if len(pt.TornPages) > 0 && len(pt.TornPages) < pages {
		pt.Torn = t
	} else {
		pt.TornPages = nil
	}
	return pt
}

// Disk is the replayed disk in memory, moved forward through the log.
type Disk struct {
	Buf     []byte
	log     *wlog.Log
	applied int // entries [0, applied) are in Buf
	// dirty records, per Region, that a write touched it since the last Clean.
	regions []Region
	dirty   []bool
}

// Region is a byte range of the disk that is judged as a unit (a partition).
type Region struct {
	Name        string
	Start, Size int64
}

// NewDisk starts from base (the disk as the recording found it; Buf takes it over).
func NewDisk(base []byte, l *wlog.Log, regions []Region) *Disk {
	return &Disk{Buf: base, log: l, regions: regions, dirty: make([]bool, len(regions))}
}

// Applied is how many entries are applied in order.
func (d *Disk) Applied() int { return d.applied }

// Dirty tells whether region i was written since the last Clean(i).
func (d *Disk) Dirty(i int) bool { return d.dirty[i] }

// Clean marks region i as judged.
func (d *Disk) Clean(i int) { d.dirty[i] = false }

func (d *Disk) touch(off, n int64) {
	for i, r := range d.regions {
		if off < r.Start+r.Size && r.Start < off+n {
			d.dirty[i] = true
		}
	}
}

// AdvanceTo applies entries in order up to (not including) n.
func (d *Disk) AdvanceTo(n int) error {
	if n < d.applied {
		return fmt.Errorf("replay: cannot go back from entry %d to %d", d.applied, n)
	}
	for ; d.applied < n; d.applied++ {
		e := d.log.Entries[d.applied]
		if !e.IsWrite() {
			continue
		}
		if err := d.write(e, nil); err != nil {
			return err
		}
	}
	return nil
}

func (d *Disk) write(e wlog.Entry, pages []int) error {
	if e.Offset+e.Length > int64(len(d.Buf)) {
		return fmt.Errorf("replay: %s past the end of the %d-byte disk", e, len(d.Buf))
	}
	if pages == nil {
		d.touch(e.Offset, e.Length)
		return d.log.ReadDataInto(e, d.Buf[e.Offset:e.Offset+e.Length])
	}
	data, err := d.log.ReadData(e)
	if err != nil {
		return err
	}
	for _, pg := range pages {
		lo := int64(pg) * TearUnit
		hi := min(lo+TearUnit, e.Length)
		copy(d.Buf[e.Offset+lo:e.Offset+hi], data[lo:hi])
		d.touch(e.Offset+lo, hi-lo)
	}
	return nil
}

// At moves the disk to point p, whose Prefix must not be behind the disk, and returns a
// function that takes a between point's extra writes off again.
func (d *Disk) At(p Point) (undo func(), err error) {
	if err := d.AdvanceTo(p.Prefix); err != nil {
		return nil, err
	}
	if p.Kind != KindBetween {
		return func() {}, nil
	}
	type saved struct {
		off int64
		b   []byte
	}
	var keep []saved
	undo = func() {
		for i := len(keep) - 1; i >= 0; i-- {
			copy(d.Buf[keep[i].off:], keep[i].b)
			d.touch(keep[i].off, int64(len(keep[i].b)))
		}
	}
	for _, i := range p.Applied {
		e := d.log.Entries[i]
		if !e.IsWrite() {
			continue
		}
		if e.Offset+e.Length > int64(len(d.Buf)) {
			undo()
			return nil, fmt.Errorf("replay: %s past the end of the disk", e)
		}
		keep = append(keep, saved{e.Offset, append([]byte(nil), d.Buf[e.Offset:e.Offset+e.Length]...)})
		var pages []int
		if i == p.Torn {
			pages = p.TornPages
		}
		if err := d.write(e, pages); err != nil {
			undo()
			return nil, err
		}
	}
	return undo, nil
}
