package jobs

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// qos is used for every subscription and publish: AWS has no QoS 2, and QoS 0 publishes are
// silently dropped by paho while it reconnects.
const qos = 1

// Client is a connected Jobs client. Its methods are safe for concurrent use.
type Client struct {
	cfg Config
	log *slog.Logger
	t   topics
	tok *tokens
	mc  mqtt.Client

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	inbound chan inMsg
	extra   chan inMsg // messages on Config.Extra topics, for OnMessage (extra.go)

	mu          sync.Mutex
	closed      bool
	ready       chan struct{}      // closed while connected and subscribed
	waiters     map[string]*waiter // by clientToken
	rawWaiters  map[string]*waiter // by request topic, for requests without a clientToken
	lastConnErr error
	first       chan error // result of the first connect+subscribe
	firstSent   bool
	// gen counts the losses of the link: a subscription made on a link that was lost since
	// must not mark the client ready (onLost can run between the SUBACK and afterConnect).
	gen uint64
	// afterSubscribe, when set (tests), runs between a successful subscribe and marking ready.
	afterSubscribe func()
	// reconnects counts the reconnect attempts of the current outage; readySince is when the
	// link last became ready (zero once its outage began).
	reconnects int
	readySince time.Time

	evMu     sync.Mutex
	evNext   *NextJobExecutionChanged
	evNotify *JobExecutionsChanged
	evSig    chan struct{}

	closeOnce sync.Once
}

type inMsg struct {
	topic   string
	payload []byte
}

type reply struct {
	topic    string
	accepted bool
	payload  []byte
}

type waiter struct {
	request string // the request topic the answer must belong to
	ch      chan reply
}

// Dial connects to cfg.Endpoint, subscribes to the thing's Jobs topics and returns once that is done.
// A broker that is not up yet is retried every ConnectRetryInterval until ctx ends. A subscription
// the broker refuses fails Dial with ErrSubscriptionRefused.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ep, err := parseEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	var tc *tls.Config
	if ep.tls {
		if tc, err = cfg.tlsConfig(ep); err != nil {
			return nil, err
		}
	}
	c := &Client{
		cfg:        cfg,
		log:        cfg.Logger.With("thing", cfg.ThingName),
		t:          newTopics(cfg.ThingName),
		tok:        newTokens(),
		inbound:    make(chan inMsg, 64),
		extra:      make(chan inMsg, extraQueue),
		ready:      make(chan struct{}),
		waiters:    map[string]*waiter{},
		rawWaiters: map[string]*waiter{},
		first:      make(chan error, 1),
		evSig:      make(chan struct{}, 1),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())

	o := mqtt.NewClientOptions().
		AddBroker(ep.url).
		SetClientID(cfg.ClientID).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetOrderMatters(false).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(cfg.ConnectRetryInterval).
		// paho's own reconnect backoff never resets after a connection that held (an outage
		// after an earlier long one waited the long one's interval); onReconnecting waits ours.
		SetMaxReconnectInterval(0).
		SetKeepAlive(cfg.KeepAlive).
		SetPingTimeout(10 * time.Second).
		SetConnectTimeout(cfg.ConnectTimeout).
		SetWriteTimeout(30 * time.Second).
		SetStore(newCopyingStore()).
		SetDefaultPublishHandler(c.onMessage). // AWS delivers answers even without a subscription
		SetOnConnectHandler(c.onConnect).
		SetConnectionLostHandler(c.onLost).
		SetReconnectingHandler(c.onReconnecting).
		SetConnectionNotificationHandler(c.onNotification)
	if tc != nil {
		o.SetTLSConfig(tc)
	}
	c.mc = mqtt.NewClient(o)

	c.wg.Add(3)
	go c.dispatch()
	go c.deliverEvents()
	go c.deliverExtra()

	tok := c.mc.Connect()
	connected := tok.Done()
	for {
		select {
		case err := <-c.first:
			if err != nil {
				c.Close()
				return nil, err
			}
			c.log.Info("jobs client ready", "endpoint", ep.url)
			return c, nil
		case <-connected:
			if err := tok.Error(); err != nil {
				c.Close()
				return nil, fmt.Errorf("jobs: connect to %s: %w", ep.url, err)
			}
			connected = nil // connected: now wait for the subscriptions
		case <-ctx.Done():
			c.mu.Lock()
			last := c.lastConnErr
			c.mu.Unlock()
			c.Close()
			if last != nil {
				return nil, fmt.Errorf("jobs: connect to %s: %w (last attempt: %w)", ep.url, ctx.Err(), last)
			}
			return nil, fmt.Errorf("jobs: connect to %s: %w", ep.url, ctx.Err())
		}
	}
}

// ThingName returns the thing this client speaks for.
func (c *Client) ThingName() string { return c.cfg.ThingName }

// Connected reports whether the link is up and the subscriptions are in place.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.ready:
		return true
	default:
		return false
	}
}

