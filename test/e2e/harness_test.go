// Package e2e runs the real binaries as processes: fieldota-agent (built with -tags faultinject
// so a test can kill it in a chosen state) against the emulator, either in-process
// (test/jobsim, when a test needs its clock, faults or events) or as `fieldota sim`.
package e2e

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	otarun "github.com/fieldota/fieldota/ota/run"
	"github.com/fieldota/fieldota/test/testdoc"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/fieldota/fieldota/verify/sign"
)

var bin string // directory holding the built binaries

func TestMain(m *testing.M) {
	otarun.MaybeShim() // in-process agents run autoStart programs through this binary
	dir, err := os.MkdirTemp("", "fieldota-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	bin = dir
	builds := [][]string{
		{"build", "-tags", "faultinject", "-o", filepath.Join(dir, "fieldota-agent"), "github.com/fieldota/fieldota/cmd/fieldota-agent"},
		{"build", "-o", filepath.Join(dir, "fieldota"), "github.com/fieldota/fieldota/cmd/fieldota"},
	}
	for _, args := range builds {
		cmd := exec.Command("go", args...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go %s: %v\n%s", strings.Join(args, " "), err, out)
			os.Exit(2)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

const thing = "dev1"

// device is one simulated device: a state dir, an app root, a config and a release key.
type device struct {
	t        *testing.T
	dir      string
	appRoot  string
	stateDir string
	cfgPath  string
	key      crypto.Signer
	agentLog *syncBuffer
	// stepTimeoutMinutes is the agent's jobs.step_timeout_minutes (0: the default, 60).
	stepTimeoutMinutes int
}

// env is an emulator plus one device.
type env struct {
	*device
	sim       *jobsim.Sim
	artifacts string
	mu        sync.Mutex
	events    []jobsim.Event
}

// clock is a wall clock a test can move forward (to expire presigned URLs).
type clock struct {
	mu   sync.Mutex
	skew time.Duration
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return time.Now().Add(c.skew) }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.skew += d; c.mu.Unlock() }

type envOpts struct {
	clock                     *clock
	external                  *jobsim.ExternalBroker
	endpoint                  string // broker URL for the agent when external
	mqttCA, mqttCert, mqttKey string
	// stepTimeoutMinutes: the agent's step timer; a test that moves the emulator's clock past
	// the default 60 minutes sets it longer, or the job times out under the agent.
	stepTimeoutMinutes int
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	e := &env{device: newDevice(t)}
	e.artifacts = filepath.Join(e.dir, "artifacts")
	if err := os.MkdirAll(filepath.Join(e.artifacts, "bucket"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := jobsim.Config{HTTPAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0", ArtifactDir: e.artifacts, External: o.external,
		OnEvent: func(ev jobsim.Event) { e.mu.Lock(); e.events = append(e.events, ev); e.mu.Unlock() }}
	if o.external == nil {
		cfg.MQTTAddr = "127.0.0.1:0"
	}
	if o.clock != nil {
		cfg.Now = o.clock.Now
	}
	sim, err := jobsim.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	e.sim = sim
	endpoint := sim.MQTTURL()
	if o.external != nil {
		endpoint = o.endpoint
	}
	e.stepTimeoutMinutes = o.stepTimeoutMinutes
	e.writeConfig(endpoint, o.mqttCA, o.mqttCert, o.mqttKey)
	return e
}

func newDevice(t *testing.T) *device {
	t.Helper()
	d := &device{t: t, dir: t.TempDir(), agentLog: &syncBuffer{}}
	d.appRoot = filepath.Join(d.dir, "app")
	d.stateDir = filepath.Join(d.dir, "state")
	if err := os.MkdirAll(d.appRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	key, err := sign.GenerateKey("ecdsa-p256")
	if err != nil {
		t.Fatal(err)
	}
	d.key = key
	if _, err := sign.WriteKeyPair(key, filepath.Join(d.dir, "release.key"), filepath.Join(d.dir, "release.pub")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent output:\n%s", d.agentLog.String())
		}
	})
	return d
}

func (d *device) writeConfig(endpoint, ca, cert, key string) {
	d.t.Helper()
	mqtt := fmt.Sprintf("endpoint = %q\n", endpoint)
	if cert != "" {
		mqtt += fmt.Sprintf("ca_file = %q\ncert_file = %q\nkey_file = %q\nserver_name = \"localhost\"\n", ca, cert, key)
	}
	jobs := ""
	if d.stepTimeoutMinutes > 0 {
		jobs = fmt.Sprintf("step_timeout_minutes = %d\n", d.stepTimeoutMinutes)
	}
	body := fmt.Sprintf(`thing_name = %q
state_dir = %q
compatible = ["board-rev-c"]
[mqtt]
%s
[jobs]
%sprogress_min_interval = "1ms"
request_timeout = "2s"
[verify]
keys = [%q]
[download]
allow_insecure_http = true
allowed_hosts = ["127.0.0.1"]
stall_timeout = "5s"
[files]
allowed_roots = [%q]
autostart_timeout = "20s"
[log]
level = "debug"
`, thing, d.stateDir, mqtt, jobs, filepath.Join(d.dir, "release.pub"), d.appRoot)
	d.cfgPath = filepath.Join(d.dir, "agent.toml")
	if err := os.WriteFile(d.cfgPath, []byte(body), 0o600); err != nil {
		d.t.Fatal(err)
	}
}

// agentProc is a running fieldota-agent.
type agentProc struct {
	cmd  *exec.Cmd
	done chan error
}

// startAgent runs fieldota-agent; extraEnv may carry FIELDOTA_KILL_IN_STATE.
func (d *device) startAgent(extraEnv ...string) *agentProc {
	d.t.Helper()
	cmd := exec.Command(filepath.Join(bin, "fieldota-agent"), "run", "--config", d.cfgPath)
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.Stdout, cmd.Stderr = d.agentLog, d.agentLog
	if err := cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	d.t.Cleanup(func() { p.stop() })
	return p
}

// stop sends SIGTERM (the agent treats it like a power cut) and waits. It may be called again
// (the exit status stays in done).
func (p *agentProc) stop() {
	select {
	case err := <-p.done:
		p.done <- err
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		err = <-p.done
	}
	p.done <- err
}

// waitKilled waits for the agent to die of SIGKILL (the fault injection).
func (p *agentProc) waitKilled(t *testing.T) {
	t.Helper()
	select {
	case err := <-p.done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("agent ended with %v, not SIGKILL", err)
		}
		p.done <- err // keep stop() happy
	case <-time.After(30 * time.Second):
		t.Fatal("agent was not killed in time")
	}
}

func (e *env) publish(name string, content []byte) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.artifacts, "bucket", name), content, 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// seedDoc is the seed's example document, signed (autoStart as a string, files as an object).
func (d *device) seedDoc(name string, content []byte, version, workDir string, autoStart bool) string {
	d.t.Helper()
	td := testdoc.For(name, content, version)
	td.WorkDir, td.AutoStart = workDir, autoStart
	return d.sign(td)
}

// sign signs a test document with the device's release key.
func (d *device) sign(td testdoc.Doc) string {
	d.t.Helper()
	doc, err := td.Signed(d.key)
	if err != nil {
		d.t.Fatal(err)
	}
	return doc
}

func (e *env) createJob(id, doc string) {
	e.t.Helper()
	if _, err := e.sim.CreateJob(jobsim.CreateJobInput{JobID: id, Targets: []string{thing}, Document: doc}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) waitTerminal(jobID string, within time.Duration) jobsim.JobExecution {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		ex, err := e.sim.DescribeJobExecution(jobID, thing, 0)
		if err == nil && jobs.Status(ex.Status).Terminal() {
			return ex
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s not terminal after %s: %+v %v", jobID, within, ex, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (e *env) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// terminalReports counts the device's accepted updates to a terminal status for a job.
func (e *env) terminalReports(jobID string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.events {
		if ev.JobID == jobID && ev.Kind == jobsim.EventStatus && jobs.Status(ev.Status).Terminal() && !strings.Contains(ev.Detail, "service") {
			n++
		}
	}
	return n
}

// assertNoLeftovers checks that no temp file, marker or staged payload survived the job.
func (d *device) assertNoLeftovers() {
	d.t.Helper()
	// The terminal report is sent before cleanup runs: give the agent a moment to finish it.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(d.stateDir, "journal.json")); os.IsNotExist(err) {
			break
		}
	}
	for _, root := range []string{d.stateDir, d.appRoot} {
		_ = filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return nil
			}
			name := fi.Name()
			if strings.HasPrefix(name, ".fieldota-") || strings.HasSuffix(name, ".payload") || strings.HasSuffix(name, ".checkpoint") {
				d.t.Errorf("left behind: %s", p)
			}
			return nil
		})
	}
	if _, err := os.Stat(filepath.Join(d.stateDir, "journal.json")); err == nil {
		d.t.Error("journal left behind")
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// syncBuffer is a goroutine-safe buffer for process output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
