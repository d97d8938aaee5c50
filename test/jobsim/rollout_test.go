package jobsim

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

// nextHeads lists the things that got a notify-next naming jobID, in order.
func nextHeads(eff effects, jobID string) []string {
	var out []string
	for _, n := range eff.notices {
		if n.next && n.head != nil && n.head.JobID == jobID {
			out = append(out, n.thing)
		}
	}
	return out
}

func things(n int) []string {
	var l []string
	for i := range n {
		l = append(l, fmt.Sprintf("d%02d", i))
	}
	return l
}

func (f *fixture) tick(d time.Duration) effects {
	f.now = f.now.Add(d)
	return f.m.tick()
}

func (f *fixture) details(jobID string) JobDescription {
	f.t.Helper()
	d, err := f.m.describeJob(jobID)
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

// TestMaximumPerMinuteNotifiesAtMostTheRate: ten targets at three a minute are notified 3, 3, 3, 1,
// each thing once, in target order; the unreleased ones are QUEUED but invisible to their devices.
func TestMaximumPerMinuteNotifiesAtMostTheRate(t *testing.T) {
	f := newFixture(t)
	eff := f.create(CreateJobInput{JobID: "j", Targets: things(10), JobExecutionsRolloutConfig: &RolloutConfig{MaximumPerMinute: 3}})
	var got []string
	got = append(got, nextHeads(eff, "j")...)
	if len(got) != 3 || f.details("j").JobProcessDetails.NumberOfQueuedThings != 10 {
		t.Fatalf("at creation: notified %v, details %+v", got, f.details("j").JobProcessDetails)
	}
	if _, q := f.m.getPending("d05"); len(q) != 0 {
		t.Fatalf("d05 sees the job before its turn: %+v", q)
	}
	if eff := f.tick(59 * time.Second); len(nextHeads(eff, "j")) != 0 {
		t.Fatalf("notified before the minute ended: %v", nextHeads(eff, "j"))
	}
	for _, want := range []int{3, 3, 1, 0} {
		eff := f.tick(time.Minute)
		if h := nextHeads(eff, "j"); len(h) != want {
			t.Fatalf("minute: %d notified (%v), want %d", len(h), h, want)
		} else {
			got = append(got, h...)
		}
	}
	if strings.Join(got, ",") != strings.Join(things(10), ",") {
		t.Fatalf("order or duplicates: %v", got)
	}
}

// TestExponentialRateRisesWithSucceededThings: base 1/min, ×2 after every success; a success
// releases the next thing within the same minute because the rate went up.
func TestExponentialRateRisesWithSucceededThings(t *testing.T) {
	f := newFixture(t)
	eff := f.create(CreateJobInput{JobID: "j", Targets: things(8), JobExecutionsRolloutConfig: &RolloutConfig{
		ExponentialRate: &ExponentialRate{BaseRatePerMinute: 1, IncrementFactor: 2, RateIncreaseCriteria: RateIncreaseCriter{NumberOfSucceededThings: 1}}}})
	if h := nextHeads(eff, "j"); strings.Join(h, ",") != "d00" {
		t.Fatalf("at creation: %v", h)
	}
	f.update("d00", "j", StatusInProgress)
	_, eff = f.update("d00", "j", StatusSucceeded) // rate 2: one more this minute
	if h := nextHeads(eff, "j"); strings.Join(h, ",") != "d01" {
		t.Fatalf("after the first success: %v", h)
	}
	eff = f.tick(time.Minute) // rate 2 in a fresh minute
	if h := nextHeads(eff, "j"); strings.Join(h, ",") != "d02,d03" {
		t.Fatalf("second minute: %v", h)
	}
	var more []string
	for _, d := range []string{"d01", "d02", "d03"} {
		_, eff := f.update(d, "j", StatusSucceeded)
		more = append(more, nextHeads(eff, "j")...)
	}
	// Rate 4, 8, 16 within the same minute: 2, then the last 2, go at once.
	if strings.Join(more, ",") != "d04,d05,d06,d07" {
		t.Fatalf("as the rate rose: %v", more)
	}
}

// TestAbortCancelsTheQueuedAndLetsTheRunningFinish: FAILED ≥ 20 % of ≥ 5 notified aborts the
// job; QUEUED executions (notified or not yet) end CANCELED, IN_PROGRESS ones may still succeed,
// and nothing is released afterwards.
func TestAbortCancelsTheQueuedAndLetsTheRunningFinish(t *testing.T) {
	f := newFixture(t)
	f.create(CreateJobInput{JobID: "j", Targets: things(10),
		JobExecutionsRolloutConfig: &RolloutConfig{MaximumPerMinute: 5},
		AbortConfig:                &AbortConfig{CriteriaList: []AbortCriteria{{FailureType: "FAILED", Action: "CANCEL", ThresholdPercentage: 20, MinNumberOfExecutedThings: 5}}},
		JobExecutionsRetryConfig:   &RetryConfig{CriteriaList: []RetryCriteria{{FailureType: "FAILED", NumberOfRetries: 1}}}})
	f.update("d00", "j", StatusInProgress)
	f.update("d01", "j", StatusInProgress)
	_, eff := f.update("d01", "j", StatusFailed) // 1 of 5 notified = 20 %
	d := f.details("j")
	p := d.JobProcessDetails
	if d.Status != JobCanceled || d.ReasonCode != "AbortConfig" || !strings.Contains(d.Comment, "20.00%") ||
		p.NumberOfCanceledThings != 8 || p.NumberOfFailedThings != 1 || p.NumberOfInProgressThings != 1 || p.NumberOfQueuedThings != 0 {
		t.Fatalf("after the abort: %s %s %q %+v", d.Status, d.ReasonCode, d.Comment, p)
	}
	if f.latest("j", "d01").ExecutionNumber != 1 {
		t.Fatal("an aborted job queued a retry")
	}
	var kinds []string
	for _, ev := range eff.events {
		kinds = append(kinds, ev.Kind)
	}
	if !strings.Contains(strings.Join(kinds, " "), EventAborted) {
		t.Fatalf("no abort event: %v", kinds)
	}
	if eff := f.tick(time.Minute); len(eff.notices) != 0 {
		t.Fatalf("released after the abort: %s", notes(eff))
	}
	f.update("d00", "j", StatusSucceeded)
	if p := f.details("j").JobProcessDetails; p.NumberOfSucceededThings != 1 || p.NumberOfInProgressThings != 0 {
		t.Fatalf("the running execution could not finish: %+v", p)
	}
}

// TestAbortWaitsForTheMinimumExecuted: the same failure rate below minNumberOfExecutedThings
// aborts nothing.
func TestAbortWaitsForTheMinimumExecuted(t *testing.T) {
	f := newFixture(t)
	f.create(CreateJobInput{JobID: "j", Targets: things(10), JobExecutionsRolloutConfig: &RolloutConfig{MaximumPerMinute: 2},
		AbortConfig: &AbortConfig{CriteriaList: []AbortCriteria{{FailureType: "ALL", Action: "CANCEL", ThresholdPercentage: 50, MinNumberOfExecutedThings: 5}}}})
	f.update("d00", "j", StatusRejected)
	f.update("d01", "j", StatusFailed) // 2 of 2: 100 %, but only 2 notified
	if d := f.details("j"); d.Status != JobInProgress {
		t.Fatalf("aborted below the minimum: %s", d.Status)
	}
	f.tick(time.Minute)
	f.tick(time.Minute) // 6 notified, 2 failed: 33 % < 50 %
	if d := f.details("j"); d.Status != JobInProgress {
		t.Fatalf("aborted under the threshold: %s", d.Status)
	}
	f.update("d02", "j", StatusFailed) // 3 of 6 = 50 %
	if d := f.details("j"); d.Status != JobCanceled {
		t.Fatalf("not aborted at 50 %% of 6: %s %+v", d.Status, d.JobProcessDetails)
	}
}

// TestScheduledJobNotifiesOnlyInsideItsWindow: a job with a daily 02:00–03:00 window created at
// 00:00 is SCHEDULED and notifies no one; at 02:00 every target is notified and the job is
// IN_PROGRESS (four a minute); at 03:00 it is SCHEDULED again; at its end time it is canceled.
func TestScheduledJobNotifiesOnlyInsideItsWindow(t *testing.T) {
	f := newFixture(t)
	f.now = time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC)
	eff := f.create(CreateJobInput{JobID: "j", Targets: things(6),
		JobExecutionsRolloutConfig: &RolloutConfig{MaximumPerMinute: 4},
		SchedulingConfig: &SchedulingConfig{StartTime: "2027-03-01T01:00", EndTime: "2027-03-05T00:00", EndBehavior: "CANCEL",
			MaintenanceWindows: []MaintenanceWindow{{StartTime: "cron(0 2 * * ? *)", DurationInMinutes: 60}}}})
	d := f.details("j")
	if len(eff.notices) != 0 || d.Status != JobScheduled || len(d.ScheduledJobRollouts) != 4 || d.ScheduledJobRollouts[0].StartTime != "2027-03-01T02:00" {
		t.Fatalf("at creation: %s, %s, %+v", notes(eff), d.Status, d.ScheduledJobRollouts)
	}
	if eff := f.tick(time.Hour + 59*time.Minute); len(eff.notices) != 0 || f.details("j").Status != JobScheduled {
		t.Fatalf("01:59: %s %s", notes(eff), f.details("j").Status)
	}
	eff = f.tick(time.Minute) // 02:00: the window opens, four a minute
	if h := nextHeads(eff, "j"); len(h) != 4 || f.details("j").Status != JobInProgress {
		t.Fatalf("02:00: %v %s", h, f.details("j").Status)
	}
	eff = f.tick(time.Minute)
	if h := nextHeads(eff, "j"); len(h) != 2 {
		t.Fatalf("02:01: %v", h)
	}
	eff = f.tick(59 * time.Minute) // 03:00: closed
	if d := f.details("j"); d.Status != JobScheduled {
		t.Fatalf("03:00: %s", d.Status)
	}
	f.now = time.Date(2027, 3, 5, 0, 0, 0, 0, time.UTC) // the end: CANCEL
	f.m.tick()
	if d := f.details("j"); d.Status != JobCanceled || d.JobProcessDetails.NumberOfCanceledThings != 6 {
		t.Fatalf("at the end: %s %+v", d.Status, d.JobProcessDetails)
	}
}