// Close disconnects and waits for the client's goroutines, including running callbacks.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.cancel()
		c.mc.Disconnect(250)
		c.wg.Wait()
	})
	return nil
}

// goTracked runs f on a goroutine that Close waits for, unless the client is closing.
func (c *Client) goTracked(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

// onMessage is paho's handler: it only copies the message to the dispatcher.
func (c *Client) onMessage(_ mqtt.Client, m mqtt.Message) {
	msg := inMsg{topic: m.Topic(), payload: append([]byte(nil), m.Payload()...)}
	select {
	case c.inbound <- msg:
	case <-c.ctx.Done():
	}
}

// dispatch routes answers to the waiting requests and events to deliverEvents. It never blocks on
// either, so that paho's goroutines never wait behind a slow caller.
func (c *Client) dispatch() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case m := <-c.inbound:
			c.route(m)
		}
	}
}

func (c *Client) route(m inMsg) {
	if c.extraCovered(m.topic) {
		c.queueExtra(m)
		return
	}
	kind, request, accepted, ok := c.t.inbound(m.topic)
	if !ok {
		c.log.Warn("jobs: message on a topic that is not this thing's Jobs API, dropped", "topic", m.topic)
		return
	}
	switch kind {
	case suffixNext:
		var ev NextJobExecutionChanged
		if err := json.Unmarshal(m.payload, &ev); err != nil {
			c.log.Warn("jobs: undecodable notify-next, dropped", "err", err)
			return
		}
		c.evMu.Lock()
		if c.evNext == nil || !ev.Timestamp.Before(c.evNext.Timestamp.Time) {
			c.evNext = &ev
		}
		c.evMu.Unlock()
		c.signalEvent()
	case suffixNotify:
		var ev JobExecutionsChanged
		if err := json.Unmarshal(m.payload, &ev); err != nil {
			c.log.Warn("jobs: undecodable notify, dropped", "err", err)
			return
		}
		c.evMu.Lock()
		if c.evNotify == nil || !ev.Timestamp.Before(c.evNotify.Timestamp.Time) {
			c.evNotify = &ev
		}
		c.evMu.Unlock()
		c.signalEvent()
	default:
		var tk tokenOnly
		_ = json.Unmarshal(m.payload, &tk) // an undecodable answer can still match a raw waiter
		r := reply{topic: m.topic, accepted: accepted, payload: m.payload}
		c.mu.Lock()
		var w *waiter
		if tk.ClientToken != "" {
			w = c.waiters[tk.ClientToken]
		} else {
			w = c.rawWaiters[request]
		}
		c.mu.Unlock()
		if w == nil || w.request != request {
			// Typically the late answer of an attempt that timed out and was retried.
			c.log.Debug("jobs: answer matches no pending request, dropped", "topic", m.topic, "clientToken", tk.ClientToken)
			return
		}
		select {
		case w.ch <- r:
		default: // a duplicate (QoS 1 redelivery); the first answer wins
		}
	}
}

func (c *Client) signalEvent() {
	select {
	case c.evSig <- struct{}{}:
	default:
	}
}

// deliverEvents calls the event callbacks, one at a time, with the latest event of each kind.
func (c *Client) deliverEvents() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.evSig:
		}
		c.evMu.Lock()
		next, notify := c.evNext, c.evNotify
		c.evNext, c.evNotify = nil, nil
		c.evMu.Unlock()
		if notify != nil && c.cfg.OnNotify != nil {
			c.cfg.OnNotify(*notify)
		}
		if next != nil && c.cfg.OnNotifyNext != nil {
			c.cfg.OnNotifyNext(*next)
		}
	}
}

// onConnect runs (on paho's own goroutine) after every connect: subscribe, mark ready, run the hook.
func (c *Client) onConnect(mqtt.Client) {
	c.mu.Lock()
	gen := c.gen
	c.mu.Unlock()
	c.goTracked(func() { c.afterConnect(gen) })
}

func (c *Client) afterConnect(gen uint64) {
	for attempt := 1; ; attempt++ {
		err := c.subscribe(c.t.subscriptions())
		if err == nil && len(c.cfg.Extra) > 0 {
			err = c.subscribe(c.cfg.Extra) // after the Jobs topics: a refusal here names only these
		}
		if err == nil {
			break
		}
		c.mu.Lock()
		firstPending := !c.firstSent
		c.mu.Unlock()
		if errors.Is(err, ErrSubscriptionRefused) && firstPending {
			c.reportFirst(err)
			return
		}
		c.log.Warn("jobs: subscribe failed", "err", err, "attempt", attempt)
		if !c.mc.IsConnectionOpen() || !c.wait(c.ctx, c.cfg.Backoff(attempt)) {
			return // the next connect subscribes again
		}
	}
	c.mu.Lock()
	hook := c.afterSubscribe
	c.mu.Unlock()
	if hook != nil {
		hook()
	}
	c.mu.Lock()
	if c.gen != gen || !c.mc.IsConnectionOpen() {
		// The link these subscriptions were made on is gone: the next connect subscribes again.
		c.mu.Unlock()
		c.log.Debug("jobs: link lost right after subscribing; not ready")
		return
	}
	select {
	case <-c.ready:
	default:
		close(c.ready)
	}
	c.readySince = time.Now()
	c.mu.Unlock()
	c.log.Info("jobs: connected and subscribed")
	c.reportFirst(nil)
	if c.cfg.OnConnect != nil {
		c.cfg.OnConnect(c.ctx)
	}
}

