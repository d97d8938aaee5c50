package jobs

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestReconnectBackoffStartsOverAfterAConnectionThatHeld: paho's reconnect backoff carried over
// between outages — a 20 s outage cost 6.6 s in a fresh process but 52.6 s after an earlier 60 s
// one. After a connection that held, the next outage must back off from the first step again.
func TestReconnectBackoffStartsOverAfterAConnectionThatHeld(t *testing.T) {
	addr := freePort(t)
	b := startBroker(t, brokerOpts{addr: addr})
	cfg := testConfig(b)
	cfg.ReconnectJitter = time.Millisecond
	cfg.StableAfter = 300 * time.Millisecond
	// An attempt can reach the closing broker and never get a CONNACK: bound it.
	cfg.ConnectTimeout = 500 * time.Millisecond
	var mu sync.Mutex
	var attempts []int
	cfg.ReconnectBackoff = func(n int) time.Duration {
		mu.Lock()
		attempts = append(attempts, n)
		mu.Unlock()
		return min(100*time.Millisecond<<(n-1), 1600*time.Millisecond)
	}
	connects := make(chan time.Time, 8)
	cfg.OnConnect = func(context.Context) { connects <- time.Now() }
	dial(t, cfg)
	<-connects

	outage := func(d time.Duration) (cost time.Duration, steps []int) {
		t.Helper()
		mu.Lock()
		attempts = nil
		mu.Unlock()
		b.close()
		time.Sleep(d)
		b = startBroker(t, brokerOpts{addr: addr})
		back := time.Now()
		select {
		case at := <-connects:
			cost = at.Sub(back)
		case <-time.After(10 * time.Second):
			t.Fatalf("no reconnect after a %s outage", d)
		}
		mu.Lock()
		defer mu.Unlock()
		return cost, append([]int(nil), attempts...)
	}

	// A long outage climbs the backoff to its cap…
	if _, steps := outage(3 * time.Second); len(steps) < 5 {
		t.Fatalf("a 3 s outage took only backoff steps %v: the test proved nothing", steps)
	}
	time.Sleep(2 * cfg.StableAfter) // …then the connection holds…
	// …so a short outage afterwards starts from the first step and costs what it costs fresh.
	cost, steps := outage(300 * time.Millisecond)
	if len(steps) == 0 || steps[0] != 1 {
		t.Fatalf("backoff steps of the short outage %v: carried over from the long one", steps)
	}
	if cost > 1200*time.Millisecond {
		t.Fatalf("a 300 ms outage after a held connection cost %s to recover (fresh: under 500 ms)", cost)
	}
}

// TestReconnectBackoffKeepsGrowingWhenTheBrokerDropsAtOnce: a connection that does not hold (the
// broker drops the client right after the connect, as AWS does to a duplicate client id) must
// not reset the backoff, or two devices sharing an id would fight at full speed.
func TestReconnectBackoffKeepsGrowingWhenTheBrokerDropsAtOnce(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	cfg := testConfig(b)
	cfg.ReconnectJitter = time.Millisecond
	cfg.StableAfter = time.Hour
	var mu sync.Mutex
	var attempts []int
	cfg.ReconnectBackoff = func(n int) time.Duration {
		mu.Lock()
		attempts = append(attempts, n)
		mu.Unlock()
		return 10 * time.Millisecond
	}
	connects := make(chan struct{}, 16)
	cfg.OnConnect = func(context.Context) { connects <- struct{}{} }
	dial(t, cfg)
	<-connects
	for i := 0; i < 4; i++ {
		b.kick("dev1")
		select {
		case <-connects:
		case <-time.After(10 * time.Second):
			t.Fatal("no reconnect")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// Each kick costs one immediate attempt (jitter only) and succeeds: the attempts number on.
	if len(attempts) < 3 || attempts[len(attempts)-1] < 3 {
		t.Fatalf("backoff steps %v: reset by connections that did not hold", attempts)
	}
}
