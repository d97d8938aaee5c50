package jobs

import (
	"context"
	"fmt"
	"strings"
	"time"
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
