package jobsim

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// fixture drives the pure model with a hand-moved clock.
type fixture struct {
	t   *testing.T
	m   *model
	now time.Time
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{t: t, now: time.Unix(1_800_000_000, 0)}
	f.m = newModel(func() time.Time { return f.now }, time.Minute)
	return f
}

func (f *fixture) create(in CreateJobInput) effects {
	f.t.Helper()
	if in.Document == "" {
		in.Document = `{"operation":"install"}`
	}
	_, eff, err := f.m.createJob(in)
	if err != nil {
		f.t.Fatalf("createJob(%s): %v", in.JobID, err)
	}
	return eff
}

func (f *fixture) update(thing, jobID, status string, mod ...func(*updateReq)) (execSnap, effects) {
	f.t.Helper()
	r := updateReq{status: status}
	for _, m := range mod {
		m(&r)
	}
	s, eff, derr := f.m.update(thing, jobID, r)
	if derr != nil {
		f.t.Fatalf("update %s %s → %s: %v", thing, jobID, status, derr)
	}
	return s, eff
}

func (f *fixture) refuse(thing, jobID string, r updateReq, code string) *deviceError {
	f.t.Helper()
	_, eff, derr := f.m.update(thing, jobID, r)
	if derr == nil || derr.code != code {
		f.t.Fatalf("update %s %s %+v: got %v, want %s", thing, jobID, r, derr, code)
	}
	if len(eff.notices) != 0 {
		f.t.Fatalf("a refused update notified: %+v", eff.notices)
	}
	return derr
}

func (f *fixture) latest(jobID, thing string) JobExecution {
	f.t.Helper()
	x, err := f.m.describeExecution(jobID, thing, 0)
	if err != nil {
		f.t.Fatal(err)
	}
	return x
}

