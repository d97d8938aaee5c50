// Package jobsim emulates AWS IoT Core's Jobs service for tests and for `fieldota sim`: an MQTT
// broker (embedded mochi, or an external broker such as mosquitto that it attaches to as a
// privileged client), the Jobs device API over MQTT with AWS's topics, payloads, state rules, error
// codes and notifications, a JSON HTTP control API named after AWS's control plane, and an
// artifact server whose presigned URLs are minted afresh on every delivery of a job document.
//
// The Jobs service itself is a pure, lock-protected state model (model.go); the MQTT front ends
// only decode requests, call the model and publish what it returns.
package jobsim

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/fieldota/fieldota/test/jobsim/certs"
	"github.com/fieldota/fieldota/test/jobsim/registry"
	"github.com/fieldota/fieldota/test/jobsim/s3"
)

// Config says what to start. Zero addresses start nothing.
type Config struct {
	MQTTAddr    string      // embedded broker, plain TCP, e.g. "127.0.0.1:0"; thing = client id
	TLSAddr     string      // embedded broker, mTLS; thing = client certificate CN (must equal client id)
	TLS         *tls.Config // server cert + ClientCAs; RequireAndVerifyClientCert and ALPN x-amzn-mqtt-ca are added
	HTTPAddr    string      // JSON control API
	S3Addr      string      // artifact server
	S3TLS       *tls.Config // optional TLS for the artifact server
	ArtifactDir string      // objects served at /<bucket>/<key> from ArtifactDir/<bucket>/<key>
	External    *ExternalBroker
	Minute      time.Duration    // one "minute" of step/in-progress timers; 0 = time.Minute
	Now         func() time.Time // nil = time.Now (timers still fire on the real clock)
	Logger      *slog.Logger     // nil = discard
	// OnEvent is called for each job event, in order, one call at a time, before the operation's
	// messages are published. It may read (Describe…, List…) but must not create, cancel or
	// delete jobs or fire timers: those wait for the operation that is calling it.
	OnEvent func(Event)
}

// ExternalBroker names a broker to attach to instead of embedding one.
type ExternalBroker struct {
	URL      string      // e.g. "ssl://127.0.0.1:18883" or "tcp://127.0.0.1:1883"
	ClientID string      // the emulator's privileged identity
	TLS      *tls.Config // client certificate of the privileged identity
}

// frontEnd is the MQTT side the service publishes through.
type frontEnd interface {
	send(m outMsg) error
	disconnect(thing string) error
	close() error
}

// Sim is a running emulator.
type Sim struct {
	cfg       Config
	log       *slog.Logger
	now       func() time.Time
	model     *model
	registry  *registry.Registry
	presigner *s3.Presigner
	artifacts *s3.Server
	certs     *certs.Authority  // CreateCertificateFromCsr's CA (certificates.go)
	dm        *deviceManagement // shadows, packages, commands, uploads (devicemgmt.go)
	front     frontEnd

	mqttURL, tlsURL, httpURL, s3URL string
	servers                         []*http.Server

	wake   chan struct{}
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// opMu makes each operation and the publishing of its consequences one step, so that a
	// device never sees notifications out of the order the model produced them.
	opMu sync.Mutex

	faultMu sync.Mutex
	faults  map[string]*fault

	closeOnce sync.Once
	closeErr  error
}

type fault struct {
	code string
	n    int
}

// Start starts everything cfg names. ctx bounds the start only (attaching to an external broker);
// the emulator runs until Close.
func Start(ctx context.Context, cfg Config) (*Sim, error) {
	if cfg.Minute <= 0 {
		cfg.Minute = time.Minute
	}
	s := &Sim{cfg: cfg, log: cfg.Logger, now: cfg.Now, wake: make(chan struct{}, 1), faults: map[string]*fault{}}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.model = newModel(s.now, cfg.Minute)
	var err error
	if s.certs, err = certs.New(Region, Account, cfg.Now); err != nil {
		return nil, err
	}
	s.registry = registry.New()
	s.model.members = s.registry.Members
	s.registry.OnMembership = s.onMembership
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	// Without an artifact server the URLs still get minted, pointing at the discard port.
	s.presigner = &s3.Presigner{Base: "http://127.0.0.1:9", Secret: secret, Now: cfg.Now}
	s.initDeviceManagement(secret)

	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	fail := func(err error) (*Sim, error) {
		s.Close()
		return nil, err
	}
	if cfg.S3Addr != "" {
		ln, err := net.Listen("tcp", cfg.S3Addr)
		if err != nil {
			return fail(fmt.Errorf("artifact server: %w", err))
		}
		scheme := "http"
		if cfg.S3TLS != nil {
			ln, scheme = tls.NewListener(ln, cfg.S3TLS), "https"
		}
		s.s3URL = scheme + "://" + ln.Addr().String()
		s.presigner.Base, s.dm.uploads.Base = s.s3URL, s.s3URL
		s.artifacts = s3.NewServer(cfg.ArtifactDir, s.presigner)
		s.serve(ln, s.s3Handler())
	}
	switch {
	case cfg.External != nil:
		if cfg.MQTTAddr != "" || cfg.TLSAddr != "" {
			return fail(errors.New("jobsim: External and an embedded listener are exclusive"))
		}
		ext, err := attach(ctx, s, *cfg.External)
		if err != nil {
			return fail(err)
		}
		s.front = ext
	case cfg.MQTTAddr != "" || cfg.TLSAddr != "":
		emb, err := embed(s, cfg)
		if err != nil {
			return fail(err)
		}
		s.front = emb
	}
	if cfg.HTTPAddr != "" {
		ln, err := net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return fail(fmt.Errorf("control API: %w", err))
		}
		s.httpURL = "http://" + ln.Addr().String()
		s.serve(ln, s.controlHandler())
	}
	s.wg.Add(1)
	go s.timers(runCtx)
	return s, nil
}

