package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/swap"
)

func TestManagedBinarySwappedAndHealthySucceeds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	m := newManagedApp(t, e.device)
	v2 := append(systemBinary(t, "sleep"), []byte("\x00myapp 2.0")...)
	e.publish("myapp", v2)
	e.createJob("swap", e.binaryDoc("myapp", v2, "2.0"))
	e.startAgent()
	ex := e.waitTerminal("swap", 30*time.Second)
	if ex.Status != "SUCCEEDED" || ex.StatusDetails.DetailsMap["version"] != "2.0" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	assertWorking(t, m.target, v2)
	if err := swap.Runs(m.pid(), m.target); err != nil {
		t.Fatalf("v2 is not what runs: %v", err)
	}
	e.waitFor("the journal to be removed", func() bool { return !fileExists(filepath.Join(e.stateDir, ota.JournalFile)) })
	if fileExists(swap.BackupPath(m.target)) || fileExists(swap.NewPath(m.target)) {
		t.Fatal("previous or staged binary left beside the target (keep_old is false)")
	}
	e.assertNoLeftovers()
}

func TestManagedBinaryThatExitsAtOnceIsRevertedAndTheOldOneRunsAgain(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	m := newManagedApp(t, e.device)
	bad := systemBinary(t, "false")
	e.publish("myapp", bad)
	e.createJob("swap", e.binaryDoc("myapp", bad, "2.0"))
	e.startAgent()
	ex := e.waitTerminal("swap", 30*time.Second)
	d := ex.StatusDetails.DetailsMap
	if ex.Status != "FAILED" || d["reason"] != "HEALTH_CHECK_FAILED" || d["rolledBack"] != "true" {
		t.Fatalf("%s %v", ex.Status, d)
	}
	assertWorking(t, m.target, m.v1)
	if err := swap.Runs(m.pid(), m.target); err != nil {
		t.Fatalf("the old binary is not running again: %v", err)
	}
	e.waitFor("the journal to be removed", func() bool { return !fileExists(filepath.Join(e.stateDir, ota.JournalFile)) })
	if n := e.terminalReports("swap"); n != 1 {
		t.Fatalf("terminal status sent %d times", n)
	}
}

// TestAgentKilledAtEachSwapStepKeepsAWorkingBinary is the power-cut table of the swap: the agent
// SIGKILLs itself right after each durable step inside the swap (staged, backed-up, replaced,
// restored) and after persisting each state of the binary flow. At the kill the target must hold
// a whole binary (the old or the new one, never nothing); started again, the agent must end the
// job as it would have without the kill, reported once.
func TestAgentKilledAtEachSwapStepKeepsAWorkingBinary(t *testing.T) {
	type point struct{ env, journal string }
	healthy := []point{
		{"FIELDOTA_KILL_IN_STATE=install", "install"},
		{"FIELDOTA_KILL_AT_SWAP_STEP=staged", "install"},
		{"FIELDOTA_KILL_AT_SWAP_STEP=backed-up", "install"},
		{"FIELDOTA_KILL_AT_SWAP_STEP=replaced", "install"},
		{"FIELDOTA_KILL_IN_STATE=selftest", "selftest"},
		{"FIELDOTA_KILL_IN_STATE=commit", "commit"},
		{"FIELDOTA_KILL_IN_STATE=report", "report"},
	}
	crashing := []point{
		{"FIELDOTA_KILL_AT_SWAP_STEP=replaced", "install"},
		{"FIELDOTA_KILL_IN_STATE=rollback", "rollback"},
		{"FIELDOTA_KILL_AT_SWAP_STEP=restored", "rollback"},
	}
	type flow struct {
		name   string
		points []point
		v2     func(t *testing.T) []byte
		status string
		final  func(m *managedApp, v2 []byte) []byte // what must be at the target in the end
	}
	flows := []flow{
		{"healthy", healthy, func(t *testing.T) []byte { return append(systemBinary(t, "sleep"), []byte("\x00myapp 2.0")...) },
			"SUCCEEDED", func(_ *managedApp, v2 []byte) []byte { return v2 }},
		{"exits-at-once", crashing, func(t *testing.T) []byte { return systemBinary(t, "false") },
			"FAILED", func(m *managedApp, _ []byte) []byte { return m.v1 }},
	}
	for _, fl := range flows {
		for _, pt := range fl.points {
			t.Run(fl.name+"/"+strings.TrimPrefix(strings.TrimPrefix(pt.env, "FIELDOTA_KILL_"), "AT_SWAP_"), func(t *testing.T) {
				t.Parallel()
				e := newEnv(t, envOpts{})
				m := newManagedApp(t, e.device)
				v2 := fl.v2(t)
				e.publish("myapp", v2)
				e.createJob("swap", e.binaryDoc("myapp", v2, "2.0"))

				p := e.startAgent(pt.env, "FIELDOTA_KILL_MARKER="+filepath.Join(e.dir, "killed"))
				p.waitKilled(t)
				var j ota.Journal
				b, err := os.ReadFile(filepath.Join(e.stateDir, ota.JournalFile))
				if err != nil || json.Unmarshal(b, &j) != nil || string(j.State) != pt.journal {
					t.Fatalf("journal after the kill: %s (%v)", b, err)
				}
				assertWorking(t, m.target, m.v1, v2)

				e.startAgent()
				ex := e.waitTerminal("swap", 30*time.Second)
				d := ex.StatusDetails.DetailsMap
				if ex.Status != fl.status || fl.status == "FAILED" && (d["reason"] != "HEALTH_CHECK_FAILED" || d["rolledBack"] != "true") {
					t.Fatalf("ended %s %v, want %s", ex.Status, d, fl.status)
				}
				e.waitFor("the journal to be removed", func() bool { return !fileExists(filepath.Join(e.stateDir, ota.JournalFile)) })
				if n := e.terminalReports("swap"); n != 1 {
					t.Fatalf("terminal status sent %d times", n)
				}
				assertWorking(t, m.target, fl.final(m, v2))
				if err := swap.Runs(m.pid(), m.target); err != nil {
					t.Fatalf("the binary at the target is not what runs: %v", err)
				}
				if fileExists(swap.NewPath(m.target)) {
					t.Fatal("staged binary left beside the target")
				}
				e.assertNoLeftovers()
			})
		}
	}
}

