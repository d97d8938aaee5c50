package jobs

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// testBroker is an embedded mochi broker with a scripted stand-in for the Jobs service: each device
// request is handed to the test's serve function, which answers through the broker like AWS does.
// The real emulator (test/jobsim) is exercised by test/conformance; these tests pin down the
// client's framing, correlation, retry and connection handling.
type testBroker struct {
	t    *testing.T
	srv  *mochi.Server
	addr string

	mu       sync.Mutex
	serve    func(req request)
	requests []request
	refuse   map[string]bool // filters whose SUBSCRIBE is refused

	closeOnce sync.Once
}

// request is one device publish seen by the stand-in service.
type request struct {
	Topic   string
	Payload []byte
	Token   string
	Fields  map[string]any
}

type brokerOpts struct {
	addr string      // "" = 127.0.0.1:0
	tls  *tls.Config // server TLS (mTLS when ClientAuth is set)
}

func startBroker(t *testing.T, o brokerOpts) *testBroker {
	t.Helper()
	b := &testBroker{t: t, refuse: map[string]bool{}}
	b.srv = mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := b.srv.AddHook(&aclHook{b: b}, nil); err != nil {
		t.Fatal(err)
	}
	addr := o.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: addr, TLSConfig: o.tls})
	if err := b.srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	b.addr = l.Address()
	if err := b.srv.Subscribe("$aws/things/+/jobs/#", 1, b.onRequest); err != nil {
		t.Fatal(err)
	}
	if err := b.srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.close)
	return b
}

// close stops the broker (once; mochi panics on a second Close).
func (b *testBroker) close() { b.closeOnce.Do(func() { _ = b.srv.Close() }) }

func (b *testBroker) url() string { return "tcp://" + b.addr }

// aclHook allows every connect and topic except the filters the test refuses. (Its own hook rather
// than auth.AllowHook: package auth pulls in yaml.v3, which go.mod does not carry.)
type aclHook struct {
	mochi.HookBase
	b *testBroker
}

func (h *aclHook) ID() string { return "test-acl" }
func (h *aclHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}
func (h *aclHook) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }
func (h *aclHook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	return !h.b.refuse[topic]
}

func (b *testBroker) onRequest(cl *mochi.Client, _ packets.Subscription, pk packets.Packet) {
	topic := pk.TopicName
	if strings.HasSuffix(topic, "/accepted") || strings.HasSuffix(topic, "/rejected") ||
		strings.HasSuffix(topic, "/notify") || strings.HasSuffix(topic, "/notify-next") {
		return // our own answers and events
	}
	req := request{Topic: topic, Payload: append([]byte(nil), pk.Payload...)}
	if json.Unmarshal(req.Payload, &req.Fields) == nil {
		req.Token, _ = req.Fields["clientToken"].(string)
	}
	b.mu.Lock()
	b.requests = append(b.requests, req)
	serve := b.serve
	b.mu.Unlock()
	if serve != nil {
		go serve(req) // never stall the device's read loop
	}
}

func (b *testBroker) setServe(f func(request)) {
	b.mu.Lock()
	b.serve = f
	b.mu.Unlock()
}

func (b *testBroker) seen() []request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]request(nil), b.requests...)
}

func (b *testBroker) publish(topic string, v any) {
	var p []byte
	switch v := v.(type) {
	case []byte:
		p = v
	case string:
		p = []byte(v)
	default:
		var err error
		if p, err = json.Marshal(v); err != nil {
			b.t.Error(err)
			return
		}
	}
	if err := b.srv.Publish(topic, p, false, 1); err != nil {
		b.t.Error(err)
	}
}

// answer publishes body (plus the request's clientToken) on the request topic + "/" + outcome.
func (b *testBroker) answer(req request, outcome string, body map[string]any) {
	m := map[string]any{"timestamp": 1700000000}
	for k, v := range body {
		m[k] = v
	}
	if req.Token != "" {
		m["clientToken"] = req.Token
	}
	b.publish(req.Topic+"/"+outcome, m)
}

func (b *testBroker) kick(clientID string) {
	b.t.Helper()
	cl, ok := b.srv.Clients.Get(clientID)
	if !ok {
		b.t.Fatalf("no client %q on the broker", clientID)
	}
	_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
}

// testConfig is a fast configuration for thing "dev1" on b.
func testConfig(b *testBroker) Config {
	return Config{
		Endpoint:             b.url(),
		ThingName:            "dev1",
		KeepAlive:            5 * time.Second,
		ConnectRetryInterval: 50 * time.Millisecond,
		MaxReconnectInterval: 200 * time.Millisecond,
		ReconnectJitter:      20 * time.Millisecond,
		SubscribeTimeout:     2 * time.Second,
		RequestTimeout:       2 * time.Second,
		Backoff:              func(int) time.Duration { return 10 * time.Millisecond },
		Logger:               testLogger(),
	}
}

func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func dial(t *testing.T, cfg Config) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// freePort returns a 127.0.0.1 address nothing listens on (yet).
func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

func jsonEq(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	ja, _ := json.Marshal(x)
	jb, _ := json.Marshal(y)
	return bytes.Equal(ja, jb)
}
