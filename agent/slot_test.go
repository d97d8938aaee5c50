package agent

import (
	"bytes"
	"context"
	"errors"
	"github.com/fieldota/fieldota/test/testdoc"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/slot"
	"github.com/fieldota/fieldota/test/bootsim"
	"github.com/fieldota/fieldota/verify"
)

// slotRig is an in-process A/B device: slot files, a bootloader environment and a bootsim
// board that writes the kernel command line the agent reads.
type slotRig struct {
	agent  *Agent // the last one booted
	stop   func() // stops it
	h      *harness
	board  *bootsim.Board
	marker string
}

func newSlotRig(t *testing.T, bl slot.Bootloader, cfgSlot config.Slot) *slotRig {
	t.Helper()
	h := newHarness(t)
	r := &slotRig{h: h, marker: filepath.Join(h.dir, "reboot-requested")}
	pair := slot.Pair{A: filepath.Join(h.dir, "slot-a"), B: filepath.Join(h.dir, "slot-b")}
	if err := os.WriteFile(pair.A, bootsim.Image("1.0.0", bootsim.ImageOpts{}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pair.B, make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(h.dir, "sysroot")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	r.board = &bootsim.Board{Env: bl, Slots: pair, Root: root}
	cfgSlot.A, cfgSlot.B = pair.A, pair.B
	cfgSlot.Reboot = []string{"touch", r.marker}
	cfgSlot.Detect, cfgSlot.Cmdline = "cmdline", filepath.Join(root, bootsim.CmdlineFile)
	cfgSlot.BootAttempts = 1
	cfgSlot.RebootTimeout.Duration = time.Minute
	h.cfg.Slot = cfgSlot
	h.cfg.Health = config.Health{Commands: [][]string{{"grep", "-qx", "ok", filepath.Join(root, bootsim.HealthFile)}}}
	h.cfg.Health.Timeout.Duration, h.cfg.Health.Interval.Duration = 3*time.Second, 100*time.Millisecond
	if err := h.cfg.EnsureStateDir(); err != nil {
		t.Fatal(err)
	}
	if err := recordInstalled(h.cfg.StateDir, "slot", &verify.Release{Version: "1.0.0", Signed: true}); err != nil {
		t.Fatal(err)
	}
	return r
}

func fileEnv(t *testing.T, vars slot.Env) slot.File {
	t.Helper()
	f := slot.File{Path: filepath.Join(t.TempDir(), "fieldota.env")}
	if err := f.Set(context.Background(), vars); err != nil {
		t.Fatal(err)
	}
	return f
}

// boot powers the board on and runs the agent until stop is called.
func (r *slotRig) boot(onTransition func(*ota.Journal)) (stop func()) {
	r.h.t.Helper()
	if _, err := r.board.Boot(context.Background()); err != nil {
		r.h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(testWriter{r.h.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	trust, err := verify.LoadTrustStore(r.h.cfg.Verify.Keys, nil)
	if err != nil {
		r.h.t.Fatal(err)
	}
	a := New(Options{Config: r.h.cfg, Trust: trust, Logger: log, Clock: r.h.clk, OnTransition: onTransition})
	a.retryWait = 50 * time.Millisecond
	cl, err := jobs.Dial(ctx, jobs.Config{Endpoint: r.h.cfg.MQTT.Endpoint, ThingName: thing, Logger: log,
		RequestTimeout: 2 * time.Second, OnConnect: func(context.Context) { a.Wake() }, OnNotifyNext: a.NotifyNext,
		Extra: a.Subscriptions(), OnMessage: a.OnMessage})
	r.agent = a
	if err != nil {
		r.h.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, cl) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				r.h.t.Errorf("agent: %v", err)
			}
			_ = cl.Close()
		})
	}
	r.h.t.Cleanup(stop)
	return stop
}

func (r *slotRig) rebootRequested() bool {
	_, err := os.Stat(r.marker)
	return err == nil
}

func (r *slotRig) job(id string, img []byte, version string) {
	r.h.publish("rootfs.img", img)
	d := testdoc.For("rootfs.img", img, version)
	d.Target = "slot"
	r.h.createJob(id, r.h.doc(d))
}

// TestSlotJobWithTheFileBootloaderRebootsIntoTheNewSlotAndCommits: the install asks for one
// trial boot and runs the reboot argv; the agent started again in slot b passes its checks and
// commits: SUCCEEDED with version and slot, the version recorded, the environment committed.
func TestSlotJobWithTheFileBootloaderRebootsIntoTheNewSlotAndCommits(t *testing.T) {
	env := fileEnv(t, slot.Env{slot.VarSlot: "a", slot.VarTry: "0"})
	r := newSlotRig(t, env, config.Slot{Bootloader: "file", EnvFile: env.Path})
	img := bootsim.Image("2.0.0", bootsim.ImageOpts{})
	r.job("ab", img, "2.0.0")
	stop := r.boot(nil)
	r.h.waitFor("the reboot request", r.rebootRequested)
	stop()
	// The service hears of the reboot before it happens.
	if ex, _ := r.h.sim.DescribeJobExecution("ab", thing, 0); ex.Status != "IN_PROGRESS" || ex.StatusDetails.DetailsMap["stage"] != "reboot" || ex.StatusDetails.DetailsMap["slot"] != "b" {
		t.Fatalf("before the reboot: %s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if st, _ := slot.ReadStatus(context.Background(), env); st.Slot != "b" || !st.Try || st.BootLimit != 1 {
		t.Fatalf("before the reboot the environment is %+v", st)
	}
	if got, _ := os.ReadFile(r.board.Slots.B); !bytes.Equal(got, img) {
		t.Fatal("slot b does not hold the image")
	}
	r.boot(nil)
	ex := r.h.waitTerminal("ab")
	d := ex.StatusDetails.DetailsMap
	if ex.Status != "SUCCEEDED" || d["version"] != "2.0.0" || d["slot"] != "b" || d["previousVersion"] != "1.0.0" {
		t.Fatalf("%s %v", ex.Status, d)
	}
	if st, _ := slot.ReadStatus(context.Background(), env); st.Slot != "b" || st.Try {
		t.Fatalf("not committed: %+v", st)
	}
	inst, _ := loadInstalled(r.h.cfg.StateDir)
	if inst["slot"].Version != "2.0.0" {
		t.Fatalf("installed %v", inst)
	}
}

// TestSlotCorruptedWriteIsCaughtByTheReadBackAndTheEnvironmentIsUntouched: a byte of slot b
// flips after the download was verified (a flash that lost an acknowledged write): FAILED
// INSTALL_FAILED at stage install, the environment byte for byte as before, no reboot.
func TestSlotCorruptedWriteIsCaughtByTheReadBackAndTheEnvironmentIsUntouched(t *testing.T) {
	env := fileEnv(t, slot.Env{slot.VarSlot: "a", slot.VarTry: "0"})
	r := newSlotRig(t, env, config.Slot{Bootloader: "file", EnvFile: env.Path})
	r.job("ab", bootsim.Image("2.0.0", bootsim.ImageOpts{}), "2.0.0")
	var envBefore []byte
	r.boot(func(j *ota.Journal) {
		if j.State != ota.StateInstall {
			return
		}
		envBefore, _ = os.ReadFile(env.Path)
		f, err := os.OpenFile(r.board.Slots.B, os.O_RDWR, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte{0x5a}, 1000); err != nil {
			t.Error(err)
		}
	})
	ex := r.h.waitTerminal("ab")
	d := ex.StatusDetails.DetailsMap
	if ex.Status != "FAILED" || d["reason"] != "INSTALL_FAILED" || d["stage"] != "install" || d["rolledBack"] != "" {
		t.Fatalf("%s %v", ex.Status, d)
	}
	if after, _ := os.ReadFile(env.Path); envBefore == nil || !bytes.Equal(after, envBefore) {
		t.Fatalf("environment changed:\n%s\n→\n%s", envBefore, after)
	}
	if r.rebootRequested() {
		t.Fatal("a reboot was requested after a failed read-back")
	}
	if inst, _ := loadInstalled(r.h.cfg.StateDir); inst["slot"].Version != "1.0.0" {
		t.Fatalf("installed %v", inst)
	}
}

// TestSlotCanaryFailureStopsBeforeTheSlotIsWritten: the U-Boot environment fails its CRC (the
// env trap: fw_printenv would need a default to "work"): FAILED INSTALL_FAILED before a byte of
// the slot is written.
func TestSlotCanaryFailureStopsBeforeTheSlotIsWritten(t *testing.T) {
	dir := t.TempDir()
	envFile, config := filepath.Join(dir, "uboot.env"), filepath.Join(dir, "fw_env.config")
	if err := os.WriteFile(envFile, bytes.Repeat([]byte{0xff}, 0x4000), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(config, []byte(envFile+" 0x0 0x4000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The board boots a from its built-in default; Linux cannot read the environment.
	r := newSlotRig(t, fileEnv(t, slot.Env{slot.VarSlot: "a"}), configSlot("uboot", config))
	r.job("ab", bootsim.Image("2.0.0", bootsim.ImageOpts{}), "2.0.0")
	r.boot(nil)
	ex := r.h.waitTerminal("ab")
	if d := ex.StatusDetails.DetailsMap; ex.Status != "FAILED" || d["reason"] != "INSTALL_FAILED" || d["stage"] != "download" {
		t.Fatalf("%s %v", ex.Status, d)
	}
	if got, _ := os.ReadFile(r.board.Slots.B); !bytes.Equal(got, make([]byte, 64<<10)) {
		t.Fatal("slot b was written although the environment is unusable")
	}
}

func configSlot(bl, fwEnv string) config.Slot {
	return config.Slot{Bootloader: bl, FwEnvConfig: fwEnv}
}

// TestSlotEnvironmentNotBootingTheRunningSlotRefusesTheInstall: the kernel says slot a runs but
// the environment would boot b (not the environment the bootloader uses, or a trial in
// flight): nothing is written.
func TestSlotEnvironmentNotBootingTheRunningSlotRefusesTheInstall(t *testing.T) {
	env := fileEnv(t, slot.Env{slot.VarSlot: "a"})
	r := newSlotRig(t, env, config.Slot{Bootloader: "file", EnvFile: env.Path})
	r.job("ab", bootsim.Image("2.0.0", bootsim.ImageOpts{}), "2.0.0")
	if _, err := r.board.Boot(context.Background()); err != nil { // boots a
		t.Fatal(err)
	}
	if err := env.Set(context.Background(), slot.Env{slot.VarSlot: "b"}); err != nil {
		t.Fatal(err)
	}
	r.board.Env = slot.File{Path: filepath.Join(t.TempDir(), "unused")} // the agent must not need a reboot
	_ = os.WriteFile(r.board.Env.(slot.File).Path, []byte("fieldota_slot=a\n"), 0o644)
	r.boot(nil)
	ex := r.h.waitTerminal("ab")
	if d := ex.StatusDetails.DetailsMap; ex.Status != "FAILED" || d["reason"] != "INSTALL_FAILED" {
		t.Fatalf("%s %v", ex.Status, d)
	}
	if got, _ := os.ReadFile(r.board.Slots.B); !bytes.Equal(got, make([]byte, 64<<10)) {
		t.Fatal("slot b was written")
	}
}

// TestSlotNewSlotThatCannotReachTheBrokerIsRolledBack: the new slot boots but its agent never
// gets through to the Jobs service (a broken network in the image). Reaching the service is
// part of the probation: after health.timeout the agent, still offline, marks the slot bad,
// switches back and reboots; in the old slot it reports FAILED HEALTH_CHECK_FAILED rolledBack.
func TestSlotNewSlotThatCannotReachTheBrokerIsRolledBack(t *testing.T) {
	env := fileEnv(t, slot.Env{slot.VarSlot: "a", slot.VarTry: "0"})
	r := newSlotRig(t, env, config.Slot{Bootloader: "file", EnvFile: env.Path})
	r.job("ab", bootsim.Image("2.0.0", bootsim.ImageOpts{}), "2.0.0")
	stop := r.boot(nil)
	r.h.waitFor("the reboot request", r.rebootRequested)
	stop()
	_ = os.Remove(r.marker)

	// In the old slot, or with no journal, nothing is on probation.
	idle := New(Options{Config: r.h.cfg})
	if d := idle.ProbationDeadline(); d != 0 {
		t.Fatalf("probation deadline %s before the reboot", d)
	}
	if _, err := r.board.Boot(context.Background()); err != nil { // the trial boot of b
		t.Fatal(err)
	}
	// What cmd/fieldota-agent does when its first connection does not come within the deadline.
	a := New(Options{Config: r.h.cfg, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if d := a.ProbationDeadline(); d != r.h.cfg.Health.Timeout.Duration {
		t.Fatalf("probation deadline %s in the new slot, want health.timeout", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.FailProbationOffline(ctx) }()
	r.h.waitFor("the reboot back", r.rebootRequested)
	cancel() // the reboot stops the agent
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("FailProbationOffline: %v", err)
	}
	if st, _ := slot.ReadStatus(context.Background(), env); st.Slot != "a" || st.Try || !st.Bad["b"] {
		t.Fatalf("environment after the offline rollback: %+v", st)
	}
	r.boot(nil) // slot a, the broker reachable again
	ex := r.h.waitTerminal("ab")
	d := ex.StatusDetails.DetailsMap
	if ex.Status != "FAILED" || d["reason"] != "HEALTH_CHECK_FAILED" || d["rolledBack"] != "true" || d["runningSlot"] != "a" {
		t.Fatalf("%s %v", ex.Status, d)
	}
	if inst, _ := loadInstalled(r.h.cfg.StateDir); inst["slot"].Version != "1.0.0" {
		t.Fatalf("installed %v", inst)
	}
}

// TestSlotJobRefusedWhileQueuedWhenTheEnvironmentToolIsMissing: a bootloader hook that is not
// installed can never work: REJECTED UNSUPPORTED_OPERATION before anything is downloaded.
func TestSlotJobRefusedWhileQueuedWhenTheEnvironmentToolIsMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-hook")
	r := newSlotRig(t, fileEnv(t, slot.Env{slot.VarSlot: "a"}), config.Slot{Bootloader: "command", EnvGet: []string{missing, "get"}, EnvSet: []string{missing, "set"}})
	r.job("ab", bootsim.Image("2.0.0", bootsim.ImageOpts{}), "2.0.0")
	r.boot(nil)
	ex := r.h.waitTerminal("ab")
	if d := ex.StatusDetails.DetailsMap; ex.Status != "REJECTED" || d["reason"] != "UNSUPPORTED_OPERATION" {
		t.Fatalf("%s %v", ex.Status, d)
	}
	if got, _ := os.ReadFile(r.board.Slots.B); !bytes.Equal(got, make([]byte, 64<<10)) {
		t.Fatal("slot b was written")
	}
}

// TestSlotCommittedWithACorruptInstalledRecordIsReportedNotRolledBack: the commit's bookkeeping
// failed on a corrupt installed.json after the bootloader had committed the new slot; the state
// was retried on every wake, each wake counted as a transition, and past the breaker's limit the
// healthy, committed slot was marked bad and the device rebooted into the old one. The job must
// end FAILED INTERNAL with committed=true, and slot b keeps booting.
func TestSlotCommittedWithACorruptInstalledRecordIsReportedNotRolledBack(t *testing.T) {
	env := fileEnv(t, slot.Env{slot.VarSlot: "a", slot.VarTry: "0"})
	r := newSlotRig(t, env, config.Slot{Bootloader: "file", EnvFile: env.Path})
	r.job("ab", bootsim.Image("2.0.0", bootsim.ImageOpts{}), "2.0.0")
	stop := r.boot(nil)
	r.h.waitFor("the reboot request", r.rebootRequested)
	stop()
	if err := os.Remove(r.marker); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.h.cfg.StateDir, installedFile), []byte(`{"slot": "1.0`), 0o600); err != nil {
		t.Fatal(err)
	}
	r.boot(nil)
	ex := r.h.waitTerminal("ab")
	d := ex.StatusDetails.DetailsMap
	if ex.Status != "FAILED" || d["reason"] != "INTERNAL" || d["committed"] != "true" || d["rolledBack"] != "" {
		t.Fatalf("%s %v", ex.Status, d)
	}
	if st, _ := slot.ReadStatus(context.Background(), env); st.Slot != "b" || st.Try || st.Bad["b"] {
		t.Fatalf("the committed slot was undone: %+v", st)
	}
	if r.rebootRequested() {
		t.Fatal("a reboot was requested after the commit")
	}
}
