package jobs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldota/fieldota/test/testpki"
)

func TestRequestsUseAWSTopicsAndPayloads(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	b.setServe(func(r request) { b.answer(r, "accepted", map[string]any{}) })
	c := dial(t, testConfig(b))
	ctx := ctxT(t, 10*time.Second)

	if _, err := c.GetPending(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartNext(ctx, StartNextInput{StatusDetails: map[string]string{"stage": "validate"}, StepTimeoutInMinutes: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Describe(ctx, DescribeInput{JobID: NextJobID}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Describe(ctx, DescribeInput{JobID: "job-1", ExecutionNumber: 3, IncludeJobDocument: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Update(ctx, "job-1", UpdateInput{Status: InProgress, StatusDetails: map[string]string{"stage": "download"},
		ExpectedVersion: Version(2), ExecutionNumber: 3, IncludeJobExecutionState: true, IncludeJobDocument: true, StepTimeoutInMinutes: 15}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Update(ctx, "job-1", UpdateInput{Status: Succeeded}); err != nil {
		t.Fatal(err)
	}
	want := []struct{ topic, body string }{
		{"$aws/things/dev1/jobs/get", `{}`},
		{"$aws/things/dev1/jobs/start-next", `{"statusDetails":{"stage":"validate"},"stepTimeoutInMinutes":5}`},
		// includeJobDocument is always explicit: AWS documents disagree on its default.
		{"$aws/things/dev1/jobs/$next/get", `{"includeJobDocument":false}`},
		{"$aws/things/dev1/jobs/job-1/get", `{"executionNumber":3,"includeJobDocument":true}`},
		{"$aws/things/dev1/jobs/job-1/update", `{"status":"IN_PROGRESS","statusDetails":{"stage":"download"},"expectedVersion":2,
			"executionNumber":3,"includeJobExecutionState":true,"includeJobDocument":true,"stepTimeoutInMinutes":15}`},
		{"$aws/things/dev1/jobs/job-1/update", `{"status":"SUCCEEDED"}`},
	}
	got := b.seen()
	if len(got) != len(want) {
		t.Fatalf("broker saw %d requests, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Topic != w.topic {
			t.Errorf("request %d on %s, want %s", i, got[i].Topic, w.topic)
		}
		if got[i].Token == "" || len(got[i].Token) > MaxClientTokenLen {
			t.Errorf("request %d: clientToken %q", i, got[i].Token)
		}
		delete(got[i].Fields, "clientToken")
		body, _ := json.Marshal(got[i].Fields)
		if !jsonEq(body, []byte(w.body)) {
			t.Errorf("request %d body %s, want %s", i, body, w.body)
		}
	}
}

func TestAcceptedAnswersDecode(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	exec := map[string]any{"jobId": "job-1", "thingName": "dev1", "status": "IN_PROGRESS", "statusDetails": map[string]string{"stage": "download"},
		"queuedAt": 1489096123, "startedAt": 1489096124000, "lastUpdatedAt": 1489096125, "versionNumber": 2, "executionNumber": 7,
		"approximateSecondsBeforeTimedOut": 55, "jobDocument": map[string]any{"operation": "install", "files": []any{}}}
	b.setServe(func(r request) {
		switch {
		case strings.HasSuffix(r.Topic, "/jobs/get"):
			b.answer(r, "accepted", map[string]any{"inProgressJobs": []any{map[string]any{"jobId": "job-1", "executionNumber": 7, "versionNumber": 2, "queuedAt": 1}},
				"queuedJobs": []any{map[string]any{"jobId": "job-2", "executionNumber": 1, "versionNumber": 1}}})
		case strings.HasSuffix(r.Topic, "/$next/get"):
			b.answer(r, "accepted", map[string]any{}) // no execution key: nothing pending
		case strings.HasSuffix(r.Topic, "/get"), strings.HasSuffix(r.Topic, "/start-next"):
			b.answer(r, "accepted", map[string]any{"execution": exec})
		case strings.HasSuffix(r.Topic, "/update"):
			b.answer(r, "accepted", map[string]any{"executionState": map[string]any{"status": "IN_PROGRESS", "versionNumber": 3},
				"jobDocument": map[string]any{"operation": "install"}})
		}
	})
	c := dial(t, testConfig(b))
	ctx := ctxT(t, 10*time.Second)

	p, err := c.GetPending(ctx)
	if err != nil || len(p.InProgress) != 1 || p.InProgress[0].ExecutionNumber != 7 || len(p.Queued) != 1 || p.Queued[0].JobID != "job-2" {
		t.Fatalf("GetPending: %+v %v", p, err)
	}
	e, err := c.Describe(ctx, DescribeInput{JobID: NextJobID, IncludeJobDocument: true})
	if err != nil || e != nil {
		t.Fatalf("$next with nothing pending: %+v %v; want nil, nil", e, err)
	}
	e, err = c.StartNext(ctx, StartNextInput{})
	if err != nil || e == nil {
		t.Fatalf("StartNext: %+v %v", e, err)
	}
	if e.JobID != "job-1" || e.Status != InProgress || e.VersionNumber != 2 || e.ExecutionNumber != 7 || e.StatusDetails["stage"] != "download" ||
		e.ApproximateSecondsBeforeTimedOut != 55 || e.StartedAt.Unix() != 1489096124 || e.QueuedAt.Unix() != 1489096123 ||
		!jsonEq(e.JobDocument, []byte(`{"operation":"install","files":[]}`)) {
		t.Fatalf("execution decoded as %+v", e)
	}
	u, err := c.Update(ctx, "job-1", UpdateInput{Status: InProgress, IncludeJobExecutionState: true})
	if err != nil || u.ExecutionState == nil || u.ExecutionState.VersionNumber != 3 || !jsonEq(u.JobDocument, []byte(`{"operation":"install"}`)) {
		t.Fatalf("Update: %+v %v", u, err)
	}
}

func TestThrottledAndFailingRequestsRetryWithFreshTokens(t *testing.T) {
	for _, code := range []string{CodeRequestThrottled, CodeInternalError} {
		t.Run(code, func(t *testing.T) {
			b := startBroker(t, brokerOpts{})
			var n atomic.Int32
			b.setServe(func(r request) {
				if n.Add(1) <= 2 {
					b.answer(r, "rejected", map[string]any{"code": code, "message": "slow down"})
					return
				}
				b.answer(r, "accepted", map[string]any{"executionState": map[string]any{"status": "SUCCEEDED", "versionNumber": 4}})
			})
			var waits []int
			var mu sync.Mutex
			cfg := testConfig(b)
			cfg.Backoff = func(a int) time.Duration {
				mu.Lock()
				waits = append(waits, a)
				mu.Unlock()
				return 5 * time.Millisecond
			}
			c := dial(t, cfg)
			u, err := c.Update(ctxT(t, 10*time.Second), "job-1", UpdateInput{Status: Succeeded, IncludeJobExecutionState: true})
			if err != nil || u.ExecutionState.Status != Succeeded {
				t.Fatalf("Update after 2 %s: %+v %v", code, u, err)
			}
			reqs := b.seen()
			if len(reqs) != 3 || reqs[0].Token == reqs[1].Token || reqs[1].Token == reqs[2].Token || reqs[0].Token == reqs[2].Token {
				t.Fatalf("want 3 attempts with distinct clientTokens, got %+v", reqs)
			}
			if len(waits) != 2 || waits[0] != 1 || waits[1] != 2 {
				t.Fatalf("backoff asked for attempts %v, want [1 2]", waits)
			}
		})
	}
}

func TestRetriesGiveUpAndKeepTheLastRejection(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	b.setServe(func(r request) { b.answer(r, "rejected", map[string]any{"code": CodeRequestThrottled}) })
	cfg := testConfig(b)
	cfg.MaxRetries = 2
	c := dial(t, cfg)
	_, err := c.GetPending(ctxT(t, 10*time.Second))
	if !errors.Is(err, ErrRequestThrottled) {
		t.Fatalf("got %v, want RequestThrottled after the retries", err)
	}
	if n := len(b.seen()); n != 3 {
		t.Fatalf("%d attempts, want 1 + MaxRetries = 3", n)
	}
}

func TestDefinitiveRejectionIsNotRetriedAndCarriesExecutionState(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	b.setServe(func(r request) {
		b.answer(r, "rejected", map[string]any{"code": CodeVersionMismatch, "message": "expected 2",
			"executionState": map[string]any{"status": "IN_PROGRESS", "statusDetails": map[string]string{"stage": "install"}, "versionNumber": 5}})
	})
	c := dial(t, testConfig(b))
	_, err := c.Update(ctxT(t, 10*time.Second), "job-1", UpdateInput{Status: InProgress, ExpectedVersion: Version(2)})
	var re *RejectedError
	if !errors.Is(err, ErrVersionMismatch) || !errors.As(err, &re) {
		t.Fatalf("got %v", err)
	}
	if re.ExecutionState == nil || re.ExecutionState.VersionNumber != 5 || re.ExecutionState.StatusDetails["stage"] != "install" || re.JobID != "job-1" {
		t.Fatalf("rejection lost the execution state: %+v", re)
	}
	if n := len(b.seen()); n != 1 {
		t.Fatalf("VersionMismatch was sent %d times; it must not be retried", n)
	}
}

func TestUnansweredRequestTimesOut(t *testing.T) {
	b := startBroker(t, brokerOpts{}) // no service: nothing ever answers
	cfg := testConfig(b)
	cfg.RequestTimeout = 150 * time.Millisecond
	cfg.MaxRetries = 1
	c := dial(t, cfg)
	start := time.Now()
	_, err := c.Describe(ctxT(t, 10*time.Second), DescribeInput{JobID: NextJobID, IncludeJobDocument: true})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 5*time.Second {
		t.Fatalf("gave up after %s, want ~2 × 150ms", el)
	}
	if n := len(b.seen()); n != 2 {
		t.Fatalf("%d attempts, want 2", n)
	}
}

func TestLateAnswerOfTimedOutAttemptIsNotTakenForTheRetry(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	var n atomic.Int32
	var first request
	firstDone := make(chan struct{})
	b.setServe(func(r request) {
		if n.Add(1) == 1 {
			first = r
			close(firstDone)
			return
		}
		<-firstDone
		// Every later attempt first sees the stale answer to attempt 1, then one with a token
		// nobody sent, then one on another job's topic with its own token; only then its answer.
		b.answer(first, "rejected", map[string]any{"code": CodeResourceNotFound})
		b.publish(r.Topic+"/rejected", map[string]any{"clientToken": "fo-forged-1", "code": CodeTerminalStateReached})
		b.publish("$aws/things/dev1/jobs/other/get/rejected", map[string]any{"clientToken": r.Token, "code": CodeInvalidRequest})
		time.Sleep(50 * time.Millisecond)
		b.answer(r, "accepted", map[string]any{"execution": map[string]any{"jobId": "job-1", "status": "QUEUED", "versionNumber": 1, "executionNumber": 1}})
	})
	cfg := testConfig(b)
	cfg.RequestTimeout = 500 * time.Millisecond
	c := dial(t, cfg)
	e, err := c.Describe(ctxT(t, 10*time.Second), DescribeInput{JobID: "job-1", IncludeJobDocument: true})
	if err != nil || e == nil || e.Status != Queued {
		t.Fatalf("got %+v, %v; want the answer to the second attempt", e, err)
	}
}

func TestJobIDCannotInjectTopicLevels(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	c := dial(t, testConfig(b))
	ctx := ctxT(t, 5*time.Second)
	for _, id := range []string{"", "a/b", "+", "#", "a/+/update", "$next/../x", strings.Repeat("j", 65)} {
		if _, err := c.Describe(ctx, DescribeInput{JobID: id}); !errors.Is(err, ErrInvalidJobID) {
			t.Errorf("Describe(%q): %v", id, err)
		}
		if _, err := c.Update(ctx, id, UpdateInput{Status: InProgress}); !errors.Is(err, ErrInvalidJobID) {
			t.Errorf("Update(%q): %v", id, err)
		}
	}
	if _, err := c.Update(ctx, NextJobID, UpdateInput{Status: InProgress}); !errors.Is(err, ErrInvalidJobID) {
		t.Errorf("Update($next): %v; $next is only for describe", err)
	}
	if n := len(b.seen()); n != 0 {
		t.Fatalf("%d requests reached the broker", n)
	}
}

func TestSlowEventCallbackNeitherBlocksAnswersNorDeadlocks(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	b.setServe(func(r request) {
		b.answer(r, "accepted", map[string]any{"execution": map[string]any{"jobId": "job-9", "status": "QUEUED", "versionNumber": 1, "executionNumber": 1}})
	})
	release := make(chan struct{})
	inCallback := make(chan *JobExecution, 4)
	var calls atomic.Int32
	cfg := testConfig(b)
	var c *Client
	cfg.OnNotifyNext = func(ev NextJobExecutionChanged) {
		calls.Add(1)
		// The callback asks the client, as the agent does: this must not deadlock.
		e, err := c.Describe(context.Background(), DescribeInput{JobID: NextJobID, IncludeJobDocument: true})
		if err != nil {
			t.Errorf("Describe inside the callback: %v", err)
		}
		inCallback <- e
		<-release
	}
	c = dial(t, cfg)
	b.publish("$aws/things/dev1/jobs/notify-next", `{"timestamp":1,"execution":{"jobId":"job-1","status":"QUEUED","versionNumber":1,"executionNumber":1}}`)
	select {
	case e := <-inCallback:
		if e == nil || e.JobID != "job-9" {
			t.Fatalf("callback's Describe got %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("callback never ran or its Describe hung")
	}
	// The callback is now blocked. Events keep arriving and requests keep working.
	for i := 2; i <= 20; i++ {
		b.publish("$aws/things/dev1/jobs/notify-next", map[string]any{"timestamp": i, "execution": map[string]any{"jobId": "job-" + string(rune('a'+i)), "executionNumber": 1}})
	}
	b.publish("$aws/things/dev1/jobs/notify-next", `{"timestamp":99}`)
	ctx := ctxT(t, 5*time.Second)
	if _, err := c.GetPending(ctx); err != nil {
		t.Fatalf("request while a callback blocks: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // let the burst reach the client
	close(release)
	// The burst was coalesced: one more call, with the latest event (nothing pending).
	select {
	case <-inCallback:
	case <-time.After(5 * time.Second):
		t.Fatal("no call after the release")
	}
	time.Sleep(100 * time.Millisecond)
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d callback calls for 21 events while blocked, want 2 (coalesced)", n)
	}
}

func TestEventsAreDecodedAndDelivered(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	nexts := make(chan NextJobExecutionChanged, 4)
	notes := make(chan JobExecutionsChanged, 4)
	cfg := testConfig(b)
	cfg.OnNotifyNext = func(ev NextJobExecutionChanged) { nexts <- ev }
	cfg.OnNotify = func(ev JobExecutionsChanged) { notes <- ev }
	dial(t, cfg)
	b.publish("$aws/things/dev1/jobs/notify-next", `{"timestamp":1517186779,"execution":{"jobId":"job3","status":"IN_PROGRESS","queuedAt":1517186000,
		"startedAt":1517186100,"lastUpdatedAt":1517186100,"versionNumber":2,"executionNumber":1,"jobDocument":{"operation":"test"}}}`)
	ev := <-nexts
	if ev.Execution == nil || ev.Execution.JobID != "job3" || ev.Execution.VersionNumber != 2 || !jsonEq(ev.Execution.JobDocument, []byte(`{"operation":"test"}`)) || ev.Timestamp.Unix() != 1517186779 {
		t.Fatalf("notify-next decoded as %+v", ev)
	}
	b.publish("$aws/things/dev1/jobs/notify-next", `{"timestamp":1517189551}`)
	if ev := <-nexts; ev.Execution != nil {
		t.Fatalf("empty notify-next decoded as %+v, want no execution", ev)
	}
	b.publish("$aws/things/dev1/jobs/notify", `{"timestamp":1517016948,"jobs":{"IN_PROGRESS":[{"jobId":"job1","executionNumber":1,"versionNumber":2}],"QUEUED":[{"jobId":"job2","executionNumber":1,"versionNumber":1}]}}`)
	n := <-notes
	if len(n.Jobs[InProgress]) != 1 || n.Jobs[InProgress][0].JobID != "job1" || len(n.Jobs[Queued]) != 1 {
		t.Fatalf("notify decoded as %+v", n)
	}
	// Another thing's events never reach this device (not subscribed), and garbage is dropped.
	b.publish("$aws/things/dev2/jobs/notify-next", `{"timestamp":5,"execution":{"jobId":"evil"}}`)
	b.publish("$aws/things/dev1/jobs/notify-next", `not json`)
	select {
	case ev := <-nexts:
		t.Fatalf("unexpected event %+v", ev)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestBrokerDropResubscribesAndRunsOnConnectAgain(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	b.setServe(func(r request) { b.answer(r, "accepted", map[string]any{}) })
	connects := make(chan struct{}, 8)
	nexts := make(chan NextJobExecutionChanged, 8)
	cfg := testConfig(b)
	cfg.OnConnect = func(ctx context.Context) { connects <- struct{}{} }
	cfg.OnNotifyNext = func(ev NextJobExecutionChanged) { nexts <- ev }
	c := dial(t, cfg)
	<-connects
	for round := 1; round <= 2; round++ {
		b.kick("dev1")
		select {
		case <-connects:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: OnConnect did not run after the broker dropped the client", round)
		}
		// The broker forgot the subscriptions with the session: an event only arrives if the
		// client subscribed again.
		b.publish("$aws/things/dev1/jobs/notify-next", map[string]any{"timestamp": round})
		select {
		case ev := <-nexts:
			if ev.Timestamp.Unix() != int64(round) {
				t.Fatalf("got event %+v", ev)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: no notify-next after reconnect: not resubscribed", round)
		}
		if _, err := c.GetPending(ctxT(t, 5*time.Second)); err != nil {
			t.Fatalf("round %d: request after reconnect: %v", round, err)
		}
	}
}

func TestRequestDuringOutageWaitsForReconnect(t *testing.T) {
	addr := freePort(t)
	b := startBroker(t, brokerOpts{addr: addr})
	b.setServe(func(r request) { b.answer(r, "accepted", map[string]any{}) })
	cfg := testConfig(b)
	c := dial(t, cfg)
	b.close() // the broker goes away entirely
	deadline := time.Now().Add(5 * time.Second)
	for c.Connected() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if c.Connected() {
		t.Fatal("client still claims to be connected")
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.GetPending(ctxT(t, 20*time.Second))
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	b2 := startBroker(t, brokerOpts{addr: addr})
	b2.setServe(func(r request) { b2.answer(r, "accepted", map[string]any{}) })
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("request across the outage: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("request never completed after the broker came back")
	}
}

func TestDialWaitsForABrokerThatIsNotUpYet(t *testing.T) {
	addr := freePort(t)
	cfg := Config{Endpoint: "tcp://" + addr, ThingName: "dev1", ConnectRetryInterval: 50 * time.Millisecond, ReconnectJitter: 20 * time.Millisecond, Logger: testLogger()}
	go func() {
		time.Sleep(300 * time.Millisecond)
		startBroker(t, brokerOpts{addr: addr})
	}()
	c := dial(t, cfg)
	if !c.Connected() {
		t.Fatal("Dial returned before being connected")
	}

	// And gives up, with the reason, when ctx ends first.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := Dial(ctx, Config{Endpoint: "tcp://" + freePort(t), ThingName: "dev1", ConnectRetryInterval: 50 * time.Millisecond, ReconnectJitter: 20 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "last attempt") {
		t.Fatalf("Dial to nothing: %v", err)
	}
}

func TestRefusedSubscriptionFailsDial(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	b.refuse["$aws/things/dev1/jobs/+/update/+"] = true
	ctx := ctxT(t, 10*time.Second)
	_, err := Dial(ctx, testConfig(b))
	if !errors.Is(err, ErrSubscriptionRefused) || !strings.Contains(err.Error(), "/update/+") {
		t.Fatalf("got %v, want ErrSubscriptionRefused naming the filter", err)
	}
}

func TestMutualTLSWithCertificateFiles(t *testing.T) {
	ca, err := testpki.NewCA("jobs-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	srvPair, err := ca.Server("broker")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := srvPair.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	var sawALPN, sawSNI atomic.Value
	stc := &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert,
		NextProtos: []string{ALPNProtocol}, MinVersion: tls.VersionTLS12}
	stc.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		sawALPN.Store(strings.Join(h.SupportedProtos, ","))
		sawSNI.Store(h.ServerName)
		return nil, nil
	}
	b := startBroker(t, brokerOpts{tls: stc})
	b.setServe(func(r request) { b.answer(r, "accepted", map[string]any{}) })
	dir := t.TempDir()
	caFile, err := ca.WriteCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := ca.Client("dev1")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := dev.WriteFiles(dir, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	port := b.addr[strings.LastIndexByte(b.addr, ':')+1:]
	cfg := testConfig(b)
	cfg.Endpoint = "localhost:" + port // bare host:port means TLS
	cfg.CAFile, cfg.CertFile, cfg.KeyFile = caFile, certFile, keyFile
	c := dial(t, cfg)
	if _, err := c.GetPending(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if sni, _ := sawSNI.Load().(string); sni != "localhost" {
		t.Fatalf("SNI %q, want localhost", sni)
	}
	if alpn, _ := sawALPN.Load().(string); alpn != "" {
		t.Fatalf("ALPN %q offered on a port other than 443", alpn)
	}

	// ServerName overrides SNI and verification: a wrong one fails.
	bad := cfg
	bad.ServerName = "iot.example.com"
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var hostErr x509.HostnameError
	if _, err := Dial(ctx, bad); !errors.As(err, &hostErr) {
		t.Fatalf("Dial with a ServerName the certificate does not hold: %v", err)
	}
	// A device without a certificate is refused by the broker.
	nocert := cfg
	nocert.CertFile, nocert.KeyFile = "", ""
	ctx2, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	if _, err := Dial(ctx2, nocert); err == nil {
		t.Fatal("connected without a client certificate")
	}
	// A missing key file fails at once, not on every reconnect.
	missing := cfg
	missing.KeyFile = filepath.Join(dir, "nope.key")
	if _, err := Dial(context.Background(), missing); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing key: %v", err)
	}
}

func TestCloseEndsEverythingAndFailsLaterCalls(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	hookCtx := make(chan context.Context, 1)
	cfg := testConfig(b)
	cfg.OnConnect = func(ctx context.Context) { hookCtx <- ctx; <-ctx.Done() } // a hook that lives until Close
	c := dial(t, cfg)
	ctx := <-hookCtx
	pending := make(chan error, 1)
	go func() { _, err := c.GetPending(context.Background()); pending <- err }() // never answered
	time.Sleep(50 * time.Millisecond)
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung")
	}
	if ctx.Err() == nil {
		t.Fatal("OnConnect's ctx still live after Close")
	}
	if err := <-pending; !errors.Is(err, ErrClosed) {
		t.Fatalf("in-flight request: %v, want ErrClosed", err)
	}
	if _, err := c.GetPending(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after Close: %v", err)
	}
}

func TestRawRequestsMatchAnswersWithAndWithoutToken(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	b.setServe(func(r request) {
		if r.Fields == nil { // not JSON: AWS answers InvalidJson without a clientToken
			b.publish(r.Topic+"/rejected", map[string]any{"code": CodeInvalidJson, "message": "bad"})
			return
		}
		b.answer(r, "rejected", map[string]any{"code": CodeInvalidTopic})
	})
	c := dial(t, testConfig(b))
	ctx := ctxT(t, 5*time.Second)
	r, err := c.Raw(ctx, "get", []byte("{nope"))
	if err != nil || r.Accepted || r.Topic != "$aws/things/dev1/jobs/get/rejected" || !strings.Contains(string(r.Payload), CodeInvalidJson) {
		t.Fatalf("raw non-JSON: %+v %v", r, err)
	}
	// A topic outside the standing subscriptions: the client subscribes to its answers for the exchange.
	r, err = c.Raw(ctx, "j1/frob", []byte(`{"clientToken":"tok-1"}`))
	if err != nil || r.Topic != "$aws/things/dev1/jobs/j1/frob/rejected" || !strings.Contains(string(r.Payload), `"tok-1"`) {
		t.Fatalf("raw unknown topic: %+v %v", r, err)
	}
	if _, err := c.Raw(ctx, "j1/#", nil); err == nil {
		t.Fatal("raw accepted a wildcard topic")
	}
}

func TestCloseInterruptsTheReconnectJitterWithoutLeakingGoroutines(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	cfg := testConfig(b)
	cfg.ReconnectJitter = time.Hour // a reconnect attempt would wait "forever"
	c := dial(t, cfg)
	b.close()
	deadline := time.Now().Add(5 * time.Second)
	for c.Connected() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // paho's first retry is immediate, the next one waits in our jitter
	start := time.Now()
	c.Close()
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("Close took %s", el)
	}
	// paho's reconnect goroutine sits in our jitter wait: it must end with the client.
	deadline = time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "paho.mqtt.golang") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("paho goroutines still running after Close:\n%s", stacks)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
