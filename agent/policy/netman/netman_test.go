package netman

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldota/fieldota/agent/policy/netman/nmtest"
)

var (
	bus    = nmtest.Bus
	fakeNM = nmtest.NetworkManager
)

func TestMeteredAsNetworkManagerSaysIt(t *testing.T) {
	addr := bus(t)
	props := fakeNM(t, addr, uint32(0))
	c := Client{Address: addr}
	for v, want := range map[uint32]struct {
		metered bool
		name    string
	}{0: {false, "unknown"}, 1: {true, "yes"}, 2: {false, "no"}, 3: {true, "guess-yes"}, 4: {false, "guess-no"}} {
		props.SetMust(service, "Metered", v)
		m, name, err := c.Metered(context.Background())
		if err != nil || m != want.metered || name != want.name {
			t.Errorf("Metered=%d: %v %q %v, want %v %q", v, m, name, err, want.metered, want.name)
		}
	}
	props.SetMust(service, "Metered", uint32(9))
	if _, _, err := c.Metered(context.Background()); err == nil {
		t.Error("an unknown NMMetered value was accepted")
	}
}

func TestMeteredCheckFailsLoudlyWithoutNetworkManager(t *testing.T) {
	addr := bus(t)
	cases := map[string]Client{
		"NetworkManager not on the bus": {Address: addr},
		"no bus at that address":        {Address: "unix:path=" + filepath.Join(t.TempDir(), "none")},
	}
	for name, c := range cases {
		if m, _, err := c.Metered(context.Background()); err == nil || m {
			t.Errorf("%s: metered=%v err=%v, want an error", name, m, err)
		}
	}
	wrongType := bus(t)
	fakeNM(t, wrongType, "yes")
	if _, _, err := (Client{Address: wrongType}).Metered(context.Background()); err == nil || !strings.Contains(err.Error(), "uint32") {
		t.Errorf("a string Metered: %v", err)
	}
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)
	fakeNM(t, addr, uint32(1))
	if m, _, err := (Client{}).Metered(context.Background()); err != nil || !m {
		t.Errorf("system bus from DBUS_SYSTEM_BUS_ADDRESS: %v %v", m, err)
	}
}

// TestSilentBusCannotHangTheAgent: a socket that accepts and never answers (a wedged bus) must
// cost one timeout, not a waiting job forever.
func TestSilentBusCannotHangTheAgent(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "silent")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	start := time.Now()
	_, _, err = (Client{Address: "unix:path=" + sock, Timeout: 300 * time.Millisecond}).Metered(context.Background())
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("err=%v after %s", err, time.Since(start))
	}
}