// notes summarises notices as "thing:notify[job#n,…]" / "thing:next=job#n|none".
func notes(eff effects) string {
	var parts []string
	for _, n := range eff.notices {
		if n.next {
			h := "none"
			if n.head != nil {
				h = n.head.JobID + "#" + itoa(n.head.Number)
			}
			parts = append(parts, n.thing+":next="+h)
			continue
		}
		var l []string
		for _, e := range n.pending {
			l = append(l, e.JobID+"#"+itoa(e.Number)+"/"+e.Status)
		}
		parts = append(parts, n.thing+":notify["+strings.Join(l, ",")+"]")
	}
	return strings.Join(parts, " ")
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestModelNotificationRules(t *testing.T) {
	f := newFixture(t)
	steps := []struct {
		name string
		do   func() effects
		want string
	}{
		{"first job queued: list and head change", func() effects {
			return f.create(CreateJobInput{JobID: "j1", Targets: []string{"d1"}})
		}, "d1:notify[j1#1/QUEUED] d1:next=j1#1"},
		{"second job queued behind: list changes, head does not", func() effects {
			return f.create(CreateJobInput{JobID: "j2", Targets: []string{"arn:aws:iot:us-east-1:1:thing/d1"}})
		}, "d1:notify[j1#1/QUEUED,j2#1/QUEUED]"},
		{"head goes IN_PROGRESS: AWS publishes nothing", func() effects {
			_, eff := f.m.startNext("d1", nil, 0)
			return eff
		}, ""},
		{"progress update: nothing", func() effects {
			_, eff := f.update("d1", "j1", StatusInProgress, func(r *updateReq) { r.details = map[string]string{"progress": "50"} })
			return eff
		}, ""},
		{"non-head QUEUED job rejected: list changes, head does not", func() effects {
			_, eff := f.update("d1", "j2", StatusRejected)
			return eff
		}, "d1:notify[j1#1/IN_PROGRESS]"},
		{"head succeeds: list empties, head gone", func() effects {
			_, eff := f.update("d1", "j1", StatusSucceeded)
			return eff
		}, "d1:notify[] d1:next=none"},
	}
	for _, s := range steps {
		if got := notes(s.do()); got != s.want {
			t.Fatalf("%s: notices %q, want %q", s.name, got, s.want)
		}
	}
}

func TestModelVersionAndTransitions(t *testing.T) {
	f := newFixture(t)
	f.create(CreateJobInput{JobID: "j", Targets: []string{"d"}})
	if x := f.latest("j", "d"); x.VersionNumber != 1 || x.ExecutionNumber != 1 || x.Status != StatusQueued {
		t.Fatalf("new execution: %+v", x)
	}
	e, _ := f.m.startNext("d", map[string]string{"stage": "download"}, 0)
	if e.Version != 2 || e.Status != StatusInProgress || e.Details["stage"] != "download" {
		t.Fatalf("start-next: %+v", e)
	}
	// start-next on an IN_PROGRESS head changes nothing, statusDetails included.
	if e, _ = f.m.startNext("d", map[string]string{"stage": "other"}, 0); e.Version != 2 || e.Details["stage"] != "download" {
		t.Fatalf("second start-next changed the execution: %+v", e)
	}
	derr := f.refuse("d", "j", updateReq{status: StatusInProgress, expectedVersion: 1}, CodeVersionMismatch)
	if derr.state == nil || derr.state.Version != 2 || derr.state.Status != StatusInProgress {
		t.Fatalf("VersionMismatch without the current state: %+v", derr.state)
	}
	s, _ := f.update("d", "j", StatusInProgress, func(r *updateReq) {
		r.expectedVersion = 2
		r.details = map[string]string{"progress": "10"}
	})
	if s.Version != 3 || len(s.Details) != 1 || s.Details["progress"] != "10" {
		t.Fatalf("a sent statusDetails map must replace the stored one: %+v", s)
	}
	if s, _ = f.update("d", "j", StatusInProgress); s.Details["progress"] != "10" || s.Version != 4 {
		t.Fatalf("an update without statusDetails must keep them: %+v", s)
	}
	derr = f.refuse("d", "j", updateReq{status: StatusRejected}, CodeInvalidStateTransition)
	if derr.state == nil || derr.state.Status != StatusInProgress {
		t.Fatalf("InvalidStateTransition without state: %+v", derr)
	}
	f.update("d", "j", StatusSucceeded, func(r *updateReq) { r.expectedVersion = 4 })
	for _, st := range []string{StatusInProgress, StatusSucceeded, StatusFailed, StatusRejected} {
		f.refuse("d", "j", updateReq{status: st}, CodeInvalidStateTransition)
	}
	if _, derr := f.m.describe("d", "j", 0); derr == nil || derr.code != CodeTerminalStateReached {
		t.Fatalf("describe of a terminal execution: %v", derr)
	}
	if e, derr := f.m.describe("d", "$next", 0); e != nil || derr != nil {
		t.Fatalf("$next with nothing pending: %+v %v", e, derr)
	}
	if _, derr := f.m.describe("d", "nope", 0); derr == nil || derr.code != CodeResourceNotFound {
		t.Fatalf("unknown job: %v", derr)
	}
	if _, derr := f.m.describe("other", "j", 0); derr == nil || derr.code != CodeResourceNotFound {
		t.Fatalf("thing not targeted: %v", derr)
	}
	if d, _ := f.m.describeJob("j"); d.Status != JobCompleted || d.JobProcessDetails.NumberOfSucceededThings != 1 {
		t.Fatalf("job after its only execution succeeded: %+v", d)
	}
}

func TestModelRejectedFromQueuedOnly(t *testing.T) {
	f := newFixture(t)
	f.create(CreateJobInput{JobID: "j", Targets: []string{"d"}})
	s, _ := f.update("d", "j", StatusRejected, func(r *updateReq) { r.details = map[string]string{"reason": "INVALID_DOCUMENT"} })
	if s.Status != StatusRejected || s.Version != 2 {
		t.Fatalf("QUEUED → REJECTED: %+v", s)
	}
}

func TestModelTimers(t *testing.T) {
	cases := []struct {
		name        string
		progressMin int64 // job in-progress timeout
		stepMin     int64 // start-next step timeout
		renewAt     time.Duration
		renewMin    int64
		beforeOut   time.Duration // still IN_PROGRESS here
		afterOut    time.Duration // TIMED_OUT here
	}{
		{"step timer expires", 0, 5, 0, 0, 4*time.Minute + 59*time.Second, 5 * time.Minute},
		{"new step value replaces the old one", 0, 5, 3 * time.Minute, 5, 7*time.Minute + 59*time.Second, 8 * time.Minute},
		{"step timer cannot outlive the in-progress timer", 10, 5, 3 * time.Minute, 60, 9*time.Minute + 59*time.Second, 10 * time.Minute},
		{"in-progress timer alone", 2, 0, 0, 0, 119 * time.Second, 2 * time.Minute},
		{"renewal can shorten the step timer", 0, 10, 1 * time.Minute, 1, 119 * time.Second, 2 * time.Minute},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			in := CreateJobInput{JobID: "j", Targets: []string{"d"}}
			if c.progressMin > 0 {
				in.TimeoutConfig = &TimeoutConfig{InProgressTimeoutInMinutes: c.progressMin}
			}
			f.create(in)
			start := f.now
			f.m.startNext("d", nil, c.stepMin)
			if c.renewAt > 0 {
				f.now = start.Add(c.renewAt)
				f.update("d", "j", StatusInProgress, func(r *updateReq) { r.stepTimeout = c.renewMin })
			}
			f.now = start.Add(c.beforeOut)
			if eff := f.m.tick(); len(eff.events) != 0 || f.latest("j", "d").Status != StatusInProgress {
				t.Fatalf("timed out early at %v: %+v", c.beforeOut, eff.events)
			}
			f.now = start.Add(c.afterOut)
			eff := f.m.tick()
			if got := f.latest("j", "d").Status; got != StatusTimedOut {
				t.Fatalf("at %v: %s, want TIMED_OUT", c.afterOut, got)
			}
			if notes(eff) != "d:notify[] d:next=none" {
				t.Fatalf("timeout notices: %q", notes(eff))
			}
			if !f.m.nextDeadline().IsZero() {
				t.Fatal("a timer survived the terminal state")
			}
			f.refuse("d", "j", updateReq{status: StatusSucceeded}, CodeInvalidStateTransition)
		})
	}
}

