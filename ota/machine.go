package ota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/fieldota/fieldota/ota/reason"
)

// Handler runs one state of a job. It may change the journal (the machine saves it with the
// next state) and returns the event that ends the state. An error means the handler could not
// finish for a reason that is not the job's fault (context canceled, agent shutting down): the
// machine stops without a transition and the state runs again on the next start.
type Handler func(ctx context.Context, j *Journal) (Event, error)

// Machine runs a journal through the handlers.
type Machine struct {
	Store    *Store
	Handlers map[State]Handler
	// MaxTransitions breaks loops (a payload that crashes the agent in install, a device that
	// keeps rebooting): past it the job is reported FAILED INTERNAL. States that may repeat
	// (report, cleanup) are exempt.
	MaxTransitions int
	Logger         *slog.Logger
	Now            func() time.Time
	// OnTransition, if set, is called after each transition is persisted and before the next
	// state runs: tests use it to kill the process in a chosen state.
	OnTransition func(j *Journal)
	// Progress, if set, measures how far the journal's state has durably got (bytes downloaded).
	// A restart that finds more of it than the previous restart in the same state is progress,
	// not a loop: a slow download killed every few seconds must not trip the breaker.
	Progress func(j *Journal) int64
	// Committed, if set, tells whether the job's new software is committed for good (what the
	// bootloader boots, or a journaled swap commit). Finishing a committed job is idempotent,
	// so its restarts are not loops, and the breaker reports rather than roll it back.
	Committed func(j *Journal) bool
}

// DefaultMaxTransitions is generous for the longest flow (slot: about 10 states plus
// a reboot or two) and small enough to stop a crash loop within a few restarts.
const DefaultMaxTransitions = 30

var loopExempt = map[State]bool{StateReport: true, StateCleanup: true, StateDone: true}

// changesSoftware are the states in which new software may already be placed, written or on
// trial: a loop there ends in a rollback, not straight in a report.
var changesSoftware = map[State]bool{StateInstall: true, StateReboot: true, StateSelftest: true, StateCommit: true}

// RollbackBudget is how many more transitions a rollback may take once the breaker tripped
// (a slot rollback reboots, and a reboot resumes the journal).
const RollbackBudget = 10

