package jobsim

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldota/fieldota/test/jobsim/s3"
	"github.com/fieldota/fieldota/test/testpki"
)

// TestDeviceJourneyOverEveryTopic walks one job through every request and notification topic of
// the device API, checking AWS's payload shapes, versions and the notify rules on the way.
func TestDeviceJourneyOverEveryTopic(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bucket"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bucket", "fw.bin"), []byte("firmware"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startSim(t, Config{S3Addr: "127.0.0.1:0", ArtifactDir: dir})
	d := connectDevice(t, s.MQTTURL(), "dev1", devOpts{subscribe: true})

	mustCreate(t, s, CreateJobInput{JobID: "j1", Targets: []string{"dev1"},
		PresignedURLConfig: &PresignedURLConfig{ExpiresInSec: 120}})

	n := d.expect(d.jobs("notify"))
	if q, _ := field(n.body, "jobs", "QUEUED").([]any); len(q) != 1 || field(q[0].(map[string]any), "jobId") != "j1" ||
		num(field(q[0].(map[string]any), "versionNumber")) != 1 || num(field(q[0].(map[string]any), "executionNumber")) != 1 {
		t.Fatalf("notify: %s", n.raw)
	}
	nn := d.expect(d.jobs("notify-next"))
	u := field(nn.body, "execution", "jobDocument", "files", "url")
	if field(nn.body, "execution", "status") != StatusQueued || !hasPrefix(u, s.S3URL()+"/bucket/fw.bin?") ||
		!strings.Contains(u.(string), "X-Amz-Expires=120") || num(nn.body["timestamp"]) == 0 {
		t.Fatalf("notify-next: %s", nn.raw)
	}
	resp, err := http.Get(u.(string))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "firmware" {
		t.Fatalf("presigned URL from notify-next: %d %q", resp.StatusCode, body)
	}

	g := d.accepted("get", map[string]any{"clientToken": "t-get"})
	if g["clientToken"] != "t-get" || len(g["queuedJobs"].([]any)) != 1 || len(g["inProgressJobs"].([]any)) != 0 {
		t.Fatalf("get: %v", g)
	}
	x := d.accepted("$next/get", map[string]any{"clientToken": "t-next"})
	if field(x, "execution", "thingName") != "dev1" || field(x, "execution", "jobDocument", "operation") != "install" ||
		x["clientToken"] != "t-next" {
		t.Fatalf("$next: %v", x)
	}
	x = d.accepted("start-next", map[string]any{"statusDetails": map[string]string{"stage": "download"}, "stepTimeoutInMinutes": 100})
	if field(x, "execution", "status") != StatusInProgress || num(field(x, "execution", "versionNumber")) != 2 ||
		field(x, "execution", "statusDetails", "stage") != "download" || num(field(x, "execution", "approximateSecondsBeforeTimedOut")) < 1 {
		t.Fatalf("start-next: %v", x)
	}
	d.quiet(d.jobs("notify-next"), 100*time.Millisecond) // the head only changed status

	x = d.accepted("j1/update", map[string]any{"status": "IN_PROGRESS", "expectedVersion": 2,
		"statusDetails": map[string]string{"stage": "download", "progress": "50"}, "includeJobExecutionState": true})
	if num(field(x, "executionState", "versionNumber")) != 3 || x["jobDocument"] != nil {
		t.Fatalf("update with state: %v", x)
	}
	// Some SDKs send expectedVersion as a string.
	x = d.accepted("j1/update", map[string]any{"status": "IN_PROGRESS", "expectedVersion": "3", "includeJobDocument": true, "clientToken": "t-up"})
	if field(x, "jobDocument", "operation") != "install" || x["executionState"] != nil || x["clientToken"] != "t-up" {
		t.Fatalf("update with document: %v", x)
	}
	x = d.accepted("j1/update", map[string]any{"status": "SUCCEEDED", "expectedVersion": 4})
	if len(x) != 1 || num(x["timestamp"]) == 0 {
		t.Fatalf("plain update answer must be just the timestamp: %v", x)
	}
	if n := d.expect(d.jobs("notify")); len(field(n.body, "jobs").(map[string]any)) != 0 {
		t.Fatalf("notify after the last job: %s", n.raw)
	}
	if nn := d.expect(d.jobs("notify-next")); nn.body["execution"] != nil || len(nn.body) != 1 {
		t.Fatalf("notify-next with nothing pending: %s", nn.raw)
	}
	if x := d.accepted("$next/get", map[string]any{}); x["execution"] != nil {
		t.Fatalf("$next with nothing pending: %v", x)
	}
	if x := d.accepted("start-next", map[string]any{}); x["execution"] != nil {
		t.Fatalf("start-next with nothing pending: %v", x)
	}
	if g := d.accepted("get", map[string]any{}); len(g["queuedJobs"].([]any))+len(g["inProgressJobs"].([]any)) != 0 {
		t.Fatalf("get with nothing pending: %v", g)
	}
	e, err := s.DescribeJobExecution("j1", "dev1", 0)
	if err != nil || e.Status != StatusSucceeded || e.VersionNumber != 5 || e.StatusDetails.DetailsMap["progress"] != "50" {
		t.Fatalf("control plane after SUCCEEDED: %+v %v", e, err)
	}
}

