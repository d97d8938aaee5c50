package ota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/fieldota/fieldota/ota/reason"
)

func TestStateGraphIsClosed(t *testing.T) {
	known := map[State]bool{}
	for _, s := range States {
		known[s] = true
	}
	for s, evs := range transitions {
		if !known[s] {
			t.Errorf("table has unknown state %q", s)
		}
		for ev, n := range evs {
			if !known[n] {
				t.Errorf("%s --%s--> unknown %q", s, ev, n)
			}
		}
	}
	// Every state but done leaves somewhere, every state has a resume rule, and every state is
	// reachable from the first state.
	reach := map[State]bool{StateFirst: true}
	for changed := true; changed; {
		changed = false
		for s := range reach {
			for _, n := range transitions[s] {
				if !reach[n] {
					reach[n], changed = true, true
				}
			}
		}
	}
	for _, s := range States {
		if s != StateDone && len(transitions[s]) == 0 {
			t.Errorf("state %s has no way out", s)
		}
		if _, err := Resume(s); err != nil {
			t.Errorf("state %s has no resume rule", s)
		}
		if !reach[s] {
			t.Errorf("state %s is unreachable", s)
		}
	}
	// Every state can reach done (no trap states).
	for _, s := range States {
		seen := map[State]bool{}
		var walk func(State) bool
		walk = func(x State) bool {
			if x == StateDone {
				return true
			}
			if seen[x] {
				return false
			}
			seen[x] = true
			for _, n := range transitions[x] {
				if walk(n) {
					return true
				}
			}
			return false
		}
		if !walk(s) {
			t.Errorf("state %s cannot reach done", s)
		}
	}
}

func TestEveryStateNameRoundTripsThroughTheJournal(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	for _, s := range States {
		if err := st.Save(&Journal{JobID: "j", State: s}); err != nil {
			t.Fatal(err)
		}
		j, err := st.Load()
		if err != nil || j.State != s {
			t.Fatalf("%s: got %+v, %v", s, j, err)
		}
		raw, _ := os.ReadFile(filepath.Join(st.Dir, JournalFile))
		if !strings.Contains(string(raw), `"state": "`+string(s)+`"`) {
			t.Fatalf("state not stored by name: %s", raw)
		}
	}
}

func TestCorruptOrFutureJournalIsRefusedNotForgotten(t *testing.T) {
	cases := map[string]string{
		"truncated":     `{"schema":1,"jobId":"j","sta`,
		"future schema": `{"schema":99,"jobId":"j","state":"download"}`,
		"unknown state": `{"schema":1,"jobId":"j","state":"warp"}`,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			st := &Store{Dir: t.TempDir()}
			if err := os.WriteFile(filepath.Join(st.Dir, JournalFile), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Load(); err == nil || errors.Is(err, ErrNoJournal) {
				t.Fatalf("want a refusal, got %v", err)
			}
			if _, err := os.Stat(filepath.Join(st.Dir, JournalFile)); err != nil {
				t.Fatal("journal was discarded")
			}
		})
	}
}

// recorder is a set of handlers that follow a script of events and log each state run.
type recorder struct {
	script map[State][]Event // events returned on successive runs of a state
	runs   map[State]int
	chain  []State
	// reported is the journal's report as the report state saw it.
	reported *Report
}

func (r *recorder) handlers() map[State]Handler {
	h := map[State]Handler{}
	for _, s := range States {
		s := s
		h[s] = func(ctx context.Context, j *Journal) (Event, error) {
			r.chain = append(r.chain, s)
			if s == StateReport {
				r.reported = j.Report
			}
			evs := r.script[s]
			n := r.runs[s]
			r.runs[s]++
			if len(evs) == 0 {
				return EvOK, nil
			}
			if n >= len(evs) {
				n = len(evs) - 1
			}
			if evs[n] == EvFail {
				return Fail(j, reason.Errorf(reason.DownloadFailed, "link down"), nil), nil
			}
			return evs[n], nil
		}
	}
	return h
}

func TestFilesFlowRunsInOrderAndRemovesJournal(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	r := &recorder{runs: map[State]int{}}
	m := &Machine{Store: st, Handlers: r.handlers()}
	if err := m.Begin(context.Background(), &Journal{JobID: "job1", ExecutionNumber: 1}); err != nil {
		t.Fatal(err)
	}
	want := []State{StateWaitDownload, StateAccept, StateDownload, StateVerify, StateWaitInstall, StateWaitActivate, StateInstall, StateReport, StateCleanup}
	if !reflect.DeepEqual(r.chain, want) {
		t.Fatalf("chain %v, want %v", r.chain, want)
	}
	if _, err := st.Load(); !errors.Is(err, ErrNoJournal) {
		t.Fatalf("journal left: %v", err)
	}
}

