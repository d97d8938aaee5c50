//go:build device

package device

import (
	"strings"
	"testing"
	"time"
)

const (
	bootTimeout = 90 * time.Second
	jobTimeout  = 4 * time.Minute
)

// TestGoodImageCommittedAndBootedForGood: a good v2 image is written to slot b, tried, committed;
// the job ends SUCCEEDED with slot and version, and U-Boot boots b from then on without a trial.
func TestGoodImageCommittedAndBootedForGood(t *testing.T) {
	s := newScenario(t)
	s.powerOn()
	i := s.expectRunning("a", slotVersionA, 0)
	s.createJob("good-v2")
	i = s.expect("trial boot set", i, jobTimeout)
	i = s.expect("fieldota: env slot=b try=1 bootcount=0", i, bootTimeout)
	i = s.expect("fieldota: trial boot: saving bootcount=1 slot=b", i, bootTimeout)
	s.expectRunning("b", slotVersionB, i)
	ex := s.waitTerminal(jobTimeout)
	s.expectDetails(ex, "SUCCEEDED", map[string]string{"slot": "b", "version": slotVersionB})
	s.expectReportedOnce()
	// From now on: slot b, no trial, no bootcount written.
	s.powerCut()
	s.expectEnv(map[string]string{"fieldota_slot": "b", "fieldota_try": "0", "bootcount": "0", "fieldota_bad_b": "0"})
	s.powerOn()
	i = s.expect("fieldota: env slot=b try=0", 0, bootTimeout)
	s.expectRunning("b", slotVersionB, i)
	if _, err := s.board.waitLine("trial boot: saving", 0, time.Second); err == nil {
		t.Error("U-Boot wrote the environment on a normal boot of the committed slot")
	}
}

// TestHealthCheckFailsRollsBack: the v2 slot boots but its health check fails: the agent there
// marks it bad, switches U-Boot back and reboots into slot a, which reports FAILED
// HEALTH_CHECK_FAILED rolledBack=true.
func TestHealthCheckFailsRollsBack(t *testing.T) {
	s := newScenario(t)
	s.powerOn()
	i := s.expectRunning("a", slotVersionA, 0)
	s.createJob("unhealthy-v2")
	i = s.expect("trial boot set", i, jobTimeout)
	i = s.expectRunning("b", slotVersionB, i)
	i = s.expect("health check failed; rolling back", i, jobTimeout)
	i = s.expect("fieldota: env slot=a try=0", i, bootTimeout)
	s.expectRunning("a", slotVersionA, i)
	ex := s.waitTerminal(jobTimeout)
	s.expectDetails(ex, "FAILED", map[string]string{"reason": "HEALTH_CHECK_FAILED", "rolledBack": "true", "slot": "b"})
	s.expectReportedOnce()
	s.powerCut()
	s.expectEnv(map[string]string{"fieldota_slot": "a", "fieldota_try": "0", "fieldota_bad_b": "1"})
}

// TestNeverBootsBootloaderFallsBack: the v2 slot's init exits at once; the kernel panics and
// resets (panic=1); U-Boot's bootcount passes bootlimit and boots slot a again, where the agent
// reports FAILED BOOT_FAILED rolledBack=true.
func TestNeverBootsBootloaderFallsBack(t *testing.T) {
	s := newScenario(t)
	s.powerOn()
	i := s.expectRunning("a", slotVersionA, 0)
	s.createJob("noboot-v2")
	i = s.expect("trial boot set", i, jobTimeout)
	i = s.expect("fieldota: trial boot: saving bootcount=1 slot=b", i, bootTimeout)
	i = s.expect("this slot never boots", i, bootTimeout)
	i = s.expect("Attempted to kill init", i, bootTimeout)
	i = s.expect("slot b used its 1 trial boot(s); falling back", i, bootTimeout)
	s.expectRunning("a", slotVersionA, i)
	ex := s.waitTerminal(jobTimeout)
	s.expectDetails(ex, "FAILED", map[string]string{"reason": "BOOT_FAILED", "rolledBack": "true", "slot": "b"})
	s.expectReportedOnce()
	s.powerCut()
	s.expectEnv(map[string]string{"fieldota_slot": "a", "fieldota_try": "0", "bootcount": "0", "fieldota_bad_b": "1"})
}