// TestPresignedURLIsFreshOnEveryDelivery: each delivery of the document presigns again, and each
// URL expires expiresInSec after its delivery.
func TestPresignedURLIsFreshOnEveryDelivery(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC).Unix())
	now := func() time.Time { return time.Unix(clock.Load(), 0) }
	s := startSim(t, Config{Now: now, S3Addr: "127.0.0.1:0", ArtifactDir: t.TempDir()})
	d := connectDevice(t, s.MQTTURL(), "dev1", devOpts{subscribe: true})
	mustCreate(t, s, CreateJobInput{JobID: "j", Targets: []string{"dev1"}, PresignedURLConfig: &PresignedURLConfig{ExpiresInSec: 60},
		Document: `{"a":"${aws:iot:s3-presigned-url:https://s3.us-east-1.amazonaws.com/b/k1}",` +
			`"b":"${aws:iot:s3-presigned-url-v2:https%3A%2F%2Fb.s3.us-east-1.amazonaws.com%2Fdir%2Fk%202}"}`})
	first := d.accepted("j/get", map[string]any{})
	clock.Add(10)
	second := d.accepted("$next/get", map[string]any{})
	u1, u2 := field(first, "execution", "jobDocument", "a").(string), field(second, "execution", "jobDocument", "a").(string)
	if u1 == u2 {
		t.Fatalf("the same URL was delivered twice: %s", u1)
	}
	v2 := field(second, "execution", "jobDocument", "b").(string)
	if !strings.HasPrefix(v2, s.S3URL()+"/b/dir/k%202?") {
		t.Fatalf("v2 placeholder (virtual-hosted, URL-encoded): %s", v2)
	}
	check := func(raw string) error {
		pu, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Presigner().Check(pu)
		return err
	}
	clock.Add(55) // 65 s after the first delivery, 55 s after the second
	if err := check(u1); !errors.Is(err, s3.ErrURLExpired) {
		t.Fatalf("first URL after 65 s: %v", err)
	}
	if err := check(u2); err != nil {
		t.Fatalf("second URL after 55 s: %v", err)
	}
	if doc, _ := s.GetJobDocument("j"); !strings.Contains(doc, "${aws:iot:s3-presigned-url:") {
		t.Fatalf("stored document lost its placeholder: %s", doc)
	}
}