func TestModelRetryRequeuesWithNewExecutionNumber(t *testing.T) {
	f := newFixture(t)
	f.create(CreateJobInput{JobID: "j", Targets: []string{"d"}, TimeoutConfig: &TimeoutConfig{InProgressTimeoutInMinutes: 1},
		JobExecutionsRetryConfig: &RetryConfig{CriteriaList: []RetryCriteria{{FailureType: StatusFailed, NumberOfRetries: 1}, {FailureType: StatusTimedOut, NumberOfRetries: 1}}}})
	f.m.startNext("d", nil, 0)
	_, eff := f.update("d", "j", StatusFailed)
	if got := notes(eff); got != "d:notify[j#2/QUEUED] d:next=j#2" {
		t.Fatalf("retry after FAILED: %q", got)
	}
	x := f.latest("j", "d")
	if x.ExecutionNumber != 2 || x.VersionNumber != 1 || x.Status != StatusQueued {
		t.Fatalf("retried execution: %+v", x)
	}
	if old, _ := f.m.describeExecution("j", "d", 1); old.Status != StatusFailed {
		t.Fatalf("first execution: %+v", old)
	}
	f.m.startNext("d", nil, 0)
	f.now = f.now.Add(time.Minute)
	eff = f.m.tick()
	if got := notes(eff); got != "d:notify[j#3/QUEUED] d:next=j#3" {
		t.Fatalf("retry after TIMED_OUT: %q", got)
	}
	f.m.startNext("d", nil, 0)
	_, eff = f.update("d", "j", StatusFailed)
	if got := notes(eff); got != "d:notify[] d:next=none" {
		t.Fatalf("FAILED retries exhausted, yet: %q", got)
	}
	if d, _ := f.m.describeJob("j"); d.Status != JobCompleted {
		t.Fatalf("job: %s", d.Status)
	}
	// REJECTED is never retried.
	f.create(CreateJobInput{JobID: "k", Targets: []string{"d"},
		JobExecutionsRetryConfig: &RetryConfig{CriteriaList: []RetryCriteria{{FailureType: "ALL", NumberOfRetries: 3}}}})
	if _, eff = f.update("d", "k", StatusRejected); notes(eff) != "d:notify[] d:next=none" {
		t.Fatalf("REJECTED retried: %q", notes(eff))
	}
}

