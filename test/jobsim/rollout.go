package jobsim

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Rollouts, abort criteria and schedules: when the executions of a job are notified.
//
// Every execution exists (QUEUED, counted in jobProcessDetails) from the moment its thing becomes
// a target, but a device sees it — in its pending list, in notify and notify-next — only once it
// has been released ("notified"). Releases happen while the job may roll out (after its
// scheduled start, inside a maintenance window, before its end) at the rollout rate, counted per
// emulator minute (Config.Minute). Schedules are on the emulator's clock (Config.Now) in real
// minutes, because their times and cron windows are absolute.

// rollout is a job's jobExecutionsRolloutConfig in force.
type rollout struct {
	maxPerMinute int // 0 = no cap
	base         int // exponential: the starting rate, 0 = not exponential
	factor       float64
	byNotified   int // exponential: raise after this many more notified things…
	bySucceeded  int // …or this many more succeeded things

	rate             float64   // current things per minute
	windowStart      time.Time // start of the current rollout minute
	releasedInWindow int
	atIncrease       int // notified (or succeeded) count when the rate last rose
}

// schedule is a job's schedulingConfig.
type schedule struct {
	start, end  time.Time // zero: none
	endBehavior string
	windows     []window
	ended       bool
}

type window struct {
	spec     cron.Schedule
	duration time.Duration
}

const (
	minScheduleLead  = 30 * time.Minute
	maxScheduleAhead = 366 * 24 * time.Hour
	maxScheduleSpan  = 2 * 366 * 24 * time.Hour
)

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow)

// parseAWSCron reads a maintenance window's "cron(min hour dom month dow year)". The year must be
// "*" (the emulator does not model years); a bare five-field expression is accepted too.
func parseAWSCron(s string) (cron.Schedule, error) {
	expr := strings.TrimSpace(s)
	if inner, ok := strings.CutPrefix(expr, "cron("); ok {
		inner, ok = strings.CutSuffix(inner, ")")
		if !ok {
			return nil, fmt.Errorf("%q: cron( without )", s)
		}
		f := strings.Fields(inner)
		if len(f) != 6 {
			return nil, fmt.Errorf("%q: want cron(minutes hours day-of-month month day-of-week year)", s)
		}
		if f[5] != "*" {
			return nil, fmt.Errorf("%q: only year * is emulated", s)
		}
		expr = strings.Join(f[:5], " ")
	}
	return cronParser.Parse(expr)
}

// parseAWSTime reads schedulingConfig times: "YYYY-MM-DDTHH:MM" (UTC) as AWS documents, or RFC 3339.
func parseAWSTime(s string) (time.Time, error) {
	if t, err := time.Parse("2006-01-02T15:04", s); err == nil {
		return t.UTC(), nil
	}
	return time.Parse(time.RFC3339, s)
}

