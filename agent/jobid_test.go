package agent

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
)

// foreignBroker is a Jobs service behind a broker that is not AWS: the head of the queue has a
// job id outside AWS's pattern (which the real client refuses to address, as here), and a
// valid job waits behind it.
type foreignBroker struct {
	mu      sync.Mutex
	updates map[string][]jobs.Status // accepted updates by job id
	refused int                      // updates the client refused locally
}

const badJobID = "fw/1+2"

func (f *foreignBroker) Describe(_ context.Context, in jobs.DescribeInput) (*jobs.JobExecution, error) {
	switch in.JobID {
	case jobs.NextJobID:
		return &jobs.JobExecution{JobID: badJobID, Status: jobs.Queued, ExecutionNumber: 1, VersionNumber: 1, JobDocument: []byte(`{"operation":"install"}`)}, nil
	case "good":
		return &jobs.JobExecution{JobID: "good", Status: jobs.Queued, ExecutionNumber: 1, VersionNumber: 1, JobDocument: []byte(`{"operation":"reboot"}`)}, nil
	}
	return nil, &jobs.RejectedError{Code: jobs.CodeResourceNotFound}
}

func (f *foreignBroker) GetPending(context.Context) (*jobs.PendingJobs, error) {
	return &jobs.PendingJobs{Queued: []jobs.JobExecutionSummary{{JobID: badJobID, ExecutionNumber: 1}, {JobID: "good", ExecutionNumber: 1}}}, nil
}

func (f *foreignBroker) Update(_ context.Context, jobID string, in jobs.UpdateInput) (*jobs.UpdateResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := jobs.ValidJobID(jobID); err != nil {
		f.refused++ // what jobs.Client does: the request never leaves the device
		return nil, err
	}
	f.updates[jobID] = append(f.updates[jobID], in.Status)
	return &jobs.UpdateResult{ExecutionState: &jobs.JobExecutionState{Status: in.Status, VersionNumber: 2}}, nil
}

// TestJobIDOutsideAWSPatternIsRefusedOnReceiptAndTheNextJobRuns: a job id only a non-AWS broker
// could send was refused locally, yet treated as transient: its final report was retried
// forever and no other job ran. It must be refused on receipt, for good, and the job queued
// behind it must be served.
func TestJobIDOutsideAWSPatternIsRefusedOnReceiptAndTheNextJobRuns(t *testing.T) {
	h := newHarness(t)
	svc := &foreignBroker{updates: map[string][]jobs.Status{}}
	a := New(Options{Config: h.cfg})
	a.retryWait = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, svc) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		svc.mu.Lock()
		got := append([]jobs.Status(nil), svc.updates["good"]...)
		refused := svc.refused
		svc.mu.Unlock()
		if len(got) > 0 && got[len(got)-1] == jobs.Rejected {
			if refused > 0 {
				t.Errorf("%d updates were attempted for %q", refused, badJobID)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the job behind %q was never served (its updates: %v; refused locally: %d)", badJobID, got, refused)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}