// TestScheduledJobWindowEdges walks six hours minute by minute with a one-minute window at 04:30:
// every target is notified in that minute and in no other.
func TestScheduledJobWindowEdges(t *testing.T) {
	f := newFixture(t)
	f.now = time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC)
	f.create(CreateJobInput{JobID: "j", Targets: things(3),
		SchedulingConfig: &SchedulingConfig{MaintenanceWindows: []MaintenanceWindow{{StartTime: "cron(30 4 1 3 ? *)", DurationInMinutes: 1}}}})
	var when []string
	for range 6 * 60 {
		eff := f.tick(time.Minute)
		for _, h := range nextHeads(eff, "j") {
			when = append(when, f.now.Format("15:04")+" "+h)
		}
	}
	sort.Strings(when)
	if strings.Join(when, ",") != "04:30 d00,04:30 d01,04:30 d02" {
		t.Fatalf("notified at %v", when)
	}
}

// TestContinuousJobFollowsTheGroup: a member added later gets an execution and is notified; a
// QUEUED member that leaves is REMOVED; the job never completes on its own.
func TestContinuousJobFollowsTheGroup(t *testing.T) {
	f := newFixture(t)
	members := map[string][]string{"fleet": {"a", "b"}}
	f.m.members = func(g string) ([]string, error) { return members[g], nil }
	eff := f.create(CreateJobInput{JobID: "j", Targets: []string{"arn:aws:iot:us-east-1:123456789012:thinggroup/fleet"}, TargetSelection: "CONTINUOUS"})
	if h := nextHeads(eff, "j"); strings.Join(h, ",") != "a,b" {
		t.Fatalf("at creation: %v", h)
	}
	f.update("a", "j", StatusSucceeded)
	f.update("b", "j", StatusSucceeded)
	if d := f.details("j"); d.Status != JobInProgress || d.TargetSelection != "CONTINUOUS" {
		t.Fatalf("a continuous job completed: %s", d.Status)
	}
	members["fleet"] = append(members["fleet"], "c")
	eff = f.m.membership("fleet", "c", true)
	if h := nextHeads(eff, "j"); strings.Join(h, ",") != "c" {
		t.Fatalf("new member: %v", h)
	}
	members["fleet"] = members["fleet"][:2]
	eff = f.m.membership("fleet", "c", false)
	if x := f.latest("j", "c"); x.Status != StatusRemoved || !strings.Contains(notes(eff), "c:next=none") {
		t.Fatalf("member left: %s %s", x.Status, notes(eff))
	}
	if l, _, _ := f.m.listJobs(ListInput{ThingGroupName: "fleet"}); len(l) != 1 || l[0].TargetSelection != "CONTINUOUS" {
		t.Fatalf("ListJobs by group: %+v", l)
	}
}

