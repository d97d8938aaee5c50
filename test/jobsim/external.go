package jobsim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// external is the front end on a broker the emulator does not own (e.g. mosquitto): it connects
// as a privileged client, subscribes to every thing's Jobs topics and publishes the answers. The
// broker's own ACL confines the devices.
type external struct {
	log   *slog.Logger
	c     paho.Client
	queue chan paho.Message
	done  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

const externalPublishTimeout = 10 * time.Second

func attach(ctx context.Context, s *Sim, cfg ExternalBroker) (*external, error) {
	if cfg.ClientID == "" {
		cfg.ClientID = "jobsim"
	}
	x := &external{log: s.log, queue: make(chan paho.Message, 4096), done: make(chan struct{})}
	subscribed := make(chan error, 1)
	// The router only enqueues, so paho's ordered delivery never blocks on our publishes and one
	// worker keeps each device's requests in order.
	enqueue := func(_ paho.Client, m paho.Message) {
		select {
		case x.queue <- m:
		case <-x.done:
		}
	}
	opts := paho.NewClientOptions().AddBroker(cfg.URL).SetClientID(cfg.ClientID).SetTLSConfig(cfg.TLS).
		SetCleanSession(true).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(200 * time.Millisecond).SetMaxReconnectInterval(2 * time.Second).
		SetKeepAlive(30 * time.Second).SetPingTimeout(10 * time.Second).SetConnectTimeout(10 * time.Second).
		SetWriteTimeout(externalPublishTimeout).SetDefaultPublishHandler(func(paho.Client, paho.Message) {}).
		SetOnConnectHandler(func(c paho.Client) {
			// Subscriptions do not survive a clean-session reconnect: renew them every time.
			t := c.Subscribe(requestFilter, 1, enqueue)
			var err error
			if !t.WaitTimeout(externalPublishTimeout) {
				err = errors.New("subscribe timed out")
			} else if err = t.Error(); err == nil {
				if st, ok := t.(*paho.SubscribeToken); ok && st.Result()[requestFilter] == 0x80 {
					err = fmt.Errorf("broker refused subscription to %s for %s", requestFilter, cfg.ClientID)
				}
			}
			if err != nil {
				s.log.Error("external broker subscribe", "err", err)
			}
			select {
			case subscribed <- err:
			default:
			}
		})
	x.c = paho.NewClient(opts)
	x.c.Connect()
	select {
	case err := <-subscribed:
		if err != nil {
			x.close()
			return nil, err
		}
	case <-ctx.Done():
		x.close()
		return nil, fmt.Errorf("attach to %s: %w", cfg.URL, ctx.Err())
	}
	x.wg.Add(1)
	go func() {
		defer x.wg.Done()
		for {
			select {
			case m := <-x.queue:
				s.onRequest(m.Topic(), m.Payload())
			case <-x.done:
				return
			}
		}
	}()
	return x, nil
}

// send hands the message to paho without waiting for the PUBACK: paho keeps the order of
// publishes, and waiting would stall every operation (they run under the Sim's lock) while the
// broker restarts. Failures are logged when they come.
func (x *external) send(m outMsg) error {
	t := x.c.Publish(m.topic, 1, false, m.payload)
	go func() { // ends with the PUBACK or on detach
		select {
		case <-t.Done():
			if err := t.Error(); err != nil {
				x.log.Warn("publish failed", "topic", m.topic, "err", err)
			}
		case <-x.done:
		}
	}()
	return nil
}

func (x *external) disconnect(string) error {
	return errors.New("jobsim: cannot drop a device's connection on an external broker")
}

func (x *external) close() error {
	x.once.Do(func() {
		close(x.done)
		x.wg.Wait()
		x.c.Disconnect(250)
	})
	return nil
}
