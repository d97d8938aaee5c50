package judge

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/fieldota/fieldota/test/powercut/replay"
	"github.com/fieldota/fieldota/test/powercut/wlog"
)

// Class is a set of points whose disks the agent cannot tell apart.
type Class struct {
	Key    string
	Points []int // indexes into Summary.Results, in log order
	Expect Outcome
	// Recover: some point of the class holds a torn file the agent must recognise.
	Recover bool
}

// Failure is a point that breaks a promise, with the writes behind it.
type Failure struct {
	Result   *Result
	Culprits []Culprit
}

// Summary is the offline verdict on a whole plan.
type Summary struct {
	Plan     replay.Plan
	Results  []*Result
	Classes  []*Class
	Failures []Failure
	Elapsed  time.Duration
	Seed     uint64
}

// Run replays every point of plan over base (which it takes over) and judges it.
func Run(rec *Recording, base []byte, l *wlog.Log, plan replay.Plan, seed uint64, work string) (*Summary, error) {
	start := time.Now()
	j := New(rec, work)
	d := replay.NewDisk(base, l, rec.Layout.Regions())
	s := &Summary{Plan: plan, Seed: seed}
	byKey := map[string]*Class{}
	for _, p := range plan.Points {
		undo, err := d.At(p)
		if err != nil {
			return nil, err
		}
		res, err := j.Judge(d, p)
		if err != nil {
			undo()
			return nil, fmt.Errorf("%s: %w", p.Name(), err)
		}
		if len(res.Problems) > 0 {
			s.Failures = append(s.Failures, Failure{Result: res, Culprits: j.Culprits(d, l, p)})
		}
		undo()
		idx := len(s.Results)
		s.Results = append(s.Results, res)
		c := byKey[res.Class]
		if c == nil {
			c = &Class{Key: res.Class, Expect: res.Expect}
			byKey[res.Class] = c
			s.Classes = append(s.Classes, c)
		}
		if c.Expect != res.Expect {
			// The same agent-visible state must lead to one outcome; two predictions mean the
			// class key misses something the prediction looks at.
			return nil, fmt.Errorf("class %q: %s predicts %v, %s predicted %v", res.Class, p.Name(), res.Expect, s.Results[c.Points[0]].Point.Name(), c.Expect)
		}
		c.Points = append(c.Points, idx)
		if len(res.Warnings) > 0 {
			c.Recover = true
		}
		// Keep the full observation only for the point that represents its class, and failures.
		if len(c.Points) > 1 && len(res.Problems) == 0 {
			res.Obs = nil
		}
	}
	s.Elapsed = time.Since(start)
	return s, nil
}

// Counts are the numbers a report gives.
type Counts struct {
	Flush, Between, Other, Passed, Failed int
}

// Count sums the results.
func (s *Summary) Count() Counts {
	var c Counts
	for _, r := range s.Results {
		switch r.Point.Kind {
		case replay.KindFlush:
			c.Flush++
		case replay.KindBetween:
			c.Between++
		default:
			c.Other++
		}
		if len(r.Problems) > 0 {
			c.Failed++
		} else {
			c.Passed++
		}
	}
	return c
}

// Report prints the verdict: counts, the failures grouped by broken promise (each with its
// first points, their culprits and the seed; all of them with all), the classes with classes.
func (s *Summary) Report(w io.Writer, all, classes bool) {
	c := s.Count()
	fmt.Fprintf(w, "replay points: %d flush points (from %d flush entries), %d in-between points (seed %d), %d start/end; %d pass, %d fail; judged offline in %.1fs\n",
		c.Flush, s.Plan.FlushEntries, c.Between, s.Seed, c.Other, c.Passed, c.Failed, s.Elapsed.Seconds())
	byCheck := map[string][]Failure{}
	var checks []string
	for _, f := range s.Failures {
		for _, p := range f.Result.Problems {
			if byCheck[p.Check] == nil {
				checks = append(checks, p.Check)
			}
			byCheck[p.Check] = append(byCheck[p.Check], f)
		}
	}
	for _, ch := range checks {
		fs := byCheck[ch]
		fmt.Fprintf(w, "broken promise %s at %d points, first at %s\n", ch, len(fs), fs[0].Result.Point.Name())
		for i, f := range fs {
			if i == 3 && !all {
				fmt.Fprintf(w, "  … %d more\n", len(fs)-3)
				break
			}
			fmt.Fprintf(w, "  at %s (seed %d):\n", f.Result.Point.Name(), s.Seed)
			for _, p := range f.Result.Problems {
				if p.Check == ch {
					fmt.Fprintf(w, "    %s\n", p.What)
				}
			}
			for _, cu := range f.Culprits {
				fmt.Fprintf(w, "    %s\n", cu)
			}
		}
	}
	recovered := map[string]int{}
	for _, r := range s.Results {
		for _, wn := range r.Warnings {
			kind := "a torn checkpoint the downloader drops"
			if strings.Contains(wn, "boot-time e2fsck") {
				kind = "a data file system only the boot-time e2fsck repairs"
			}
			recovered[kind]++
		}
	}
	for kind, n := range recovered {
		fmt.Fprintf(w, "recognised and recovered: %d points with %s\n", n, kind)
	}
	fmt.Fprintf(w, "state classes: %d\n", len(s.Classes))
	if !classes {
		return
	}
	for i, cl := range s.Classes {
		first := s.Results[cl.Points[0]].Point.Name()
		fmt.Fprintf(w, "  class %d: %d points (first %s), expect %s\n      %s\n", i, len(cl.Points), first, cl.Expect, strings.ReplaceAll(cl.Key, " | ", "\n      "))
	}
}