// TestCancelJobExecutionNeedsForceWhileInProgress.
func TestCancelJobExecutionNeedsForceWhileInProgress(t *testing.T) {
	f := newFixture(t)
	f.create(CreateJobInput{JobID: "j", Targets: []string{"a", "b"}})
	f.update("a", "j", StatusInProgress)
	if _, aerr := f.m.cancelExecution("j", "a", CancelJobExecutionInput{}); aerr == nil || aerr.Code != ExcInvalidStateTransition {
		t.Fatalf("IN_PROGRESS without force: %v", aerr)
	}
	if _, aerr := f.m.cancelExecution("j", "b", CancelJobExecutionInput{ExpectedVersion: 7}); aerr == nil || aerr.Code != ExcVersionConflict {
		t.Fatalf("wrong expectedVersion: %v", aerr)
	}
	if eff, aerr := f.m.cancelExecution("j", "b", CancelJobExecutionInput{}); aerr != nil || !strings.Contains(notes(eff), "b:next=none") {
		t.Fatalf("QUEUED: %v %s", aerr, notes(eff))
	}
	if _, aerr := f.m.cancelExecution("j", "a", CancelJobExecutionInput{Force: true}); aerr != nil {
		t.Fatal(aerr)
	}
	if d := f.details("j"); d.Status != JobCompleted || d.JobProcessDetails.NumberOfCanceledThings != 2 {
		t.Fatalf("%s %+v", d.Status, d.JobProcessDetails)
	}
	f.refuse("a", "j", updateReq{status: StatusSucceeded}, CodeInvalidStateTransition)
}

