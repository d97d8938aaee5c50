package agent

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/agent/policy"
	"github.com/fieldota/fieldota/agent/policy/netman"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify"
)

// The waiting states (docs/update-policy.md): before the download (the execution stays QUEUED),
// before the install (the payload is downloaded, verified and staged), and before the new
// software is activated (nothing switched, swapped or placed yet). Each asks the device's
// policy for its phase; while the answer is "not now" the journal says what the job waits for
// and why, the service sees stage=waiting (once the execution is started) with a step timer
// that covers the wait, and the gate is asked again on the recheck schedule, at the opening of
// a window, and after every restart. A cancel is noticed at once (notify-next).

// Journal Data key: the execution was already IN_PROGRESS when this agent took it, so even the
// download gate reports its waits (a QUEUED one cannot be reported: only the service sets QUEUED).
const dataStartedBefore = "startedBefore"

// AWS's bounds on stepTimeoutInMinutes.
const maxStepMinutes = 10080

// deadlineTolerance: approximateSecondsBeforeTimedOut clearly below the step timer just set
// means the in-progress timeout, not the step timer, is what ends the execution.
const deadlineTolerance = 90 * time.Second

// phaseOf is the phase the waiting state s gates for a release; false when nothing is gated
// (a files release without autoStart activates nothing).
func phaseOf(s ota.State, r *verify.Release) (policy.Phase, bool) {
	switch s {
	case ota.StateWaitDownload:
		return policy.Download, true
	case ota.StateWaitInstall:
		return policy.Install, true
	case ota.StateWaitActivate:
		switch {
		case r.Target == verify.TargetSlot:
			return policy.Reboot, true
		case r.Target == verify.TargetBinary || r.AutoStart:
			return policy.Restart, true
		}
	}
	return "", false
}

// gate builds a phase's gate from the configuration.
func (a *Agent) gate(ph policy.Phase) (policy.Gate, error) {
	ws, err := a.cfg.Policy.Windows(ph)
	if err != nil {
		return policy.Gate{}, err
	}
	pp := a.cfg.Policy.Phase(ph)
	g := policy.Gate{Phase: ph, Windows: ws}
	for _, argv := range pp.Hooks {
		g.Hooks = append(g.Hooks, policy.Hook{Argv: argv, Timeout: a.cfg.Policy.HookTimeout.Duration})
	}
	if pp.WaitWhileMetered {
		g.Link = netman.Client{}
	}
	return g, nil
}

// waitState is the handler of a waiting state.
func (a *Agent) waitState(s ota.State) ota.Handler {
	return func(ctx context.Context, j *ota.Journal) (ota.Event, error) {
		jb, err := a.jobOf(j)
		if err != nil {
			return a.waitFailed(ctx, j, s, err, nil), nil
		}
		ph, ok := phaseOf(s, jb.rel)
		if !ok {
			j.Wait = nil
			return ota.EvOK, nil
		}
		g, err := a.gate(ph)
		if err != nil {
			return a.waitFailed(ctx, j, s, reason.Wrap(reason.Internal, err), nil), nil
		}
		if g.Empty() {
			j.Wait = nil
			return ota.EvOK, nil
		}
		return a.wait(ctx, j, s, g)
	}
}

