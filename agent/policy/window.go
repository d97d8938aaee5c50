// Package policy decides, on the device, whether a phase of an update may happen now: the
// device owner's maintenance windows (cron expressions with a duration, in a configured time
// zone), a metered-link check, and hooks with one exit-code contract (0 go, 75 not now, anything
// else refuse). AWS's own windows gate only when executions are notified; these gate what the
// device does with a job it already holds (docs/update-policy.md).
package policy

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// MaxWindowDuration bounds a window: a week (a window that never closes is no window).
const MaxWindowDuration = 7 * 24 * time.Hour

// Window is a maintenance window: it opens at each activation of a cron expression, in a time
// zone, and stays open for a duration.
type Window struct {
	Cron     string
	Duration time.Duration
	Location *time.Location
	sched    cron.Schedule
}

// cronParser takes the five standard fields and the @yearly…@hourly descriptors; @every is
// refused (it counts from whenever it is asked, not from the clock).
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseWindow checks and compiles a window. loc nil means the device's local zone.
func ParseWindow(expr string, d time.Duration, loc *time.Location) (w Window, err error) {
	if loc == nil {
		loc = time.Local
	}
	expr = strings.TrimSpace(expr)
	switch {
	case expr == "":
		return w, errors.New("empty cron expression")
	case strings.HasPrefix(expr, "TZ=") || strings.HasPrefix(expr, "CRON_TZ="):
		return w, fmt.Errorf("cron %q: give the time zone as policy.time_zone, not in the expression", expr)
	case strings.HasPrefix(expr, "@every"):
		return w, fmt.Errorf("cron %q: @every counts from when it is asked; use clock times", expr)
	case d < time.Minute || d > MaxWindowDuration:
		return w, fmt.Errorf("window %q: duration %s outside 1m–%s", expr, d, MaxWindowDuration)
	}
	defer func() {
		// The parser is not ours: a malformed expression must be an error, never a crash.
		if r := recover(); r != nil {
			err = fmt.Errorf("cron %q: %v", expr, r)
		}
	}()
	s, err := cronParser.Parse(expr)
	if err != nil {
		return w, fmt.Errorf("cron %q: %w", expr, err)
	}
	w = Window{Cron: expr, Duration: d, Location: loc, sched: s}
	if w.next(time.Now()).IsZero() {
		return Window{}, fmt.Errorf("cron %q never fires", expr)
	}
	return w, nil
}

// next is the first opening after t (zero: none within five years).
func (w Window) next(t time.Time) time.Time { return w.sched.Next(t.In(w.Location)) }

// maxMerge bounds how many overlapping openings are merged into one open stretch.
const maxMerge = 10000

// At says whether the window is open at t, and when it closes (open) or next opens (closed).
// Openings that overlap (an hourly expression with a two-hour duration) make one stretch.
func (w Window) At(t time.Time) (open bool, change time.Time) {
	// An opening s covers t when t-d < s ≤ t; Next is strictly after its argument.
	s := w.next(t.Add(-w.Duration))
	if s.IsZero() || s.After(t) {
		return false, w.next(t)
	}
	end := s.Add(w.Duration)
	for i := 0; i < maxMerge; i++ {
		n := w.next(s)
		if n.IsZero() || n.After(end) {
			break
		}
		s, end = n, n.Add(w.Duration)
	}
	return true, end
}

func (w Window) String() string {
	return fmt.Sprintf("%q for %s (%s)", w.Cron, w.Duration, w.Location)
}

// Windows are the windows of one phase: none means always open.
type Windows []Window

// At says whether any window is open at t; when none is, opens is the earliest next opening.
func (ws Windows) At(t time.Time) (open bool, opens time.Time) {
	if len(ws) == 0 {
		return true, time.Time{}
	}
	for _, w := range ws {
		o, change := w.At(t)
		if o {
			return true, time.Time{}
		}
		if !change.IsZero() && (opens.IsZero() || change.Before(opens)) {
			opens = change
		}
	}
	return false, opens
}