// TestListExecutionsPagesAndFilters.
func TestListExecutionsPagesAndFilters(t *testing.T) {
	f := newFixture(t)
	f.create(CreateJobInput{JobID: "j", Targets: things(5)})
	f.update("d03", "j", StatusSucceeded)
	var all []string
	in := ListInput{MaxResults: 2}
	for pages := 0; ; pages++ {
		l, next, aerr := f.m.listExecutions("j", in)
		if aerr != nil || pages > 3 {
			t.Fatalf("%v after %d pages", aerr, pages)
		}
		for _, e := range l {
			all = append(all, e.ThingArn[strings.LastIndex(e.ThingArn, "/")+1:])
		}
		if next == "" {
			break
		}
		in.NextToken = next
	}
	if strings.Join(all, ",") != strings.Join(things(5), ",") {
		t.Fatalf("pages: %v", all)
	}
	if l, _, _ := f.m.listExecutions("j", ListInput{Status: StatusSucceeded}); len(l) != 1 {
		t.Fatalf("status filter: %+v", l)
	}
	if _, _, aerr := f.m.listExecutions("j", ListInput{NextToken: "x"}); aerr == nil {
		t.Fatal("bad token accepted")
	}
}

// TestPauseWhileReleasingNeverShowsMoreThanTheRate: a loaded machine pauses while the first
// minute's batch is released, and the next minute's timer fires on time. Each release carries the
// instant its minute's budget was counted at, so no span of one minute in the event log holds
// more than maximumPerMinute (stamps read after the pause put all of the next batch less than a
// minute after the first).
func TestPauseWhileReleasingNeverShowsMoreThanTheRate(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	slow := true
	clock := func() time.Time {
		if slow {
			now = now.Add(2 * time.Second) // every read during the first batch costs time
		}
		return now
	}
	m := newModel(clock, time.Minute)
	_, eff, err := m.createJob(CreateJobInput{JobID: "j", Document: `{"operation":"install"}`, Targets: things(6),
		JobExecutionsRolloutConfig: &RolloutConfig{MaximumPerMinute: 3}})
	if err != nil {
		t.Fatal(err)
	}
	slow = false
	var at []time.Time
	collect := func(eff effects) {
		for _, ev := range eff.events {
			if ev.Kind == EventNotified {
				at = append(at, ev.Time)
			}
		}
	}
	collect(eff)
	for range 5 {
		wake := m.nextDeadline()
		if wake.IsZero() {
			break
		}
		now = wake // the timer fires on time
		collect(m.tick())
	}
	if len(at) != 6 {
		t.Fatalf("%d released, want 6", len(at))
	}
	for i := range at {
		in := 0
		for _, o := range at[i:] {
			if o.Sub(at[i]) < time.Minute {
				in++
			}
		}
		if in > 3 {
			t.Fatalf("%d releases within one minute from %s: %v", in, at[i].Format("15:04:05"), at)
		}
	}
}