// wait asks g until it says go or refuse, the execution ends, or the agent stops.
func (a *Agent) wait(ctx context.Context, j *ota.Journal, s ota.State, g policy.Gate) (ota.Event, error) {
	started := s != ota.StateWaitDownload || j.Data[dataStartedBefore] == "true"
	jctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go a.watchCancel(jctx, cancel, j)
	canceled := func() bool { return errors.Is(context.Cause(jctx), errCanceled) }
	for first := true; ; first = false {
		now := a.clock.Now()
		if j.Wait == nil || j.Wait.Phase != string(g.Phase) {
			var timesOut time.Time // the execution's, not the phase's: kept across phases
			if j.Wait != nil {
				timesOut = j.Wait.TimesOut
			}
			j.Wait = &ota.Wait{Phase: string(g.Phase), TimesOut: timesOut}
		}
		w := j.Wait
		d := g.Decide(jctx, now, policy.Job{ID: j.JobID, Execution: j.ExecutionNumber, Target: j.Target,
			Version: j.Version, PreviousVersion: j.PreviousVersion, WaitingSince: w.Since})
		switch {
		case canceled():
			return a.waitCanceled(ctx, j, s), nil
		case ctx.Err() != nil:
			return "", ctx.Err()
		case d.Verdict == policy.Go:
			if !w.Since.IsZero() {
				a.log.Info("policy says go", "job", j.JobID, "phase", g.Phase, "waited", now.Sub(w.Since).Round(time.Second))
			}
			j.Wait = nil
			return ota.EvOK, nil
		case d.Verdict == policy.Refuse:
			a.log.Warn("policy refused the update", "job", j.JobID, "phase", g.Phase, "reason", d.Reason)
			ev := a.waitFailed(ctx, j, s, reason.Errorf(reason.PolicyRefused, "the update policy refused the %s: %s", g.Phase, d.Reason), map[string]string{"waitingFor": string(g.Phase)})
			if !started {
				j.Report.Status = string(jobs.Rejected) // still QUEUED: never retried by AWS
			}
			return ev, nil
		}
		changed := first || w.Reason != d.Reason || !w.Until.Equal(d.Until)
		if w.Since.IsZero() {
			w.Since = now
		}
		w.Reason, w.Until = d.Reason, d.Until
		if changed {
			a.log.Info("waiting", "job", j.JobID, "phase", g.Phase, "until", w.Until, "reason", w.Reason)
		}
		report := started && (changed || !now.Before(w.ReportBy))
		if report {
			w.ReportBy = a.nextReport(w, now)
		}
		if changed || report {
			// Persisted before it is told: a restart resumes this wait, and `fieldota-agent
			// status` shows it.
			if err := a.store.Save(j); err != nil {
				return "", err
			}
		}
		if report {
			learned, ev, err := a.reportWaiting(jctx, j, now)
			switch {
			case canceled() || ev == ota.EvCancel:
				return a.waitCanceled(ctx, j, s), nil
			case ev == ota.EvFail: // the service refused the update for good (recorded)
				a.discard(ctx, j, s)
				j.Wait = nil
				return ev, nil
			case err != nil:
				return "", err
			case learned:
				if err := a.store.Save(j); err != nil {
					return "", err
				}
			}
		}
		if started {
			if err := a.waitFits(j, now); err != nil {
				a.log.Warn("the wait cannot fit the job's timeout", "job", j.JobID, "err", err)
				return a.waitFailed(ctx, j, s, err, map[string]string{"waitingFor": string(g.Phase)}), nil
			}
		}
		wake := a.nextLook(j, g, now)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-jctx.Done():
			if canceled() {
				return a.waitCanceled(ctx, j, s), nil
			}
			return "", ctx.Err()
		case <-a.clock.After(wake.Sub(a.clock.Now())): // time passed since now: the report, the hooks
		}
		// A safety net for a lost notify-next: is the execution still ours?
		if a.ended(jctx, j) {
			return a.waitCanceled(ctx, j, s), nil
		}
	}
}

// nextLook is when the gate is asked again: at the recheck interval when a hook or the link
// decides, when the window opens, when the waiting report is due, and in time to fail before
// the execution's in-progress timeout.
func (a *Agent) nextLook(j *ota.Journal, g policy.Gate, now time.Time) time.Time {
	w := j.Wait
	var wake time.Time
	earlier := func(t time.Time) {
		if !t.IsZero() && (wake.IsZero() || t.Before(wake)) {
			wake = t
		}
	}
	if g.Dynamic() || w.Until.IsZero() {
		earlier(now.Add(a.cfg.Policy.Recheck.Duration))
	}
	earlier(w.Until)
	earlier(w.ReportBy)
	if !w.TimesOut.IsZero() {
		earlier(w.TimesOut.Add(-a.cfg.Policy.Margin.Duration))
	}
	if min := now.Add(time.Second); wake.Before(min) {
		wake = min // never spin
	}
	return wake
}

// nextReport is when the waiting report must be renewed: when the window opens (the gate is
// asked then anyway), or after half a step when a hook or the link decides; never later than
// one step timer of AWS's can reach.
func (a *Agent) nextReport(w *ota.Wait, now time.Time) time.Time {
	step := time.Duration(a.cfg.Jobs.StepTimeoutMinutes) * time.Minute
	next := now.Add(step / 2)
	if w.Until.After(now) {
		next = w.Until
	}
	if last := now.Add(maxStepMinutes*time.Minute - step); next.After(last) {
		next = last // longer than AWS allows one step timer: renewed before it runs out
	}
	return next
}

