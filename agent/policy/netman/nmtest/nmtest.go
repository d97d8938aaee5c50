// Package nmtest runs, for tests, a private D-Bus daemon (Debian's dbus-daemon) with a stand-in
// for NetworkManager that owns its bus name and exports its Metered property.
package nmtest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"
)

// NetworkManager's bus name, object and interface.
const (
	Service = "org.freedesktop.NetworkManager"
	Path    = "/org/freedesktop/NetworkManager"
)

// Bus starts a private dbus-daemon and returns its address; it stops when the test ends. A
// missing dbus-daemon fails the test (scripts/deps.sh installs it): tests never skip.
func Bus(t testing.TB) string {
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

// NetworkManager owns NetworkManager's name on the bus at addr and exports Metered = value
// (a uint32 NMMetered; tests may pass another type). Change it with SetMust.
func NetworkManager(t testing.TB, addr string, value any) *prop.Properties {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	props, err := prop.Export(conn, Path, prop.Map{Service: {"Metered": {Value: value, Emit: prop.EmitFalse}}})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := conn.RequestName(Service, dbus.NameFlagDoNotQueue); err != nil || r != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("request name: %v %v", r, err)
	}
	return props
}