// plan validates a CreateJob's rollout, abort and scheduling configs.
func (m *model) plan(in CreateJobInput, now time.Time) (*rollout, []AbortCriteria, *schedule, *APIError) {
	var ro *rollout
	if c := in.JobExecutionsRolloutConfig; c != nil {
		ro = &rollout{}
		if c.MaximumPerMinute != 0 {
			if c.MaximumPerMinute < 1 || c.MaximumPerMinute > 1000 {
				return nil, nil, nil, invalid("jobExecutionsRolloutConfig.maximumPerMinute must be 1 to 1000")
			}
			ro.maxPerMinute = c.MaximumPerMinute
		}
		if e := c.ExponentialRate; e != nil {
			switch {
			case e.BaseRatePerMinute < 1 || e.BaseRatePerMinute > 1000:
				return nil, nil, nil, invalid("exponentialRate.baseRatePerMinute must be 1 to 1000")
			case e.IncrementFactor < 1.1 || e.IncrementFactor > 5 || math.Abs(e.IncrementFactor*10-math.Round(e.IncrementFactor*10)) > 1e-9:
				return nil, nil, nil, invalid("exponentialRate.incrementFactor must be 1.1 to 5 with one decimal")
			case (e.RateIncreaseCriteria.NumberOfNotifiedThings > 0) == (e.RateIncreaseCriteria.NumberOfSucceededThings > 0):
				return nil, nil, nil, invalid("exponentialRate.rateIncreaseCriteria needs exactly one of numberOfNotifiedThings, numberOfSucceededThings (≥ 1)")
			}
			ro.base, ro.factor = e.BaseRatePerMinute, e.IncrementFactor
			ro.byNotified, ro.bySucceeded = e.RateIncreaseCriteria.NumberOfNotifiedThings, e.RateIncreaseCriteria.NumberOfSucceededThings
		}
		if ro.maxPerMinute == 0 && ro.base == 0 {
			return nil, nil, nil, invalid("jobExecutionsRolloutConfig needs maximumPerMinute or exponentialRate")
		}
		ro.rate = float64(ro.maxPerMinute)
		if ro.base > 0 {
			ro.rate = float64(ro.base)
		}
	}
	var abort []AbortCriteria
	if c := in.AbortConfig; c != nil {
		if len(c.CriteriaList) == 0 {
			return nil, nil, nil, invalid("abortConfig.criteriaList must not be empty")
		}
		for _, a := range c.CriteriaList {
			switch {
			case a.FailureType != StatusFailed && a.FailureType != StatusRejected && a.FailureType != StatusTimedOut && a.FailureType != "ALL":
				return nil, nil, nil, invalid("abortConfig failureType must be FAILED, REJECTED, TIMED_OUT or ALL")
			case a.Action != "CANCEL":
				return nil, nil, nil, invalid("abortConfig action must be CANCEL")
			case a.ThresholdPercentage < 0 || a.ThresholdPercentage > 100 || math.Abs(a.ThresholdPercentage*100-math.Round(a.ThresholdPercentage*100)) > 1e-6:
				return nil, nil, nil, invalid("abortConfig thresholdPercentage must be 0 to 100 with at most two decimals")
			case a.MinNumberOfExecutedThings < 1:
				return nil, nil, nil, invalid("abortConfig minNumberOfExecutedThings must be at least 1")
			}
		}
		abort = c.CriteriaList
	}
	var sc *schedule
	if c := in.SchedulingConfig; c != nil {
		sc = &schedule{endBehavior: c.EndBehavior}
		var err error
		if c.StartTime != "" {
			if sc.start, err = parseAWSTime(c.StartTime); err != nil {
				return nil, nil, nil, invalid("schedulingConfig.startTime %q is not YYYY-MM-DDTHH:MM", c.StartTime)
			}
			if sc.start.Before(now.Add(minScheduleLead)) || sc.start.After(now.Add(maxScheduleAhead)) {
				return nil, nil, nil, invalid("schedulingConfig.startTime must be 30 minutes to one year from now")
			}
		}
		if c.EndTime != "" {
			if sc.end, err = parseAWSTime(c.EndTime); err != nil {
				return nil, nil, nil, invalid("schedulingConfig.endTime %q is not YYYY-MM-DDTHH:MM", c.EndTime)
			}
			from := sc.start
			if from.IsZero() {
				from = now
			}
			if sc.end.Before(from.Add(minScheduleLead)) || sc.end.After(from.Add(maxScheduleSpan)) {
				return nil, nil, nil, invalid("schedulingConfig.endTime must be 30 minutes to two years after the start")
			}
		}
		switch c.EndBehavior {
		case "":
			sc.endBehavior = "STOP_ROLLOUT"
		case "STOP_ROLLOUT", "CANCEL", "FORCE_CANCEL":
		default:
			return nil, nil, nil, invalid("schedulingConfig.endBehavior must be STOP_ROLLOUT, CANCEL or FORCE_CANCEL")
		}
		for _, w := range c.MaintenanceWindows {
			spec, err := parseAWSCron(w.StartTime)
			if err != nil {
				return nil, nil, nil, invalid("maintenanceWindows startTime: %v", err)
			}
			if w.DurationInMinutes < 1 || w.DurationInMinutes > 1430 {
				return nil, nil, nil, invalid("maintenanceWindows durationInMinutes must be 1 to 1430")
			}
			sc.windows = append(sc.windows, window{spec: spec, duration: time.Duration(w.DurationInMinutes) * time.Minute})
		}
	}
	return ro, abort, sc, nil
}