// reportWaiting tells the service what the job waits for, with a step timer that lasts until
// the next report (w.ReportBy) plus a whole step for the work after it; then it asks how long
// the execution has left, which reveals the job's in-progress timeout once the step timer no
// longer explains it (learned is true when w.TimesOut changed).
func (a *Agent) reportWaiting(ctx context.Context, j *ota.Journal, now time.Time) (learned bool, ev ota.Event, err error) {
	w := j.Wait
	minutes := min(max(int64(math.Ceil(w.ReportBy.Sub(now).Minutes()))+int64(a.cfg.Jobs.StepTimeoutMinutes), 1), maxStepMinutes)
	d := details(j, "waiting", map[string]string{"waitingFor": w.Phase, "detail": w.Reason,
		"waitingSince": w.Since.UTC().Format(time.RFC3339)})
	if !w.Until.IsZero() {
		d["until"] = w.Until.UTC().Format(time.RFC3339)
	}
	// The step timer ends no earlier than this (it starts when the service applies the update).
	stepEnds := a.clock.Now().Add(time.Duration(minutes) * time.Minute)
	if ev, err := a.inProgressStep(ctx, j, d, minutes); ev != "" || err != nil {
		return false, ev, err
	}
	exec, err := a.api.Describe(ctx, jobs.DescribeInput{JobID: j.JobID, ExecutionNumber: j.ExecutionNumber})
	asked := a.clock.Now()
	if err == nil && exec != nil {
		a.log.Debug("waiting reported", "job", j.JobID, "stepMinutes", minutes, "secondsLeft", exec.ApproximateSecondsBeforeTimedOut)
	}
	if err == nil && exec != nil && exec.ApproximateSecondsBeforeTimedOut > 0 {
		left := time.Duration(exec.ApproximateSecondsBeforeTimedOut) * time.Second
		if left+deadlineTolerance < stepEnds.Sub(asked) {
			at := asked.Add(left)
			// The deadline is fixed; answers only round it. Keep the earliest seen.
			if w.TimesOut.IsZero() || at.Before(w.TimesOut) {
				w.TimesOut = at
				return true, "", nil
			}
		}
	}
	return false, "", nil
}

// waitFits refuses a wait that the execution's in-progress timeout leaves no room for: AWS would
// time it out (TIMED_OUT, maybe retried into the same wait) where FAILED says why.
func (a *Agent) waitFits(j *ota.Journal, now time.Time) error {
	w := j.Wait
	if w.TimesOut.IsZero() {
		return nil
	}
	margin := a.cfg.Policy.Margin.Duration
	at := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	switch {
	case !w.Until.IsZero() && w.Until.Add(margin).After(w.TimesOut):
		return reason.Errorf(reason.WaitExceedsTimeout, "the %s may not start before %s, but the execution times out at %s (its in-progress timeout) and needs %s after the wait (policy.margin)",
			w.Phase, at(w.Until), at(w.TimesOut), margin)
	case now.Add(margin).After(w.TimesOut):
		return reason.Errorf(reason.WaitExceedsTimeout, "still waiting for the %s (%s) at %s; the execution times out at %s (its in-progress timeout)",
			w.Phase, w.Reason, at(now), at(w.TimesOut))
	}
	return nil
}

// ended describes the execution: true when the service has ended it (canceled, deleted, timed out).
func (a *Agent) ended(ctx context.Context, j *ota.Journal) bool {
	exec, err := a.api.Describe(ctx, jobs.DescribeInput{JobID: j.JobID, ExecutionNumber: j.ExecutionNumber})
	return endedByService(err) || err == nil && (exec == nil || exec.Status.Terminal())
}

// waitCanceled ends a wait the service ended: nothing new was placed; the staged payload goes
// with the cleanup, a written slot is marked bad.
func (a *Agent) waitCanceled(ctx context.Context, j *ota.Journal, s ota.State) ota.Event {
	phase := ""
	if j.Wait != nil {
		phase = j.Wait.Phase
	}
	a.log.Info("execution ended by the service while waiting", "job", j.JobID, "phase", phase)
	if !failed(j) {
		ota.Fail(j, reason.Errorf(reason.Canceled, "the execution was ended by the service while waiting for the %s", phase), details(j, "waiting", nil))
	}
	a.discard(ctx, j, s)
	j.Wait = nil
	return ota.EvCancel
}

// waitFailed records FAILED for err at a waiting state, leaving nothing of the new software.
func (a *Agent) waitFailed(ctx context.Context, j *ota.Journal, s ota.State, err error, extra map[string]string) ota.Event {
	d := details(j, "waiting", extra)
	ev := ota.Fail(j, err, d)
	a.discard(ctx, j, s)
	j.Wait = nil
	return ev
}

// discard undoes what the download left outside the staging directory (the cleanup removes that):
// a slot written in place is marked bad, so no fallback of the bootloader ever boots it.
func (a *Agent) discard(ctx context.Context, j *ota.Journal, s ota.State) {
	if s == ota.StateWaitDownload {
		return
	}
	fl, err := a.flowOf(j.Target)
	if err != nil || fl.discard == nil {
		return
	}
	if err := fl.discard(ctx, j); err != nil {
		a.log.Error("could not discard the downloaded software", "job", j.JobID, "err", err)
		if j.Report != nil {
			j.Report.Details["rollbackError"] = err.Error()
		}
	}
}
