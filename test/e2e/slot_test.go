package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fieldota/fieldota/download"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/slot"
	"github.com/fieldota/fieldota/test/bootsim"
	"github.com/fieldota/fieldota/test/jobsim/s3"
)

// abWant is how an A/B job must end.
type abWant struct {
	status, reason string
	rolledBack     bool
	slot, version  string // the slot the device runs at the end, and its version
	installed      string // the version the agent recorded
}

// checkAB waits for the job's end and checks the report, the environment, the booted slot,
// the recorded version, and that a further power cycle boots the same working slot.
func checkAB(t *testing.T, e *env, b *abBoard, job string, w abWant) {
	t.Helper()
	ex := e.waitTerminal(job, 60*time.Second)
	d := ex.StatusDetails.DetailsMap
	if ex.Status != w.status || d["reason"] != w.reason {
		t.Fatalf("job ended %s %v, want %s %s", ex.Status, d, w.status, w.reason)
	}
	if w.rolledBack != (d["rolledBack"] == "true") {
		t.Fatalf("rolledBack=%q, want %t (%v)", d["rolledBack"], w.rolledBack, d)
	}
	if d["version"] != "2.0.0" || d["previousVersion"] != "1.0.0" || d["slot"] != "b" {
		t.Fatalf("the report does not name the update (2.0.0 over 1.0.0 into slot b): %v", d)
	}
	if w.status == "SUCCEEDED" && (d["version"] != w.version || d["slot"] != w.slot) {
		t.Fatalf("SUCCEEDED with %v, want version %s slot %s", d, w.version, w.slot)
	}
	e.waitFor("the journal to be removed", func() bool {
		_, err := os.Stat(filepath.Join(e.stateDir, "journal.json"))
		return os.IsNotExist(err)
	})
	if n := e.terminalReports(job); n != 1 {
		t.Fatalf("terminal status sent %d times", n)
	}
	if bt := b.lastBoot(); bt.Slot != w.slot || bt.Version != w.version {
		t.Fatalf("device runs slot %s %s, want %s %s (boots %+v)", bt.Slot, bt.Version, w.slot, w.version, b.boots)
	}
	st := slot.StatusOf(b.env(t))
	if st.Slot != w.slot || st.Try {
		t.Fatalf("environment boots %s with try=%t, want %s committed", st.Slot, st.Try, w.slot)
	}
	if w.rolledBack && !st.Bad["b"] {
		t.Fatalf("rolled back but slot b is not marked bad: %v", b.env(t))
	}
	if got := e.installedSlot(t); got != w.installed {
		t.Fatalf("installed version %s, want %s", got, w.installed)
	}
	// Power-cycle once more without the agent: the same working slot must come up.
	again, err := b.board.Boot(context.Background())
	if err != nil || again.Slot != w.slot || again.Resets != 0 {
		t.Fatalf("power cycle after the job: %+v %v", again, err)
	}
	e.assertNoLeftovers()
}

var abGood = abWant{status: "SUCCEEDED", slot: "b", version: "2.0.0", installed: "2.0.0"}

// TestSlotUpdateCommittedThroughRealBootloaderEnv: a good image is streamed into slot b,
// read back, tried through a real U-Boot (fw_setenv, redundant env) or GRUB (grub-editenv)
// environment, passes its health check in slot b and is committed.
func TestSlotUpdateCommittedThroughRealBootloaderEnv(t *testing.T) {
	for _, bl := range []string{"uboot", "grub"} {
		t.Run(bl, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOpts{})
			b := newABBoard(t, e, abOpts{bootloader: bl})
			img := bootsim.Image("2.0.0", bootsim.ImageOpts{})
			e.publish("rootfs.img", img)
			b.powerOn(t)
			e.createJob("ab", e.slotDoc("rootfs.img", img, "2.0.0"))
			checkAB(t, e, b, "ab", abGood)
			if n := len(b.boots); n != 2 { // power on, the trial boot of b
				t.Fatalf("%d boots: %+v", n, b.boots)
			}
			if st := slot.StatusOf(b.env(t)); st.BootCount != 0 || st.Bad["b"] {
				t.Fatalf("commit left %+v", st)
			}
		})
	}
}

// TestSlotHealthCheckFailsRollsBack: the new slot boots but its health check fails: slot b is
// marked bad, the bootloader switched back, the device reboots into slot a and the job is
// FAILED HEALTH_CHECK_FAILED rolledBack=true; the recorded version stays 1.0.0.
func TestSlotHealthCheckFailsRollsBack(t *testing.T) {
	for _, bl := range []string{"uboot", "grub"} {
		t.Run(bl, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOpts{})
			b := newABBoard(t, e, abOpts{bootloader: bl})
			img := bootsim.Image("2.0.0", bootsim.ImageOpts{FailHealth: true})
			e.publish("rootfs.img", img)
			b.powerOn(t)
			e.createJob("ab", e.slotDoc("rootfs.img", img, "2.0.0"))
			checkAB(t, e, b, "ab", abWant{status: "FAILED", reason: "HEALTH_CHECK_FAILED", rolledBack: true, slot: "a", version: "1.0.0", installed: "1.0.0"})
		})
	}
}

