package netman

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"
)

// bus starts a private dbus-daemon (Debian's, installed by scripts/deps.sh) and returns its
// address; it is stopped when the test ends.
func bus(t *testing.T) string {
	t.Helper()
	daemon, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Fatal("dbus-daemon is not installed (scripts/deps.sh installs it): ", err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bus.conf")
	conf := `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path=` + filepath.Join(dir, "bus") + `</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>`
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(daemon, "--config-file="+cfg, "--nofork", "--nopidfile", "--print-address")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon printed no address: %v", err)
	}
	return strings.TrimSpace(line)
}

// fakeNM owns NetworkManager's name on the bus and exports its Metered property.
func fakeNM(t *testing.T, addr string, value any) *prop.Properties {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	props, err := prop.Export(conn, path, prop.Map{service: {"Metered": {Value: value, Emit: prop.EmitFalse}}})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := conn.RequestName(service, dbus.NameFlagDoNotQueue); err != nil || r != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("request name: %v %v", r, err)
	}
	return props
}

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