// TestPowerCut: QEMU is SIGKILLed at a step of the update, then powered on again; the board
// always comes up on a slot that works and the job ends in the right terminal state, once.
func TestPowerCut(t *testing.T) {
	for _, tc := range []struct {
		name    string
		simArgs []string
		// cut waits for the moment of the power cut on the console (from line i).
		cut func(s *scenario, i int)
		// after checks the fresh boot and returns the terminal execution.
		after func(s *scenario)
	}{
		{
			name: "DuringSlotWrite",
			// Throttled so that the write of the 24 MiB slot lasts about 8 s; the cut comes once
			// the agent reported 40 % (past the first download checkpoint, every 8 MiB = 33 %)
			// and before the download ended.
			simArgs: []string{"--s3-rate", "3000000"},
			cut: func(s *scenario, i int) {
				i = s.expect("download: start", i, jobTimeout)
				s.waitProgress(40, jobTimeout)
				if _, err := s.board.waitLine("msg=downloaded", i, time.Millisecond); err == nil {
					s.t.Fatal("the download finished before the power cut")
				}
			},
			after: func(s *scenario) {
				i := s.expectRunning("a", slotVersionA, 0)
				i = s.expect("resumed=true", i, jobTimeout)
				i = s.expect("trial boot set", i, jobTimeout)
				s.expectRunning("b", slotVersionB, i)
				s.expectDetails(s.waitTerminal(jobTimeout), "SUCCEEDED", map[string]string{"slot": "b", "version": slotVersionB})
			},
		},
		{
			name: "RightAfterEnvSwitch",
			cut:  func(s *scenario, i int) { s.expect("trial boot set", i, jobTimeout) },
			after: func(s *scenario) {
				i := s.expect("fieldota: env slot=b try=1 bootcount=0", 0, bootTimeout)
				s.expectRunning("b", slotVersionB, i)
				s.expectDetails(s.waitTerminal(jobTimeout), "SUCCEEDED", map[string]string{"slot": "b", "version": slotVersionB})
			},
		},
		{
			name: "DuringTrialBoot",
			cut: func(s *scenario, i int) {
				i = s.expect("trial boot set", i, jobTimeout)
				s.expectRunning("b", slotVersionB, i)
			},
			after: func(s *scenario) {
				// The one trial boot is used up: U-Boot falls back, the agent in a reports.
				i := s.expect("slot b used its 1 trial boot(s); falling back", 0, bootTimeout)
				s.expectRunning("a", slotVersionA, i)
				s.expectDetails(s.waitTerminal(jobTimeout), "FAILED", map[string]string{"reason": "BOOT_FAILED", "rolledBack": "true", "slot": "b"})
			},
		},
		{
			name: "DuringCommit",
			cut: func(s *scenario, i int) {
				i = s.expect("trial boot set", i, jobTimeout)
				i = s.expectRunning("b", slotVersionB, i)
				s.expect("to=commit", i, jobTimeout)
			},
			after: func(s *scenario) {
				// Either the commit batch reached the env file before the cut (b boots for good and
				// the commit completes) or it did not (the trial is used up, U-Boot falls back):
				// the terminal state must match what the board boots.
				i := s.expect("fieldota: booting slot ", 0, bootTimeout)
				line := s.board.lines()[i-1]
				ex := s.waitTerminal(jobTimeout)
				if strings.Contains(line, "booting slot b") {
					s.t.Log("the commit batch was written before the cut: slot b committed")
					s.expectRunning("b", slotVersionB, i)
					s.expectDetails(ex, "SUCCEEDED", map[string]string{"slot": "b", "version": slotVersionB})
				} else {
					s.t.Log("the cut came before the commit batch: U-Boot fell back")
					s.expectRunning("a", slotVersionA, i)
					s.expectDetails(ex, "FAILED", map[string]string{"reason": "BOOT_FAILED", "rolledBack": "true", "slot": "b"})
				}
			},
		},
		{
			name: "RightAfterCommitBatch",
			// The other side of the commit: the batch is in the env, the report is not sent yet.
			cut: func(s *scenario, i int) {
				i = s.expect("trial boot set", i, jobTimeout)
				i = s.expectRunning("b", slotVersionB, i)
				s.expect("slot committed", i, jobTimeout)
			},
			after: func(s *scenario) {
				i := s.expect("fieldota: env slot=b try=0", 0, bootTimeout)
				s.expectRunning("b", slotVersionB, i)
				s.expectDetails(s.waitTerminal(jobTimeout), "SUCCEEDED", map[string]string{"slot": "b", "version": slotVersionB})
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newScenario(t, tc.simArgs...)
			s.powerOn()
			i := s.expectRunning("a", slotVersionA, 0)
			s.createJob("good-v2")
			tc.cut(s, i)
			s.powerCut()
			s.powerOn()
			tc.after(s)
			s.expectReportedOnce()
			// The board runs what the env says, with no trial pending.
			s.powerCut()
			env := s.bootEnv()
			if env["fieldota_try"] != "0" {
				t.Errorf("a trial is still pending after the job ended: %v", env)
			}
		})
	}
}

