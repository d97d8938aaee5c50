package agent

import (
	"bytes"
	"fmt"
	"github.com/fieldota/fieldota/test/testdoc"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota/swap"
	"github.com/fieldota/fieldota/test/jobsim"
)

// managedApp is a real program managed by a restart script: /usr/bin/sleep copied to the
// target (v1), restarted from the target path by the script, its pid in a pid file. A v2 is
// the same ELF with bytes appended (it runs the same, hashes differently); a v2 that exits at
// once is a copy of /usr/bin/false.
type managedApp struct {
	t                    *testing.T
	target, pidFile, dir string
}

func realBinary(t *testing.T, name string) []byte {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is needed: %v", name, err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newManagedApp(t *testing.T, h *harness) *managedApp {
	t.Helper()
	m := &managedApp{t: t, dir: filepath.Join(h.dir, "usr-bin")}
	if err := os.MkdirAll(m.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m.target = filepath.Join(m.dir, "myapp")
	m.pidFile = filepath.Join(h.dir, "myapp.pid")
	if err := os.WriteFile(m.target, realBinary(t, "sleep"), 0o755); err != nil {
		t.Fatal(err)
	}
	restart := filepath.Join(h.dir, "restart-myapp")
	script := fmt.Sprintf(`#!/bin/sh
# stop the running app, start whatever binary is at the target path now
[ -f %[1]q ] && kill "$(cat %[1]q)" 2>/dev/null
%[2]q 600 >/dev/null 2>&1 &
echo $! > %[1]q
`, m.pidFile, m.target)
	if err := os.WriteFile(restart, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(restart).CombinedOutput(); err != nil {
		t.Fatalf("start v1: %v %s", err, out)
	}
	t.Cleanup(m.kill)
	h.cfg.Swap.Target = m.target
	h.cfg.Swap.Restart = []string{restart}
	h.cfg.Swap.PIDFile = m.pidFile
	h.cfg.Swap.Probation.Duration = time.Second
	h.cfg.Swap.ProbeInterval.Duration = 100 * time.Millisecond
	h.cfg.Health.Timeout.Duration = 3 * time.Second
	return m
}

func (m *managedApp) pid() int {
	b, _ := os.ReadFile(m.pidFile)
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

func (m *managedApp) kill() {
	if p := m.pid(); p > 0 {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
}

// binaryDoc is a signed document for target binary: one file, no workingDirectory/autoStart.
func (h *harness) binaryDoc(name string, content []byte, version string) string {
	h.t.Helper()
	d := testdoc.For(name, content, version)
	d.Target, d.Binary = "binary", "myapp"
	if h.cfg.Swap.Target != "" {
		d.Binary = filepath.Base(h.cfg.Swap.Target)
	}
	doc, err := d.Signed(h.key)
	if err != nil {
		h.t.Fatal(err)
	}
	return doc
}

func fileIs(t *testing.T, path string, want []byte) bool {
	t.Helper()
	got, err := os.ReadFile(path)
	return err == nil && bytes.Equal(got, want)
}

func TestHealthyNewBinaryIsSwappedRestartedAndCommitted(t *testing.T) {
	h := newHarness(t)
	m := newManagedApp(t, h)
	v2 := append(realBinary(t, "sleep"), []byte("\x00fieldota v2")...)
	h.publish("myapp", v2)
	h.createJob("swap-ok", h.binaryDoc("myapp", v2, "2.0"))
	h.run()
	ex := h.waitTerminal("swap-ok")
	d := ex.StatusDetails.DetailsMap
	if ex.Status != "SUCCEEDED" || d["version"] != "2.0" {
		t.Fatalf("%s %v", ex.Status, d)
	}
	if !fileIs(t, m.target, v2) {
		t.Fatal("target is not v2")
	}
	if err := swap.Runs(m.pid(), m.target); err != nil {
		t.Fatalf("v2 is not the running process: %v", err)
	}
	if _, err := os.Lstat(swap.BackupPath(m.target)); !os.IsNotExist(err) {
		t.Fatalf("previous binary kept without keep_old: %v", err)
	}
	inst, err := loadInstalled(h.cfg.StateDir)
	if err != nil || inst["binary:"+m.target].Version != "2.0" {
		t.Fatalf("installed %v %v", inst, err)
	}
}

func TestNewBinaryThatExitsAtOnceIsRolledBackAndTheOldOneRunsAgain(t *testing.T) {
	h := newHarness(t)
	m := newManagedApp(t, h)
	h.cfg.Swap.KeepOld = true // a rollback must not depend on it
	v1 := realBinary(t, "sleep")
	bad := realBinary(t, "false")
	h.publish("myapp", bad)
	h.createJob("swap-crash", h.binaryDoc("myapp", bad, "2.0"))
	h.run()
	ex := h.waitTerminal("swap-crash")
	d := ex.StatusDetails.DetailsMap
	if ex.Status != "FAILED" || d["reason"] != "HEALTH_CHECK_FAILED" || d["rolledBack"] != "true" {
		t.Fatalf("%s %v", ex.Status, d)
	}
	if !fileIs(t, m.target, v1) {
		t.Fatal("target is not the old binary")
	}
	if err := swap.Runs(m.pid(), m.target); err != nil {
		t.Fatalf("the old binary is not running again: %v", err)
	}
	if inst, _ := loadInstalled(h.cfg.StateDir); inst["binary:"+m.target].Version != "" {
		t.Fatalf("a rolled-back version was recorded: %v", inst)
	}
}

func TestBinaryJobOnADeviceWithoutSwapTargetIsRejected(t *testing.T) {
	h := newHarness(t)
	v2 := realBinary(t, "true")
	h.publish("myapp", v2)
	h.createJob("no-target", h.binaryDoc("myapp", v2, "2.0"))
	h.run()
	ex := h.waitTerminal("no-target")
	if ex.Status != "REJECTED" || ex.StatusDetails.DetailsMap["reason"] != "UNSUPPORTED_OPERATION" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
}

// TestKeptPreviousBinaryIsReplacedByTheNextSwap: with keep_old the backup survives the commit,
// and the next job backs up the binary it replaces, not the stale one.
func TestKeptPreviousBinaryIsReplacedByTheNextSwap(t *testing.T) {
	h := newHarness(t)
	m := newManagedApp(t, h)
	h.cfg.Swap.KeepOld = true
	v1 := realBinary(t, "sleep")
	v2 := append(realBinary(t, "sleep"), []byte("\x00fieldota v2")...)
	v3 := append(realBinary(t, "sleep"), []byte("\x00fieldota v3")...)
	h.publish("myapp-2", v2)
	h.publish("myapp-3", v3)
	h.createJob("to-2", h.binaryDoc("myapp-2", v2, "2.0"))
	h.run()
	if ex := h.waitTerminal("to-2"); ex.Status != "SUCCEEDED" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if !fileIs(t, swap.BackupPath(m.target), v1) {
		t.Fatal("keep_old: v1 not kept")
	}
	h.createJob("to-3", h.binaryDoc("myapp-3", v3, "3.0"))
	if ex := h.waitTerminal("to-3"); ex.Status != "SUCCEEDED" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if !fileIs(t, m.target, v3) || !fileIs(t, swap.BackupPath(m.target), v2) {
		t.Fatal("after the second swap the target is not v3 or the backup is not v2")
	}
	if err := swap.Runs(m.pid(), m.target); err != nil {
		t.Fatal(err)
	}
}

// TestCanceledReinstallOfTheSameVersionIsRolledBackNotCommitted: the commit skipped its cancel
// check whenever installed.json already named the job's version, so a reinstall of the same
// version canceled during probation was committed anyway. Only a commit this job has journaled
// may skip the check.
func TestCanceledReinstallOfTheSameVersionIsRolledBackNotCommitted(t *testing.T) {
	h := newHarness(t)
	m := newManagedApp(t, h)
	v2 := append(realBinary(t, "sleep"), []byte("\x00fieldota v2")...)
	again := append(realBinary(t, "sleep"), []byte("\x00fieldota v2, rebuilt")...)
	h.publish("myapp", v2)
	h.publish("myapp-again", again)
	h.createJob("first", h.binaryDoc("myapp", v2, "2.0"))
	h.run()
	if ex := h.waitTerminal("first"); ex.Status != "SUCCEEDED" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	h.cfg.Swap.Probation.Duration = 3 * time.Second
	h.createJob("reinstall", h.binaryDoc("myapp-again", again, "2.0"))
	h.waitFor("the reinstall's probation", func() bool {
		ex, err := h.sim.DescribeJobExecution("reinstall", thing, 0)
		return err == nil && ex.StatusDetails.DetailsMap["stage"] == "selftest"
	})
	if err := h.sim.CancelJob("reinstall", jobsim.CancelJobInput{Force: true}); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the rollback to the previous binary, running again", func() bool {
		return fileIs(t, m.target, v2) && swap.Runs(m.pid(), m.target) == nil
	})
	h.waitFor("the job's end", func() bool {
		_, err := os.Stat(filepath.Join(h.cfg.StateDir, "journal.json"))
		return os.IsNotExist(err)
	})
	if !fileIs(t, m.target, v2) {
		t.Fatal("the canceled reinstall's binary is in place")
	}
	if ex, _ := h.sim.DescribeJobExecution("reinstall", thing, 0); ex.Status != "CANCELED" {
		t.Fatalf("reinstall ended %s", ex.Status)
	}
}