func (c *Client) reportFirst(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.firstSent {
		c.firstSent = true
		c.first <- err
	}
}

// subscribe subscribes to topics at QoS 1 and waits for the SUBACK (bounded by SubscribeTimeout);
// a filter the broker refuses (0x80) is ErrSubscriptionRefused naming it.
func (c *Client) subscribe(topics []string) error {
	filters := map[string]byte{}
	for _, f := range topics {
		filters[f] = qos
	}
	tok := c.mc.SubscribeMultiple(filters, c.onMessage)
	timer := time.NewTimer(c.cfg.SubscribeTimeout)
	defer timer.Stop()
	select {
	case <-tok.Done():
	case <-timer.C:
		return fmt.Errorf("jobs: no SUBACK within %s", c.cfg.SubscribeTimeout)
	case <-c.ctx.Done():
		return ErrClosed
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("jobs: subscribe: %w", err)
	}
	st, ok := tok.(*mqtt.SubscribeToken)
	if !ok {
		return fmt.Errorf("jobs: subscribe: unexpected token %T", tok)
	}
	var refused []string
	for f, granted := range st.Result() {
		if granted == 0x80 {
			refused = append(refused, f)
		}
	}
	if len(refused) > 0 {
		sort.Strings(refused)
		return fmt.Errorf("%w: %s", ErrSubscriptionRefused, strings.Join(refused, ", "))
	}
	return nil
}

func (c *Client) onLost(_ mqtt.Client, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// paho runs this on its own goroutine: if a reconnect already completed, the link is open
	// again and ready must stay set.
	if !c.mc.IsConnectionOpen() {
		c.gen++
		select {
		case <-c.ready:
			c.ready = make(chan struct{})
		default:
		}
	}
	c.log.Warn("jobs: connection lost", "err", err)
}

// onReconnecting runs synchronously before each reconnect attempt (paho itself waits nothing):
// the first attempt of an outage waits only a random jitter that spreads a fleet out, later ones
// back off too (jittered as well, so a fleet that lost the broker together stays spread).
func (c *Client) onReconnecting(mqtt.Client, *mqtt.ClientOptions) {
	c.mu.Lock()
	// Decided here, not in onLost: paho starts onLost on its own goroutine, often after the
	// first reconnect attempt.
	if !c.readySince.IsZero() {
		if time.Since(c.readySince) >= c.cfg.StableAfter {
			c.reconnects = 0 // the connection held: this outage starts from the first step
		}
		c.readySince = time.Time{}
	}
	c.reconnects++
	n := c.reconnects
	c.mu.Unlock()
	d := rand.N(c.cfg.ReconnectJitter + 1)
	if n > 1 {
		d += c.cfg.ReconnectBackoff(n - 1)
	}
	c.log.Debug("jobs: reconnect attempt", "attempt", n, "wait", d)
	c.wait(c.ctx, d)
}

func (c *Client) onNotification(_ mqtt.Client, n mqtt.ConnectionNotification) {
	switch n := n.(type) {
	case mqtt.ConnectionNotificationFailed:
		c.mu.Lock()
		c.lastConnErr = n.Reason
		c.mu.Unlock()
		c.log.Warn("jobs: connect attempt failed", "err", n.Reason)
	case mqtt.ConnectionNotificationConnecting:
		c.log.Debug("jobs: connecting", "reconnect", n.IsReconnect, "attempt", n.Attempt)
		if !n.IsReconnect && n.Attempt > 0 {
			// paho retries the first connect at a fixed interval; spread a fleet that boots
			// together the same way as reconnects (this notification runs synchronously).
			c.wait(c.ctx, rand.N(c.cfg.ReconnectJitter+1))
		}
	}
}

// wait waits d, or returns false if ctx or the client ends first.
func (c *Client) wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-c.ctx.Done():
		return false
	}
}

// waitReady waits until the client is connected and subscribed. Only ctx bounds this wait: a device
// offline for an hour still delivers its report when it comes back.
func (c *Client) waitReady(ctx context.Context) error {
	c.mu.Lock()
	ready := c.ready
	c.mu.Unlock()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.ctx.Done():
		return ErrClosed
	}
}
