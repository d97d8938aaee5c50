package conformance

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/fieldota/fieldota/test/mosquitto"
	"github.com/fieldota/fieldota/test/testpki"
)

// minute is the emulator's "minute": step and in-progress timers run this fast.
const minute = 150 * time.Millisecond

// env is one way of running the emulator.
type env struct {
	name string
	sim  *jobsim.Sim
	// external: the emulator is attached to mosquitto, which delivers answers only to subscribers,
	// drops a denied publish silently (AWS and the embedded broker disconnect the device), and
	// cannot be told to drop one device.
	external bool
	endpoint string
	// tlsFor returns the TLS configuration of a device or attacker with that identity (certificate
	// CN); nil on plain TCP, where the identity is the client id.
	tlsFor func(t *testing.T, identity string) *tls.Config
	// dropDevice makes the broker cut the thing's connection (reconnect tests).
	dropDevice func(t *testing.T, thing string)
	events     *eventLog
	broker     *mosquitto.Broker // the mosquitto environment's broker, nil otherwise
}

// eventLog records the emulator's job events.
type eventLog struct {
	mu     sync.Mutex
	events []jobsim.Event
}

func (l *eventLog) add(e jobsim.Event) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

func (l *eventLog) count(match func(jobsim.Event) bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.events {
		if match(e) {
			n++
		}
	}
	return n
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// logger shows client logs with -v when FIELDOTA_TEST_LOG is set; otherwise discards them.
func logger() *slog.Logger {
	if os.Getenv("FIELDOTA_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return quiet()
}

func startEmbeddedTCP(t *testing.T) *env {
	e := &env{name: "embedded-tcp", events: &eventLog{}}
	sim, err := jobsim.Start(context.Background(), jobsim.Config{MQTTAddr: "127.0.0.1:0", Minute: minute, OnEvent: e.events.add, Logger: quiet()})
	if err != nil {
		t.Fatalf("jobsim.Start: %v", err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	e.sim, e.endpoint = sim, sim.MQTTURL()
	e.dropDevice = func(t *testing.T, thing string) {
		if err := sim.DisconnectThing(thing); err != nil {
			t.Fatalf("DisconnectThing: %v", err)
		}
	}
	return e
}

func startEmbeddedMTLS(t *testing.T) *env {
	ca, err := testpki.NewCA("conformance-ca")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server("jobsim")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := srv.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	e := &env{name: "embedded-mtls", events: &eventLog{}}
	sim, err := jobsim.Start(context.Background(), jobsim.Config{TLSAddr: "127.0.0.1:0",
		TLS:    &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: ca.Pool(), MinVersion: tls.VersionTLS12},
		Minute: minute, OnEvent: e.events.add, Logger: quiet()})
	if err != nil {
		t.Fatalf("jobsim.Start: %v", err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	e.sim, e.endpoint = sim, sim.TLSURL()
	e.tlsFor = func(t *testing.T, identity string) *tls.Config { return deviceTLS(t, ca, identity) }
	e.dropDevice = func(t *testing.T, thing string) {
		if err := sim.DisconnectThing(thing); err != nil {
			t.Fatalf("DisconnectThing: %v", err)
		}
	}
	return e
}

func deviceTLS(t *testing.T, ca *testpki.CA, identity string) *tls.Config {
	t.Helper()
	p, err := ca.Client(identity)
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS12}
}

// fx is what a case works with: the environment plus helpers that keep names unique per case.
type fx struct {
	*env
	t *testing.T
}

var seq atomic.Int64

// name returns a fresh thing or job name.
func (f *fx) name(prefix string) string { return fmt.Sprintf("%s-%d", prefix, seq.Add(1)) }

// config is a fast client configuration for thing, connecting with identity (= thing normally).
func (f *fx) config(thing, identity string) jobs.Config {
	cfg := jobs.Config{
		Endpoint:             f.endpoint,
		ThingName:            thing,
		ClientID:             identity,
		KeepAlive:            10 * time.Second,
		ConnectRetryInterval: 100 * time.Millisecond,
		MaxReconnectInterval: 500 * time.Millisecond,
		ReconnectJitter:      50 * time.Millisecond,
		SubscribeTimeout:     5 * time.Second,
		RequestTimeout:       3 * time.Second,
		Backoff:              func(int) time.Duration { return 20 * time.Millisecond },
		Logger:               logger().With("env", f.env.name),
	}
	if f.tlsFor != nil {
		cfg.TLS = f.tlsFor(f.t, identity)
		cfg.ServerName = "localhost"
	}
	return cfg
}

// device is a connected thing with its event streams.
type device struct {
	thing    string
	c        *jobs.Client
	next     chan jobs.NextJobExecutionChanged
	notify   chan jobs.JobExecutionsChanged
	connects chan struct{}
}

func (f *fx) device(mods ...func(*jobs.Config)) *device {
	f.t.Helper()
	d := &device{thing: f.name("thing"), next: make(chan jobs.NextJobExecutionChanged, 64),
		notify: make(chan jobs.JobExecutionsChanged, 64), connects: make(chan struct{}, 16)}
	cfg := f.config(d.thing, d.thing)
	cfg.OnNotifyNext = func(ev jobs.NextJobExecutionChanged) { d.next <- ev }
	cfg.OnNotify = func(ev jobs.JobExecutionsChanged) { d.notify <- ev }
	cfg.OnConnect = func(context.Context) { d.connects <- struct{}{} }
	for _, m := range mods {
		m(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := jobs.Dial(ctx, cfg)
	if err != nil {
		f.t.Fatalf("Dial %s: %v", d.thing, err)
	}
	f.t.Cleanup(func() { _ = c.Close() })
	d.c = c
	<-d.connects
	return d
}

const doc = `{"operation":"install","version":"1.0","target":"files","files":{"fileName":"app.bin","url":"https://example.com/app.bin","size":3}}`

// job creates a job for the things and returns its id.
func (f *fx) job(things []string, mods ...func(*jobsim.CreateJobInput)) string {
	f.t.Helper()
	in := jobsim.CreateJobInput{JobID: f.name("job"), Targets: things, Document: doc}
	for _, m := range mods {
		m(&in)
	}
	if _, err := f.sim.CreateJob(in); err != nil {
		f.t.Fatalf("CreateJob: %v", err)
	}
	return in.JobID
}

func (f *fx) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	f.t.Cleanup(cancel)
	return ctx
}

// expectNext waits for a notify-next naming jobID ("" = nothing pending) and returns it.
func (d *device) expectNext(t *testing.T, jobID string) jobs.NextJobExecutionChanged {
	t.Helper()
	select {
	case ev := <-d.next:
		got := ""
		if ev.Execution != nil {
			got = ev.Execution.JobID
		}
		if got != jobID {
			t.Fatalf("notify-next names %q, want %q", got, jobID)
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatalf("no notify-next (want %q)", jobID)
	}
	return jobs.NextJobExecutionChanged{}
}

// expectNoNext fails if a notify-next arrives within a short wait.
func (d *device) expectNoNext(t *testing.T) {
	t.Helper()
	select {
	case ev := <-d.next:
		t.Fatalf("unexpected notify-next: %+v", ev)
	case <-time.After(300 * time.Millisecond):
	}
}

// expectNotify waits for a notify event whose pending list is exactly want (status → job ids).
func (d *device) expectNotify(t *testing.T, want map[jobs.Status][]string) {
	t.Helper()
	select {
	case ev := <-d.notify:
		got := map[jobs.Status][]string{}
		for st, l := range ev.Jobs {
			for _, s := range l {
				got[st] = append(got[st], s.JobID)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("notify lists %v, want %v", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no notify (want %v)", want)
	}
}

func (d *device) expectNoNotify(t *testing.T) {
	t.Helper()
	select {
	case ev := <-d.notify:
		t.Fatalf("unexpected notify: %+v", ev)
	case <-time.After(300 * time.Millisecond):
	}
}

// rejection asserts err is a rejection with that code and returns it.
func rejection(t *testing.T, err error, sentinel error) *jobs.RejectedError {
	t.Helper()
	var re *jobs.RejectedError
	if !errors.Is(err, sentinel) || !errors.As(err, &re) {
		t.Fatalf("got %v, want a rejection matching %v", err, sentinel)
	}
	if re.Message == "" || re.ClientToken == "" || len(re.ClientToken) > jobs.MaxClientTokenLen {
		t.Fatalf("rejection payload incomplete: %+v", re)
	}
	return re
}

// waitFor polls cond until it holds or 5 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// payload decodes a raw answer.
func payload(t *testing.T, b []byte) map[string]json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("answer %q is not a JSON object: %v", b, err)
	}
	return m
}

func str(raw json.RawMessage) string {
	var s string
	_ = json.Unmarshal(raw, &s)
	return s
}

func hasPrefixAny(s string, p ...string) bool {
	for _, x := range p {
		if strings.HasPrefix(s, x) {
			return true
		}
	}
	return false
}

// takeOver drops a device on a broker the test does not control by connecting a second client
// with the same client id and certificate: MQTT makes the broker close the older connection. The
// intruder leaves at once, so the device's reconnect finds the id free.
func takeOver(t *testing.T, endpoint string, tc *tls.Config, clientID string) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(endpoint).SetClientID(clientID).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetKeepAlive(10 * time.Second)
	if tc != nil {
		o.SetTLSConfig(tc)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("take-over connect as %s: %v", clientID, tok.Error())
	}
	c.Disconnect(50)
}

// startMosquitto runs Debian's mosquitto (TLS client certificates, an ACL confining each thing to
// $aws/things/<CN>/#) with the emulator attached as its privileged client.
func startMosquitto(t *testing.T) *env {
	ca, err := testpki.NewCA("conformance-mosquitto-ca")
	if err != nil {
		t.Fatal(err)
	}
	b := mosquitto.Start(t, ca, mosquitto.Options{})
	e := &env{name: "mosquitto", events: &eventLog{}, external: true, endpoint: b.URL(), broker: b}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sim, err := jobsim.Start(ctx, jobsim.Config{
		External: &jobsim.ExternalBroker{URL: b.URL(), ClientID: b.Admin(), TLS: b.AdminTLS()},
		Minute:   minute, OnEvent: e.events.add, Logger: quiet(),
	})
	if err != nil {
		t.Fatalf("jobsim.Start attached to mosquitto: %v\n%s", err, b.Log())
	}
	t.Cleanup(func() {
		_ = sim.Close()
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", b.Log())
		}
	})
	e.sim = sim
	e.tlsFor = func(_ *testing.T, identity string) *tls.Config { return b.ClientTLS(identity) }
	// jobsim cannot cut one device's connection on an external broker: take its client id over.
	e.dropDevice = func(t *testing.T, thing string) { takeOver(t, b.URL(), b.ClientTLS(thing), thing) }
	return e
}