// rollingOut reports whether the schedule lets the job notify things at now, and when that next
// changes (zero: never).
func (sc *schedule) rollingOut(now time.Time) (bool, time.Time) {
	if sc == nil {
		return true, time.Time{}
	}
	if sc.ended {
		return false, time.Time{}
	}
	if !sc.start.IsZero() && now.Before(sc.start) {
		return false, sc.start
	}
	if len(sc.windows) == 0 {
		return true, sc.end
	}
	var next time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	in := false
	for _, w := range sc.windows {
		// The window that would contain now starts after now-duration; it contains now if it
		// starts no later than now.
		s := w.spec.Next(now.Add(-w.duration - time.Second))
		switch {
		case !s.After(now) && now.Before(s.Add(w.duration)):
			in = true
			earliest(s.Add(w.duration))
		case s.After(now):
			earliest(s)
		default:
			earliest(w.spec.Next(now))
		}
	}
	earliest(sc.end)
	return in, next
}

// nextWindows lists the next n window starts from now (DescribeJob's scheduledJobRollouts).
func (sc *schedule) nextWindows(now time.Time, n int) []ScheduledJobRollout {
	if sc == nil || len(sc.windows) == 0 {
		return nil
	}
	from := now
	if sc.start.After(from) {
		from = sc.start
	}
	var out []ScheduledJobRollout
	cursor := make([]time.Time, len(sc.windows))
	for i := range cursor {
		cursor[i] = sc.windows[i].spec.Next(from.Add(-time.Second))
	}
	for len(out) < n {
		best := 0
		for i := range cursor {
			if cursor[i].Before(cursor[best]) {
				best = i
			}
		}
		t := cursor[best]
		if t.IsZero() || (!sc.end.IsZero() && !t.Before(sc.end)) {
			break
		}
		out = append(out, ScheduledJobRollout{StartTime: t.UTC().Format("2006-01-02T15:04")})
		cursor[best] = sc.windows[best].spec.Next(t)
	}
	return out
}

// budget is how many more things the rollout may notify in the current minute, and when the next
// minute starts.
func (r *rollout) budget(now time.Time, minute time.Duration) (int, time.Time) {
	if r == nil {
		return math.MaxInt, time.Time{}
	}
	if r.windowStart.IsZero() || !now.Before(r.windowStart.Add(minute)) {
		r.windowStart, r.releasedInWindow = now, 0
	}
	rate := r.rate
	if r.maxPerMinute > 0 && rate > float64(r.maxPerMinute) {
		rate = float64(r.maxPerMinute)
	}
	return max(0, int(math.Floor(rate+1e-9))-r.releasedInWindow), r.windowStart.Add(minute)
}

// raise applies the exponential increments due for the counts reached.
func (r *rollout) raise(notified, succeeded int) {
	if r == nil || r.base == 0 {
		return
	}
	step, count := r.byNotified, notified
	if r.bySucceeded > 0 {
		step, count = r.bySucceeded, succeeded
	}
	for count-r.atIncrease >= step && r.rate < 1000 {
		r.atIncrease += step
		r.rate = math.Min(1000, r.rate*r.factor)
	}
}

// counts of a job's latest executions that the rollout and abort rules read.
func (j *job) counts() (notified, succeeded int, byStatus map[string]int) {
	byStatus = map[string]int{}
	for _, t := range j.targets {
		l := j.execs[t]
		if len(l) == 0 || !l[0].notified {
			continue
		}
		notified++
		st := l[len(l)-1].status
		byStatus[st]++
		if st == StatusSucceeded {
			succeeded++
		}
	}
	return notified, succeeded, byStatus
}