// TestSlotNeverBootsBootloaderFallsBack: the new slot's kernel panics; the bootloader spends
// its one trial, marks b bad and boots a; the agent finds itself in the old slot and reports
// FAILED BOOT_FAILED rolledBack=true.
func TestSlotNeverBootsBootloaderFallsBack(t *testing.T) {
	for _, bl := range []string{"uboot", "grub"} {
		t.Run(bl, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOpts{})
			b := newABBoard(t, e, abOpts{bootloader: bl})
			img := bootsim.Image("2.0.0", bootsim.ImageOpts{NeverBoots: true})
			e.publish("rootfs.img", img)
			b.powerOn(t)
			e.createJob("ab", e.slotDoc("rootfs.img", img, "2.0.0"))
			checkAB(t, e, b, "ab", abWant{status: "FAILED", reason: "BOOT_FAILED", rolledBack: true, slot: "a", version: "1.0.0", installed: "1.0.0"})
			if bt := b.boots[1]; bt.Resets != 1 || len(bt.Tried) != 2 || bt.Tried[0] != "b" {
				t.Fatalf("the trial boot was %+v, want b tried once then a", bt)
			}
		})
	}
}

// TestSlotCorruptedWriteCaughtByReadBack: a byte of slot b flips between the download and the
// install (a flash that acknowledged a write it lost). The read-back re-hash catches it: FAILED
// INSTALL_FAILED, and the bootloader environment is exactly as it was.
func TestSlotCorruptedWriteCaughtByReadBack(t *testing.T) {
	e := newEnv(t, envOpts{})
	b := newABBoard(t, e, abOpts{bootloader: "uboot", powerCut: true})
	img := bootsim.Image("2.0.0", bootsim.ImageOpts{})
	e.publish("rootfs.img", img)
	var (
		mu     sync.Mutex
		before slot.Env
	)
	// The agent is cut down right as install begins (the payload is in slot b and verified);
	// while it is down one byte of the slot flips.
	b.onDeath = func() {
		mu.Lock()
		defer mu.Unlock()
		before = b.env(t)
		f, err := os.OpenFile(b.board.Slots.B, os.O_RDWR, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		var c [1]byte
		_, _ = f.ReadAt(c[:], 40000)
		c[0] ^= 0x20
		if _, err := f.WriteAt(c[:], 40000); err != nil {
			t.Error(err)
		}
	}
	b.powerOn(t, "FIELDOTA_KILL_IN_STATE=install", "FIELDOTA_KILL_MARKER="+filepath.Join(e.dir, "killed"))
	e.createJob("ab", e.slotDoc("rootfs.img", img, "2.0.0"))
	checkAB(t, e, b, "ab", abWant{status: "FAILED", reason: "INSTALL_FAILED", slot: "a", version: "1.0.0", installed: "1.0.0"})
	ex, _ := e.sim.DescribeJobExecution("ab", thing, 0)
	if d := ex.StatusDetails.DetailsMap; d["stage"] != "install" {
		t.Fatalf("failed at %v", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if after := b.env(t); !maps.Equal(before, after) {
		t.Fatalf("the environment changed after a failed read-back:\nbefore %v\nafter  %v", before, after)
	}
}

// TestSlotAgentKilledAtEveryStep is the crash table of the slot flow: the agent dies (SIGKILL)
// at each step, either in a power cut (the board reboots through the bootloader) or alone
// (systemd restarts it in the same boot). The device must always come up in a working slot
// and the job must end in the state the protocol promises.
func TestSlotAgentKilledAtEveryStep(t *testing.T) {
	rolledBackBoot := abWant{status: "FAILED", reason: "BOOT_FAILED", rolledBack: true, slot: "a", version: "1.0.0", installed: "1.0.0"}
	cases := []struct {
		name     string
		state    string // FIELDOTA_KILL_IN_STATE; "" = killed from outside mid-write
		powerCut bool
		health   bool // the image fails its health check
		want     abWant
	}{
		{"mid-write/power-cut", "", true, false, abGood},
		{"after-write-before-switch/power-cut", "install", true, false, abGood},
		{"after-switch-before-reboot/power-cut", "reboot", true, false, abGood},
		{"after-switch-before-reboot/process", "reboot", false, false, abGood},
		// A power cut during probation is a failed trial: the bootloader falls back.
		{"after-reboot-before-commit/power-cut", "selftest", true, false, rolledBackBoot},
		{"after-reboot-before-commit/process", "selftest", false, false, abGood},
		{"during-commit/power-cut", "commit", true, false, rolledBackBoot},
		{"during-commit/process", "commit", false, false, abGood},
		{"after-commit/power-cut", "report", true, false, abGood},
		{"rollback-before-switch-back/power-cut", "rollback", true, true,
			abWant{status: "FAILED", reason: "HEALTH_CHECK_FAILED", rolledBack: true, slot: "a", version: "1.0.0", installed: "1.0.0"}},
	}
	// Inside a state, right after an environment batch was written and before the journal
	// moves on: the command backend's hook kills the agent the moment its write is done.
	hooked := []struct {
		name     string
		batch    string // FIELDOTA_ENVHOOK_KILL
		journal  ota.State
		powerCut bool
		want     abWant
	}{
		// The trial is set, the journal still says install.
		{"switched-journal-in-install/power-cut", "fieldota_slot=b,fieldota_try=1", ota.StateInstall, true, abGood},
		{"switched-journal-in-install/process", "fieldota_slot=b,fieldota_try=1", ota.StateInstall, false, abGood},
		// The commit batch is written, the journal still says commit.
		{"committed-journal-in-commit/power-cut", "fieldota_slot=b,fieldota_try=0", ota.StateCommit, true, abGood},
		{"committed-journal-in-commit/process", "fieldota_slot=b,fieldota_try=0", ota.StateCommit, false, abGood},
	}
	for _, c := range hooked {
		t.Run("command/"+c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOpts{})
			b := newABBoard(t, e, abOpts{bootloader: "command", powerCut: c.powerCut})
			img := bootsim.Image("2.0.0", bootsim.ImageOpts{})
			e.publish("rootfs.img", img)
			b.powerOn(t, "FIELDOTA_ENVHOOK_KILL="+c.batch, "FIELDOTA_ENVHOOK_MARKER="+filepath.Join(e.dir, "killed"))
			e.createJob("ab", e.slotDoc("rootfs.img", img, "2.0.0"))
			e.waitFor("the kill", func() bool {
				_, err := os.Stat(filepath.Join(e.dir, "killed"))
				return err == nil
			})
			checkAB(t, e, b, "ab", c.want)
			b.mu.Lock()
			deaths, died := b.deaths, append([]ota.State(nil), b.diedIn...)
			b.mu.Unlock()
			if deaths != 1 || died[0] != c.journal {
				t.Fatalf("agent died %d times on its own (journal in %v), want once in %s", deaths, died, c.journal)
			}
		})
	}
	for _, c := range cases {
		for _, bl := range []string{"uboot", "grub"} {
			t.Run(bl+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				e := newEnv(t, envOpts{})
				b := newABBoard(t, e, abOpts{bootloader: bl, powerCut: c.powerCut})
				opts := bootsim.ImageOpts{FailHealth: c.health}
				if c.state == "" {
					opts.Size = 16 << 20
				}
				img := bootsim.Image("2.0.0", opts)
				e.publish("rootfs.img", img)
				var kill []string
				if c.state != "" {
					kill = []string{"FIELDOTA_KILL_IN_STATE=" + c.state, "FIELDOTA_KILL_MARKER=" + filepath.Join(e.dir, "killed")}
				} else {
					e.sim.Artifacts().SetFaults("bucket/rootfs.img", s3.Faults{RateBytesPerSec: 8 << 20})
				}
				b.powerOn(t, kill...)
				before := b.env(t)
				e.createJob("ab", e.slotDoc("rootfs.img", img, "2.0.0"))
				if c.state == "" {
					e.waitFor("a checkpoint of the slot write", func() bool {
						_, err := os.Stat(filepath.Join(e.stateDir, "staging", "ab-1", "0.checkpoint"))
						return err == nil
					})
					if st := slot.StatusOf(b.env(t)); st.Slot != "a" || st.Try {
						t.Fatalf("environment changed during the write: %v (before %v)", b.env(t), before)
					}
					b.powerCutNow(t)
					at := download.CheckpointOffset(filepath.Join(e.stateDir, "staging", "ab-1", "0.checkpoint"))
					defer func() {
						// The download resumed into the slot from its checkpoint, not from zero:
						// the request that completed it asked for a range past the checkpoint.
						var last s3.Request
						for _, r := range e.sim.Artifacts().Requests() {
							if r.Object == "bucket/rootfs.img" && r.Method == "GET" {
								last = r
							}
						}
						var from int64
						if _, err := fmt.Sscanf(last.Range, "bytes=%d-", &from); err != nil || from <= 0 || from < at {
							t.Errorf("the download after the power cut was %+v: not resumed from the checkpoint at %d", last, at)
						}
					}()
				} else {
					e.waitFor("the kill", func() bool {
						_, err := os.Stat(filepath.Join(e.dir, "killed"))
						return err == nil
					})
				}
				checkAB(t, e, b, "ab", c.want)
				b.mu.Lock()
				deaths, died := b.deaths, append([]ota.State(nil), b.diedIn...)
				b.mu.Unlock()
				want := ota.State(c.state)
				if c.state == "" {
					want = ota.StateDownload
				}
				if deaths != 1 || died[0] != want {
					t.Fatalf("agent died %d times on its own (journal in %v), want once in %s", deaths, died, want)
				}
			})
		}
	}
}
