package e2e

import (
	"bytes"
	"context"
	"fmt"
	"github.com/fieldota/fieldota/test/testdoc"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota/swap"
)

// Agent builds for the self-update tests, next to the v1 agent TestMain builds ("dev"): a 2.0,
// a 2.0 that crashes at start and one that hangs at start, because of how they were built
// (cmd/fieldota-agent/recover_faultinject.go).
var (
	agentBuilds    sync.Once
	agentBuildsErr error
)

func buildAgentVariants(t *testing.T) (v2, crash, hang string) {
	t.Helper()
	v2, crash, hang = filepath.Join(bin, "fieldota-agent-2.0"), filepath.Join(bin, "fieldota-agent-crash"), filepath.Join(bin, "fieldota-agent-hang")
	agentBuilds.Do(func() {
		for out, ldflags := range map[string]string{v2: "-X main.version=2.0", crash: "-X main.version=2.0 -X main.crashOnStart=true",
			hang: "-X main.version=2.0 -X main.hangOnStart=true"} {
			cmd := exec.Command("go", "build", "-tags", "faultinject", "-ldflags", ldflags, "-o", out, "github.com/fieldota/fieldota/cmd/fieldota-agent")
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if b, err := cmd.CombinedOutput(); err != nil {
				agentBuildsErr = fmt.Errorf("go build %s: %v\n%s", ldflags, err, b)
				return
			}
		}
	})
	if agentBuildsErr != nil {
		t.Fatal(agentBuildsErr)
	}
	return v2, crash, hang
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func systemBinary(t *testing.T, name string) []byte {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is needed: %v", name, err)
	}
	return mustRead(t, p)
}

// appendConfig adds TOML sections to the device's config.
func (d *device) appendConfig(toml string) {
	d.t.Helper()
	f, err := os.OpenFile(d.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		d.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("\n" + toml); err != nil {
		d.t.Fatal(err)
	}
}

// binaryDoc is a signed document for target binary (one file; no workingDirectory/autoStart).
func (d *device) binaryDoc(name string, content []byte, version string) string {
	d.t.Helper()
	td := testdoc.For(name, content, version)
	td.Target = "binary"
	return d.sign(td)
}

// managedApp is the program a binary job replaces: /usr/bin/sleep copied to <dir>/usr-bin/myapp
// (v1), (re)started from that path by a restart script that keeps its pid in a pid file. A
// healthy v2 is the same ELF with bytes appended; a v2 that exits at once is /usr/bin/false.
type managedApp struct {
	t                        *testing.T
	target, pidFile, restart string
	v1                       []byte
}

func newManagedApp(t *testing.T, d *device) *managedApp {
	t.Helper()
	dir := filepath.Join(d.dir, "usr-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := &managedApp{t: t, target: filepath.Join(dir, "myapp"), pidFile: filepath.Join(d.dir, "myapp.pid"),
		restart: filepath.Join(d.dir, "restart-myapp"), v1: systemBinary(t, "sleep")}
	if err := os.WriteFile(m.target, m.v1, 0o755); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`#!/bin/sh
# stop the running app, start whatever binary is at the target path now
[ -f %[1]q ] && kill "$(cat %[1]q)" 2>/dev/null
%[2]q 600 >/dev/null 2>&1 &
echo $! > %[1]q
`, m.pidFile, m.target)
	if err := os.WriteFile(m.restart, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(m.restart).CombinedOutput(); err != nil {
		t.Fatalf("start v1: %v %s", err, out)
	}
	t.Cleanup(func() {
		if p := m.pid(); p > 0 {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	})
	d.appendConfig(fmt.Sprintf(`[swap]
target = %q
restart = [%q]
pid_file = %q
probation = "1s"
probe_interval = "100ms"
[health]
timeout = "4s"
`, m.target, m.restart, m.pidFile))
	return m
}

func (m *managedApp) pid() int {
	b, _ := os.ReadFile(m.pidFile)
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// assertWorking checks that the target holds one of the given binaries, whole, and that it runs.
func assertWorking(t *testing.T, target string, allowed ...[]byte) []byte {
	t.Helper()
	got, err := os.ReadFile(target)
	if err != nil {
		t.Fatalf("no binary at %s: %v", target, err)
	}
	for _, a := range allowed {
		if bytes.Equal(got, a) {
			fi, err := os.Stat(target)
			if err != nil || fi.Mode().Perm() != 0o755 {
				t.Fatalf("%s mode %v %v", target, fi.Mode(), err)
			}
			return got
		}
	}
	t.Fatalf("%s holds %d bytes that are none of the expected binaries (torn?)", target, len(got))
	return nil
}

// supervisor restarts the agent whenever it exits, like systemd's Restart=always, and runs
// `<dir>/.fieldota-agent.prev recover` before each start when that file exists, like the
// unit's ExecStartPre=- line (scripts/fieldota-agent.service).
type supervisor struct {
	d      *device
	target string
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	starts int
	cur    *exec.Cmd
}

func (d *device) supervise(target string, firstEnv ...string) *supervisor {
	ctx, cancel := context.WithCancel(context.Background())
	s := &supervisor{d: d, target: target, cancel: cancel, done: make(chan struct{})}
	go s.loop(ctx, firstEnv)
	d.t.Cleanup(s.stop)
	return s
}

func (s *supervisor) loop(ctx context.Context, env []string) {
	defer close(s.done)
	for ctx.Err() == nil {
		if prev := swap.BackupPath(s.target); fileExists(prev) {
			out, err := exec.Command(prev, "recover", "--config", s.d.cfgPath).CombinedOutput()
			fmt.Fprintf(s.d.agentLog, "[supervisor] recover: %v %s\n", err, out)
		}
		cmd := exec.Command(s.target, "run", "--config", s.d.cfgPath)
		// Every start gets env; FIELDOTA_KILL_MARKER makes an injected kill happen once.
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = s.d.agentLog, s.d.agentLog
		if err := cmd.Start(); err != nil {
			fmt.Fprintf(s.d.agentLog, "[supervisor] start: %v\n", err)
		} else {
			s.mu.Lock()
			s.starts++
			s.cur = cmd
			s.mu.Unlock()
			_ = os.WriteFile(s.pidFile(), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
			waited := make(chan error, 1)
			go func() { waited <- cmd.Wait() }()
			select {
			case err := <-waited:
				fmt.Fprintf(s.d.agentLog, "[supervisor] agent exited: %v\n", err)
			case <-ctx.Done():
				_ = cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-waited:
				case <-time.After(10 * time.Second):
					_ = cmd.Process.Kill()
					<-waited
				}
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond): // RestartSec
		}
	}
}

func (s *supervisor) stop() { s.cancel(); <-s.done }

// running returns the pid of the agent now running.
func (s *supervisor) running() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || s.cur.Process == nil {
		return 0
	}
	return s.cur.Process.Pid
}

// pidFile holds the pid of the agent now running (for a fake systemctl that restarts it).
func (s *supervisor) pidFile() string { return filepath.Join(s.d.dir, "agent.pid") }

func (s *supervisor) startCount() int { s.mu.Lock(); defer s.mu.Unlock(); return s.starts }

func fileExists(p string) bool { _, err := os.Lstat(p); return err == nil }