// advance applies a job's schedule, rollout rate and end: it releases the executions that may be
// notified now and records when to look again.
func (m *model) advance(j *job, eff *effects) {
	j.wake = time.Time{}
	if j.status != JobInProgress && j.status != JobScheduled {
		return
	}
	now := m.now()
	sc := j.sched
	if sc != nil && !sc.ended && !sc.end.IsZero() && !now.Before(sc.end) {
		sc.ended = true
		m.event(eff, EventScheduleEnded, nil, "schedule ended: "+sc.endBehavior)
		eff.events[len(eff.events)-1].JobID = j.id
		switch sc.endBehavior {
		case "CANCEL", "FORCE_CANCEL":
			m.cancel(j, sc.endBehavior == "FORCE_CANCEL", "", "schedulingConfig.endTime reached", eff)
			return
		}
	}
	open, change := sc.rollingOut(now)
	switch {
	case !open && sc != nil && !sc.ended && j.status != JobScheduled:
		j.status, j.updated = JobScheduled, now
		eff.events = append(eff.events, Event{Time: now, Kind: EventJobScheduled, JobID: j.id, Status: JobScheduled, Detail: "outside its schedule"})
	case open && j.status == JobScheduled:
		j.status, j.updated = JobInProgress, now
		eff.events = append(eff.events, Event{Time: now, Kind: EventJobRollout, JobID: j.id, Status: JobInProgress, Detail: "rollout started"})
	}
	if open {
		notified, succeeded, _ := j.counts()
		j.ro.raise(notified, succeeded)
		n, nextMinute := j.ro.budget(now, m.minute)
		var release []*execution
		for _, e := range j.unreleased {
			if len(release) == n {
				break
			}
			if e.status == StatusQueued && !e.notified {
				release = append(release, e)
			}
		}
		if len(release) > 0 {
			things := make([]string, len(release))
			for i, e := range release {
				things[i] = e.thing
			}
			w := m.watch(things...)
			for _, e := range release {
				e.notified = true
				e.queueSeq = m.next()
				m.eventAt(eff, now, EventNotified, e, "rolled out")
			}
			if j.ro != nil {
				j.ro.releasedInWindow += len(release)
			}
			w.done(eff)
		}
		kept := j.unreleased[:0]
		for _, e := range j.unreleased {
			if !e.notified && e.status == StatusQueued {
				kept = append(kept, e)
			}
		}
		j.unreleased = kept
		if len(j.unreleased) > 0 && j.ro != nil && (change.IsZero() || nextMinute.Before(change)) {
			change = nextMinute
		}
	}
	j.wake = change
	eff.timers = true
}

// checkAbort applies abortConfig after an execution ended: when at least minNumberOfExecutedThings
// were notified and the failures of the criterion's type reach thresholdPercentage of them, the job
// is canceled, which cancels its QUEUED executions (IN_PROGRESS ones run on). It reports whether
// the job was aborted.
func (m *model) checkAbort(j *job, eff *effects) bool {
	if len(j.abort) == 0 || j.status != JobInProgress && j.status != JobScheduled {
		return false
	}
	notified, _, by := j.counts()
	for _, a := range j.abort {
		failed := by[a.FailureType]
		if a.FailureType == "ALL" {
			failed = by[StatusFailed] + by[StatusRejected] + by[StatusTimedOut]
		}
		if notified < a.MinNumberOfExecutedThings || float64(failed)*100 < a.ThresholdPercentage*float64(notified) {
			continue
		}
		comment := fmt.Sprintf("abortConfig: %d of %d notified things %s (%.2f%% ≥ %.2f%%)", failed, notified,
			a.FailureType, float64(failed)*100/float64(notified), a.ThresholdPercentage)
		m.cancel(j, false, "AbortConfig", comment, eff)
		return true
	}
	return false
}
