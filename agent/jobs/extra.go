package jobs

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Topics beyond the Jobs API (the `$package` named shadow, AWS IoT Commands): Config.Extra names
// their filters, subscribed on every connect in a SUBSCRIBE of their own; Config.OnMessage hears
// what arrives on them, one message at a time on a goroutine of the Client's; Publish sends.

// extraQueue bounds the messages waiting for OnMessage; past it they are dropped with a warning
// (their senders retry: shadow answers time out, commands are re-sent by the operator).
const extraQueue = 64

func (c *Client) extraCovered(topic string) bool {
	for _, f := range c.cfg.Extra {
		if matchWildcard(f, topic) {
			return true
		}
	}
	return false
}

// matchWildcard is MQTT topic matching with "+" and a trailing "#".
func matchWildcard(filter, topic string) bool {
	fs, ts := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fs {
		if f == "#" && i == len(fs)-1 {
			return true
		}
		if i >= len(ts) || (f != "+" && f != ts[i]) {
			return false
		}
	}
	return len(fs) == len(ts)
}

func (c *Client) queueExtra(m inMsg) {
	select {
	case c.extra <- m:
	default:
		c.log.Warn("jobs: too many messages waiting for their handler; dropped", "topic", m.topic)
	}
}

func (c *Client) deliverExtra() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case m := <-c.extra:
			if c.cfg.OnMessage != nil {
				c.cfg.OnMessage(m.topic, m.payload)
			}
		}
	}
}

func (c *Client) subscribeExtra() error {
	if len(c.cfg.Extra) == 0 {
		return nil
	}
	filters := map[string]byte{}
	for _, f := range c.cfg.Extra {
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

// Publish sends payload to topic at QoS 1 and waits for the broker's PUBACK (bounded by
// RequestTimeout). It waits for the connection first, until ctx ends.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte) error {
	if err := c.waitReady(ctx); err != nil {
		return err
	}
	tok := c.mc.Publish(topic, qos, false, payload)
	timer := time.NewTimer(c.cfg.RequestTimeout)
	defer timer.Stop()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("%w: %w", ErrPublish, err)
		}
		return nil
	case <-timer.C:
		return ErrTimeout
	case <-ctx.Done():
		return ctx.Err()
	case <-c.ctx.Done():
		return ErrClosed
	}
}
