package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/ota"
)

// jobsAPI is what the agent needs of the Jobs service (agent/jobs.Client in production).
type jobsAPI interface {
	Describe(ctx context.Context, in jobs.DescribeInput) (*jobs.JobExecution, error)
	Update(ctx context.Context, jobID string, in jobs.UpdateInput) (*jobs.UpdateResult, error)
}

// errCanceled means the execution was canceled, deleted, timed out or otherwise ended by the
// service: the agent stops the job, cleans up, and reports nothing more.
var errCanceled = errors.New("execution ended by the service")

// endedByService tells whether a rejection means our execution is over: gone
// (ResourceNotFound), terminal (TerminalStateReached), or a state change refused because the
// stored state is terminal.
func endedByService(err error) bool {
	if errors.Is(err, jobs.ErrResourceNotFound) || errors.Is(err, jobs.ErrTerminalStateReached) {
		return true
	}
	var re *jobs.RejectedError
	if errors.As(err, &re) && re.ExecutionState != nil && re.ExecutionState.Status.Terminal() {
		return true
	}
	return false
}

// updater sends status updates for one job and keeps the journal's versionNumber current.
type updater struct {
	api         jobsAPI
	stepTimeout int64
	log         *slog.Logger
	now         func() time.Time
	retryWait   time.Duration // between attempts of a terminal report; grows to 10× this
}

// inProgress reports IN_PROGRESS with the complete statusDetails map and refreshes the step
// timer. A VersionMismatch is resolved once by adopting the service's version.
func (u *updater) inProgress(ctx context.Context, j *ota.Journal, details map[string]string) error {
	in := jobs.UpdateInput{
		Status:                   jobs.InProgress,
		StatusDetails:            ota.SanitizeDetails(details),
		ExecutionNumber:          j.ExecutionNumber,
		IncludeJobExecutionState: true,
		StepTimeoutInMinutes:     u.stepTimeout,
	}
	for attempt := 0; ; attempt++ {
		if j.VersionNumber > 0 {
			in.ExpectedVersion = jobs.Version(j.VersionNumber)
		}
		res, err := u.api.Update(ctx, j.JobID, in)
		if err == nil {
			if res.ExecutionState != nil {
				j.VersionNumber = res.ExecutionState.VersionNumber
			}
			return nil
		}
		if endedByService(err) {
			return fmt.Errorf("%w: %v", errCanceled, err)
		}
		var re *jobs.RejectedError
		if errors.Is(err, jobs.ErrVersionMismatch) && errors.As(err, &re) && re.ExecutionState != nil && attempt == 0 {
			// Someone (our own earlier, unacknowledged update) moved the version: adopt it.
			j.VersionNumber = re.ExecutionState.VersionNumber
			continue
		}
		return err
	}
}

// terminal delivers j.Report until the service accepts it or says the execution is already
// terminal or gone. It only gives up when ctx ends (the journal keeps the report for the next start).
func (u *updater) terminal(ctx context.Context, j *ota.Journal) error {
	details := ota.SanitizeDetails(j.Report.Details)
	wait := u.retryWait
	if wait == 0 {
		wait = 2 * time.Second
	}
	for attempt := 0; ; attempt++ {
		in := jobs.UpdateInput{
			Status:                   jobs.Status(j.Report.Status),
			StatusDetails:            details,
			ExecutionNumber:          j.ExecutionNumber,
			IncludeJobExecutionState: true,
		}
		if j.VersionNumber > 0 {
			in.ExpectedVersion = jobs.Version(j.VersionNumber)
		}
		_, err := u.api.Update(ctx, j.JobID, in)
		var re *jobs.RejectedError
		switch {
		case err == nil:
			u.log.Info("reported", "job", j.JobID, "execution", j.ExecutionNumber, "status", j.Report.Status, "reason", details["reason"])
			return nil
		case endedByService(err):
			// Either our own earlier attempt landed (the answer was lost), or the service ended
			// the execution first (canceled, timed out, deleted). Nothing more to say.
			u.log.Info("report not needed: execution already ended", "job", j.JobID, "err", err)
			return nil
		case errors.Is(err, jobs.ErrVersionMismatch) && errors.As(err, &re) && re.ExecutionState != nil:
			j.VersionNumber = re.ExecutionState.VersionNumber
			continue
		case errors.Is(err, jobs.ErrInvalidRequest):
			// Should not happen (details are sanitized); drop the details rather than never report.
			u.log.Error("report refused as invalid; retrying with minimal details", "job", j.JobID, "err", err)
			details = ota.SanitizeDetails(map[string]string{"reason": j.Report.Details["reason"], "stage": j.Report.Details["stage"]})
		default:
			u.log.Warn("report not delivered yet; will retry", "job", j.JobID, "err", err)
		}
		if err := sleepCtx(ctx, min(wait*time.Duration(1<<min(attempt, 3)), 10*wait)); err != nil {
			return err
		}
	}
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// progress throttles download progress reports: every `every` percent and at most once per
// `interval`; the final 100 % is always sent. It never blocks the download: reports are handed
// to a goroutine through a one-slot mailbox that keeps only the latest value.
type progress struct {
	every    int
	interval time.Duration
	now      func() time.Time
	lastPct  int
	lastAt   time.Time
	mailbox  chan int
}

func newProgress(every int, interval time.Duration, now func() time.Time) *progress {
	return &progress{every: every, interval: interval, now: now, lastPct: -1, mailbox: make(chan int, 1)}
}

// observe is the downloader's progress callback.
func (p *progress) observe(done, total int64) {
	if total <= 0 {
		return
	}
	pct := int(done * 100 / total)
	now := p.now()
	if pct != 100 && (pct < p.lastPct+p.every || now.Sub(p.lastAt) < p.interval) {
		return
	}
	if pct == p.lastPct {
		return
	}
	p.lastPct, p.lastAt = pct, now
	select {
	case p.mailbox <- pct:
	default:
		// A report is still pending: replace it with the newer value.
		select {
		case <-p.mailbox:
		default:
		}
		select {
		case p.mailbox <- pct:
		default:
		}
	}
}

func cloneDetails(d map[string]string) map[string]string {
	if d == nil {
		return map[string]string{}
	}
	return maps.Clone(d)
}
