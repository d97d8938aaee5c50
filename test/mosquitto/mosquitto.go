// Package mosquitto starts Debian's mosquitto for tests, configured like AWS IoT's broker as far as
// the Jobs emulator needs: 127.0.0.1 only, TLS with client certificates whose CN is the identity,
// and an ACL that confines each thing to $aws/things/<CN>/ while a privileged identity (the
// emulator attached as a client) may use all of $aws/.
package mosquitto

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fieldota/fieldota/test/testpki"
)

// Options tune the broker.
type Options struct {
	Admin string // CN of the privileged identity; default "jobsim"
}

// Broker is a running mosquitto, stopped by the test's cleanup.
type Broker struct {
	ca     *testpki.CA
	admin  string
	dir    string
	conf   string
	log    string
	port   int
	cmd    *exec.Cmd
	cancel context.CancelFunc
	exited chan struct{}
}

const startTimeout = 10 * time.Second

// Start writes a temporary configuration, starts mosquitto on a free 127.0.0.1 port and waits
// until it accepts connections. A missing mosquitto fails the test (scripts/deps.sh installs it).
func Start(t testing.TB, ca *testpki.CA, opts Options) *Broker {
	t.Helper()
	if opts.Admin == "" {
		opts.Admin = "jobsim"
	}
	b := &Broker{ca: ca, admin: opts.Admin, dir: t.TempDir()}
	b.port = freePort(t)
	if err := b.writeConfig(); err != nil {
		t.Fatalf("mosquitto config: %v", err)
	}
	t.Cleanup(b.stop)
	b.start(t)
	return b
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func (b *Broker) writeConfig() error {
	srv, err := b.ca.Server("mosquitto")
	if err != nil {
		return err
	}
	certPath, keyPath, err := srv.WriteFiles(b.dir, "server")
	if err != nil {
		return err
	}
	caPath, err := b.ca.WriteCA(b.dir)
	if err != nil {
		return err
	}
	aclPath := filepath.Join(b.dir, "acl")
	// The pattern applies to every identity; the admin block adds the whole $aws tree for the
	// emulator. %u is the certificate CN (use_identity_as_username).
	acl := "user " + b.admin + "\ntopic readwrite $aws/#\n\npattern readwrite $aws/things/%u/#\n"
	if err := os.WriteFile(aclPath, []byte(acl), 0o644); err != nil {
		return err
	}
	b.log = filepath.Join(b.dir, "mosquitto.log")
	var c strings.Builder
	if os.Geteuid() == 0 {
		c.WriteString("user root\n") // else mosquitto drops to a "mosquitto" user that cannot read the temp dir
	}
	fmt.Fprintf(&c, `per_listener_settings true
persistence false
log_dest file %s
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
listener %d 127.0.0.1
allow_anonymous false
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
acl_file %s
`, b.log, b.port, caPath, certPath, keyPath, aclPath)
	b.conf = filepath.Join(b.dir, "mosquitto.conf")
	return os.WriteFile(b.conf, []byte(c.String()), 0o644)
}

func binary() (string, error) {
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("mosquitto not found in PATH or /usr/sbin: run scripts/deps.sh (apt-get install mosquitto)")
}

func (b *Broker) start(t testing.TB) {
	t.Helper()
	bin, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	// The context ends the broker: SIGTERM first, SIGKILL if it lingers past WaitDelay.
	runCtx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	b.cmd = exec.CommandContext(runCtx, bin, "-c", b.conf)
	b.cmd.Cancel = func() error { return b.cmd.Process.Signal(syscall.SIGTERM) }
	b.cmd.WaitDelay = 5 * time.Second
	b.cmd.Dir = b.dir
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start mosquitto: %v", err)
	}
	b.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		cmd.Wait()
		close(done)
	}(b.cmd, b.exited)

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	addr := "127.0.0.1:" + strconv.Itoa(b.port)
	for {
		var d net.Dialer
		dctx, dcancel := context.WithTimeout(ctx, time.Second)
		conn, err := d.DialContext(dctx, "tcp", addr)
		dcancel()
		if err == nil {
			conn.Close()
			return
		}
		select {
		case <-b.exited:
			t.Fatalf("mosquitto exited at start (%v); log:\n%s", b.cmd.ProcessState, b.Log())
		case <-ctx.Done():
			t.Fatalf("mosquitto did not accept on %s within %v; log:\n%s", addr, startTimeout, b.Log())
		case <-tick.C:
		}
	}
}

// stop ends mosquitto and waits for it.
func (b *Broker) stop() {
	if b.cmd == nil || b.cancel == nil {
		return
	}
	b.cancel()
	<-b.exited
}

// Restart stops mosquitto and starts it again on the same port (broker-restart tests).
func (b *Broker) Restart(t testing.TB) {
	t.Helper()
	b.stop()
	b.start(t)
}

// URL is the broker's address for paho.
func (b *Broker) URL() string { return "ssl://127.0.0.1:" + strconv.Itoa(b.port) }

// Log returns what mosquitto logged so far (for failure messages).
func (b *Broker) Log() string {
	data, err := os.ReadFile(b.log)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return string(data)
}

// ClientTLS mints a device certificate for thing (CN = thing) and returns a client TLS config.
func (b *Broker) ClientTLS(thing string) *tls.Config {
	p, err := b.ca.Client(thing)
	if err != nil {
		panic("mosquitto: cannot issue a client certificate: " + err.Error())
	}
	c, err := p.TLSCertificate()
	if err != nil {
		panic("mosquitto: cannot parse a client certificate: " + err.Error())
	}
	return &tls.Config{Certificates: []tls.Certificate{c}, RootCAs: b.ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// AdminTLS is ClientTLS for the privileged identity, for jobsim.ExternalBroker.
func (b *Broker) AdminTLS() *tls.Config { return b.ClientTLS(b.admin) }

// Admin is the privileged identity's CN (and the client id to use with it).
func (b *Broker) Admin() string { return b.admin }
