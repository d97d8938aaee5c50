package conformance

import (
	"errors"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/test/jobsim"
)

// conformanceCase is one behaviour of the Jobs device API, checked through agent/jobs.
type conformanceCase struct {
	name string
	run  func(f *fx)
}

var cases = []conformanceCase{
	{"GetPendingListsInProgressBeforeQueued", func(f *fx) {
		t := f.t
		d := f.device()
		j1 := f.job([]string{d.thing})
		j2 := f.job([]string{d.thing})
		p, err := d.c.GetPending(f.ctx())
		if err != nil || len(p.InProgress) != 0 || len(p.Queued) != 2 || p.Queued[0].JobID != j1 || p.Queued[1].JobID != j2 {
			t.Fatalf("GetPending: %+v %v", p, err)
		}
		if _, err := d.c.Update(f.ctx(), j2, jobs.UpdateInput{Status: jobs.InProgress}); err != nil {
			t.Fatal(err)
		}
		p, err = d.c.GetPending(f.ctx())
		if err != nil || len(p.InProgress) != 1 || p.InProgress[0].JobID != j2 || len(p.Queued) != 1 || p.Queued[0].JobID != j1 {
			t.Fatalf("GetPending after starting %s: %+v %v", j2, p, err)
		}
		s := p.InProgress[0]
		if s.ExecutionNumber != 1 || s.VersionNumber != 2 || s.QueuedAt.IsZero() || s.StartedAt.IsZero() || p.Timestamp.IsZero() {
			t.Fatalf("summary %+v", s)
		}
	}},

	{"PendingListsStopAtTenExecutions", func(f *fx) {
		t := f.t
		d := f.device()
		var ids []string
		for i := 0; i < 12; i++ {
			ids = append(ids, f.job([]string{d.thing}))
		}
		p, err := d.c.GetPending(f.ctx())
		if err != nil || len(p.InProgress)+len(p.Queued) != 10 || p.Queued[0].JobID != ids[0] || p.Queued[9].JobID != ids[9] {
			t.Fatalf("GetPending with 12 queued: %d listed, %v; want the oldest 10", len(p.Queued), err)
		}
		var last jobs.JobExecutionsChanged
		waitFor(t, "a notify listing ten", func() bool {
			select {
			case last = <-d.notify:
			default:
			}
			return len(last.Jobs[jobs.Queued]) == 10
		})
	}},

	{"StartNextStartsTheHeadOnceAndReportsNothingPendingWithoutExecution", func(f *fx) {
		t := f.t
		d := f.device()
		e, err := d.c.StartNext(f.ctx(), jobs.StartNextInput{})
		if err != nil || e != nil {
			t.Fatalf("start-next with nothing pending: %+v %v; want no execution", e, err)
		}
		j := f.job([]string{d.thing})
		e, err = d.c.StartNext(f.ctx(), jobs.StartNextInput{StatusDetails: map[string]string{"stage": "validate"}})
		if err != nil || e == nil || e.JobID != j || e.Status != jobs.InProgress || e.VersionNumber != 2 || e.StatusDetails["stage"] != "validate" ||
			e.ThingName != d.thing || !strings.Contains(string(e.JobDocument), `"install"`) {
			t.Fatalf("start-next: %+v %v", e, err)
		}
		// Already IN_PROGRESS: returned unchanged, details untouched.
		e2, err := d.c.StartNext(f.ctx(), jobs.StartNextInput{StatusDetails: map[string]string{"stage": "other"}})
		if err != nil || e2 == nil || e2.VersionNumber != 2 || e2.StatusDetails["stage"] != "validate" {
			t.Fatalf("second start-next: %+v %v", e2, err)
		}
	}},

	{"DescribeNextPeeksWithoutStartingAndNothingPendingHasNoExecution", func(f *fx) {
		t := f.t
		d := f.device()
		e, err := d.c.Describe(f.ctx(), jobs.DescribeInput{JobID: jobs.NextJobID, IncludeJobDocument: true})
		if err != nil || e != nil {
			t.Fatalf("$next with nothing pending: %+v %v; want nil execution", e, err)
		}
		j := f.job([]string{d.thing})
		for i := 0; i < 2; i++ {
			e, err = d.c.Describe(f.ctx(), jobs.DescribeInput{JobID: jobs.NextJobID, IncludeJobDocument: true})
			if err != nil || e == nil || e.JobID != j || e.Status != jobs.Queued || e.VersionNumber != 1 || len(e.JobDocument) == 0 {
				t.Fatalf("$next: %+v %v", e, err)
			}
		}
	}},

	{"DescribeByJobIDHonoursExecutionNumberAndIncludeJobDocument", func(f *fx) {
		t := f.t
		d := f.device()
		j := f.job([]string{d.thing})
		e, err := d.c.Describe(f.ctx(), jobs.DescribeInput{JobID: j, IncludeJobDocument: false})
		if err != nil || e == nil || len(e.JobDocument) != 0 {
			t.Fatalf("includeJobDocument=false: %+v %v", e, err)
		}
		e, err = d.c.Describe(f.ctx(), jobs.DescribeInput{JobID: j, ExecutionNumber: 1, IncludeJobDocument: true})
		if err != nil || e == nil || e.ExecutionNumber != 1 || !jsonHas(e.JobDocument, "operation", "install") {
			t.Fatalf("executionNumber 1 with document: %+v %v", e, err)
		}
		_, err = d.c.Describe(f.ctx(), jobs.DescribeInput{JobID: j, ExecutionNumber: 9, IncludeJobDocument: true})
		rejection(t, err, jobs.ErrResourceNotFound)
		// Over MQTT includeJobDocument defaults to true (the client always sends it anyway).
		r, err := d.c.Raw(f.ctx(), j+"/get", []byte(`{"clientToken":"ct-default"}`))
		if err != nil || !r.Accepted || !strings.Contains(string(payload(t, r.Payload)["execution"]), `"jobDocument"`) {
			t.Fatalf("describe without includeJobDocument: %+v %v", r, err)
		}
	}},

	{"UpdateReturnsStateAndDocumentOnlyWhenAsked", func(f *fx) {
		t := f.t
		d := f.device()
		j := f.job([]string{d.thing})
		// Without include flags the answer is just clientToken and timestamp.
		r, err := d.c.Raw(f.ctx(), j+"/update", []byte(`{"status":"IN_PROGRESS","statusDetails":{"stage":"download","progress":"0"},"clientToken":"ct-plain"}`))
		if err != nil || !r.Accepted {
			t.Fatalf("plain update: %+v %v", r, err)
		}
		if p := payload(t, r.Payload); len(p) != 2 || str(p["clientToken"]) != "ct-plain" || len(p["timestamp"]) == 0 {
			t.Fatalf("plain update answer %s, want only clientToken and timestamp", r.Payload)
		}
		u, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.InProgress, StatusDetails: map[string]string{"stage": "download", "progress": "0"}})
		if err != nil || u.ExecutionState != nil || len(u.JobDocument) != 0 || u.Timestamp.IsZero() {
			t.Fatalf("plain update: %+v %v", u, err)
		}
		u, err = d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.InProgress, StatusDetails: map[string]string{"stage": "download", "progress": "42"},
			ExpectedVersion: jobs.Version(3), ExecutionNumber: 1, IncludeJobExecutionState: true, IncludeJobDocument: true, StepTimeoutInMinutes: 100})
		if err != nil || u.ExecutionState == nil || u.ExecutionState.Status != jobs.InProgress || u.ExecutionState.VersionNumber != 4 ||
			u.ExecutionState.StatusDetails["progress"] != "42" || !jsonHas(u.JobDocument, "operation", "install") {
			t.Fatalf("update with include flags: %+v %v", u, err)
		}
		// A statusDetails map replaces the stored one (DESIGN.md's safe reading).
		u, err = d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.InProgress, StatusDetails: map[string]string{"stage": "verify"}, IncludeJobExecutionState: true})
		if err != nil || len(u.ExecutionState.StatusDetails) != 1 || u.ExecutionState.StatusDetails["stage"] != "verify" {
			t.Fatalf("details not replaced: %+v %v", u, err)
		}
		x, err := f.sim.DescribeJobExecution(j, d.thing, 0)
		if err != nil || x.Status != jobsim.StatusInProgress || x.VersionNumber != 5 || x.StatusDetails.DetailsMap["stage"] != "verify" {
			t.Fatalf("control plane sees %+v %v", x, err)
		}
	}},

	{"EveryRejectionCodeWithItsPayload", func(f *fx) {
		d := f.device()
		j := f.job([]string{d.thing})
		done := f.job([]string{d.thing})
		if _, err := d.c.Update(f.ctx(), done, jobs.UpdateInput{Status: jobs.InProgress}); err != nil {
			f.t.Fatal(err)
		}
		if _, err := d.c.Update(f.ctx(), done, jobs.UpdateInput{Status: jobs.Succeeded}); err != nil {
			f.t.Fatal(err)
		}
		long := strings.Repeat("x", 65)
		for _, tc := range []struct {
			name, suffix, body string
			code               string
			state              jobs.Status // executionState expected with this status ("" = none)
			token              string      // echoed clientToken ("" = none)
		}{
			{"InvalidTopic for a topic that maps to no API", j + "/frobnicate", `{"clientToken":"ct-topic"}`, jobs.CodeInvalidTopic, "", "ct-topic"},
			{"InvalidJson for a payload that is not JSON", "get", `{"clientToken":"ct-json"`, jobs.CodeInvalidJson, "", ""},
			{"InvalidRequest for a status a device may not set", j + "/update", `{"status":"QUEUED","clientToken":"ct-status"}`, jobs.CodeInvalidRequest, "", "ct-status"},
			{"InvalidRequest for a missing status", j + "/update", `{"clientToken":"ct-nostatus"}`, jobs.CodeInvalidRequest, "", "ct-nostatus"},
			{"InvalidRequest for a clientToken over 64 bytes", "get", `{"clientToken":"` + long + `"}`, jobs.CodeInvalidRequest, "", long},
			{"InvalidRequest for stepTimeoutInMinutes over 10080", "start-next", `{"stepTimeoutInMinutes":10081,"clientToken":"ct-step"}`, jobs.CodeInvalidRequest, "", "ct-step"},
			{"InvalidRequest for stepTimeoutInMinutes 0", j + "/update", `{"status":"IN_PROGRESS","stepTimeoutInMinutes":0,"clientToken":"ct-step0"}`, jobs.CodeInvalidRequest, "", "ct-step0"},
			{"ResourceNotFound for an unknown job", "no-such-job/get", `{"clientToken":"ct-404"}`, jobs.CodeResourceNotFound, "", "ct-404"},
			{"ResourceNotFound for an update of an unknown job", "no-such-job/update", `{"status":"IN_PROGRESS","clientToken":"ct-404u"}`, jobs.CodeResourceNotFound, "", "ct-404u"},
			{"TerminalStateReached for a describe of a finished execution", done + "/get", `{"clientToken":"ct-term"}`, jobs.CodeTerminalStateReached, "", "ct-term"},
			{"InvalidStateTransition with executionState for an update of a finished execution", done + "/update", `{"status":"IN_PROGRESS","clientToken":"ct-ist"}`, jobs.CodeInvalidStateTransition, jobs.Succeeded, "ct-ist"},
			{"VersionMismatch with executionState", j + "/update", `{"status":"IN_PROGRESS","expectedVersion":7,"clientToken":"ct-ver"}`, jobs.CodeVersionMismatch, jobs.Queued, "ct-ver"},
			{"VersionMismatch with expectedVersion as a string (embedded SDK style)", j + "/update", `{"status":"IN_PROGRESS","expectedVersion":"7","clientToken":"ct-vers"}`, jobs.CodeVersionMismatch, jobs.Queued, "ct-vers"},
		} {
			f.t.Run(tc.name, func(t *testing.T) {
				r, err := d.c.Raw(f.ctx(), tc.suffix, []byte(tc.body))
				if err != nil {
					t.Fatalf("no answer: %v", err)
				}
				if r.Accepted || r.Topic != "$aws/things/"+d.thing+"/jobs/"+tc.suffix+"/rejected" {
					t.Fatalf("answer on %s (accepted=%v): %s", r.Topic, r.Accepted, r.Payload)
				}
				p := payload(t, r.Payload)
				if str(p["code"]) != tc.code || str(p["message"]) == "" || len(p["timestamp"]) == 0 {
					t.Fatalf("payload %s: want code %s, a message and a timestamp", r.Payload, tc.code)
				}
				if got := str(p["clientToken"]); got != tc.token {
					t.Fatalf("clientToken %q echoed, want %q", got, tc.token)
				}
				_, hasState := p["executionState"]
				if hasState != (tc.state != "") {
					t.Fatalf("executionState present=%v in %s", hasState, r.Payload)
				}
				if tc.state != "" && !jsonHas(p["executionState"], "status", string(tc.state)) {
					t.Fatalf("executionState %s, want status %s", p["executionState"], tc.state)
				}
			})
		}
		// The same codes through the typed API.
		t := f.t
		_, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.Queued})
		rejection(t, err, jobs.ErrInvalidRequest)
		_, err = d.c.StartNext(f.ctx(), jobs.StartNextInput{StepTimeoutInMinutes: 10081})
		rejection(t, err, jobs.ErrInvalidRequest)
		_, err = d.c.Describe(f.ctx(), jobs.DescribeInput{JobID: "no-such-job", IncludeJobDocument: true})
		rejection(t, err, jobs.ErrResourceNotFound)
		_, err = d.c.Describe(f.ctx(), jobs.DescribeInput{JobID: done, IncludeJobDocument: true})
		rejection(t, err, jobs.ErrTerminalStateReached)
		_, err = d.c.Update(f.ctx(), done, jobs.UpdateInput{Status: jobs.InProgress})
		if re := rejection(t, err, jobs.ErrInvalidStateTransition); re.ExecutionState == nil || re.ExecutionState.Status != jobs.Succeeded {
			t.Fatalf("InvalidStateTransition without the terminal state: %+v", re)
		}
	}},

	{"ThrottlingAndInternalErrorsAreRetriedWithFreshTokensThenSurfaceTyped", func(f *fx) {
		t := f.t
		for _, tc := range []struct {
			code     string
			sentinel error
		}{{jobsim.CodeRequestThrottled, jobs.ErrRequestThrottled}, {jobsim.CodeInternalError, jobs.ErrInternalError}} {
			d := f.device()
			f.sim.InjectDeviceErrors(d.thing, tc.code, 2)
			if _, err := d.c.GetPending(f.ctx()); err != nil {
				t.Fatalf("%s twice then success: %v", tc.code, err)
			}
			rejected := f.events.count(func(e jobsim.Event) bool {
				return e.Thing == d.thing && e.Kind == jobsim.EventRejected && strings.Contains(e.Detail, tc.code)
			})
			if rejected != 2 {
				t.Fatalf("%s: emulator rejected %d requests, want 2 (then the retry succeeded)", tc.code, rejected)
			}
			// With retries off the code surfaces, typed.
			nr := f.device(func(c *jobs.Config) { c.MaxRetries = -1 })
			f.sim.InjectDeviceErrors(nr.thing, tc.code, 1)
			_, err := nr.c.GetPending(f.ctx())
			rejection(t, err, tc.sentinel)
			if !jobs.Retryable(err) {
				t.Fatalf("%s not marked retryable", tc.code)
			}
		}
	}},

	{"VersionMismatchCarriesTheCurrentStateAndTheRightVersionSucceeds", func(f *fx) {
		t := f.t
		d := f.device()
		j := f.job([]string{d.thing})
		e, err := d.c.StartNext(f.ctx(), jobs.StartNextInput{})
		if err != nil || e == nil {
			t.Fatal(e, err)
		}
		_, err = d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.InProgress, ExpectedVersion: jobs.Version(e.VersionNumber - 1)})
		re := rejection(t, err, jobs.ErrVersionMismatch)
		if re.ExecutionState == nil || re.ExecutionState.VersionNumber != e.VersionNumber || re.ExecutionState.Status != jobs.InProgress {
			t.Fatalf("VersionMismatch state %+v, want version %d IN_PROGRESS", re.ExecutionState, e.VersionNumber)
		}
		u, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.Succeeded, ExpectedVersion: jobs.Version(re.ExecutionState.VersionNumber), IncludeJobExecutionState: true})
		if err != nil || u.ExecutionState.Status != jobs.Succeeded || u.ExecutionState.VersionNumber != e.VersionNumber+1 {
			t.Fatalf("update with the resynced version: %+v %v", u, err)
		}
	}},

	{"NotifyAndNotifyNextFollowTheEmissionRules", func(f *fx) {
		t := f.t
		d := f.device()
		// A job queued for an idle thing: it joins the list and becomes $next.
		j1 := f.job([]string{d.thing})
		d.expectNotify(t, map[jobs.Status][]string{jobs.Queued: {j1}})
		ev := d.expectNext(t, j1)
		if ev.Execution.Status != jobs.Queued || !jsonHas(ev.Execution.JobDocument, "operation", "install") || ev.Timestamp.IsZero() {
			t.Fatalf("notify-next execution %+v", ev.Execution)
		}
		// A second job joins the list but $next is unchanged.
		j2 := f.job([]string{d.thing})
		d.expectNotify(t, map[jobs.Status][]string{jobs.Queued: {j1, j2}})
		d.expectNoNext(t)
		// The head going QUEUED → IN_PROGRESS changes neither the list nor $next.
		if _, err := d.c.StartNext(f.ctx(), jobs.StartNextInput{}); err != nil {
			t.Fatal(err)
		}
		d.expectNoNext(t)
		d.expectNoNotify(t)
		// Progress updates of the head change nothing either.
		if _, err := d.c.Update(f.ctx(), j1, jobs.UpdateInput{Status: jobs.InProgress, StatusDetails: map[string]string{"progress": "50"}}); err != nil {
			t.Fatal(err)
		}
		d.expectNoNext(t)
		d.expectNoNotify(t)
		// A third job; then it is started out of order and becomes the head once j1 is done.
		j3 := f.job([]string{d.thing})
		d.expectNotify(t, map[jobs.Status][]string{jobs.InProgress: {j1}, jobs.Queued: {j2, j3}})
		d.expectNoNext(t)
		// The head finishing: it leaves the list and $next moves on.
		if _, err := d.c.Update(f.ctx(), j1, jobs.UpdateInput{Status: jobs.Succeeded}); err != nil {
			t.Fatal(err)
		}
		d.expectNotify(t, map[jobs.Status][]string{jobs.Queued: {j2, j3}})
		d.expectNext(t, j2)
		// A non-head execution going IN_PROGRESS becomes the head: notify-next names it.
		if _, err := d.c.Update(f.ctx(), j3, jobs.UpdateInput{Status: jobs.InProgress}); err != nil {
			t.Fatal(err)
		}
		if ev := d.expectNext(t, j3); ev.Execution.Status != jobs.InProgress {
			t.Fatalf("notify-next for %s says %s", j3, ev.Execution.Status)
		}
		drain(d.notify)
		// REJECTED from QUEUED and SUCCEEDED of the rest: the list empties, notify-next has no execution.
		if _, err := d.c.Update(f.ctx(), j2, jobs.UpdateInput{Status: jobs.Rejected, StatusDetails: map[string]string{"reason": "INVALID_DOCUMENT"}}); err != nil {
			t.Fatal(err)
		}
		d.expectNotify(t, map[jobs.Status][]string{jobs.InProgress: {j3}})
		d.expectNoNext(t)
		if _, err := d.c.Update(f.ctx(), j3, jobs.UpdateInput{Status: jobs.Succeeded}); err != nil {
			t.Fatal(err)
		}
		d.expectNotify(t, map[jobs.Status][]string{})
		d.expectNext(t, "")
		// Another thing heard none of it.
		other := f.device()
		other.expectNoNext(t)
		other.expectNoNotify(t)
	}},

	{"RejectedIsRefusedOnceInProgress", func(f *fx) {
		t := f.t
		d := f.device()
		j := f.job([]string{d.thing})
		if _, err := d.c.StartNext(f.ctx(), jobs.StartNextInput{}); err != nil {
			t.Fatal(err)
		}
		_, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.Rejected})
		if re := rejection(t, err, jobs.ErrInvalidStateTransition); re.ExecutionState == nil || re.ExecutionState.Status != jobs.InProgress {
			t.Fatalf("state %+v", re.ExecutionState)
		}
		if _, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.Failed, StatusDetails: map[string]string{"reason": "INVALID_DOCUMENT"}}); err != nil {
			t.Fatalf("FAILED after IN_PROGRESS: %v", err)
		}
	}},

	{"StepTimeoutTimesOutTheExecutionAndANewValueReplacesTheTimer", func(f *fx) {
		t := f.t
		d := f.device()
		j := f.job([]string{d.thing})
		d.expectNext(t, j)
		// An 8-minute step (1.2 s here), at once replaced by a 200-minute one (30 s).
		if _, err := d.c.StartNext(f.ctx(), jobs.StartNextInput{StepTimeoutInMinutes: 8}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.InProgress, StepTimeoutInMinutes: 200}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * minute) // past the first deadline
		e, err := d.c.Describe(f.ctx(), jobs.DescribeInput{JobID: j, IncludeJobDocument: false})
		if err != nil || e.Status != jobs.InProgress || e.ApproximateSecondsBeforeTimedOut < 20 {
			t.Fatalf("after the replaced deadline: %+v %v; want still IN_PROGRESS, ~28 s left", e, err)
		}
		// A short step now: it expires and the execution becomes TIMED_OUT.
		if _, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.InProgress, StepTimeoutInMinutes: 1}); err != nil {
			t.Fatal(err)
		}
		d.expectNext(t, "")
		x, err := f.sim.DescribeJobExecution(j, d.thing, 0)
		if err != nil || x.Status != jobsim.StatusTimedOut {
			t.Fatalf("control plane: %+v %v", x, err)
		}
		_, err = d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.Succeeded})
		if re := rejection(t, err, jobs.ErrInvalidStateTransition); re.ExecutionState == nil || re.ExecutionState.Status != jobs.TimedOut {
			t.Fatalf("late SUCCEEDED: state %+v, want TIMED_OUT", re.ExecutionState)
		}
	}},

	{"InProgressTimeoutCapsTheStepTimer", func(f *fx) {
		t := f.t
		d := f.device()
		j := f.job([]string{d.thing}, func(in *jobsim.CreateJobInput) {
			in.TimeoutConfig = &jobsim.TimeoutConfig{InProgressTimeoutInMinutes: 3}
		})
		d.expectNext(t, j)
		if _, err := d.c.StartNext(f.ctx(), jobs.StartNextInput{StepTimeoutInMinutes: 1000}); err != nil {
			t.Fatal(err)
		}
		d.expectNext(t, "")
		x, err := f.sim.DescribeJobExecution(j, d.thing, 0)
		if err != nil || x.Status != jobsim.StatusTimedOut {
			t.Fatalf("control plane: %+v %v", x, err)
		}
	}},

	{"ForceCancelWhileInProgressRejectsTheDevicesNextUpdate", func(f *fx) {
		t := f.t
		d := f.device()
		j := f.job([]string{d.thing})
		d.expectNext(t, j)
		if _, err := d.c.StartNext(f.ctx(), jobs.StartNextInput{}); err != nil {
			t.Fatal(err)
		}
		// A plain cancel leaves an IN_PROGRESS execution alone.
		if err := f.sim.CancelJob(j, jobsim.CancelJobInput{}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.InProgress, StatusDetails: map[string]string{"stage": "install"}}); err != nil {
			t.Fatalf("update after a non-forced cancel: %v", err)
		}
		// Forced: the execution is CANCELED, the device hears notify-next, its next update is refused.
		if err := f.sim.CancelJob(j, jobsim.CancelJobInput{Force: true}); err != nil {
			t.Fatal(err)
		}
		d.expectNext(t, "")
		_, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.Succeeded})
		if re := rejection(t, err, jobs.ErrInvalidStateTransition); re.ExecutionState == nil || re.ExecutionState.Status != jobs.Canceled {
			t.Fatalf("state %+v, want CANCELED", re.ExecutionState)
		}
	}},

	{"CancelOfAQueuedExecutionRemovesItFromNext", func(f *fx) {
		t := f.t
		d := f.device()
		j := f.job([]string{d.thing})
		d.expectNext(t, j)
		if err := f.sim.CancelJob(j, jobsim.CancelJobInput{}); err != nil {
			t.Fatal(err)
		}
		d.expectNext(t, "")
		if e, err := d.c.Describe(f.ctx(), jobs.DescribeInput{JobID: jobs.NextJobID, IncludeJobDocument: true}); err != nil || e != nil {
			t.Fatalf("$next after cancel: %+v %v", e, err)
		}
		_, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.InProgress})
		if re := rejection(t, err, jobs.ErrInvalidStateTransition); re.ExecutionState.Status != jobs.Canceled {
			t.Fatalf("state %+v", re.ExecutionState)
		}
	}},

	{"DeleteJobMakesTheExecutionResourceNotFound", func(f *fx) {
		t := f.t
		d := f.device()
		j := f.job([]string{d.thing})
		d.expectNext(t, j)
		if _, err := d.c.StartNext(f.ctx(), jobs.StartNextInput{}); err != nil {
			t.Fatal(err)
		}
		if err := f.sim.DeleteJob(j, false); err == nil {
			t.Fatal("DeleteJob without force deleted a job with an IN_PROGRESS execution")
		}
		if err := f.sim.DeleteJob(j, true); err != nil {
			t.Fatal(err)
		}
		d.expectNext(t, "")
		_, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.Succeeded})
		rejection(t, err, jobs.ErrResourceNotFound)
		_, err = d.c.Describe(f.ctx(), jobs.DescribeInput{JobID: j, IncludeJobDocument: true})
		rejection(t, err, jobs.ErrResourceNotFound)
		var apiErr *jobsim.APIError
		if _, err := f.sim.DescribeJobExecution(j, d.thing, 0); !errors.As(err, &apiErr) || apiErr.Code != jobsim.ExcResourceNotFound {
			t.Fatalf("control plane after delete: %v", err)
		}
	}},

	{"RetryConfigRequeuesWithANewExecutionNumber", func(f *fx) {
		t := f.t
		d := f.device()
		j := f.job([]string{d.thing}, func(in *jobsim.CreateJobInput) {
			in.JobExecutionsRetryConfig = &jobsim.RetryConfig{CriteriaList: []jobsim.RetryCriteria{{FailureType: "FAILED", NumberOfRetries: 1}, {FailureType: "TIMED_OUT", NumberOfRetries: 1}}}
		})
		d.expectNext(t, j)
		e1, err := d.c.StartNext(f.ctx(), jobs.StartNextInput{})
		if err != nil || e1.ExecutionNumber != 1 {
			t.Fatal(e1, err)
		}
		if _, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.Failed, StatusDetails: map[string]string{"reason": "DOWNLOAD_FAILED"}}); err != nil {
			t.Fatal(err)
		}
		// Same job id, next execution number, QUEUED again: dedupe must use (jobId, executionNumber).
		ev := d.expectNext(t, j)
		if ev.Execution.ExecutionNumber != 2 || ev.Execution.Status != jobs.Queued {
			t.Fatalf("retried execution %+v", ev.Execution)
		}
		_, err = d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.InProgress, ExecutionNumber: 1})
		rejection(t, err, jobs.ErrInvalidStateTransition)
		_, err = d.c.Describe(f.ctx(), jobs.DescribeInput{JobID: j, ExecutionNumber: 1, IncludeJobDocument: true})
		rejection(t, err, jobs.ErrTerminalStateReached)
		// The retry times out: TIMED_OUT is retried too, with execution number 3.
		if _, err := d.c.StartNext(f.ctx(), jobs.StartNextInput{StepTimeoutInMinutes: 1}); err != nil {
			t.Fatal(err)
		}
		ev = d.expectNext(t, j)
		if ev.Execution.ExecutionNumber != 3 {
			t.Fatalf("after TIMED_OUT: %+v", ev.Execution)
		}
		// Retries used up: a failure is final.
		if _, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.InProgress, ExecutionNumber: 3}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.Failed, ExecutionNumber: 3}); err != nil {
			t.Fatal(err)
		}
		d.expectNext(t, "")
	}},

	{"StatusDetailsLimitsMatchTheClientsValidator", func(f *fx) {
		d := f.device()
		j := f.job([]string{d.thing})
		for _, tc := range []struct {
			name string
			d    map[string]string
			ok   bool
		}{
			{"key of 128 characters", map[string]string{strings.Repeat("k", 128): "v"}, true},
			{"key of 129 characters", map[string]string{strings.Repeat("k", 129): "v"}, false},
			{"key with a space", map[string]string{"a b": "v"}, false},
			{"key with a slash", map[string]string{"a/b": "v"}, false},
			{"key with : _ -", map[string]string{"a:b_c-d": "v"}, true},
			{"value of 1024 characters", map[string]string{"k": strings.Repeat("v", 1024)}, true},
			{"value of 1024 multi-byte characters", map[string]string{"k": strings.Repeat("é", 1024)}, true},
			{"value of 1025 characters", map[string]string{"k": strings.Repeat("v", 1025)}, false},
			{"empty value", map[string]string{"k": ""}, false},
			{"newline in value", map[string]string{"k": "a\nb"}, false},
			{"zero-width joiner (format character) in value", map[string]string{"k": "a\u200db"}, false},
			{"many keys", manyKeys(50), true},
		} {
			f.t.Run(tc.name, func(t *testing.T) {
				if got := jobs.ValidateStatusDetails(tc.d) == nil; got != tc.ok {
					t.Fatalf("client validator says ok=%v, want %v", got, tc.ok)
				}
				_, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.InProgress, StatusDetails: tc.d})
				if tc.ok && err != nil {
					t.Fatalf("service refused: %v", err)
				}
				if !tc.ok {
					rejection(t, err, jobs.ErrInvalidRequest)
				}
			})
		}
	}},

	{"ClientTokensAreEchoedAndUniquePerRequest", func(f *fx) {
		t := f.t
		d := f.device()
		// The typed API's tokens: a rejected request shows the token it carried.
		var seen []string
		for i := 0; i < 3; i++ {
			_, err := d.c.Describe(f.ctx(), jobs.DescribeInput{JobID: "no-such-job"})
			seen = append(seen, rejection(t, err, jobs.ErrResourceNotFound).ClientToken)
		}
		if seen[0] == seen[1] || seen[1] == seen[2] || seen[0] == seen[2] {
			t.Fatalf("clientTokens repeat: %v", seen)
		}
		// 64 bytes is accepted.
		tok := strings.Repeat("t", 64)
		r, err := d.c.Raw(f.ctx(), "get", []byte(`{"clientToken":"`+tok+`"}`))
		if err != nil || !r.Accepted || str(payload(t, r.Payload)["clientToken"]) != tok {
			t.Fatalf("64-byte token: %+v %v", r, err)
		}
	}},

	{"ADeviceIsDeniedAnotherThingsTopics", func(f *fx) {
		t := f.t
		victim := f.device()
		j := f.job([]string{victim.thing})
		victim.expectNotify(t, map[jobs.Status][]string{jobs.Queued: {j}})
		victim.expectNext(t, j)
		attacker := f.name("attacker")

		// A client with the attacker's identity speaking for the victim's thing. AWS and the
		// embedded broker refuse its subscriptions (0x80): Dial fails, typed. Mosquitto 2.0's
		// acl_file grants subscriptions and enforces "read" at delivery instead: then the spy hears
		// nothing and its requests go unanswered.
		spyHeard := make(chan string, 16)
		cfg := f.config(victim.thing, attacker)
		cfg.RequestTimeout, cfg.MaxRetries = 500*time.Millisecond, -1
		cfg.OnNotifyNext = func(jobs.NextJobExecutionChanged) { spyHeard <- "notify-next" }
		cfg.OnNotify = func(jobs.JobExecutionsChanged) { spyHeard <- "notify" }
		spy, err := jobs.Dial(f.ctx(), cfg)
		switch {
		case errors.Is(err, jobs.ErrSubscriptionRefused):
		case err == nil && f.external:
			defer spy.Close()
			if _, err := spy.GetPending(f.ctx()); !errors.Is(err, jobs.ErrTimeout) {
				t.Fatalf("the spy's GetPending on %s's topics: %v, want no answer", victim.thing, err)
			}
		default:
			t.Fatalf("Dial as %s for %s's topics: %v, want ErrSubscriptionRefused", attacker, victim.thing, err)
		}

		// Publishing to them does nothing: the embedded broker (like AWS) disconnects the attacker,
		// mosquitto drops the message.
		o := paho.NewClientOptions().AddBroker(f.endpoint).SetClientID(attacker).SetProtocolVersion(4).
			SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetKeepAlive(10 * time.Second)
		if f.tlsFor != nil {
			tc := f.tlsFor(t, attacker)
			tc.ServerName = "localhost"
			o.SetTLSConfig(tc)
		}
		lost := make(chan struct{}, 1)
		o.SetConnectionLostHandler(func(paho.Client, error) { lost <- struct{}{} })
		c := paho.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("attacker connect: %v", tok.Error())
		}
		defer c.Disconnect(100)
		for _, m := range []struct{ topic, body string }{
			{"$aws/things/" + victim.thing + "/jobs/" + j + "/update", `{"status":"IN_PROGRESS","clientToken":"evil"}`},
			{"$aws/things/" + victim.thing + "/jobs/start-next", `{"clientToken":"evil"}`},
		} {
			c.Publish(m.topic, 1, false, m.body).WaitTimeout(2 * time.Second)
		}
		if !f.external {
			select {
			case <-lost:
			case <-time.After(5 * time.Second):
				t.Fatal("the embedded broker kept the attacker connected after an unauthorised QoS 1 publish")
			}
		}
		time.Sleep(300 * time.Millisecond)
		x, err := f.sim.DescribeJobExecution(j, victim.thing, 0)
		if err != nil || x.Status != jobsim.StatusQueued || x.VersionNumber != 1 {
			t.Fatalf("victim's execution after the attack: %+v %v", x, err)
		}
		if n := f.events.count(func(e jobsim.Event) bool { return e.Thing == victim.thing && e.Kind == jobsim.EventDeviceRequest }); n != 0 {
			t.Fatalf("the emulator served %d requests on the victim's topics", n)
		}
		victim.expectNoNext(t)
		// The victim still hears its own events; the spy hears none of them.
		j2 := f.job([]string{victim.thing})
		victim.expectNotify(t, map[jobs.Status][]string{jobs.Queued: {j, j2}})
		select {
		case what := <-spyHeard:
			t.Fatalf("the spy received the victim's %s", what)
		case <-time.After(300 * time.Millisecond):
		}
	}},
}

func manyKeys(n int) map[string]string {
	m := map[string]string{}
	for i := 0; i < n; i++ {
		m["key"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+string(rune('A'+i/26))] = "value"
	}
	return m
}

func drain[T any](ch chan T) {
	for {
		select {
		case <-ch:
		case <-time.After(200 * time.Millisecond):
			return
		}
	}
}