// TestTornEnvWriteFallsBackToOtherCopy: the write that set the trial boot is torn (simulated:
// the copy it wrote is corrupted after a power cut). U-Boot's script and libubootenv both ignore
// the copy that fails its CRC and use the other one, which still boots slot a without a trial.
// The agent in slot a then finds the environment readable and carries on: if its journal had
// not yet moved past install it sets the trial again and the job ends SUCCEEDED on slot b;
// otherwise the trial never happened and it reports FAILED BOOT_FAILED rolledBack=true. Either
// way the environment matches the outcome. With a single env copy the board would lose its
// environment instead (CRC error on both sides).
func TestTornEnvWriteFallsBackToOtherCopy(t *testing.T) {
	s := newScenario(t)
	s.powerOn()
	i := s.expectRunning("a", slotVersionA, 0)
	s.createJob("good-v2")
	s.expect("trial boot set", i, jobTimeout)
	s.powerCut()
	// Flags: pristine 1/1 → the canary writes copy 1 (2) → the trial writes copy 0 (3).
	if env := s.bootEnv(); env["fieldota_try"] != "1" || env["fieldota_slot"] != "b" {
		t.Fatalf("the trial boot is not in the env before the tear: %v", env)
	}
	s.tearEnvCopy("uboot.env")
	s.powerOn()
	i = s.expect("fieldota: env slot=a try=0", 0, bootTimeout)
	if !strings.Contains(s.board.lines()[i-1], "copies valid 01") {
		t.Errorf("U-Boot did not see copy 0 as torn: %s", s.board.lines()[i-1])
	}
	s.expectRunning("a", slotVersionA, i)
	ex := s.waitTerminal(jobTimeout)
	s.expectReportedOnce()
	s.powerCut()
	if ex.Status == "SUCCEEDED" {
		t.Log("the journal was still at install: the agent set the trial again")
		s.expectDetails(ex, "SUCCEEDED", map[string]string{"slot": "b", "version": slotVersionB})
		s.expectEnv(map[string]string{"fieldota_slot": "b", "fieldota_try": "0"})
	} else {
		t.Log("the journal was at reboot: the trial never happened")
		s.expectDetails(ex, "FAILED", map[string]string{"reason": "BOOT_FAILED", "rolledBack": "true", "slot": "b"})
		s.expectEnv(map[string]string{"fieldota_slot": "a", "fieldota_try": "0"})
	}
}
