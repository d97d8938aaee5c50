package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/ota"
)

// jobsAPI is what the agent needs of the Jobs service (agent/jobs.Client in production).
type jobsAPI interface {
	Describe(ctx context.Context, in jobs.DescribeInput) (*jobs.JobExecution, error)
	Update(ctx context.Context, jobID string, in jobs.UpdateInput) (*jobs.UpdateResult, error)
	// GetPending lists the pending executions; the agent needs it only when $next names one it
	// cannot address.
	GetPending(ctx context.Context) (*jobs.PendingJobs, error)
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
	retryWait   time.Duration // between attempts of a terminal report; grows to 10× this
}

// maxVersionAdoptions bounds how often one update adopts the service's versionNumber after a
// VersionMismatch (each lost answer on a bad link costs one).
const maxVersionAdoptions = 5

// inProgress reports IN_PROGRESS with the complete statusDetails map and refreshes the step
// timer. A VersionMismatch is resolved once by adopting the service's version.
func (u *updater) inProgress(ctx context.Context, j *ota.Journal, details map[string]string) error {
	return u.inProgressStep(ctx, j, details, u.stepTimeout)
}

// inProgressStep is inProgress with a step timer of its own (a wait covers more than a step).
func (u *updater) inProgressStep(ctx context.Context, j *ota.Journal, details map[string]string, stepMinutes int64) error {
	in := jobs.UpdateInput{
		Status:                   jobs.InProgress,
		StatusDetails:            ota.SanitizeDetails(details),
		ExecutionNumber:          j.ExecutionNumber,
		IncludeJobExecutionState: true,
		StepTimeoutInMinutes:     stepMinutes,
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
		if errors.Is(err, jobs.ErrVersionMismatch) && errors.As(err, &re) && re.ExecutionState != nil && attempt < maxVersionAdoptions {
			// Our own earlier update landed but its answer was lost (the client resends on a
			// timeout): adopt the service's version. The map is complete, so resending is safe.
			j.VersionNumber = re.ExecutionState.VersionNumber
			continue
		}
		return err
	}
}

// terminal delivers j.Report until the service accepts it or says the execution is already
// terminal or gone. Transient failures are retried until ctx ends (the journal keeps the report
// for the next start); a refusal that no retry can change ends the attempt after a few tries,
// logged loudly, so that one undeliverable report cannot stop every later job — the service's
// step timer then ends the execution.
func (u *updater) terminal(ctx context.Context, j *ota.Journal) error {
	details := ota.SanitizeDetails(j.Report.Details)
	status := jobs.Status(j.Report.Status)
	wait := u.retryWait
	if wait == 0 {
		wait = 2 * time.Second
	}
	permanent, mismatches := 0, 0
	for attempt := 0; ; attempt++ {
		in := jobs.UpdateInput{
			Status:                   status,
			StatusDetails:            details,
			ExecutionNumber:          j.ExecutionNumber,
			IncludeJobExecutionState: true,
		}
		if j.VersionNumber > 0 {
			in.ExpectedVersion = jobs.Version(j.VersionNumber)
		}
		_, err := u.api.Update(ctx, j.JobID, in)
		var re *jobs.RejectedError
		errors.As(err, &re)
		switch {
		case err == nil:
			u.log.Info("reported", "job", j.JobID, "execution", j.ExecutionNumber, "status", status, "reason", details["reason"])
			return nil
		case endedByService(err):
			// Either our own earlier attempt landed (the answer was lost), or the service ended
			// the execution first (canceled, timed out, deleted). Nothing more to say.
			u.log.Info("report not needed: execution already ended", "job", j.JobID, "err", err)
			return nil
		case errors.Is(err, jobs.ErrInvalidJobID):
			// Refused here, before anything was sent: no retry can change it.
			u.log.Error("report cannot be sent; leaving the execution to its step timer", "job", j.JobID, "err", err)
			return nil
		case errors.Is(err, jobs.ErrVersionMismatch) && re != nil && re.ExecutionState != nil:
			j.VersionNumber = re.ExecutionState.VersionNumber
			mismatches++
			if mismatches > maxVersionAdoptions {
				u.log.Error("report keeps meeting VersionMismatch; leaving the execution to its step timer", "job", j.JobID, "adoptions", mismatches-1)
				return nil
			}
			if mismatches == 1 {
				// Usually our own earlier attempt landed and its answer was lost: resend at once.
				continue
			}
			// Someone else keeps changing the execution: back off like any other retry.
		case status == jobs.Rejected && errors.Is(err, jobs.ErrInvalidStateTransition):
			// The execution was started meanwhile (by another client, or an earlier life of
			// this one): AWS refuses REJECTED after IN_PROGRESS, so the refusal goes as FAILED.
			u.log.Warn("REJECTED refused after start; reporting FAILED", "job", j.JobID)
			status = jobs.Failed
			continue
		case errors.Is(err, jobs.ErrInvalidRequest) && len(details) > 2:
			// Should not happen (details are sanitized); drop the details rather than never report.
			u.log.Error("report refused as invalid; retrying with minimal details", "job", j.JobID, "err", err)
			details = ota.SanitizeDetails(map[string]string{"reason": j.Report.Details["reason"], "stage": j.Report.Details["stage"]})
		case re != nil && !jobs.Retryable(err):
			permanent++
			if permanent >= maxPermanentRefusals {
				u.log.Error("report refused for good; leaving the execution to its step timer", "job", j.JobID, "status", status, "err", err)
				return nil
			}
		default:
			u.log.Warn("report not delivered yet; will retry", "job", j.JobID, "err", err)
		}
		if err := sleepCtx(ctx, min(wait*time.Duration(1<<min(attempt, 3)), 10*wait)); err != nil {
			return err
		}
	}
}

// maxPermanentRefusals is how often a report the service refuses outright is tried again.
const maxPermanentRefusals = 5

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
	every     int
	interval  time.Duration
	heartbeat time.Duration // report even without 'every' percent of progress this often (the step timer)
	now       func() time.Time
	lastPct   int
	lastAt    time.Time
	mailbox   chan int
}

func newProgress(every int, interval, heartbeat time.Duration, now func() time.Time) *progress {
	// The accept state already reported 0 %: count from there.
	return &progress{every: every, interval: interval, heartbeat: heartbeat, now: now, lastAt: now(), mailbox: make(chan int, 1)}
}

// observe is the downloader's progress callback.
func (p *progress) observe(done, total int64) {
	if total <= 0 {
		return
	}
	pct := int(done * 100 / total)
	now := p.now()
	step := pct >= p.lastPct+p.every && now.Sub(p.lastAt) >= p.interval
	// A slow link may take longer than the step timer for one step: report anyway, so the
	// service does not time out a download that is still making progress.
	beat := p.heartbeat > 0 && now.Sub(p.lastAt) >= p.heartbeat
	last := pct == 100 && p.lastPct != 100
	if !step && !beat && !last {
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
