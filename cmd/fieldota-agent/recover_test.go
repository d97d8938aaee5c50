package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/swap"
)

type recoverFixture struct {
	cfg, state, target string
	store              *ota.Store
}

// newRecoverFixture is a device in the middle of a self-update: the new agent ("new") at the
// target, the old one ("old") at the backup, the journal in state.
func newRecoverFixture(t *testing.T, state ota.State, self bool) recoverFixture {
	t.Helper()
	dir := t.TempDir()
	f := recoverFixture{cfg: filepath.Join(dir, "agent.toml"), state: filepath.Join(dir, "state"), target: filepath.Join(dir, "fieldota-agent")}
	body := fmt.Sprintf(`thing_name = "dev1"
state_dir = %q
[mqtt]
endpoint = "tcp://127.0.0.1:1"
[verify]
allow_unsigned = true
[swap]
target = %q
restart = ["true"]
max_starts = 2
probation = "1s"
restart_timeout = "1s"
[health]
timeout = "1s"
`, f.state, f.target)
	for p, b := range map[string]string{f.cfg: body, f.target: "new", swap.BackupPath(f.target): "old"} {
		if err := os.WriteFile(p, []byte(b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(f.state, 0o700); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("new"))
	f.store = &ota.Store{Dir: f.state}
	j := &ota.Journal{JobID: "j", ExecutionNumber: 1, State: state, Target: "binary", Version: "2.0",
		Staged: []ota.Staged{{Path: "x", SHA256: hex.EncodeToString(sum[:])}},
		Data:   map[string]string{"swap.target": f.target, "swap.self": fmt.Sprint(self)}}
	if err := f.store.Save(j); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f recoverFixture) targetHolds(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(f.target)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRecoverGivesUpOnANewAgentAfterMaxStarts(t *testing.T) {
	f := newRecoverFixture(t, ota.StateSelftest, true)
	for start := 1; start <= 2; start++ {
		restored, err := recoverSelf(io.Discard, f.cfg, false, time.Now())
		if err != nil || restored || f.targetHolds(t) != "new" {
			t.Fatalf("start %d: restored=%v err=%v target=%s", start, restored, err, f.targetHolds(t))
		}
	}
	restored, err := recoverSelf(io.Discard, f.cfg, false, time.Now())
	if err != nil || !restored || f.targetHolds(t) != "old" {
		t.Fatalf("third start: restored=%v err=%v target=%s", restored, err, f.targetHolds(t))
	}
	j, err := f.store.Load()
	if err != nil || j.State != ota.StateRollback || j.Report == nil || j.Report.Details["reason"] != "HEALTH_CHECK_FAILED" {
		t.Fatalf("journal %+v %v", j, err)
	}
	// The next start (the old agent) finds nothing more to do.
	if restored, err := recoverSelf(io.Discard, f.cfg, false, time.Now()); err != nil || restored || f.targetHolds(t) != "old" {
		t.Fatalf("after: restored=%v err=%v", restored, err)
	}
}

func TestRecoverFinishesARestoreCutShort(t *testing.T) {
	// Killed after persisting rollback, before the rename: the next run restores.
	f := newRecoverFixture(t, ota.StateRollback, true)
	if restored, err := recoverSelf(io.Discard, f.cfg, false, time.Now()); err != nil || !restored || f.targetHolds(t) != "old" {
		t.Fatalf("restored=%v err=%v target=%s", restored, err, f.targetHolds(t))
	}
}

func TestRecoverLeavesEverythingElseAlone(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state ota.State
		self  bool
	}{
		{"managed-binary-on-probation", ota.StateSelftest, false},
		{"agent-reporting", ota.StateReport, true},
		{"agent-committing", ota.StateCommit, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRecoverFixture(t, tc.state, tc.self)
			for range 5 {
				if restored, err := recoverSelf(io.Discard, f.cfg, false, time.Now()); err != nil || restored {
					t.Fatalf("restored=%v err=%v", restored, err)
				}
			}
			if f.targetHolds(t) != "new" {
				t.Fatal("target changed")
			}
			if n, _ := swap.Starts(f.state); n != 0 {
				t.Fatalf("counted %d starts", n)
			}
		})
	}
}

func TestRecoverOverdueGivesUpOnAHungAgentWithoutCountingStarts(t *testing.T) {
	f := newRecoverFixture(t, ota.StateSelftest, true)
	// 3×1s + 1s + 1s = 5s of legitimate probation.
	if restored, err := recoverSelf(io.Discard, f.cfg, true, time.Now().Add(4*time.Second)); err != nil || restored {
		t.Fatalf("too early: restored=%v err=%v", restored, err)
	}
	if n, _ := swap.Starts(f.state); n != 0 {
		t.Fatalf("--overdue counted %d starts", n)
	}
	if restored, err := recoverSelf(io.Discard, f.cfg, true, time.Now().Add(time.Minute)); err != nil || !restored || f.targetHolds(t) != "old" {
		t.Fatalf("overdue: restored=%v err=%v", restored, err)
	}
	if j, _ := f.store.Load(); j.State != ota.StateRollback {
		t.Fatalf("journal in %s", j.State)
	}
}