func TestDownloadFailureIsReportedWithItsReason(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	r := &recorder{runs: map[State]int{}, script: map[State][]Event{StateDownload: {EvFail}}}
	h := r.handlers()
	m := &Machine{Store: st, Handlers: h}
	if err := m.Begin(context.Background(), &Journal{JobID: "job1"}); err != nil {
		t.Fatal(err)
	}
	if r.reported == nil || r.reported.Status != "FAILED" || r.reported.Details["reason"] != "DOWNLOAD_FAILED" {
		t.Fatalf("report %+v", r.reported)
	}
}

func TestLoopBreakerStopsACrashLoopAndReportsInternal(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	// Selftest fails, rollback keeps asking for a reboot forever.
	r := &recorder{runs: map[State]int{}, script: map[State][]Event{
		StateInstall: {EvReboot}, StateSelftest: {EvFail}, StateRollback: {EvReboot}}}
	h := r.handlers()
	m := &Machine{Store: st, Handlers: h, MaxTransitions: 12}
	if err := m.Begin(context.Background(), &Journal{JobID: "loop"}); err != nil {
		t.Fatal(err)
	}
	if r.reported == nil || r.reported.Details["reason"] != "INTERNAL" || !strings.Contains(r.reported.Details["detail"], "transitions") {
		t.Fatalf("report %+v", r.reported)
	}
}

func TestUnknownEventBecomesInternalReportNotAGuess(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	r := &recorder{runs: map[State]int{}, script: map[State][]Event{StateVerify: {EvReboot}}}
	h := r.handlers()
	if err := (&Machine{Store: st, Handlers: h}).Begin(context.Background(), &Journal{JobID: "x"}); err != nil {
		t.Fatal(err)
	}
	if r.reported == nil || r.reported.Details["reason"] != "INTERNAL" {
		t.Fatalf("report %+v", r.reported)
	}
}