func (m *Machine) log() *slog.Logger {
	if m.Logger != nil {
		return m.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (m *Machine) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

// Begin persists a new job and runs it from j.State, StateFirst when empty (a job refused
// before it started begins directly in StateReport).
func (m *Machine) Begin(ctx context.Context, j *Journal) error {
	if j.State == "" {
		j.State = StateFirst
	}
	j.StartedAt = m.now().UTC()
	if err := m.enter(j); err != nil {
		return err
	}
	return m.Run(ctx, j)
}

// ResumeJournal applies the resume rule to a journal found at start and runs it.
func (m *Machine) ResumeJournal(ctx context.Context, j *Journal) error {
	r, err := Resume(j.State)
	if err != nil {
		return err
	}
	m.log().Info("resuming job", "job", j.JobID, "execution", j.ExecutionNumber, "state", j.State, "resume", r)
	j.State = r
	j.Restarts++
	if err := m.enterCounted(j, m.resumeIsLoop(j)); err != nil {
		return err
	}
	return m.Run(ctx, j)
}

// Retry runs a journal again in the same process after a handler returned an error (the state
// is persisted and nothing restarted): a re-entry of the same state, never counted as a loop.
// A resume after a restart goes through ResumeJournal.
func (m *Machine) Retry(ctx context.Context, j *Journal) error {
	return m.Run(ctx, j)
}

// resumeIsLoop decides whether a restart found in j.State counts against the loop breaker: not
// when the state only repeats what is safe to repeat (report, cleanup), not when the software
// is committed (finishing is idempotent), and not when it made durable progress since the
// previous restart in that state.
func (m *Machine) resumeIsLoop(j *Journal) bool {
	if loopExempt[j.State] {
		return false
	}
	if Waiting(j.State) {
		// A device may reboot many times while a job waits days for its window: a restart
		// in a waiting state runs nothing new and is no loop.
		return false
	}
	if changesSoftware[j.State] && m.Committed != nil && m.Committed(j) {
		return false
	}
	if m.Progress == nil {
		return true
	}
	p := m.Progress(j)
	progressed := p > 0 && (j.Mark.State != j.State || p > j.Mark.Progress)
	j.Mark = ProgressMark{State: j.State, Progress: p}
	return !progressed
}

// Run executes j from its current (already persisted) state until done, or until a handler
// returns an error (then the journal stays where it is, to be resumed).
func (m *Machine) Run(ctx context.Context, j *Journal) error {
	for j.State != StateDone {
		if err := ctx.Err(); err != nil {
			// Shutting down: a state is never begun after that (it runs on the next start).
			return fmt.Errorf("state %s: %w", j.State, err)
		}
		h, ok := m.Handlers[j.State]
		if !ok {
			return fmt.Errorf("no handler for state %q", j.State)
		}
		ev, err := h(ctx, j)
		if err != nil {
			return fmt.Errorf("state %s: %w", j.State, err)
		}
		next, terr := Next(j.State, ev)
		if terr != nil {
			// A handler returned an event its state does not know: report, don't guess.
			m.log().Error("bad transition", "job", j.JobID, "err", terr)
			fail(j, reason.Internal, terr.Error())
			next = StateReport
		}
		m.log().Debug("transition", "job", j.JobID, "from", j.State, "event", ev, "to", next)
		j.State = next
		if err := m.enter(j); err != nil {
			return err
		}
	}
	return m.Store.Remove()
}

// enter counts the transition, applies the loop breaker and persists the journal before the
// state runs.
func (m *Machine) enter(j *Journal) error { return m.enterCounted(j, true) }

func (m *Machine) enterCounted(j *Journal, count bool) error {
	if count {
		j.Transitions++
	}
	max := m.MaxTransitions
	if max == 0 {
		max = DefaultMaxTransitions
	}
	switch {
	case !count || j.Transitions <= max || loopExempt[j.State]:
		// Not a loop (a re-entry that made progress or only finishes), or within the budget.
	case j.State == StateRollback && j.Transitions <= max+RollbackBudget:
		// A rollback started by the breaker (or before it) gets its own small budget.
	case changesSoftware[j.State] && m.Committed != nil && m.Committed(j):
		// The new software is committed (the bootloader boots it for good): rolling it back
		// would undo a healthy update over a bookkeeping failure. Report, keep it.
		m.trip(j, max)
		j.Report.Details["committed"] = "true"
		j.Report.Details["detail"] += "; the new software is committed and stays"
		j.State = StateReport
	case changesSoftware[j.State]:
		// New software may be in place or on trial: undo it before reporting, never report
		// over a half-installed device.
		m.trip(j, max)
		j.State = StateRollback
	default:
		m.trip(j, max)
		j.State = StateReport
	}
	if err := m.Store.Save(j); err != nil {
		return err
	}
	if m.OnTransition != nil {
		m.OnTransition(j)
	}
	return nil
}

// trip records the loop breaker's verdict, keeping the first failure's reason in the detail.
func (m *Machine) trip(j *Journal, max int) {
	m.log().Error("loop breaker tripped", "job", j.JobID, "state", j.State, "transitions", j.Transitions, "max", max)
	detail := fmt.Sprintf("update stopped after %d transitions (last state %s): the agent kept restarting", j.Transitions, j.State)
	if j.Report != nil && j.Report.Details["reason"] != "" {
		detail += "; earlier failure: " + j.Report.Details["reason"]
	}
	fail(j, reason.Internal, detail)
}

// fail records a FAILED terminal report with a reason, keeping details already gathered.
func fail(j *Journal, code reason.Code, detail string) {
	d := map[string]string{}
	if j.Report != nil {
		for k, v := range j.Report.Details {
			d[k] = v
		}
	}
	d["reason"] = string(code)
	d["detail"] = detail
	j.Report = &Report{Status: "FAILED", Details: d}
}

// Fail is for handlers: record FAILED with the reason carried by err (INTERNAL when it has
// none) and return EvFail.
func Fail(j *Journal, err error, extra map[string]string) Event {
	fail(j, reason.Of(err), errorSentence(err))
	for k, v := range extra {
		j.Report.Details[k] = v
	}
	return EvFail
}

func errorSentence(err error) string {
	var re *reason.Error
	if errors.As(err, &re) && re.Msg != "" {
		return re.Msg
	}
	return err.Error()
}
