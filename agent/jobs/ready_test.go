package jobs

import (
	"context"
	"testing"
	"time"
)

// TestLinkLostBetweenSubackAndReadyLeavesTheClientNotReady forces the order the issue suspected:
// the SUBACK of a reconnect arrives, the link drops and onLost runs, and only then does
// afterConnect mark the client ready. It used to close the fresh ready channel, so Connected()
// said true (and requests went out) on a link that was gone.
func TestLinkLostBetweenSubackAndReadyLeavesTheClientNotReady(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	cfg := testConfig(b)
	connects := make(chan struct{}, 4)
	cfg.OnConnect = func(context.Context) { connects <- struct{}{} }
	c := dial(t, cfg)
	<-connects
	hooked := make(chan struct{})
	c.mu.Lock()
	lost := c.gen
	c.afterSubscribe = func() {
		c.mu.Lock()
		c.afterSubscribe = nil
		c.mu.Unlock()
		b.close() // the link drops right after the SUBACK…
		deadline := time.Now().Add(5 * time.Second)
		for { // …and onLost has run before afterConnect goes on
			c.mu.Lock()
			g := c.gen
			c.mu.Unlock()
			if g > lost+1 || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		close(hooked)
	}
	c.mu.Unlock()
	b.kick("dev1") // reconnect: the subscribe of the new link runs the hook
	select {
	case <-hooked:
	case <-time.After(10 * time.Second):
		t.Fatal("the reconnect never subscribed")
	}
	c.mu.Lock()
	g := c.gen
	c.mu.Unlock()
	if g < lost+2 {
		t.Fatalf("onLost did not run for the second loss (gen %d → %d): the test forced nothing", lost, g)
	}
	time.Sleep(200 * time.Millisecond) // afterConnect finishes
	if c.Connected() {
		t.Fatal("client says it is connected and subscribed, but the broker is gone")
	}
	select {
	case <-connects:
		t.Fatal("OnConnect ran for a link that was already lost")
	default:
	}
}
