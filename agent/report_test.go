package agent

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/ota"
)

// lossyService is a fake Jobs service whose answers can be lost: it applies an update, then
// (while lose > 0) drops the answer, so the client's resend meets VersionMismatch — what a slow
// link does to a device that sends expectedVersion. It also refuses what AWS refuses.
type lossyService struct {
	mu      sync.Mutex
	status  jobs.Status
	version int64
	lose    int
	refuse  string // a rejection code returned for every update, if set
	sent    []jobs.Status
}

func (s *lossyService) Describe(context.Context, jobs.DescribeInput) (*jobs.JobExecution, error) {
	return nil, nil
}

func (s *lossyService) GetPending(context.Context) (*jobs.PendingJobs, error) {
	return &jobs.PendingJobs{}, nil
}

func (s *lossyService) Update(_ context.Context, _ string, in jobs.UpdateInput) (*jobs.UpdateResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent = append(s.sent, in.Status)
	state := &jobs.JobExecutionState{Status: s.status, VersionNumber: s.version}
	if s.refuse != "" {
		return nil, &jobs.RejectedError{Code: s.refuse, ExecutionState: state}
	}
	if in.ExpectedVersion != nil && *in.ExpectedVersion != s.version {
		return nil, &jobs.RejectedError{Code: jobs.CodeVersionMismatch, ExecutionState: state}
	}
	if s.status == jobs.InProgress && in.Status == jobs.Rejected {
		return nil, &jobs.RejectedError{Code: jobs.CodeInvalidStateTransition, ExecutionState: state}
	}
	s.status, s.version = in.Status, s.version+1
	if s.lose > 0 {
		s.lose--
		return nil, jobs.ErrTimeout // applied, answer lost
	}
	return &jobs.UpdateResult{ExecutionState: &jobs.JobExecutionState{Status: s.status, VersionNumber: s.version}}, nil
}

func newUpdater(api jobsAPI) *updater {
	return &updater{api: api, log: slog.New(slog.DiscardHandler), retryWait: time.Millisecond}
}

func TestLostAnswersOnASlowLinkDoNotFailTheJob(t *testing.T) {
	svc := &lossyService{status: jobs.InProgress, version: 1}
	u := newUpdater(svc)
	j := &ota.Journal{JobID: "j", VersionNumber: 1}
	for i := 0; i < 3; i++ {
		svc.lose = 1 // every update's answer is lost once
		err := u.inProgress(context.Background(), j, map[string]string{"stage": "download"})
		for jobs.Retryable(err) || err == jobs.ErrTimeout {
			err = u.inProgress(context.Background(), j, map[string]string{"stage": "download"}) // the agent retries transient errors
		}
		if err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
	}
	if j.VersionNumber != svc.version {
		t.Fatalf("journal version %d, service %d", j.VersionNumber, svc.version)
	}
}

func TestRejectedRefusedAfterStartIsReportedAsFailed(t *testing.T) {
	svc := &lossyService{status: jobs.InProgress, version: 3}
	j := &ota.Journal{JobID: "j", VersionNumber: 3, Report: &ota.Report{Status: "REJECTED", Details: map[string]string{"reason": "INVALID_DOCUMENT", "stage": "validate"}}}
	if err := newUpdater(svc).terminal(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	if svc.status != jobs.Failed {
		t.Fatalf("service ended %s after %v", svc.status, svc.sent)
	}
}

func TestReportRefusedForGoodDoesNotBlockTheAgentForever(t *testing.T) {
	svc := &lossyService{status: jobs.InProgress, version: 1, refuse: jobs.CodeInvalidJson}
	j := &ota.Journal{JobID: "j", VersionNumber: 1, Report: &ota.Report{Status: "SUCCEEDED", Details: map[string]string{"stage": "done"}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := newUpdater(svc).terminal(ctx, j); err != nil {
		t.Fatal(err)
	}
	if n := len(svc.sent); n != maxPermanentRefusals {
		t.Fatalf("sent %d times", n)
	}
}

func TestSlowDownloadStillRefreshesTheStepTimer(t *testing.T) {
	now := time.Unix(0, 0)
	p := newProgress(10, time.Second, 30*time.Minute, func() time.Time { return now })
	// 1 % an hour: no 10 % step for hours, yet the service must hear from us within the timer.
	for i := 1; i <= 5; i++ {
		now = now.Add(31 * time.Minute)
		p.observe(int64(i), 1000)
		select {
		case <-p.mailbox:
		default:
			t.Fatalf("no report after %d minutes without a 10 %% step", i*31)
		}
	}
}

// mismatchForever answers every update VersionMismatch with a version that moved on again: a
// service (or a second writer) the device can never catch up with.
type mismatchForever struct {
	mu   sync.Mutex
	sent int
}

func (s *mismatchForever) Describe(context.Context, jobs.DescribeInput) (*jobs.JobExecution, error) {
	return nil, nil
}

func (s *mismatchForever) GetPending(context.Context) (*jobs.PendingJobs, error) {
	return &jobs.PendingJobs{}, nil
}

func (s *mismatchForever) Update(context.Context, string, jobs.UpdateInput) (*jobs.UpdateResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent++
	return nil, &jobs.RejectedError{Code: jobs.CodeVersionMismatch,
		ExecutionState: &jobs.JobExecutionState{Status: jobs.InProgress, VersionNumber: int64(1000 + s.sent)}}
}

// TestFinalReportVersionMismatchIsBoundedAndBacksOff: the terminal report adopted the service's
// version and resent at once, without limit — about a million requests in 200 ms. It must back
// off like any retry and give up after a bounded number of adoptions.
func TestFinalReportVersionMismatchIsBoundedAndBacksOff(t *testing.T) {
	svc := &mismatchForever{}
	u := newUpdater(svc)
	u.retryWait = 20 * time.Millisecond
	j := &ota.Journal{JobID: "j", VersionNumber: 1, Report: &ota.Report{Status: "SUCCEEDED", Details: map[string]string{"stage": "done"}}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	err := u.terminal(ctx, j)
	took := time.Since(start)
	svc.mu.Lock()
	sent := svc.sent
	svc.mu.Unlock()
	if err != nil {
		t.Fatalf("terminal did not give up by itself: %v after %d requests", err, sent)
	}
	if sent > maxVersionAdoptions+1 {
		t.Fatalf("%d requests for one report", sent)
	}
	// Every resend after the first adoption waits: at least retryWait each.
	if min := time.Duration(sent-2) * u.retryWait; took < min {
		t.Fatalf("%d requests in %s: no backoff", sent, took)
	}
}
