package ota

import (
	"context"
	"errors"
	"testing"
)

// killed is a handler that stops the way a kill does: without a transition.
func killed(context.Context, *Journal) (Event, error) { return "", context.Canceled }

// TestRestartsThatMadeProgressAreNotLoops: a slow download killed every few seconds resumed 31
// times and was failed INTERNAL "update stopped after 31 transitions" although every restart
// had gained bytes. A restart counts as a loop only when it made no durable progress.
func TestRestartsThatMadeProgressAreNotLoops(t *testing.T) {
	cases := []struct {
		name      string
		gain      int64 // progress gained between two restarts
		wantTrips bool
	}{
		{"each restart gained bytes", 64 << 10, false},
		{"no restart gained anything", 0, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := &Store{Dir: t.TempDir()}
			r := &recorder{runs: map[State]int{}}
			h := r.handlers()
			h[StateDownload] = killed
			var done int64 = 1
			m := &Machine{Store: st, Handlers: h, MaxTransitions: 12, Progress: func(j *Journal) int64 {
				if j.State != StateDownload {
					return 0
				}
				return done
			}}
			j := &Journal{JobID: "slow", State: StateDownload, Transitions: 3}
			for restart := 0; restart < 40 && j.State == StateDownload; restart++ {
				done += c.gain
				if err := m.ResumeJournal(context.Background(), j); err != nil && !errors.Is(err, context.Canceled) {
					t.Fatal(err)
				}
			}
			tripped := r.reported != nil
			if tripped != c.wantTrips {
				t.Fatalf("tripped=%v after 40 restarts (transitions %d, report %+v)", tripped, j.Transitions, r.reported)
			}
		})
	}
}

// TestCommittedSoftwareIsNeverRolledBackByTheBreaker: when the commit's bookkeeping kept failing
// (a corrupt installed.json), every wake counted as a transition, and past the limit the
// healthy, committed slot was marked bad and the device rebooted into the old one. Finishing a
// committed job is idempotent (no loop), in-process retries are not restarts, and a breaker
// that trips anyway reports instead of rolling back.
func TestCommittedSoftwareIsNeverRolledBackByTheBreaker(t *testing.T) {
	t.Run("restarts in commit", func(t *testing.T) {
		st := &Store{Dir: t.TempDir()}
		r := &recorder{runs: map[State]int{}}
		h := r.handlers()
		h[StateCommit] = killed // the bookkeeping fails every time
		m := &Machine{Store: st, Handlers: h, MaxTransitions: 12, Committed: func(*Journal) bool { return true }}
		j := &Journal{JobID: "c", State: StateCommit, Transitions: 10}
		for i := 0; i < 50; i++ {
			_ = m.ResumeJournal(context.Background(), j)
		}
		if r.runs[StateRollback] != 0 || j.State != StateCommit {
			t.Fatalf("a committed update was rolled back: chain %v, state %s", r.chain, j.State)
		}
	})
	t.Run("retries in the same process", func(t *testing.T) {
		st := &Store{Dir: t.TempDir()}
		r := &recorder{runs: map[State]int{}}
		h := r.handlers()
		h[StateCommit] = killed
		m := &Machine{Store: st, Handlers: h, MaxTransitions: 12}
		j := &Journal{JobID: "c", State: StateCommit, Transitions: 10}
		for i := 0; i < 50; i++ {
			_ = m.Retry(context.Background(), j)
		}
		if j.Transitions != 10 || r.runs[StateRollback] != 0 {
			t.Fatalf("50 wakes counted %d transitions; chain %v", j.Transitions-10, r.chain)
		}
	})
	t.Run("breaker trips with the software committed", func(t *testing.T) {
		st := &Store{Dir: t.TempDir()}
		r := &recorder{runs: map[State]int{}}
		// The budget runs out on the way into commit, and the bootloader already boots the new
		// software for good (an earlier life committed it before its bookkeeping failed).
		m := &Machine{Store: st, Handlers: r.handlers(), MaxTransitions: 12,
			Committed: func(j *Journal) bool { return j.State == StateCommit }}
		j := &Journal{JobID: "c", State: StateSelftest, Transitions: 11}
		if err := m.Begin(context.Background(), j); err != nil {
			t.Fatal(err)
		}
		if r.runs[StateRollback] != 0 || r.runs[StateCommit] != 0 {
			t.Fatalf("chain %v: the breaker rolled back committed software", r.chain)
		}
		if r.reported == nil || r.reported.Details["reason"] != "INTERNAL" || r.reported.Details["committed"] != "true" {
			t.Fatalf("report %+v", r.reported)
		}
	})
}
