//go:build device

package device

import (
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