func TestHandlerErrorLeavesStatePersistedForResume(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	r := &recorder{runs: map[State]int{}}
	h := r.handlers()
	h[StateVerify] = func(ctx context.Context, j *Journal) (Event, error) { return "", context.Canceled }
	err := (&Machine{Store: st, Handlers: h}).Begin(context.Background(), &Journal{JobID: "x"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	j, err := st.Load()
	if err != nil || j.State != StateVerify {
		t.Fatalf("journal %+v %v", j, err)
	}
}

// TestKilledInEachStateResumesThere re-executes the test binary, SIGKILLs it right after each
// state is persisted, and checks that a fresh machine resumes at that state and finishes.
func TestKilledInEachStateResumesThere(t *testing.T) {
	flows := map[string]map[State][]Event{
		"files":         nil,
		"slot":          {StateInstall: {EvReboot}},
		"slot-rollback": {StateInstall: {EvReboot}, StateSelftest: {EvFail}, StateRollback: {EvRolledBack}},
	}
	for name, script := range flows {
		for _, killIn := range States {
			if killIn == StateDone {
				continue
			}
			t.Run(name+"/"+string(killIn), func(t *testing.T) {
				dir := t.TempDir()
				scriptJSON, _ := json.Marshal(script)
				cmd := exec.Command(os.Args[0], "-test.run=^TestHelperMachineProcess$")
				cmd.Env = append(os.Environ(), "OTA_HELPER_DIR="+dir, "OTA_HELPER_KILL="+string(killIn), "OTA_HELPER_SCRIPT="+string(scriptJSON))
				out, err := cmd.CombinedOutput()
				st := &Store{Dir: dir}
				j, lerr := st.Load()
				if errors.Is(lerr, ErrNoJournal) {
					// The flow never reaches this state; the helper must have finished cleanly.
					if err != nil {
						t.Fatalf("helper failed: %v\n%s", err, out)
					}
					return
				}
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
					t.Fatalf("helper was not killed: %v\n%s", err, out)
				}
				if lerr != nil || j.State != killIn {
					t.Fatalf("journal after kill: %+v %v", j, lerr)
				}
				r := &recorder{runs: map[State]int{}, script: script}
				m := &Machine{Store: st, Handlers: r.handlers()}
				if err := m.ResumeJournal(context.Background(), j); err != nil {
					t.Fatal(err)
				}
				if len(r.chain) == 0 || r.chain[0] != killIn {
					t.Fatalf("resumed chain %v, want it to start at %s", r.chain, killIn)
				}
				if r.chain[len(r.chain)-1] != StateCleanup {
					t.Fatalf("resumed chain %v did not finish", r.chain)
				}
				if _, err := st.Load(); !errors.Is(err, ErrNoJournal) {
					t.Fatalf("journal left: %v", err)
				}
			})
		}
	}
}

func TestHelperMachineProcess(t *testing.T) {
	dir := os.Getenv("OTA_HELPER_DIR")
	if dir == "" {
		return // not a helper run: nothing to do (this test is the subprocess body)
	}
	var script map[State][]Event
	if err := json.Unmarshal([]byte(os.Getenv("OTA_HELPER_SCRIPT")), &script); err != nil {
		t.Fatal(err)
	}
	kill := State(os.Getenv("OTA_HELPER_KILL"))
	r := &recorder{runs: map[State]int{}, script: script}
	m := &Machine{Store: &Store{Dir: dir}, Handlers: r.handlers(), OnTransition: func(j *Journal) {
		if j.State == kill {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
	}}
	if err := m.Begin(context.Background(), &Journal{JobID: "killed"}); err != nil {
		fmt.Println(err)
		os.Exit(3)
	}
}

func TestSanitizedDetailsAlwaysMeetAWSLimits(t *testing.T) {
	nasty := []string{"", "\x00\x01", "line1\nline2\r\n", strings.Repeat("é", 3000), "\u200b zero width", "\xff\xfe bad utf8", "ok"}
	keys := []string{"stage", "", "bad key", strings.Repeat("k", 129), "reason", "a:b_c-d"}
	for _, k := range keys {
		for _, v := range nasty {
			out := SanitizeDetails(map[string]string{k: v})
			for ok, ov := range out {
				if !detailKey.MatchString(ok) {
					t.Fatalf("key %q escaped", ok)
				}
				if n := utf8.RuneCountInString(ov); n < 1 || n > MaxDetailValue {
					t.Fatalf("value length %d", n)
				}
				for _, r := range ov {
					if unicode.Is(unicode.C, r) || r == utf8.RuneError {
						t.Fatalf("control rune %U in %q", r, ov)
					}
				}
			}
		}
	}
}

// TestLoopInSoftwareChangingStateRollsBackBeforeReporting: a crash loop while new software is
// on trial must not end in a report over a half-updated device: the rollback runs first.
func TestLoopInSoftwareChangingStateRollsBackBeforeReporting(t *testing.T) {
	for _, looping := range []State{StateInstall, StateReboot, StateSelftest, StateCommit} {
		t.Run(string(looping), func(t *testing.T) {
			st := &Store{Dir: t.TempDir()}
			r := &recorder{runs: map[State]int{}, script: map[State][]Event{StateRollback: {EvRolledBack}}}
			h := r.handlers()
			m := &Machine{Store: st, Handlers: h, MaxTransitions: 12}
			// The journal as a restart loop leaves it: in the looping state, out of budget.
			j := &Journal{JobID: "loop", State: looping, Transitions: 12}
			if err := st.Save(j); err != nil {
				t.Fatal(err)
			}
			if err := m.ResumeJournal(context.Background(), j); err != nil {
				t.Fatal(err)
			}
			if len(r.chain) == 0 || r.chain[0] != StateRollback {
				t.Fatalf("chain %v: the rollback did not run first", r.chain)
			}
			if r.reported == nil || r.reported.Details["reason"] != "INTERNAL" {
				t.Fatalf("report %+v", r.reported)
			}
		})
	}
}

// TestRollbackThatLoopsTooLongStillEndsInAReport: the rollback's own budget is bounded too.
func TestRollbackThatLoopsTooLongStillEndsInAReport(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	r := &recorder{runs: map[State]int{}, script: map[State][]Event{StateRollback: {EvReboot}}}
	h := r.handlers()
	m := &Machine{Store: st, Handlers: h, MaxTransitions: 12}
	j := &Journal{JobID: "loop", State: StateSelftest, Transitions: 12}
	if err := m.ResumeJournal(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	if n := r.runs[StateRollback]; n < RollbackBudget-1 || n > RollbackBudget+1 {
		t.Fatalf("rollback ran %d times", n)
	}
	if r.reported == nil || r.reported.Details["reason"] != "INTERNAL" {
		t.Fatalf("report %+v", r.reported)
	}
}

// TestRebootsWhileWaitingAreNoLoop: a job waiting days for its window sees the device restart
// again and again; the loop breaker must not count those restarts and fail the job afterwards.
func TestRebootsWhileWaitingAreNoLoop(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	r := &recorder{runs: map[State]int{}}
	h := r.handlers()
	stopped := func(ctx context.Context, j *Journal) (Event, error) { return "", context.Canceled }
	h[StateWaitInstall] = stopped
	m := &Machine{Store: st, Handlers: h, MaxTransitions: 12}
	if err := m.Begin(context.Background(), &Journal{JobID: "w"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("begin: %v", err)
	}
	for i := 0; i < 3*m.MaxTransitions; i++ {
		j, err := st.Load()
		if err != nil || j.State != StateWaitInstall {
			t.Fatalf("restart %d: journal %+v %v", i, j, err)
		}
		if err := m.ResumeJournal(context.Background(), j); !errors.Is(err, context.Canceled) {
			t.Fatalf("restart %d: %v", i, err)
		}
	}
	h[StateWaitInstall] = r.handlers()[StateWaitInstall]
	j, _ := st.Load()
	if err := m.ResumeJournal(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	if r.reported != nil && r.reported.Status != "SUCCEEDED" {
		t.Fatalf("the waits were counted as a loop: %+v", r.reported)
	}
	if r.chain[len(r.chain)-1] != StateCleanup || r.runs[StateInstall] != 1 {
		t.Fatalf("chain %v", r.chain)
	}
}