// selfUpdateEnv installs the v1 agent (the build TestMain made) as <dir>/usr-bin/fieldota-agent,
// configured to swap itself.
func selfUpdateEnv(t *testing.T, healthCommands ...string) (*env, string, []byte) {
	t.Helper()
	e := newEnv(t, envOpts{})
	dir := filepath.Join(e.dir, "usr-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "fieldota-agent")
	v1 := mustRead(t, filepath.Join(bin, "fieldota-agent"))
	if err := os.WriteFile(target, v1, 0o755); err != nil {
		t.Fatal(err)
	}
	e.appendConfig(`[swap]
self = true
probation = "1s"
probe_interval = "100ms"
restart_timeout = "1s"
max_starts = 2
[health]
timeout = "2s"
` + healthCommandsTOML(healthCommands))
	return e, target, v1
}

func agentVersion(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", path, err)
	}
	return strings.TrimSpace(string(out))
}

func TestAgentUpdatesItself(t *testing.T) {
	t.Parallel()
	v2Path, _, _ := buildAgentVariants(t)
	e, target, _ := selfUpdateEnv(t)
	v2 := mustRead(t, v2Path)
	e.publish("fieldota-agent", v2)
	e.createJob("self", e.binaryDoc("fieldota-agent", v2, "2.0"))
	s := e.supervise(target)
	ex := e.waitTerminal("self", 60*time.Second)
	if ex.Status != "SUCCEEDED" || ex.StatusDetails.DetailsMap["version"] != "2.0" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if os.Getenv("SHOWLOG") != "" {
		t.Log(e.agentLog.String())
	}
	assertWorking(t, target, v2)
	if v := agentVersion(t, target); !strings.Contains(v, "2.0") {
		t.Fatalf("agent at the target says %q", v)
	}
	if err := swap.Runs(s.running(), target); err != nil {
		t.Fatalf("the running agent is not the new one: %v", err)
	}
	if n := s.startCount(); n != 2 {
		t.Fatalf("agent started %d times, want 2 (v1, then v2 after the hand-over)", n)
	}
	e.waitFor("the journal to be removed", func() bool { return !fileExists(filepath.Join(e.stateDir, ota.JournalFile)) })
	if fileExists(swap.BackupPath(target)) || fileExists(filepath.Join(e.stateDir, swap.StartsFile)) {
		t.Fatal("backup or start counter left after the commit")
	}
	if n := e.terminalReports("self"); n != 1 {
		t.Fatalf("terminal status sent %d times", n)
	}
	e.assertNoLeftovers()
}

