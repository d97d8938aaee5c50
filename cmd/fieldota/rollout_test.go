package main

import (
	"bytes"
	"context"
	"errors"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	iottypes "github.com/aws/aws-sdk-go-v2/service/iot/types"
)

// fakeJobs is a rollout as the IoT API would describe it: a fake of the four calls status makes.
type fakeJobs struct {
	status   iottypes.JobStatus
	execs    map[string]iottypes.JobExecutionSummary
	details  map[string]map[string]string
	describe int
}

func (f *fakeJobs) DescribeJob(context.Context, *iot.DescribeJobInput, ...func(*iot.Options)) (*iot.DescribeJobOutput, error) {
	return &iot.DescribeJobOutput{Job: &iottypes.Job{Status: f.status}}, nil
}

// ListJobExecutionsForJob pages two at a time, as a small maxResults would.
func (f *fakeJobs) ListJobExecutionsForJob(_ context.Context, in *iot.ListJobExecutionsForJobInput, _ ...func(*iot.Options)) (*iot.ListJobExecutionsForJobOutput, error) {
	var names []string
	for n := range f.execs {
		names = append(names, n)
	}
	sort.Strings(names)
	start := 0
	if in.NextToken != nil {
		for i, n := range names {
			if n == *in.NextToken {
				start = i
			}
		}
	}
	out := &iot.ListJobExecutionsForJobOutput{}
	for i := start; i < len(names) && i < start+2; i++ {
		s := f.execs[names[i]]
		out.ExecutionSummaries = append(out.ExecutionSummaries, iottypes.JobExecutionSummaryForJob{
			ThingArn: aws.String("arn:aws:iot:r:1:thing/" + names[i]), JobExecutionSummary: &s})
	}
	if start+2 < len(names) {
		out.NextToken = aws.String(names[start+2])
	}
	return out, nil
}

func (f *fakeJobs) DescribeJobExecution(_ context.Context, in *iot.DescribeJobExecutionInput, _ ...func(*iot.Options)) (*iot.DescribeJobExecutionOutput, error) {
	f.describe++
	return &iot.DescribeJobExecutionOutput{Execution: &iottypes.JobExecution{
		StatusDetails: &iottypes.JobExecutionStatusDetails{DetailsMap: f.details[aws.ToString(in.ThingName)]}}}, nil
}

func (f *fakeJobs) CancelJob(context.Context, *iot.CancelJobInput, ...func(*iot.Options)) (*iot.CancelJobOutput, error) {
	return nil, errors.New("not used")
}

// TestRolloutStatusGroupsFailuresAndFindsStuckDevices: every page is read, failures are grouped by
// reason and detail, a device silent past --stuck-after is named, and the exit codes follow the
// contract (1 on a failure, 3 while still running with none, 0 when all succeeded).
func TestRolloutStatusGroupsFailuresAndFindsStuckDevices(t *testing.T) {
	now := time.Date(2027, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { x := now.Add(-d); return &x }
	f := &fakeJobs{status: iottypes.JobStatusInProgress, execs: map[string]iottypes.JobExecutionSummary{
		"d1": {Status: iottypes.JobExecutionStatusSucceeded, LastUpdatedAt: at(time.Minute)},
		"d2": {Status: iottypes.JobExecutionStatusFailed, ExecutionNumber: aws.Int64(1), LastUpdatedAt: at(time.Minute)},
		"d3": {Status: iottypes.JobExecutionStatusFailed, ExecutionNumber: aws.Int64(1), LastUpdatedAt: at(time.Minute)},
		"d4": {Status: iottypes.JobExecutionStatusRejected, ExecutionNumber: aws.Int64(1), LastUpdatedAt: at(time.Minute)},
		"d5": {Status: iottypes.JobExecutionStatusInProgress, LastUpdatedAt: at(2 * time.Hour)},
		"d6": {Status: iottypes.JobExecutionStatusInProgress, LastUpdatedAt: at(time.Minute)},
	}, details: map[string]map[string]string{
		"d2": {"reason": "DOWNLOAD_FAILED", "detail": "connection reset"},
		"d3": {"reason": "DOWNLOAD_FAILED", "detail": "connection reset"},
		"d4": {"reason": "INCOMPATIBLE_DEVICE", "detail": "board-rev-b is not in compatible"},
	}}
	var out bytes.Buffer
	w := &rolloutWatcher{api: f, out: &out, stuckAfter: time.Hour, now: func() time.Time { return now }}
	err := w.run(context.Background(), "j", false, time.Millisecond)
	text := out.String()
	for _, want := range []string{
		"j IN_PROGRESS: 6 things: SUCCEEDED 1, IN_PROGRESS 2, FAILED 2, REJECTED 1",
		"2× FAILED DOWNLOAD_FAILED: connection reset (d2, d3)",
		"1× REJECTED INCOMPATIBLE_DEVICE: board-rev-b is not in compatible (d4)",
		"stuck IN_PROGRESS: d5 (no update for 2h0m0s)",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("no %q in:\n%s", want, text)
		}
	}
	if strings.Contains(text, "d6 (") || exitCode(err) != 1 {
		t.Fatalf("exit %d (%v):\n%s", exitCode(err), err, text)
	}
	// Terminal executions are described once, not at every look.
	n := f.describe
	_ = w.run(context.Background(), "j", false, time.Millisecond)
	if f.describe != n {
		t.Fatalf("failures described again: %d → %d", n, f.describe)
	}

	ok := &fakeJobs{status: iottypes.JobStatusInProgress, execs: map[string]iottypes.JobExecutionSummary{
		"d1": {Status: iottypes.JobExecutionStatusSucceeded}, "d2": {Status: iottypes.JobExecutionStatusQueued}}}
	w = &rolloutWatcher{api: ok, out: &out, stuckAfter: time.Hour, now: time.Now}
	if err := w.run(context.Background(), "j", false, time.Millisecond); exitCode(err) != exitStillRunning {
		t.Fatalf("running, nothing failed: %v", err)
	}
	ok.status = iottypes.JobStatusCompleted
	ok.execs["d2"] = iottypes.JobExecutionSummary{Status: iottypes.JobExecutionStatusSucceeded}
	if err := w.run(context.Background(), "j", true, time.Millisecond); err != nil {
		t.Fatalf("all succeeded: %v", err)
	}
	// On a terminal the line carries a progress bar.
	var tty bytes.Buffer
	w = &rolloutWatcher{api: ok, out: &tty, tty: true, stuckAfter: time.Hour, now: time.Now}
	_ = w.run(context.Background(), "j", true, time.Millisecond)
	if !strings.Contains(tty.String(), "[##############################] j COMPLETED") {
		t.Fatalf("terminal output: %q", tty.String())
	}
}
