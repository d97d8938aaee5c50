package agent

import "time"

// Clock is the agent's time: Now for every timestamp and decision, After for every wait on a
// policy (a window, a hook's recheck), so that tests move time instead of sleeping through it.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// wallClock is the real clock (with Options.Now, if given, for Now).
type wallClock struct{ now func() time.Time }

func (c wallClock) Now() time.Time                       { return c.now() }
func (wallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