// TestAgentUpdatingItselfToACrashingBuildIsReverted: the new agent dies at start (before it can
// log, connect or read its journal). The supervisor keeps restarting it; the recovery mode, run
// from the previous agent before each start, gives up after swap.max_starts, restores the old
// agent and leaves the journal in rollback; the old agent reports the rollback.
func TestAgentUpdatingItselfToACrashingBuildIsReverted(t *testing.T) {
	t.Parallel()
	_, crashPath, _ := buildAgentVariants(t)
	e, target, v1 := selfUpdateEnv(t)
	bad := mustRead(t, crashPath)
	e.publish("fieldota-agent", bad)
	e.createJob("self", e.binaryDoc("fieldota-agent", bad, "2.0"))
	s := e.supervise(target)
	ex := e.waitTerminal("self", 60*time.Second)
	d := ex.StatusDetails.DetailsMap
	if ex.Status != "FAILED" || d["reason"] != "HEALTH_CHECK_FAILED" || d["rolledBack"] != "true" {
		t.Fatalf("%s %v", ex.Status, d)
	}
	if os.Getenv("SHOWLOG") != "" {
		t.Log(e.agentLog.String())
	}
	assertWorking(t, target, v1)
	if err := swap.Runs(s.running(), target); err != nil {
		t.Fatalf("the running agent is not the old one: %v", err)
	}
	// v1, the crashing build max_starts times, v1 again.
	if n := s.startCount(); n != 2+2 {
		t.Fatalf("agent started %d times, want 4", n)
	}
	e.waitFor("the journal to be removed", func() bool { return !fileExists(filepath.Join(e.stateDir, ota.JournalFile)) })
	if fileExists(filepath.Join(e.stateDir, swap.StartsFile)) {
		t.Fatal("start counter left after the rollback")
	}
	if n := e.terminalReports("self"); n != 1 {
		t.Fatalf("terminal status sent %d times", n)
	}
}

// TestAgentKilledWhileUpdatingItselfFinishesTheJob: a power cut at each step of the agent's own
// swap and at each state around it. Whichever agent starts next (the old one before the rename,
// the new one after it) must finish the job: SUCCEEDED, the new agent running.
func TestAgentKilledWhileUpdatingItselfFinishesTheJob(t *testing.T) {
	for _, kill := range []string{
		"FIELDOTA_KILL_AT_SWAP_STEP=staged",
		"FIELDOTA_KILL_AT_SWAP_STEP=backed-up",
		"FIELDOTA_KILL_AT_SWAP_STEP=replaced",
		"FIELDOTA_KILL_IN_STATE=selftest", // the old agent, before its hand-over
		"FIELDOTA_KILL_IN_STATE=commit",   // the new agent, after its probation
	} {
		t.Run(strings.TrimPrefix(strings.TrimPrefix(kill, "FIELDOTA_KILL_"), "AT_SWAP_"), func(t *testing.T) {
			t.Parallel()
			v2Path, _, _ := buildAgentVariants(t)
			e, target, v1 := selfUpdateEnv(t)
			v2 := mustRead(t, v2Path)
			e.publish("fieldota-agent", v2)
			e.createJob("self", e.binaryDoc("fieldota-agent", v2, "2.0"))
			marker := filepath.Join(e.dir, "killed")
			s := e.supervise(target, kill, "FIELDOTA_KILL_MARKER="+marker)
			e.waitFor("the kill", func() bool { return fileExists(marker) })
			assertWorking(t, target, v1, v2)
			ex := e.waitTerminal("self", 60*time.Second)
			if ex.Status != "SUCCEEDED" {
				t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
			}
			assertWorking(t, target, v2)
			e.waitFor("the new agent to run", func() bool { return swap.Runs(s.running(), target) == nil })
			e.waitFor("the journal to be removed", func() bool { return !fileExists(filepath.Join(e.stateDir, ota.JournalFile)) })
			if n := e.terminalReports("self"); n != 1 {
				t.Fatalf("terminal status sent %d times", n)
			}
		})
	}
}

func healthCommandsTOML(argv []string) string {
	if len(argv) == 0 {
		return ""
	}
	b, _ := json.Marshal(argv)
	return "commands = [" + string(b) + "]\n"
}