// TestEveryErrorCodeAndItsPayload sends one bad request per row and checks the rejection's code and
// AWS's error shape: code, message, timestamp, clientToken echoed, executionState exactly for
// VersionMismatch and InvalidStateTransition.
func TestEveryErrorCodeAndItsPayload(t *testing.T) {
	s := startSim(t, Config{})
	d := connectDevice(t, s.MQTTURL(), "dev1", devOpts{subscribe: true})
	mustCreate(t, s, CreateJobInput{JobID: "done", Targets: []string{"dev1"}})
	d.accepted("start-next", map[string]any{})
	d.accepted("done/update", map[string]any{"status": "SUCCEEDED"})
	mustCreate(t, s, CreateJobInput{JobID: "j", Targets: []string{"dev1"}})
	d.accepted("start-next", map[string]any{}) // j: IN_PROGRESS, version 2

	long := strings.Repeat("x", 65)
	rows := []struct {
		name, rest string
		body       any
		code       string
		state      string // expected executionState.status ("" = none)
		inject     string
	}{
		{"topic that maps to no API", "j/bogus", map[string]any{"clientToken": "c"}, CodeInvalidTopic, "", ""},
		{"payload not JSON", "j/update", "{not json", CodeInvalidJSON, "", ""},
		{"empty payload", "j/get", "", CodeInvalidJSON, "", ""},
		{"payload a JSON array", "j/get", "[]", CodeInvalidRequest, "", ""},
		{"missing status", "j/update", map[string]any{"clientToken": "c"}, CodeInvalidRequest, "", ""},
		{"service-only status", "j/update", map[string]any{"status": "TIMED_OUT", "clientToken": "c"}, CodeInvalidRequest, "", ""},
		{"statusDetails key with a space", "j/update", map[string]any{"status": "IN_PROGRESS", "statusDetails": map[string]string{"a b": "v"}, "clientToken": "c"}, CodeInvalidRequest, "", ""},
		{"statusDetails value of 1025 chars", "j/update", map[string]any{"status": "IN_PROGRESS", "statusDetails": map[string]string{"k": strings.Repeat("v", 1025)}, "clientToken": "c"}, CodeInvalidRequest, "", ""},
		{"statusDetails value with a newline", "j/update", map[string]any{"status": "IN_PROGRESS", "statusDetails": map[string]string{"k": "a\nb"}, "clientToken": "c"}, CodeInvalidRequest, "", ""},
		{"statusDetails empty value", "start-next", map[string]any{"statusDetails": map[string]string{"k": ""}, "clientToken": "c"}, CodeInvalidRequest, "", ""},
		{"statusDetails number value", "j/update", map[string]any{"status": "IN_PROGRESS", "statusDetails": map[string]any{"k": 1}, "clientToken": "c"}, CodeInvalidRequest, "", ""},
		{"clientToken of 65 bytes", "get", map[string]any{"clientToken": long}, CodeInvalidRequest, "", ""},
		{"stepTimeoutInMinutes 0", "j/update", map[string]any{"status": "IN_PROGRESS", "stepTimeoutInMinutes": 0, "clientToken": "c"}, CodeInvalidRequest, "", ""},
		{"stepTimeoutInMinutes 10081", "start-next", map[string]any{"stepTimeoutInMinutes": 10081, "clientToken": "c"}, CodeInvalidRequest, "", ""},
		{"expectedVersion not a number", "j/update", map[string]any{"status": "IN_PROGRESS", "expectedVersion": "two", "clientToken": "c"}, CodeInvalidRequest, "", ""},
		{"update of an unknown job", "nope/update", map[string]any{"status": "IN_PROGRESS", "clientToken": "c"}, CodeResourceNotFound, "", ""},
		{"describe of an unknown job", "nope/get", map[string]any{"clientToken": "c"}, CodeResourceNotFound, "", ""},
		{"describe of an unknown executionNumber", "j/get", map[string]any{"executionNumber": 7, "clientToken": "c"}, CodeResourceNotFound, "", ""},
		{"stale expectedVersion", "j/update", map[string]any{"status": "IN_PROGRESS", "expectedVersion": 1, "clientToken": "c"}, CodeVersionMismatch, StatusInProgress, ""},
		{"REJECTED after IN_PROGRESS", "j/update", map[string]any{"status": "REJECTED", "clientToken": "c"}, CodeInvalidStateTransition, StatusInProgress, ""},
		{"update of a terminal execution", "done/update", map[string]any{"status": "IN_PROGRESS", "clientToken": "c"}, CodeInvalidStateTransition, StatusSucceeded, ""},
		{"describe of a terminal execution", "done/get", map[string]any{"clientToken": "c"}, CodeTerminalStateReached, "", ""},
		{"throttled", "get", map[string]any{"clientToken": "c"}, CodeRequestThrottled, "", CodeRequestThrottled},
		{"service error", "j/update", map[string]any{"status": "IN_PROGRESS", "clientToken": "c"}, CodeInternalError, "", CodeInternalError},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			d.t = t
			if r.inject != "" {
				s.InjectDeviceErrors("dev1", r.inject, 1)
			}
			b := d.rejected(r.rest, r.body, r.code)
			want := []string{"code", "message", "timestamp"}
			if m, ok := r.body.(map[string]any); ok && m["clientToken"] != nil {
				want = append(want, "clientToken")
				if b["clientToken"] != m["clientToken"] {
					t.Errorf("clientToken not echoed: %v", b)
				}
			}
			if r.state != "" {
				want = append(want, "executionState")
				if field(b, "executionState", "status") != r.state || num(field(b, "executionState", "versionNumber")) == 0 {
					t.Errorf("executionState: %v", b["executionState"])
				}
			}
			var got []string
			for k := range b {
				got = append(got, k)
			}
			sort.Strings(got)
			sort.Strings(want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("fields %v, want %v: %v", got, want, b)
			}
			if msg, _ := b["message"].(string); msg == "" || num(b["timestamp"]) == 0 {
				t.Errorf("message/timestamp: %v", b)
			}
		})
	}
	d.t = t
	// Nothing above changed the execution: the next good update sees version 2.
	d.accepted("j/update", map[string]any{"status": "IN_PROGRESS", "expectedVersion": 2})
}