func (s *Sim) serve(ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	s.servers = append(s.servers, srv)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("http server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

// Close stops the broker (or detaches from the external one), the servers and the timers.
func (s *Sim) Close() error {
	s.closeOnce.Do(func() {
		if s.cancel != nil {
			s.cancel()
		}
		s.wg.Wait()
		var errs []error
		for _, srv := range s.servers {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := srv.Shutdown(ctx); err != nil {
				errs = append(errs, srv.Close())
			}
			cancel()
		}
		if s.front != nil {
			errs = append(errs, s.front.close())
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// MQTTURL is the embedded broker's plain listener for paho ("" if none).
func (s *Sim) MQTTURL() string { return s.mqttURL }

// TLSURL is the embedded broker's mTLS listener ("" if none).
func (s *Sim) TLSURL() string { return s.tlsURL }

// HTTPURL is the control API's base URL ("" if none).
func (s *Sim) HTTPURL() string { return s.httpURL }

// S3URL is the artifact server's base URL ("" if none).
func (s *Sim) S3URL() string { return s.s3URL }

// Presigner mints and checks the emulator's presigned URLs.
func (s *Sim) Presigner() *s3.Presigner { return s.presigner }

// Artifacts is the artifact server (nil without S3Addr); fault injection lives there.
func (s *Sim) Artifacts() *s3.Server { return s.artifacts }

// DisconnectThing drops the thing's connection to the embedded broker.
func (s *Sim) DisconnectThing(thing string) error {
	if s.front == nil {
		return errors.New("jobsim: no broker")
	}
	return s.front.disconnect(thing)
}

// InjectDeviceErrors makes the next n Jobs requests of thing fail with code (e.g.
// CodeRequestThrottled or CodeInternalError), so that clients' retry paths can be exercised.
func (s *Sim) InjectDeviceErrors(thing, code string, n int) {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	if n <= 0 {
		delete(s.faults, thing)
		return
	}
	s.faults[thing] = &fault{code: code, n: n}
}

func (s *Sim) injected(thing string) (string, int) {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	f := s.faults[thing]
	if f == nil {
		return "", 0
	}
	f.n--
	if f.n <= 0 {
		delete(s.faults, thing)
	}
	return f.code, f.n
}

// onRequest is called by a front end for every publish under $aws/things/+/jobs/.
func (s *Sim) onRequest(topic string, payload []byte) {
	if _, rest, ok := splitJobsTopic(topic); !ok || isServiceTopic(rest) {
		return // our own answers and notifications, seen by the request subscription
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	out, events := s.handle(topic, payload)
	s.deliver(out, events)
}

// apply publishes the effects of a control-plane or timer operation; the caller holds opMu.
func (s *Sim) apply(eff effects) {
	var out []outMsg
	var events []Event
	s.collect(eff, &out, &events)
	s.deliver(out, events)
}

// deliver reports the events, then publishes the messages: whoever watches OnEvent has seen an
// operation before the device hears its answer.
func (s *Sim) deliver(out []outMsg, events []Event) {
	more, written := s.packageShadowWrites(events)
	out, events = append(out, more...), append(events, written...)
	for _, ev := range events {
		s.log.Debug("job event", "event", ev.String())
		if s.cfg.OnEvent != nil {
			s.cfg.OnEvent(ev)
		}
	}
	for _, m := range out {
		if s.front == nil {
			break
		}
		if err := s.front.send(m); err != nil {
			s.log.Warn("publish failed", "topic", m.topic, "err", err)
		}
	}
}

// onMembership follows a registry change into the continuous jobs (outside the registry's lock).
func (s *Sim) onMembership(group, thing string, added bool) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.apply(s.model.membership(group, thing, added))
}

// Registry is the thing registry (things and thing groups).
func (s *Sim) Registry() *registry.Registry { return s.registry }

// FireTimers times out every execution whose timer has expired by Config.Now and moves rollouts and
// schedules on. Timers fire by themselves on the real clock; a test that moves an injected clock
// calls this after moving it.
func (s *Sim) FireTimers() {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.apply(s.model.tick())
}

// kick tells the timer loop that a deadline may have changed.
func (s *Sim) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// timers fires step and in-progress timeouts.
func (s *Sim) timers(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		wait := time.Hour
		if d := s.model.nextDeadline(); !d.IsZero() {
			wait = max(0, d.Sub(s.now()))
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-t.C:
			s.opMu.Lock()
			s.apply(s.model.tick())
			s.opMu.Unlock()
		}
	}
}
