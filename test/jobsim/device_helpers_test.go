package jobsim

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

const waitReply = 5 * time.Second

// device is a raw paho client standing in for a thing's agent; it records every message it gets.
type device struct {
	t     *testing.T
	thing string
	c     paho.Client
	lost  chan error

	mu     sync.Mutex
	inbox  []message
	signal chan struct{}
}

type message struct {
	topic string
	raw   []byte
	body  map[string]any
}

type devOpts struct {
	clientID  string // default: thing
	tls       *tls.Config
	subscribe bool // subscribe to $aws/things/<thing>/jobs/#
}

func connectDevice(t *testing.T, url, thing string, o devOpts) *device {
	t.Helper()
	d, err := tryConnect(t, url, thing, o)
	if err != nil {
		t.Fatalf("device %s: connect %s: %v", thing, url, err)
	}
	return d
}

func tryConnect(t *testing.T, url, thing string, o devOpts) (*device, error) {
	d := &device{t: t, thing: thing, signal: make(chan struct{}, 1), lost: make(chan error, 1)}
	id := o.clientID
	if id == "" {
		id = thing
	}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetTLSConfig(o.tls).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetKeepAlive(30 * time.Second).
		SetProtocolVersion(4).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { d.record(m) }).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case d.lost <- err:
			default:
			}
		})
	d.c = paho.NewClient(opts)
	tok := d.c.Connect()
	if !tok.WaitTimeout(waitReply) {
		return nil, context.DeadlineExceeded
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { d.c.Disconnect(50) })
	if o.subscribe {
		if got := d.subscribe("$aws/things/" + thing + "/jobs/#"); got != 1 {
			t.Fatalf("own jobs topics: granted %#x", got)
		}
	}
	return d, nil
}

func (d *device) record(m paho.Message) {
	msg := message{topic: m.Topic(), raw: append([]byte(nil), m.Payload()...)}
	_ = json.Unmarshal(msg.raw, &msg.body) // the device's own (bad) requests come back too
	d.mu.Lock()
	d.inbox = append(d.inbox, msg)
	d.mu.Unlock()
	select {
	case d.signal <- struct{}{}:
	default:
	}
}

// subscribe returns the granted QoS (0x80 = refused).
func (d *device) subscribe(filter string) byte {
	d.t.Helper()
	tok := d.c.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(waitReply) || tok.Error() != nil {
		d.t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return tok.(*paho.SubscribeToken).Result()[filter]
}

func (d *device) jobs(rest string) string { return "$aws/things/" + d.thing + "/jobs/" + rest }

// publish sends a request body (a map, or raw bytes/string as is) at QoS 1.
func (d *device) publish(topic string, body any) {
	d.t.Helper()
	var payload []byte
	switch b := body.(type) {
	case string:
		payload = []byte(b)
	case []byte:
		payload = b
	default:
		var err error
		if payload, err = json.Marshal(b); err != nil {
			d.t.Fatal(err)
		}
	}
	tok := d.c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(waitReply) || tok.Error() != nil {
		d.t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// await takes the first recorded message on topic, waiting up to timeout.
func (d *device) await(topic string, timeout time.Duration) (message, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		d.mu.Lock()
		for i, m := range d.inbox {
			if m.topic == topic {
				d.inbox = append(d.inbox[:i:i], d.inbox[i+1:]...)
				d.mu.Unlock()
				return m, true
			}
		}
		d.mu.Unlock()
		select {
		case <-d.signal:
		case <-deadline.C:
			return message{}, false
		}
	}
}

func (d *device) expect(topic string) message {
	d.t.Helper()
	m, ok := d.await(topic, waitReply)
	if !ok {
		d.t.Fatalf("%s: nothing on %s; inbox: %v", d.thing, topic, d.topics())
	}
	return m
}

// quiet asserts nothing arrives on topic for a while.
func (d *device) quiet(topic string, wait time.Duration) {
	d.t.Helper()
	if m, ok := d.await(topic, wait); ok {
		d.t.Fatalf("%s: unexpected %s: %s", d.thing, topic, m.raw)
	}
}

func (d *device) topics() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var l []string
	for _, m := range d.inbox {
		l = append(l, m.topic+" "+string(m.raw))
	}
	return l
}

// call publishes a request and returns the answer and whether it was accepted.
func (d *device) call(rest string, body any) (message, bool) {
	d.t.Helper()
	topic := d.jobs(rest)
	d.publish(topic, body)
	deadline := time.Now().Add(waitReply)
	for time.Now().Before(deadline) {
		if m, ok := d.await(topic+"/accepted", 20*time.Millisecond); ok {
			return m, true
		}
		if m, ok := d.await(topic+"/rejected", 20*time.Millisecond); ok {
			return m, false
		}
	}
	d.t.Fatalf("%s: no answer to %s; inbox: %v", d.thing, topic, d.topics())
	return message{}, false
}

func (d *device) accepted(rest string, body any) map[string]any {
	d.t.Helper()
	m, ok := d.call(rest, body)
	if !ok {
		d.t.Fatalf("%s %s rejected: %s", d.thing, rest, m.raw)
	}
	return m.body
}

func (d *device) rejected(rest string, body any, code string) map[string]any {
	d.t.Helper()
	m, ok := d.call(rest, body)
	if ok || m.body["code"] != code {
		d.t.Fatalf("%s %s: want rejection %s, got accepted=%v %s", d.thing, rest, code, ok, m.raw)
	}
	return m.body
}

// field walks a decoded JSON object: field(b, "execution", "jobDocument", "url").
func field(b map[string]any, path ...string) any {
	var v any = b
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func num(v any) int64 {
	f, _ := v.(float64)
	return int64(f)
}

func startSim(t *testing.T, cfg Config) *Sim {
	t.Helper()
	if cfg.MQTTAddr == "" && cfg.TLSAddr == "" && cfg.External == nil {
		cfg.MQTTAddr = "127.0.0.1:0"
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	if cfg.Minute == 0 {
		cfg.Minute = 150 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

func mustCreate(t *testing.T, s *Sim, in CreateJobInput) {
	t.Helper()
	if in.Document == "" {
		in.Document = `{"operation":"install","files":{"url":"${aws:iot:s3-presigned-url:https://s3.us-east-1.amazonaws.com/bucket/fw.bin}"}}`
	}
	if _, err := s.CreateJob(in); err != nil {
		t.Fatal(err)
	}
}

func hasPrefix(v any, p string) bool {
	s, ok := v.(string)
	return ok && strings.HasPrefix(s, p)
}