// TestDeviceDeniedAnotherThingsTopics: a device may only subscribe and publish under its own
// $aws/things/<thing>/; a QoS 1 publish elsewhere costs it its connection, as on AWS.
func TestDeviceDeniedAnotherThingsTopics(t *testing.T) {
	ca, err := testpki.NewCA("jobsim test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server("jobsim")
	if err != nil {
		t.Fatal(err)
	}
	sc, err := srv.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	s := startSim(t, Config{TLSAddr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{sc}, ClientCAs: ca.Pool()}})
	clientTLS := func(thing string) *tls.Config {
		p, err := ca.Client(thing)
		if err != nil {
			t.Fatal(err)
		}
		c, err := p.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Config{Certificates: []tls.Certificate{c}, RootCAs: ca.Pool(), NextProtos: []string{"x-amzn-mqtt-ca"}, ServerName: "localhost"}
	}
	victim := connectDevice(t, s.TLSURL(), "dev2", devOpts{tls: clientTLS("dev2"), subscribe: true})
	thief := connectDevice(t, s.TLSURL(), "dev1", devOpts{tls: clientTLS("dev1"), subscribe: true})

	for _, f := range []string{"$aws/things/dev2/jobs/notify-next", "$aws/things/+/jobs/notify-next", "$aws/things/dev2/#", "#", "$aws/#"} {
		if got := thief.subscribe(f); got != 0x80 {
			t.Errorf("dev1 subscribing %s: granted %#x, want 0x80", f, got)
		}
	}
	mustCreate(t, s, CreateJobInput{JobID: "j", Targets: []string{"dev2"}})
	victim.expect(victim.jobs("notify-next"))
	thief.quiet("$aws/things/dev2/jobs/notify-next", 200*time.Millisecond)

	// A certificate for dev1 cannot connect as dev2.
	if _, err := tryConnect(t, s.TLSURL(), "dev2", devOpts{clientID: "dev2", tls: clientTLS("dev1")}); err == nil {
		t.Fatal("dev1's certificate connected as dev2")
	}
	// A device without a client certificate is refused at the TLS handshake.
	if _, err := tryConnect(t, s.TLSURL(), "dev3", devOpts{tls: &tls.Config{RootCAs: ca.Pool(), NextProtos: []string{"x-amzn-mqtt-ca"}, ServerName: "localhost"}}); err == nil {
		t.Fatal("a device without a certificate connected")
	}

	thief.c.Publish("$aws/things/dev2/jobs/j/update", 1, false, `{"status":"SUCCEEDED"}`)
	select {
	case <-thief.lost:
	case <-time.After(waitReply):
		t.Fatal("a QoS 1 publish to another thing's topic did not cost the connection")
	}
	if e, _ := s.DescribeJobExecution("j", "dev2", 0); e.Status != StatusQueued || e.VersionNumber != 1 {
		t.Fatalf("dev1 changed dev2's execution: %+v", e)
	}
	victim.accepted("j/update", map[string]any{"status": "IN_PROGRESS", "expectedVersion": 1})
}

// TestStepTimeoutEndsInTimedOut: the step timer runs out while IN_PROGRESS; the device is told
// through notify/notify-next and its late update is refused.
func TestStepTimeoutEndsInTimedOut(t *testing.T) {
	var mu sync.Mutex
	var events []Event
	s := startSim(t, Config{Minute: 150 * time.Millisecond, OnEvent: func(e Event) { mu.Lock(); events = append(events, e); mu.Unlock() }})
	d := connectDevice(t, s.MQTTURL(), "dev1", devOpts{subscribe: true})
	mustCreate(t, s, CreateJobInput{JobID: "j", Targets: []string{"dev1"}})
	d.expect(d.jobs("notify-next"))
	started := time.Now()
	d.accepted("start-next", map[string]any{"stepTimeoutInMinutes": 2})
	// Renew halfway with a shorter step: the new value replaces the old one.
	d.accepted("j/update", map[string]any{"status": "IN_PROGRESS", "stepTimeoutInMinutes": 1})
	if nn := d.expect(d.jobs("notify-next")); nn.body["execution"] != nil {
		t.Fatalf("notify-next after the timeout: %s", nn.raw)
	}
	if el := time.Since(started); el < 140*time.Millisecond || el > 2*time.Second {
		t.Fatalf("timed out after %v, want about 150 ms", el)
	}
	b := d.rejected("j/update", map[string]any{"status": "SUCCEEDED"}, CodeInvalidStateTransition)
	if field(b, "executionState", "status") != StatusTimedOut {
		t.Fatalf("late update: %v", b)
	}
	d.rejected("j/get", map[string]any{}, CodeTerminalStateReached)
	if e, _ := s.DescribeJobExecution("j", "dev1", 0); e.Status != StatusTimedOut {
		t.Fatalf("control plane: %+v", e)
	}
	mu.Lock()
	defer mu.Unlock()
	var seen bool
	for _, e := range events {
		seen = seen || (e.Kind == EventTimedOut && e.JobID == "j" && e.Thing == "dev1" && e.Status == StatusTimedOut)
	}
	if !seen {
		t.Fatalf("no timed-out event in %v", events)
	}
}