func TestModelCancelAndDelete(t *testing.T) {
	f := newFixture(t)
	f.create(CreateJobInput{JobID: "j", Targets: []string{"busy", "idle", "done"}})
	f.m.startNext("busy", nil, 0)
	f.m.startNext("done", nil, 0)
	f.update("done", "j", StatusSucceeded)

	eff, aerr := f.m.cancelJob("j", CancelJobInput{ReasonCode: "OPERATOR"})
	if aerr != nil {
		t.Fatal(aerr)
	}
	if got := notes(eff); got != "idle:notify[] idle:next=none" {
		t.Fatalf("cancel without force: %q", got)
	}
	if f.latest("j", "busy").Status != StatusInProgress || f.latest("j", "done").Status != StatusSucceeded {
		t.Fatal("cancel without force touched an IN_PROGRESS or terminal execution")
	}
	f.update("busy", "j", StatusInProgress) // still completable

	if _, aerr = f.m.deleteJob("j", false); aerr == nil || aerr.Code != ExcInvalidStateTransition || aerr.Status != 409 {
		t.Fatalf("delete with an IN_PROGRESS execution, no force: %v", aerr)
	}
	eff, _ = f.m.cancelJob("j", CancelJobInput{Force: true})
	if got := notes(eff); got != "busy:notify[] busy:next=none" {
		t.Fatalf("force cancel: %q", got)
	}
	x := f.latest("j", "busy")
	if x.Status != StatusCanceled || !x.ForceCanceled {
		t.Fatalf("force-canceled execution: %+v", x)
	}
	f.refuse("busy", "j", updateReq{status: StatusSucceeded, expectedVersion: x.VersionNumber}, CodeInvalidStateTransition)

	if _, aerr = f.m.deleteJob("j", false); aerr != nil {
		t.Fatalf("delete a canceled job: %v", aerr)
	}
	f.refuse("busy", "j", updateReq{status: StatusInProgress}, CodeResourceNotFound)
	if _, aerr := f.m.describeJob("j"); aerr == nil || aerr.Status != 404 {
		t.Fatalf("deleted job described: %v", aerr)
	}

	// Force delete of an IN_PROGRESS job: the device learns through notify and ResourceNotFound.
	f.create(CreateJobInput{JobID: "k", Targets: []string{"busy"}})
	f.m.startNext("busy", nil, 0)
	eff, aerr = f.m.deleteJob("k", true)
	if aerr != nil || notes(eff) != "busy:notify[] busy:next=none" {
		t.Fatalf("force delete: %v %q", aerr, notes(eff))
	}
	if _, derr := f.m.describe("busy", "k", 0); derr == nil || derr.code != CodeResourceNotFound {
		t.Fatalf("describe after force delete: %v", derr)
	}
}

