package agent

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/agent/policy/netman/nmtest"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/slot"
	"github.com/fieldota/fieldota/test/bootsim"
	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/fieldota/fieldota/test/testdoc"
	"github.com/fieldota/fieldota/verify"
)

// cronAt is a daily cron expression firing at t's hour and minute (UTC).
func cronAt(t time.Time) string { return fmt.Sprintf("%d %d * * *", t.UTC().Minute(), t.UTC().Hour()) }

// windowPolicy is a [policy] whose phase opens daily at opening for an hour (UTC).
func windowPolicy(phase string, opening time.Time) string {
	return fmt.Sprintf("[policy]\ntime_zone = \"UTC\"\n[policy.%s]\nwindows = [{ cron = %q, duration = \"1h\" }]\n", phase, cronAt(opening))
}

// hookScript writes an executable hook; it is run by argv, the shebang is the hook's business.
func (h *harness) hookScript(name, body string) string {
	h.t.Helper()
	p := filepath.Join(h.dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// execution returns the job's execution on our thing.
func (h *harness) execution(id string) jobsim.JobExecution {
	h.t.Helper()
	ex, err := h.sim.DescribeJobExecution(id, thing, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	return ex
}

// waitDetails waits until the execution's statusDetails satisfy ok, and returns them.
func (h *harness) waitDetails(id string, what string, ok func(status string, d map[string]string) bool) map[string]string {
	h.t.Helper()
	var d map[string]string
	h.waitFor(what, func() bool {
		ex, err := h.sim.DescribeJobExecution(id, thing, 0)
		d = ex.StatusDetails.DetailsMap
		return err == nil && ok(ex.Status, d)
	})
	return d
}

// journal reads the agent's journal.
func (h *harness) journal() *ota.Journal {
	h.t.Helper()
	j, err := (&ota.Store{Dir: h.cfg.StateDir}).Load()
	if err != nil {
		h.t.Fatalf("journal: %v", err)
	}
	return j
}

// absent fails the test when path exists.
func (h *harness) absent(path, why string) {
	h.t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		h.t.Fatalf("%s: %s exists", why, path)
	}
}

// stagingGone waits until the job's staging directory is removed.
func (h *harness) stagingGone(id string) {
	h.t.Helper()
	h.waitFor("the staged payload to be removed", func() bool {
		_, err := os.Stat(filepath.Join(h.cfg.StateDir, "staging", id+"-1"))
		return errors.Is(err, os.ErrNotExist)
	})
}

// offline waits until the broker has let go of the stopped agent's connection. mochi v2.7.9
// cleans up a clean-session client after its read loop ends, by client id: a new connection of
// the same thing made before that cleanup loses its subscriptions to it (and never hears an
// answer again), so a restart in a test waits for the cleanup, as a real reboot does.
func (h *harness) offline() {
	h.t.Helper()
	h.waitFor("the broker to drop the old connection", func() bool { return h.sim.DisconnectThing(thing) != nil })
	time.Sleep(100 * time.Millisecond) // Closed comes just before the cleanup by id
}

// parked waits until the agent waits on the clock again, after the n-th After (Registered).
func (h *harness) parked(n int) {
	h.t.Helper()
	h.waitFor("the agent to wait on the clock", func() bool { return h.clk.Registered() > n })
}

// advance moves the shared clock and lets the emulator fire whatever timers expired by then.
func (h *harness) advance(d time.Duration) {
	h.clk.Advance(d)
	h.sim.FireTimers()
}

// neverTimedOut fails the test if the execution ever went TIMED_OUT.
func (h *harness) neverTimedOut(id string) {
	h.t.Helper()
	for _, s := range h.statuses(id) {
		if s == "TIMED_OUT" {
			h.t.Fatalf("%s went TIMED_OUT: %v", id, h.statuses(id))
		}
	}
}

func (h *harness) s3Bytes() int64 {
	var n int64
	for _, r := range h.sim.Artifacts().Requests() {
		n += r.Bytes
	}
	return n
}

// agentProcess runs the agent in a child process (this test binary, TestHelperAgentProcess) on
// the harness's configuration and clock, so that it can be killed with SIGKILL.
func (h *harness) agentProcess() *exec.Cmd {
	h.t.Helper()
	h.clk.mu.Lock()
	skew := h.clk.skew
	h.clk.mu.Unlock()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAgentProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "FIELDOTA_HELPER_CONFIG="+h.cfgPath, "FIELDOTA_HELPER_SKEW="+strconv.FormatInt(int64(skew), 10))
	cmd.Stdout, cmd.Stderr = testWriter{h.t}, testWriter{h.t}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// TestHelperAgentProcess is the body of agentProcess's child: an agent until it is killed.
func TestHelperAgentProcess(t *testing.T) {
	path := os.Getenv("FIELDOTA_HELPER_CONFIG")
	if path == "" {
		return // not a helper run
	}
	skew, _ := strconv.ParseInt(os.Getenv("FIELDOTA_HELPER_SKEW"), 10, 64)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := verify.LoadTrustStore(cfg.Verify.Keys, nil)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a := New(Options{Config: cfg, Trust: trust, Logger: log, Clock: &clock{skew: time.Duration(skew)}})
	ctx := context.Background()
	cl, err := jobs.Dial(ctx, jobs.Config{Endpoint: cfg.MQTT.Endpoint, ThingName: cfg.ThingName, Logger: log,
		RequestTimeout: 2 * time.Second, OnConnect: func(context.Context) { a.Wake() }, OnNotifyNext: a.NotifyNext})
	if err != nil {
		t.Fatal(err)
	}
	t.Fatal(a.Run(ctx, cl)) // returns only when killed
}

// TestInstallWindowLaterDownloadsNowWaitsThroughKillAndRebootAndInstallsAtTheOpening: a job
// arriving three hours before the install window is downloaded and verified at once, reports
// stage=waiting with the window's opening, survives a SIGKILL and a reboot while waiting, and
// installs within seconds of the opening; its step timer never expires meanwhile.
func TestInstallWindowLaterDownloadsNowWaitsThroughKillAndRebootAndInstallsAtTheOpening(t *testing.T) {
	h := newHarness(t)
	opening := h.clk.Now().UTC().Truncate(time.Minute).Add(3 * time.Hour)
	h.addConfig(windowPolicy("install", opening))
	script := []byte("#!/bin/sh\necho v2\n")
	h.publish("run.sh", script)
	work := filepath.Join(h.appRoot, "w")
	h.createJob("later", h.seedDoc("run.sh", script, "2.0", work))

	child := h.agentProcess()
	d := h.waitDetails("later", "stage=waiting", func(s string, d map[string]string) bool { return d["stage"] == "waiting" })
	if d["waitingFor"] != "install" || d["until"] != opening.Format(time.RFC3339) || !strings.Contains(d["detail"], "outside the install window") || d["version"] != "2.0" {
		t.Fatalf("waiting details %v", d)
	}
	j := h.journal()
	sum := hex.EncodeToString(testdoc.For("run.sh", script, "2.0").SHA256)
	if j.State != ota.StateWaitInstall || len(j.Staged) != 1 || j.Staged[0].SHA256 != sum || j.Wait == nil || !j.Wait.Until.Equal(opening) {
		t.Fatalf("journal while waiting: state %s staged %+v wait %+v", j.State, j.Staged, j.Wait)
	}
	if staged, _ := os.ReadFile(j.Staged[0].Path); !bytes.Equal(staged, script) || h.s3Bytes() != int64(len(script)) {
		t.Fatalf("the payload was not downloaded before the window (%d bytes fetched)", h.s3Bytes())
	}
	if ex := h.execution("later"); ex.ApproximateSecondsBeforeTimedOut < int64(3*time.Hour/time.Second)-60 {
		t.Fatalf("step timer %d s does not cover the three-hour wait", ex.ApproximateSecondsBeforeTimedOut)
	}
	h.absent(filepath.Join(work, "run.sh"), "installed outside the window")
	if err := child.Process.Kill(); err != nil { // kill -9 while waiting
		t.Fatal(err)
	}
	_ = child.Wait()
	h.offline()
	if j := h.journal(); j.State != ota.StateWaitInstall {
		t.Fatalf("after the kill the journal is in %s", j.State)
	}

	h.advance(time.Hour)
	if ex := h.execution("later"); ex.Status != "IN_PROGRESS" {
		t.Fatalf("an hour later the execution is %s", ex.Status)
	}
	// A reboot: a new agent resumes the wait and reports it again, then the device goes down.
	v := h.execution("later").VersionNumber
	stop := h.run()
	h.waitFor("the resumed wait to be reported", func() bool { return h.execution("later").VersionNumber > v })
	stop()
	h.offline()
	h.advance(time.Hour + 59*time.Minute)
	if ex := h.execution("later"); ex.Status != "IN_PROGRESS" || ex.StatusDetails.DetailsMap["stage"] != "waiting" {
		t.Fatalf("a minute before the window: %s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	h.absent(filepath.Join(work, "run.sh"), "installed outside the window")
	v = h.execution("later").VersionNumber
	parked := h.clk.Registered()
	h.run()
	h.waitFor("the wait to be resumed after the reboot", func() bool { return h.execution("later").VersionNumber > v })
	h.parked(parked)

	h.advance(time.Minute) // the window opens
	opened := time.Now()
	ex := h.waitTerminal("later")
	if ex.Status != "SUCCEEDED" || ex.StatusDetails.DetailsMap["stage"] != "done" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if took := time.Since(opened); took > 10*time.Second {
		t.Fatalf("installed %s after the window opened", took)
	}
	if got, _ := os.ReadFile(filepath.Join(work, "run.sh")); !bytes.Equal(got, script) {
		t.Fatalf("placed %q", got)
	}
	if h.s3Bytes() != int64(len(script)) {
		t.Fatalf("%d bytes fetched: the payload was downloaded again", h.s3Bytes())
	}
	h.neverTimedOut("later")
}

// TestStagedPayloadChangedWhileWaitingIsRefusedAtTheInstall: the staged bytes sat for hours; they
// are hashed again right before the install, and bytes that are no longer the signed ones are
// never placed.
func TestStagedPayloadChangedWhileWaitingIsRefusedAtTheInstall(t *testing.T) {
	h := newHarness(t)
	opening := h.clk.Now().UTC().Truncate(time.Minute).Add(2 * time.Hour)
	h.addConfig(windowPolicy("install", opening))
	script := []byte("#!/bin/sh\necho good\n")
	h.publish("run.sh", script)
	work := filepath.Join(h.appRoot, "w")
	h.createJob("stale", h.seedDoc("run.sh", script, "2.0", work))
	parked := h.clk.Registered()
	h.run()
	h.waitDetails("stale", "stage=waiting", func(s string, d map[string]string) bool { return d["stage"] == "waiting" })
	h.parked(parked)
	evil := []byte("#!/bin/sh\necho evil\n")
	if err := os.WriteFile(h.journal().Staged[0].Path, evil, 0o600); err != nil {
		t.Fatal(err)
	}
	h.advance(2 * time.Hour)
	ex := h.waitTerminal("stale")
	if ex.Status != "FAILED" || ex.StatusDetails.DetailsMap["reason"] != "DIGEST_MISMATCH" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	h.absent(filepath.Join(work, "run.sh"), "changed staged bytes were placed")
}

// TestWaitThatCannotFitTheInProgressTimeoutFailsWithItsOwnReason (docs/update-policy.md, "When
// the wait cannot fit"): the job times out 60 minutes after it starts. A window three hours away
// can never fit: FAILED WAIT_EXCEEDS_TIMEOUT at once. A hook that keeps saying not now fails the
// same way policy.margin before the deadline. Neither is left to AWS's TIMED_OUT, and neither
// leaves anything installed or staged.
func TestWaitThatCannotFitTheInProgressTimeoutFailsWithItsOwnReason(t *testing.T) {
	cases := []struct {
		name   string
		policy func(h *harness) string
		// advance is how the test moves time; the job must not fail before its last step.
		advance []time.Duration
	}{
		{"a window after the timeout", func(h *harness) string {
			return windowPolicy("install", h.clk.Now().UTC().Truncate(time.Minute).Add(3*time.Hour))
		}, nil},
		{"a hook that says not now until the timeout nears", func(h *harness) string {
			return fmt.Sprintf("[policy.install]\nhooks = [[%q]]\n", h.hookScript("busy", "echo kiosk busy; exit 75"))
		}, []time.Duration{45 * time.Minute, 6 * time.Minute}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			h.addConfig(c.policy(h))
			script := []byte("#!/bin/sh\necho x\n")
			h.publish("run.sh", script)
			work := filepath.Join(h.appRoot, "w")
			if _, err := h.sim.CreateJob(jobsim.CreateJobInput{JobID: "tight", Targets: []string{thing}, Document: h.seedDoc("run.sh", script, "2.0", work),
				TimeoutConfig: &jobsim.TimeoutConfig{InProgressTimeoutInMinutes: 60}}); err != nil {
				t.Fatal(err)
			}
			parked := h.clk.Registered()
			h.run()
			for _, d := range c.advance {
				h.waitDetails("tight", "stage=waiting", func(s string, d map[string]string) bool { return s == "IN_PROGRESS" && d["stage"] == "waiting" })
				h.parked(parked)
				parked = h.clk.Registered()
				h.advance(d)
			}
			ex := h.waitTerminal("tight")
			d := ex.StatusDetails.DetailsMap
			if ex.Status != "FAILED" || d["reason"] != "WAIT_EXCEEDS_TIMEOUT" || d["stage"] != "waiting" || d["waitingFor"] != "install" {
				t.Fatalf("%s %v", ex.Status, d)
			}
			h.neverTimedOut("tight")
			h.absent(filepath.Join(work, "run.sh"), "installed")
			h.stagingGone("tight")
		})
	}
}

// countingHook answers exit 75 with a numbered reason for its first `busy` runs, then 0; it
// counts its runs in a file.
func (h *harness) countingHook(busy int) (argv string, runs func() int) {
	count := filepath.Join(h.dir, "hook-runs")
	p := h.hookScript("may-install", fmt.Sprintf(`n=$(( $(cat %[1]q 2>/dev/null || echo 0) + 1 ))
echo $n > %[1]q
[ "$FIELDOTA_PHASE" = install ] || { echo "wrong phase $FIELDOTA_PHASE"; exit 1; }
if [ $n -le %[2]d ]; then echo "kiosk busy ($n)"; exit 75; fi
exit 0`, count, busy))
	return p, func() int {
		b, _ := os.ReadFile(count)
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return n
	}
}

// TestMayInstallHookNotNowThreeTimesThenGoInstallsOnTheFourthEvaluation: each "not now" is
// reported with the hook's reason; the hook is asked again on the recheck schedule, never more.
func TestMayInstallHookNotNowThreeTimesThenGoInstallsOnTheFourthEvaluation(t *testing.T) {
	h := newHarness(t)
	hook, runs := h.countingHook(3)
	h.addConfig(fmt.Sprintf("[policy]\nrecheck = \"5m\"\n[policy.install]\nhooks = [[%q]]\n", hook))
	script := []byte("#!/bin/sh\necho v2\n")
	h.publish("run.sh", script)
	work := filepath.Join(h.appRoot, "w")
	h.createJob("consent", h.seedDoc("run.sh", script, "2.0", work))
	parked := h.clk.Registered()
	h.run()
	for n := 1; n <= 3; n++ {
		d := h.waitDetails("consent", fmt.Sprintf("not now #%d reported", n), func(s string, d map[string]string) bool {
			return d["stage"] == "waiting" && d["detail"] == fmt.Sprintf("kiosk busy (%d)", n)
		})
		if d["waitingFor"] != "install" || d["until"] != "" || runs() != n {
			t.Fatalf("evaluation %d: %v, hook ran %d times", n, d, runs())
		}
		h.parked(parked)
		parked = h.clk.Registered()
		h.advance(4 * time.Minute)
		time.Sleep(100 * time.Millisecond)
		if runs() != n {
			t.Fatalf("the hook ran %d times before the recheck was due", runs())
		}
		h.advance(time.Minute)
	}
	ex := h.waitTerminal("consent")
	if ex.Status != "SUCCEEDED" || runs() != 4 {
		t.Fatalf("%s %v after %d hook runs", ex.Status, ex.StatusDetails.DetailsMap, runs())
	}
	if got, _ := os.ReadFile(filepath.Join(work, "run.sh")); !bytes.Equal(got, script) {
		t.Fatalf("placed %q", got)
	}
}

// TestPolicyRefusalBeforeAndAfterTheStart: a may-install hook exiting 1 fails the started job
// with the hook's reason and leaves the old software as it was; a may-download hook exiting 1
// rejects the job while it is QUEUED, before a byte is fetched.
func TestPolicyRefusalBeforeAndAfterTheStart(t *testing.T) {
	cases := []struct {
		phase, status string
	}{
		{"install", "FAILED"},
		{"download", "REJECTED"},
	}
	for _, c := range cases {
		t.Run(c.phase, func(t *testing.T) {
			h := newHarness(t)
			hook := h.hookScript("no", `echo "the owner declined on the panel"; exit 1`)
			h.addConfig(fmt.Sprintf("[policy.%s]\nhooks = [[%q]]\n", c.phase, hook))
			work := filepath.Join(h.appRoot, "w")
			old := []byte("#!/bin/sh\necho v1\n")
			if err := os.MkdirAll(work, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(work, "run.sh"), old, 0o755); err != nil {
				t.Fatal(err)
			}
			script := []byte("#!/bin/sh\necho v2\n")
			h.publish("run.sh", script)
			h.createJob("no", h.seedDoc("run.sh", script, "2.0", work))
			h.run()
			ex := h.waitTerminal("no")
			d := ex.StatusDetails.DetailsMap
			if ex.Status != c.status || d["reason"] != "POLICY_REFUSED" || !strings.Contains(d["detail"], "the owner declined on the panel") || d["waitingFor"] != c.phase {
				t.Fatalf("%s %v", ex.Status, d)
			}
			if got, _ := os.ReadFile(filepath.Join(work, "run.sh")); !bytes.Equal(got, old) {
				t.Fatalf("run.sh is %q", got)
			}
			if ents, _ := os.ReadDir(work); len(ents) != 1 {
				t.Fatalf("left behind in %s: %v", work, ents)
			}
			h.stagingGone("no")
			if c.phase == "download" {
				if h.s3Bytes() != 0 {
					t.Fatalf("%d bytes downloaded before the refusal", h.s3Bytes())
				}
				for _, s := range h.statuses("no") {
					if s == "IN_PROGRESS" {
						t.Fatalf("started before the download gate: %v", h.statuses("no"))
					}
				}
			}
		})
	}
}

// TestMeteredLinkKeepsTheJobQueuedUntilTheLinkIsNot: NetworkManager (a stand-in on a private
// D-Bus daemon) says the link is metered: the job stays QUEUED, nothing is fetched, the journal
// says why; once the link is not metered, the next look downloads and installs.
func TestMeteredLinkKeepsTheJobQueuedUntilTheLinkIsNot(t *testing.T) {
	h := newHarness(t)
	addr := nmtest.Bus(t)
	nm := nmtest.NetworkManager(t, addr, uint32(1))
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)
	h.addConfig("[policy.download]\nwait_while_metered = true\n")
	script := []byte("#!/bin/sh\necho x\n")
	h.publish("run.sh", script)
	work := filepath.Join(h.appRoot, "w")
	h.createJob("lte", h.seedDoc("run.sh", script, "2.0", work))
	parked := h.clk.Registered()
	h.run()
	h.waitFor("the wait to be journaled", func() bool {
		j, err := (&ota.Store{Dir: h.cfg.StateDir}).Load()
		return err == nil && j.Wait != nil && strings.Contains(j.Wait.Reason, "metered (yes)")
	})
	if ex := h.execution("lte"); ex.Status != "QUEUED" || h.s3Bytes() != 0 {
		t.Fatalf("on a metered link: %s, %d bytes fetched", ex.Status, h.s3Bytes())
	}
	nm.SetMust(nmtest.Service, "Metered", uint32(4)) // guess-no: the van is back on Wi-Fi
	h.parked(parked)
	h.advance(5 * time.Minute)
	if ex := h.waitTerminal("lte"); ex.Status != "SUCCEEDED" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
}

// TestCancelWhileWaitingIsNoticedAtOnce: without moving the clock (the next look is hours
// away), a cancel ends the wait within seconds: CANCELED, the staged payload removed, nothing
// installed, and the next job runs.
func TestCancelWhileWaitingIsNoticedAtOnce(t *testing.T) {
	cases := []struct {
		name, policy string
		force        bool
		status       string // of the execution while waiting
	}{
		{"waiting for the install window, force-canceled", "install", true, "IN_PROGRESS"},
		{"waiting to download, still QUEUED, canceled", "download", false, "QUEUED"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			h.addConfig(windowPolicy(c.policy, h.clk.Now().UTC().Truncate(time.Minute).Add(5*time.Hour)))
			script := []byte("#!/bin/sh\necho x\n")
			h.publish("run.sh", script)
			work := filepath.Join(h.appRoot, "w")
			h.createJob("waits", h.seedDoc("run.sh", script, "2.0", work))
			h.run()
			h.waitFor("the wait", func() bool {
				j, err := (&ota.Store{Dir: h.cfg.StateDir}).Load()
				return err == nil && j.Wait != nil && !j.Wait.Until.IsZero() && h.execution("waits").Status == c.status
			})
			next := []byte("#!/bin/sh\necho next\n")
			h.publish("next.sh", next)
			if err := h.sim.CancelJob("waits", jobsim.CancelJobInput{Force: c.force}); err != nil {
				t.Fatal(err)
			}
			canceled := time.Now()
			h.waitFor("the staged payload to be removed", func() bool {
				_, err := os.Stat(filepath.Join(h.cfg.StateDir, "staging", "waits-1"))
				_, jerr := (&ota.Store{Dir: h.cfg.StateDir}).Load()
				return errors.Is(err, os.ErrNotExist) && errors.Is(jerr, ota.ErrNoJournal)
			})
			if took := time.Since(canceled); took > 5*time.Second {
				t.Fatalf("the cancel took %s to be noticed", took)
			}
			if ex := h.execution("waits"); ex.Status != "CANCELED" {
				t.Fatalf("status %s", ex.Status)
			}
			h.absent(filepath.Join(work, "run.sh"), "installed after the cancel")
			// The agent is free again: a job created now is taken (and waits in its turn).
			h.createJob("after", h.seedDoc("next.sh", next, "2.1", work))
			h.waitFor("the next job to be taken", func() bool {
				j, err := (&ota.Store{Dir: h.cfg.StateDir}).Load()
				return err == nil && j.JobID == "after"
			})
		})
	}
}

// TestMayRebootHookKeepsAWrittenSlotUnswitchedUntilItSaysGo: the slot is written and verified,
// but the application says not now: the bootloader environment is not touched, a power cut
// while waiting boots the old slot, and once the hook says go the trial boot is set, the device
// reboots into the new slot and commits.
func TestMayRebootHookKeepsAWrittenSlotUnswitchedUntilItSaysGo(t *testing.T) {
	env := fileEnv(t, slot.Env{slot.VarSlot: "a", slot.VarTry: "0"})
	r := newSlotRig(t, env, config.Slot{Bootloader: "file", EnvFile: env.Path})
	h := r.h
	answer := filepath.Join(h.dir, "answer")
	if err := os.WriteFile(answer, []byte("75\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hook := h.hookScript("may-reboot", fmt.Sprintf(`a=$(cat %q); [ "$a" = 0 ] || echo "delivery van mid-route"; exit $a`, answer))
	slotCfg, healthCfg := h.cfg.Slot, h.cfg.Health
	h.addConfig(fmt.Sprintf("[policy.reboot]\nhooks = [[%q]]\n", hook))
	h.cfg.Slot, h.cfg.Health = slotCfg, healthCfg
	img := bootsim.Image("2.0.0", bootsim.ImageOpts{})
	r.job("ab", img, "2.0.0")
	envBefore, _ := os.ReadFile(env.Path)

	stop := r.boot(nil)
	d := h.waitDetails("ab", "waiting for the reboot", func(s string, d map[string]string) bool { return d["stage"] == "waiting" })
	if d["waitingFor"] != "reboot" || d["detail"] != "delivery van mid-route" {
		t.Fatalf("%v", d)
	}
	if got, _ := os.ReadFile(r.board.Slots.B); !bytes.Equal(got, img) {
		t.Fatal("slot b was not written before the wait")
	}
	envNow, _ := os.ReadFile(env.Path)
	if st, _ := slot.ReadStatus(context.Background(), env); st.Slot != "a" || st.Try || r.rebootRequested() {
		t.Fatalf("switched while waiting: %+v (%s → %s)", st, envBefore, envNow)
	}
	stop() // power cut; the board comes up again (and once more in r.boot: the same slot)
	h.offline()
	b, err := r.board.Boot(context.Background())
	if err != nil || b.Slot != "a" || b.Version != "1.0.0" {
		t.Fatalf("after the power cut the board booted %+v, %v", b, err)
	}
	parked := h.clk.Registered()
	stop = r.boot(nil)
	h.parked(parked)
	if j := h.journal(); j.State != ota.StateWaitActivate || j.Restarts != 1 {
		t.Fatalf("after the power cut: %s, %d restarts", j.State, j.Restarts)
	}
	if st, _ := slot.ReadStatus(context.Background(), env); st.Slot != "a" || st.Try {
		t.Fatalf("switched while waiting: %+v", st)
	}
	if err := os.WriteFile(answer, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.advance(5 * time.Minute)
	h.waitFor("the reboot request", r.rebootRequested)
	if st, _ := slot.ReadStatus(context.Background(), env); st.Slot != "b" || !st.Try {
		t.Fatalf("after go the environment is %+v", st)
	}
	stop()
	h.offline()
	r.boot(nil) // the reboot, into b
	if ex := h.waitTerminal("ab"); ex.Status != "SUCCEEDED" || ex.StatusDetails.DetailsMap["slot"] != "b" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	// The same release again: the booted slot holds it (read back), so nothing is fetched, no
	// hook is asked, nothing reboots.
	_ = os.Remove(r.marker)
	_ = os.WriteFile(answer, []byte("75\n"), 0o644)
	fetched := h.s3Bytes()
	r.job("again", img, "2.0.0")
	ex := h.waitTerminal("again")
	if ex.Status != "SUCCEEDED" || ex.StatusDetails.DetailsMap["alreadyInstalled"] != "true" || h.s3Bytes() != fetched || r.rebootRequested() {
		t.Fatalf("the installed slot again: %s %v, %d bytes fetched", ex.Status, ex.StatusDetails.DetailsMap, h.s3Bytes()-fetched)
	}
}

// TestAlreadyInstalledSucceedsWithoutADownloadUnlessTheReleaseSignsForce: the same signed
// version and digests as what runs end SUCCEEDED alreadyInstalled=true with nothing fetched; a
// plain "force" in the document (anyone who creates jobs can write it) changes nothing; a file
// changed on the disk is not "installed"; a signed force reinstalls.
func TestAlreadyInstalledSucceedsWithoutADownloadUnlessTheReleaseSignsForce(t *testing.T) {
	h := newHarness(t)
	script := []byte("#!/bin/sh\necho v2\n")
	h.publish("run.sh", script)
	work := filepath.Join(h.appRoot, "w")
	d := testdoc.For("run.sh", script, "2.0")
	d.WorkDir = work
	h.createJob("first", h.doc(d))
	h.run()
	if ex := h.waitTerminal("first"); ex.Status != "SUCCEEDED" {
		t.Fatalf("first: %s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	plainForce := d
	plainForce.Plain = map[string]any{"force": true}
	forced := d
	forced.Force = true
	steps := []struct {
		id        string
		doc       testdoc.Doc
		before    func()
		already   bool
		downloads bool
	}{
		{"same", d, nil, true, false},
		{"plain-force", plainForce, nil, true, false},
		{"changed-on-disk", d, func() {
			if err := os.WriteFile(filepath.Join(work, "run.sh"), []byte("#!/bin/sh\necho edited\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, false, true},
		{"signed-force", forced, nil, false, true},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		fetched := h.s3Bytes()
		h.createJob(s.id, h.doc(s.doc))
		ex := h.waitTerminal(s.id)
		det := ex.StatusDetails.DetailsMap
		if ex.Status != "SUCCEEDED" || (det["alreadyInstalled"] == "true") != s.already || det["version"] != "2.0" {
			t.Fatalf("%s: %s %v", s.id, ex.Status, det)
		}
		if got := h.s3Bytes() - fetched; (got > 0) != s.downloads {
			t.Fatalf("%s: %d bytes fetched", s.id, got)
		}
		if s.already {
			for _, st := range h.statuses(s.id) {
				if st == "IN_PROGRESS" {
					t.Fatalf("%s was started: %v", s.id, h.statuses(s.id))
				}
			}
		}
		if got, _ := os.ReadFile(filepath.Join(work, "run.sh")); !bytes.Equal(got, script) {
			t.Fatalf("%s: run.sh is %q", s.id, got)
		}
	}
}

// TestMayRebootHookRefusalMarksTheWrittenSlotBad: the slot was written during the download; a
// refusal before the switch reports FAILED with the hook's reason and marks the slot bad, so no
// fallback of the bootloader ever boots the refused software; the old slot stays the one booted.
func TestMayRebootHookRefusalMarksTheWrittenSlotBad(t *testing.T) {
	env := fileEnv(t, slot.Env{slot.VarSlot: "a", slot.VarTry: "0"})
	r := newSlotRig(t, env, config.Slot{Bootloader: "file", EnvFile: env.Path})
	h := r.h
	hook := h.hookScript("may-reboot", `echo "fleet owner: not this release"; exit 3`)
	slotCfg, healthCfg := h.cfg.Slot, h.cfg.Health
	h.addConfig(fmt.Sprintf("[policy.reboot]\nhooks = [[%q]]\n", hook))
	h.cfg.Slot, h.cfg.Health = slotCfg, healthCfg
	r.job("ab", bootsim.Image("2.0.0", bootsim.ImageOpts{}), "2.0.0")
	r.boot(nil)
	ex := h.waitTerminal("ab")
	d := ex.StatusDetails.DetailsMap
	if ex.Status != "FAILED" || d["reason"] != "POLICY_REFUSED" || !strings.Contains(d["detail"], "fleet owner: not this release") || d["waitingFor"] != "reboot" {
		t.Fatalf("%s %v", ex.Status, d)
	}
	if st, _ := slot.ReadStatus(context.Background(), env); st.Slot != "a" || st.Try || !st.Bad["b"] || r.rebootRequested() {
		t.Fatalf("after the refusal the environment is %+v (reboot requested: %v)", st, r.rebootRequested())
	}
	if inst, _ := loadInstalled(h.cfg.StateDir); inst["slot"].Version != "1.0.0" {
		t.Fatalf("installed %v", inst)
	}
}