// TestInProgressTimeoutCapsTheStepTimer: a long step timer cannot outlive the job's in-progress
// timeout; with a retry configured the TIMED_OUT execution comes back with a new executionNumber.
func TestInProgressTimeoutRetriesWithNewExecutionNumber(t *testing.T) {
	s := startSim(t, Config{Minute: 100 * time.Millisecond})
	d := connectDevice(t, s.MQTTURL(), "dev1", devOpts{subscribe: true})
	mustCreate(t, s, CreateJobInput{JobID: "j", Targets: []string{"dev1"},
		TimeoutConfig:            &TimeoutConfig{InProgressTimeoutInMinutes: 2},
		JobExecutionsRetryConfig: &RetryConfig{CriteriaList: []RetryCriteria{{FailureType: "ALL", NumberOfRetries: 2}}}})
	d.expect(d.jobs("notify-next"))
	d.accepted("start-next", map[string]any{"stepTimeoutInMinutes": 600})
	nn := d.expect(d.jobs("notify-next"))
	if field(nn.body, "execution", "jobId") != "j" || num(field(nn.body, "execution", "executionNumber")) != 2 ||
		field(nn.body, "execution", "status") != StatusQueued || num(field(nn.body, "execution", "versionNumber")) != 1 {
		t.Fatalf("retry after TIMED_OUT: %s", nn.raw)
	}
	// The device fails the second attempt: a third comes.
	x := d.accepted("start-next", map[string]any{})
	if num(field(x, "execution", "executionNumber")) != 2 {
		t.Fatalf("start-next of the retry: %v", x)
	}
	d.accepted("j/update", map[string]any{"status": "FAILED", "statusDetails": map[string]string{"reason": "DOWNLOAD_FAILED"}})
	nn = d.expect(d.jobs("notify-next"))
	if num(field(nn.body, "execution", "executionNumber")) != 3 {
		t.Fatalf("retry after FAILED: %s", nn.raw)
	}
	// An update naming an earlier attempt is refused.
	d.rejected("j/update", map[string]any{"status": "IN_PROGRESS", "executionNumber": 1}, CodeInvalidStateTransition)
	if e, _ := s.DescribeJobExecution("j", "dev1", 1); e.Status != StatusTimedOut {
		t.Fatalf("first attempt: %+v", e)
	}
	l, _ := s.ListJobExecutionsForJob("j")
	if len(l) != 1 || l[0].JobExecutionSummary.ExecutionNumber != 3 || l[0].JobExecutionSummary.RetryAttempt != 2 {
		t.Fatalf("list: %+v", l)
	}
}

// TestForceCancelWhileInProgressRejectsTheNextUpdate: a plain cancel leaves the running execution
// alone; a forced one cancels it and the device's next update is refused.
func TestForceCancelWhileInProgressRejectsTheNextUpdate(t *testing.T) {
	s := startSim(t, Config{})
	api := &Client{BaseURL: s.HTTPURL()}
	ctx := context.Background()
	d := connectDevice(t, s.MQTTURL(), "dev1", devOpts{subscribe: true})
	mustCreate(t, s, CreateJobInput{JobID: "j", Targets: []string{"dev1"}})
	d.accepted("start-next", map[string]any{})
	if err := api.CancelJob(ctx, "j", CancelJobInput{ReasonCode: "OPERATOR", Comment: "stop"}); err != nil {
		t.Fatal(err)
	}
	d.accepted("j/update", map[string]any{"status": "IN_PROGRESS", "expectedVersion": 2})
	d.expect(d.jobs("notify-next")) // queued at creation
	if err := api.CancelJob(ctx, "j", CancelJobInput{Force: true}); err != nil {
		t.Fatal(err)
	}
	if nn := d.expect(d.jobs("notify-next")); nn.body["execution"] != nil {
		t.Fatalf("notify-next after force cancel: %s", nn.raw)
	}
	b := d.rejected("j/update", map[string]any{"status": "SUCCEEDED", "expectedVersion": 3}, CodeInvalidStateTransition)
	if field(b, "executionState", "status") != StatusCanceled {
		t.Fatalf("update after force cancel: %v", b)
	}
	j, err := api.DescribeJob(ctx, "j")
	if err != nil || j.Status != JobCanceled || !j.ForceCanceled || j.ReasonCode != "OPERATOR" || j.JobProcessDetails.NumberOfCanceledThings != 1 {
		t.Fatalf("job: %+v %v", j, err)
	}
}