func TestModelCreateJobRefusesBadInput(t *testing.T) {
	cases := []struct {
		name string
		in   CreateJobInput
		code string
	}{
		{"bad job id", CreateJobInput{JobID: "a/b", Targets: []string{"d"}, Document: "{}"}, ExcInvalidRequest},
		{"no targets", CreateJobInput{JobID: "j", Document: "{}"}, ExcInvalidRequest},
		{"unknown thing group", CreateJobInput{JobID: "j", Targets: []string{"arn:aws:iot:us-east-1:1:thinggroup/g"}, Document: "{}"}, ExcResourceNotFound},
		{"continuous without a group", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", TargetSelection: "CONTINUOUS"}, ExcInvalidRequest},
		{"rollout rate 0", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", JobExecutionsRolloutConfig: &RolloutConfig{}}, ExcInvalidRequest},
		{"rollout rate 1001", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", JobExecutionsRolloutConfig: &RolloutConfig{MaximumPerMinute: 1001}}, ExcInvalidRequest},
		{"increment factor 1.55", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", JobExecutionsRolloutConfig: &RolloutConfig{ExponentialRate: &ExponentialRate{BaseRatePerMinute: 1, IncrementFactor: 1.55, RateIncreaseCriteria: RateIncreaseCriter{NumberOfNotifiedThings: 1}}}}, ExcInvalidRequest},
		{"both increase criteria", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", JobExecutionsRolloutConfig: &RolloutConfig{ExponentialRate: &ExponentialRate{BaseRatePerMinute: 1, IncrementFactor: 2, RateIncreaseCriteria: RateIncreaseCriter{NumberOfNotifiedThings: 1, NumberOfSucceededThings: 1}}}}, ExcInvalidRequest},
		{"abort action STOP", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", AbortConfig: &AbortConfig{CriteriaList: []AbortCriteria{{FailureType: "FAILED", Action: "STOP", ThresholdPercentage: 10, MinNumberOfExecutedThings: 1}}}}, ExcInvalidRequest},
		{"abort threshold 10.999", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", AbortConfig: &AbortConfig{CriteriaList: []AbortCriteria{{FailureType: "FAILED", Action: "CANCEL", ThresholdPercentage: 10.999, MinNumberOfExecutedThings: 1}}}}, ExcInvalidRequest},
		{"schedule starts in 10 minutes", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", SchedulingConfig: &SchedulingConfig{StartTime: time.Now().Add(10 * time.Minute).UTC().Format("2006-01-02T15:04")}}, ExcInvalidRequest},
		{"window with a year", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", SchedulingConfig: &SchedulingConfig{MaintenanceWindows: []MaintenanceWindow{{StartTime: "cron(0 2 * * ? 2027)", DurationInMinutes: 60}}}}, ExcInvalidRequest},
		{"window of 1431 minutes", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", SchedulingConfig: &SchedulingConfig{MaintenanceWindows: []MaintenanceWindow{{StartTime: "cron(0 2 * * ? *)", DurationInMinutes: 1431}}}}, ExcInvalidRequest},
		{"document not JSON", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{"}, ExcInvalidRequest},
		{"document not an object", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "[]"}, ExcInvalidRequest},
		{"document too long", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: `{"x":"` + strings.Repeat("a", maxDocumentLength) + `"}`}, ExcInvalidRequest},
		{"expiry under 60 s", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", PresignedURLConfig: &PresignedURLConfig{ExpiresInSec: 59}}, ExcInvalidRequest},
		{"expiry over 3600 s", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", PresignedURLConfig: &PresignedURLConfig{ExpiresInSec: 3601}}, ExcInvalidRequest},
		{"in-progress timeout 0", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", TimeoutConfig: &TimeoutConfig{}}, ExcInvalidRequest},
		{"retry type REJECTED", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", JobExecutionsRetryConfig: &RetryConfig{CriteriaList: []RetryCriteria{{FailureType: "REJECTED", NumberOfRetries: 1}}}}, ExcInvalidRequest},
		{"11 retries", CreateJobInput{JobID: "j", Targets: []string{"d"}, Document: "{}", JobExecutionsRetryConfig: &RetryConfig{CriteriaList: []RetryCriteria{{FailureType: "FAILED", NumberOfRetries: 11}}}}, ExcInvalidRequest},
		{"duplicate job", CreateJobInput{JobID: "dup", Targets: []string{"d"}, Document: "{}"}, ExcResourceAlreadyExists},
	}
	f := newFixture(t)
	f.create(CreateJobInput{JobID: "dup", Targets: []string{"d"}})
	for _, c := range cases {
		_, eff, aerr := f.m.createJob(c.in)
		if aerr == nil || aerr.Code != c.code {
			t.Errorf("%s: got %v, want %s", c.name, aerr, c.code)
		}
		if len(eff.notices) != 0 {
			t.Errorf("%s: refused job notified", c.name)
		}
	}
}

func TestStatusDetailsRules(t *testing.T) {
	cases := []struct {
		name string
		d    map[string]string
		ok   bool
	}{
		{"typical agent map", map[string]string{"stage": "download", "progress": "42", "a:b_c-d": "x"}, true},
		{"key of 128", map[string]string{strings.Repeat("k", 128): "v"}, true},
		{"key of 129", map[string]string{strings.Repeat("k", 129): "v"}, false},
		{"empty key", map[string]string{"": "v"}, false},
		{"key with space", map[string]string{"a b": "v"}, false},
		{"key with dot", map[string]string{"a.b": "v"}, false},
		{"value of 1024 characters (multibyte)", map[string]string{"k": strings.Repeat("é", 1024)}, true},
		{"value of 1025 characters", map[string]string{"k": strings.Repeat("a", 1025)}, false},
		{"empty value", map[string]string{"k": ""}, false},
		{"newline in value", map[string]string{"k": "a\nb"}, false},
		{"NUL in value", map[string]string{"k": "a\x00b"}, false},
		{"zero-width format char in value", map[string]string{"k": "a\u200bb"}, false},
		{"invalid UTF-8", map[string]string{"k": "a\xffb"}, false},
	}
	for _, c := range cases {
		if _, ok := validDetails(c.d); ok != c.ok {
			t.Errorf("%s: valid=%v, want %v", c.name, ok, c.ok)
		}
	}
}

func TestModelListsAtMostTenPending(t *testing.T) {
	f := newFixture(t)
	var eff effects
	for i := range 12 {
		eff = f.create(CreateJobInput{JobID: "j" + itoa(int64(i)), Targets: []string{"d"}})
	}
	ip, q := f.m.getPending("d")
	if len(ip)+len(q) != 10 || q[0].JobID != "j0" {
		t.Fatalf("get lists %d+%d", len(ip), len(q))
	}
	if len(eff.notices) != 1 || len(eff.notices[0].pending) != 10 {
		t.Fatalf("notify lists %+v", eff.notices)
	}
}