// TestNewAgentFailingProbationHandsBackToTheOldOne: the new agent starts and connects, but a
// health check fails during its probation; it restores the old agent and exits, and the old
// agent, started again, reports the rollback.
func TestNewAgentFailingProbationHandsBackToTheOldOne(t *testing.T) {
	t.Parallel()
	v2Path, _, _ := buildAgentVariants(t)
	e, target, v1 := selfUpdateEnv(t, "false")
	v2 := mustRead(t, v2Path)
	e.publish("fieldota-agent", v2)
	e.createJob("self", e.binaryDoc("fieldota-agent", v2, "2.0"))
	s := e.supervise(target)
	ex := e.waitTerminal("self", 60*time.Second)
	d := ex.StatusDetails.DetailsMap
	if ex.Status != "FAILED" || d["reason"] != "HEALTH_CHECK_FAILED" || d["rolledBack"] != "true" || !strings.Contains(d["detail"], "false") {
		t.Fatalf("%s %v", ex.Status, d)
	}
	assertWorking(t, target, v1)
	if err := swap.Runs(s.running(), target); err != nil {
		t.Fatalf("the running agent is not the old one: %v", err)
	}
	if n := s.startCount(); n != 3 {
		t.Fatalf("agent started %d times, want 3 (v1, v2, v1)", n)
	}
	if v := agentVersion(t, target); strings.Contains(v, "2.0") {
		t.Fatalf("agent at the target says %q", v)
	}
}

// TestNewAgentThatHangsAtStartIsRevertedByTheOverdueCheck: a new agent that neither exits nor
// reports is never restarted by systemd, so no start is counted. The timer-driven
// `recover --overdue --restart-unit` (scripts/fieldota-agent-recover.timer) gives up on it once
// probation is long overdue, restores the old agent and restarts the unit (here a fake
// systemctl that kills the hung process; the supervisor starts the binary at the target again).
func TestNewAgentThatHangsAtStartIsRevertedByTheOverdueCheck(t *testing.T) {
	t.Parallel()
	_, _, hangPath := buildAgentVariants(t)
	e, target, v1 := selfUpdateEnv(t)
	bad := mustRead(t, hangPath)
	e.publish("fieldota-agent", bad)
	e.createJob("self", e.binaryDoc("fieldota-agent", bad, "2.0"))
	s := e.supervise(target)

	fake := filepath.Join(e.dir, "fakebin")
	if err := os.MkdirAll(fake, 0o755); err != nil {
		t.Fatal(err)
	}
	systemctl := "#!/bin/sh\n# systemctl restart --no-block <unit>: stop the running agent; the supervisor restarts it\nkill -KILL \"$(cat " + s.pidFile() + ")\"\n"
	if err := os.WriteFile(filepath.Join(fake, "systemctl"), []byte(systemctl), 0o755); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the hung agent to be started", func() bool { return s.startCount() >= 2 })
	deadline := time.Now().Add(60 * time.Second)
	restored := 0
	for {
		ex, err := e.sim.DescribeJobExecution("self", thing, 0)
		if err == nil && ex.Status != "IN_PROGRESS" && ex.Status != "QUEUED" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not terminal: %+v", ex)
		}
		// The timer's run: from the previous agent, while it is there.
		if prev := swap.BackupPath(target); fileExists(prev) {
			cmd := exec.Command(prev, "recover", "--overdue", "--restart-unit", "fieldota-agent.service", "--config", e.cfgPath)
			cmd.Env = append(os.Environ(), "PATH="+fake+":"+os.Getenv("PATH"))
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("recover --overdue: %v %s", err, out)
			}
			if strings.Contains(string(out), "restored") {
				restored++
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	ex := e.waitTerminal("self", time.Second)
	d := ex.StatusDetails.DetailsMap
	if ex.Status != "FAILED" || d["reason"] != "HEALTH_CHECK_FAILED" || d["rolledBack"] != "true" || !strings.Contains(d["detail"], "did not finish probation") {
		t.Fatalf("%s %v", ex.Status, d)
	}
	if restored != 1 {
		t.Fatalf("recover --overdue restored %d times", restored)
	}
	assertWorking(t, target, v1)
	e.waitFor("the old agent to run", func() bool { return swap.Runs(s.running(), target) == nil })
}