// TestDeleteJobAnswersResourceNotFound: deleting a running job needs force; afterwards the device's
// requests about it get ResourceNotFound.
func TestDeleteJobAnswersResourceNotFound(t *testing.T) {
	s := startSim(t, Config{})
	api := &Client{BaseURL: s.HTTPURL()}
	ctx := context.Background()
	d := connectDevice(t, s.MQTTURL(), "dev1", devOpts{subscribe: true})
	mustCreate(t, s, CreateJobInput{JobID: "j", Targets: []string{"dev1"}})
	d.accepted("start-next", map[string]any{})
	var ae *APIError
	if err := api.DeleteJob(ctx, "j", false); !errors.As(err, &ae) || ae.Status != 409 || ae.Code != ExcInvalidStateTransition {
		t.Fatalf("delete of a running job without force: %v", err)
	}
	if err := api.DeleteJob(ctx, "j", true); err != nil {
		t.Fatal(err)
	}
	d.rejected("j/update", map[string]any{"status": "SUCCEEDED"}, CodeResourceNotFound)
	d.rejected("j/get", map[string]any{}, CodeResourceNotFound)
	if err := api.DeleteJob(ctx, "j", true); !errors.As(err, &ae) || ae.Status != 404 || ae.Code != ExcResourceNotFound {
		t.Fatalf("second delete: %v", err)
	}
}

// TestUnsubscribedDeviceStillGetsItsAnswer: AWS delivers /accepted and /rejected to the requester
// without a subscription.
func TestUnsubscribedDeviceStillGetsItsAnswer(t *testing.T) {
	s := startSim(t, Config{})
	d := connectDevice(t, s.MQTTURL(), "dev1", devOpts{})
	mustCreate(t, s, CreateJobInput{JobID: "j", Targets: []string{"dev1"}})
	if x := d.accepted("$next/get", map[string]any{"clientToken": "a"}); field(x, "execution", "jobId") != "j" {
		t.Fatalf("$next: %v", x)
	}
	d.rejected("nope/get", map[string]any{}, CodeResourceNotFound)
	d.quiet(d.jobs("notify-next"), 50*time.Millisecond) // notifications still need a subscription
}

func TestDisconnectThingDropsTheConnection(t *testing.T) {
	s := startSim(t, Config{})
	d := connectDevice(t, s.MQTTURL(), "dev1", devOpts{})
	if err := s.DisconnectThing("dev1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.lost:
	case <-time.After(waitReply):
		t.Fatal("still connected")
	}
	if err := s.DisconnectThing("ghost"); err == nil {
		t.Fatal("disconnecting an unknown thing succeeded")
	}
}

