// Package swtpm runs Debian's swtpm (a TPM 2.0 simulator built on libtpms) for tests: on a unix
// socket that go-tpm's linuxudstpm transport talks to, the way the agent talks to /dev/tpmrm0,
// or on a control socket only, as QEMU's `-tpmdev emulator` wants it. A missing swtpm fails the
// test: scripts/deps.sh installs it.
package swtpm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TPM is a running swtpm. Its state (persistent objects, seeds) lives in StateDir and outlives
// the process: Stop and Start again on the same dir is a power cycle.
type TPM struct {
	StateDir string
	Socket   string // the command socket (Start), "" for StartForQEMU
	Ctrl     string // the control socket
	run      string // holds the sockets and the log
	cmd      *exec.Cmd
	done     chan struct{}
	log      string
}

// Binary finds swtpm or says how to get it.
func Binary() (string, error) {
	if p, err := exec.LookPath("swtpm"); err == nil {
		return p, nil
	}
	return "", errors.New("swtpm not found: run scripts/deps.sh as root (Debian packages swtpm, swtpm-tools); TPM tests never skip")
}

// Start runs swtpm with its command channel on a unix socket, started (TPM2_Startup done), as
// the kernel leaves a TPM for user space. stateDir "" means a fresh temporary TPM.
func Start(t testing.TB, stateDir string) *TPM {
	t.Helper()
	tp := newTPM(t, stateDir)
	tp.Socket = filepath.Join(tp.run, "tpm.sock")
	tp.start(t, "--server", "type=unixio,path="+tp.Socket, "--flags", "not-need-init,startup-clear")
	tp.waitSocket(t, tp.Socket)
	return tp
}

// StartForQEMU runs swtpm with only its control channel: QEMU's tpm-emulator backend connects
// there and hands swtpm the data channel itself; the guest's kernel sends TPM2_Startup.
func StartForQEMU(t testing.TB, stateDir string) *TPM {
	t.Helper()
	tp := newTPM(t, stateDir)
	tp.start(t)
	tp.waitSocket(t, tp.Ctrl)
	return tp
}

func newTPM(t testing.TB, stateDir string) *TPM {
	t.Helper()
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A short directory of its own for the sockets: unix socket paths are limited to 108 bytes
	// and test temp dirs can be long.
	run, err := os.MkdirTemp("", "swtpm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	return &TPM{StateDir: stateDir, run: run}
}

func (tp *TPM) start(t testing.TB, extra ...string) {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	tp.Ctrl = filepath.Join(tp.run, "ctrl.sock")
	tp.log = filepath.Join(tp.run, "swtpm.log")
	args := append([]string{"socket", "--tpm2", "--tpmstate", "dir=" + tp.StateDir,
		"--ctrl", "type=unixio,path=" + tp.Ctrl, "--log", "file=" + tp.log + ",level=1"}, extra...)
	tp.cmd = exec.Command(bin, args...)
	tp.cmd.Stdout, tp.cmd.Stderr = os.Stderr, os.Stderr
	if err := tp.cmd.Start(); err != nil {
		t.Fatalf("swtpm: %v", err)
	}
	tp.done = make(chan struct{})
	go func() { tp.cmd.Wait(); close(tp.done) }()
	t.Cleanup(tp.Stop)
}

func (tp *TPM) waitSocket(t testing.TB, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-tp.done:
			t.Fatalf("swtpm exited at start: %s", tp.Log())
		default:
		}
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if path == tp.Ctrl {
				return // QEMU owns the one connection swtpm takes on its control socket
			}
			// swtpm serves one connection at a time; probe with a connection we close at once.
			c, err := (&net.Dialer{}).DialContext(context.Background(), "unix", path)
			if err == nil {
				c.Close()
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("swtpm: %s did not appear: %s", path, tp.Log())
}

// Stop ends swtpm (SIGTERM: it writes its state and exits) and waits. Idempotent.
func (tp *TPM) Stop() {
	if tp.cmd == nil || tp.cmd.Process == nil {
		return
	}
	select {
	case <-tp.done:
		return
	default:
	}
	_ = tp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-tp.done:
	case <-time.After(5 * time.Second):
		_ = tp.cmd.Process.Kill()
		<-tp.done
	}
}

// Log is swtpm's log so far, for failure messages.
func (tp *TPM) Log() string {
	b, _ := os.ReadFile(tp.log)
	return strings.TrimSpace(string(b))
}

func (tp *TPM) String() string {
	return fmt.Sprintf("swtpm(state %s, socket %s)", tp.StateDir, tp.Socket)
}