// TestControlAPIOverHTTP checks AWS's REST paths and error shape on the wire.
func TestControlAPIOverHTTP(t *testing.T) {
	s := startSim(t, Config{})
	api := &Client{BaseURL: s.HTTPURL()}
	ctx := context.Background()
	out, err := api.CreateJob(ctx, CreateJobInput{JobID: "j", Targets: []string{"dev1", ThingArn("dev2")},
		Document: `{"operation":"install"}`, PresignedURLConfig: &PresignedURLConfig{ExpiresInSec: 300},
		TimeoutConfig:            &TimeoutConfig{InProgressTimeoutInMinutes: 30},
		JobExecutionsRetryConfig: &RetryConfig{CriteriaList: []RetryCriteria{{FailureType: "FAILED", NumberOfRetries: 2}}}})
	if err != nil || out.JobArn != JobArn("j") {
		t.Fatalf("create: %+v %v", out, err)
	}
	j, err := api.DescribeJob(ctx, "j")
	if err != nil || j.Status != JobInProgress || j.JobProcessDetails.NumberOfQueuedThings != 2 || j.PresignedURLConfig.ExpiresInSec != 300 ||
		j.TimeoutConfig.InProgressTimeoutInMinutes != 30 || j.JobExecutionsRetryConfig.CriteriaList[0].NumberOfRetries != 2 {
		t.Fatalf("describe: %+v %v", j, err)
	}
	e, err := api.DescribeJobExecution(ctx, "j", "dev2", 1)
	if err != nil || e.Status != StatusQueued || e.ThingArn != ThingArn("dev2") || e.VersionNumber != 1 {
		t.Fatalf("describe execution: %+v %v", e, err)
	}
	l, err := api.ListJobExecutionsForJob(ctx, "j")
	if err != nil || len(l) != 2 || l[0].ThingArn != ThingArn("dev1") {
		t.Fatalf("list: %+v %v", l, err)
	}

	var ae *APIError
	if _, err := api.CreateJob(ctx, CreateJobInput{JobID: "j", Targets: []string{"dev1"}, Document: "{}"}); !errors.As(err, &ae) || ae.Status != 409 || ae.Code != ExcResourceAlreadyExists {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := api.CreateJob(ctx, CreateJobInput{JobID: "k", Targets: []string{"dev1"}, Document: `{"u":"${aws:iot:s3-presigned-url:https://s3.x.amazonaws.com/}"}`}); !errors.As(err, &ae) || ae.Status != 400 {
		t.Fatalf("placeholder without bucket/key: %v", err)
	}
	for _, c := range []struct{ method, path, body, code string }{
		{"GET", "/jobs/nope", "", ExcResourceNotFound},
		{"GET", "/things/dev9/jobs/j", "", ExcResourceNotFound},
		{"PUT", "/jobs/x", "{", ExcInvalidRequest},
		{"PUT", "/jobs/nope/cancel", "", ExcResourceNotFound},
	} {
		req, _ := http.NewRequest(c.method, s.HTTPURL()+c.path, strings.NewReader(c.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.Header.Get("X-Amzn-ErrorType") != c.code || !strings.Contains(string(b), `"__type":"`+c.code+`"`) ||
			!strings.Contains(string(b), `"message":`) {
			t.Errorf("%s %s: %d %s %s", c.method, c.path, resp.StatusCode, resp.Header.Get("X-Amzn-ErrorType"), b)
		}
	}
}

// TestOnEventSeesOperationsBeforeTheDevice: OnEvent has been called for an operation by the time
// the device holds the answer, and it may read the control plane without deadlocking the emulator.
func TestOnEventSeesOperationsBeforeTheDevice(t *testing.T) {
	var s *Sim
	var mu sync.Mutex
	var statuses, requests []string
	ready := make(chan struct{})
	s = startSim(t, Config{OnEvent: func(e Event) {
		<-ready
		mu.Lock()
		defer mu.Unlock()
		switch e.Kind {
		case EventStatus:
			x, err := s.DescribeJobExecution(e.JobID, e.Thing, e.ExecutionNumber)
			if err != nil {
				t.Errorf("describe from OnEvent: %v", err)
			}
			statuses = append(statuses, x.Status)
		case EventDeviceRequest:
			requests = append(requests, e.Detail)
		}
	}})
	close(ready)
	d := connectDevice(t, s.MQTTURL(), "dev1", devOpts{subscribe: true})
	mustCreate(t, s, CreateJobInput{JobID: "j", Targets: []string{"dev1"}})
	d.accepted("start-next", map[string]any{})
	d.accepted("j/update", map[string]any{"status": "SUCCEEDED"})
	mu.Lock()
	defer mu.Unlock()
	if want := []string{StatusQueued, StatusInProgress, StatusSucceeded}; !reflect.DeepEqual(statuses, want) {
		t.Fatalf("statuses seen by OnEvent: %v, want %v", statuses, want)
	}
	if want := []string{"StartNextPendingJobExecution", "UpdateJobExecution j"}; !reflect.DeepEqual(requests, want) {
		t.Fatalf("requests seen by OnEvent when the device had its answers: %v, want %v", requests, want)
	}
}

// TestFireTimersWithAnInjectedClock: with Config.Now a test moves time itself and fires timers.
func TestFireTimersWithAnInjectedClock(t *testing.T) {
	var clock atomic.Int64
	clock.Store(1_800_000_000)
	s := startSim(t, Config{Now: func() time.Time { return time.Unix(clock.Load(), 0) }, Minute: time.Minute})
	d := connectDevice(t, s.MQTTURL(), "dev1", devOpts{subscribe: true})
	mustCreate(t, s, CreateJobInput{JobID: "j", Targets: []string{"dev1"}})
	d.expect(d.jobs("notify-next"))
	d.accepted("start-next", map[string]any{"stepTimeoutInMinutes": 10})
	clock.Add(599)
	s.FireTimers()
	if e, _ := s.DescribeJobExecution("j", "dev1", 0); e.Status != StatusInProgress || e.ApproximateSecondsBeforeTimedOut != 1 {
		t.Fatalf("one second before the step timer: %+v", e)
	}
	clock.Add(1)
	s.FireTimers()
	if nn := d.expect(d.jobs("notify-next")); nn.body["execution"] != nil {
		t.Fatalf("notify-next: %s", nn.raw)
	}
	if e, _ := s.DescribeJobExecution("j", "dev1", 0); e.Status != StatusTimedOut {
		t.Fatalf("at the step timer: %+v", e)
	}
}

// TestArtifactServerOverTLS: with S3TLS the presigned URLs are https and the object is served.
func TestArtifactServerOverTLS(t *testing.T) {
	ca, err := testpki.NewCA("s3 test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := ca.Server("s3")
	cert, err := srv.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "b", "k"), []byte("payload"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startSim(t, Config{S3Addr: "127.0.0.1:0", S3TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, ArtifactDir: dir})
	if !strings.HasPrefix(s.S3URL(), "https://") || s.Artifacts() == nil {
		t.Fatalf("S3URL %q", s.S3URL())
	}
	mustCreate(t, s, CreateJobInput{JobID: "j", Targets: []string{"dev1"}, Document: `{"u":"${aws:iot:s3-presigned-url:b/k}"}`})
	d := connectDevice(t, s.MQTTURL(), "dev1", devOpts{})
	u := field(d.accepted("$next/get", map[string]any{}), "execution", "jobDocument", "u").(string)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "payload" {
		t.Fatalf("GET %s: %d %q", u, resp.StatusCode, body)
	}
}

// TestCreateJobRefusesAnUnterminatedPlaceholder: a placeholder without its closing brace used to
// be accepted, swallowed the rest of the document up to the next '}', and made every delivery an
// InternalError (notify-next silently unsent), leaving the device's queue stuck. AWS refuses it
// at CreateJob; so does the emulator, naming the placeholder.
func TestCreateJobRefusesAnUnterminatedPlaceholder(t *testing.T) {
	s := startSim(t, Config{})
	for name, doc := range map[string]string{
		"v1, brace of a later object": `{"files":{"url":"${aws:iot:s3-presigned-url:https://s3.us-east-1.amazonaws.com/bucket/fw.bin","size":1}}`,
		"v2, brace of a later object": `{"files":{"url":"${aws:iot:s3-presigned-url-v2:https%3A%2F%2Fs3.us-east-1.amazonaws.com%2Fbucket%2Ffw.bin","size":1}}`,
		"no kind separator":           `{"files":{"url":"${aws:iot:s3-presigned-url","size":1}}`,
		"space inside":                `{"files":{"url":"${aws:iot:s3-presigned-url:https://s3.us-east-1.amazonaws.com/bucket/fw .bin}"}}`,
	} {
		_, err := s.CreateJob(CreateJobInput{JobID: "j", Targets: []string{"dev1"}, Document: doc})
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != 400 || ae.Code != ExcInvalidRequest || !strings.Contains(ae.Message, "placeholder") {
			t.Errorf("%s: CreateJob answered %v, want InvalidRequestException naming the placeholder", name, err)
		}
	}
	if _, err := s.DescribeJob("j"); err == nil {
		t.Fatal("a refused job exists")
	}
	// A per-device upload URL is not a download placeholder: its key holds ${thingName}.
	up := `{"files":{"url":"${aws:iot:s3-presigned-url:https://s3.us-east-1.amazonaws.com/bucket/fw.bin}"},` +
		`"uploadLogs":"${aws:iot:s3-presigned-url-upload:https://s3.us-east-1.amazonaws.com/bucket/logs/${thingName}/${jobId}.log}"}`
	if _, err := s.CreateJob(CreateJobInput{JobID: "up", Targets: []string{"dev1"}, Document: up}); err != nil {
		t.Fatalf("upload placeholder refused: %v", err)
	}
}

// TestScheduledJobReachesDevicesOnlyInItsWindow: over MQTT, devices hear nothing of a scheduled job
// (no notify-next, an empty $next, an empty pending list) until its maintenance window opens;
// then every one of them gets notify-next with the job.
func TestScheduledJobReachesDevicesOnlyInItsWindow(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC).Unix())
	now := func() time.Time { return time.Unix(clock.Load(), 0) }
	s := startSim(t, Config{Now: now})
	var devs []*device
	for _, th := range []string{"dev1", "dev2", "dev3"} {
		devs = append(devs, connectDevice(t, s.MQTTURL(), th, devOpts{subscribe: true}))
	}
	mustCreate(t, s, CreateJobInput{JobID: "night", Targets: []string{"dev1", "dev2", "dev3"},
		SchedulingConfig: &SchedulingConfig{MaintenanceWindows: []MaintenanceWindow{{StartTime: "cron(0 2 * * ? *)", DurationInMinutes: 30}}}})
	for _, at := range []time.Duration{0, time.Hour, 119 * time.Minute} {
		clock.Store(time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC).Add(at).Unix())
		s.FireTimers()
		for _, d := range devs {
			d.quiet(d.jobs("notify-next"), 50*time.Millisecond)
			if x := d.accepted("$next/get", map[string]any{}); x["execution"] != nil {
				t.Fatalf("%s at +%v: $next is %v", d.thing, at, x["execution"])
			}
		}
	}
	if j, _ := s.DescribeJob("night"); j.Status != JobScheduled {
		t.Fatalf("job before its window: %s", j.Status)
	}
	clock.Store(time.Date(2027, 3, 1, 2, 0, 0, 0, time.UTC).Unix())
	s.FireTimers()
	for _, d := range devs {
		n := d.expect(d.jobs("notify-next"))
		if field(n.body, "execution", "jobId") != "night" {
			t.Fatalf("%s in the window: %s", d.thing, n.raw)
		}
	}
	if j, _ := s.DescribeJob("night"); j.Status != JobInProgress {
		t.Fatalf("job in its window: %s", j.Status)
	}
}
