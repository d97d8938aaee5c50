package run

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	MaybeShim()
	if os.Getenv("RUN_TEST_AGENT") != "" {
		// Act as an agent that runs one durable program and is killed while it runs.
		d := Durable{Spec: Spec{Argv: strings.Fields(os.Getenv("RUN_TEST_ARGV"))}, Status: os.Getenv("RUN_TEST_STATUS"), Output: os.Getenv("RUN_TEST_OUTPUT")}
		o, err := d.Run(context.Background())
		fmt.Println(o.Code, err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestExitZeroIsSuccessEvenWhenAChildKeepsStdout(t *testing.T) {
	// `app &`: the program exits 0 at once and leaves a child holding its stdout for 30 s.
	start := time.Now()
	res, err := Run(context.Background(), Spec{Argv: []string{"/bin/sh", "-c", "echo started; sleep 30 & exit 0"}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("exit 0 reported as %v", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("waited %s for a child that keeps stdout", el)
	}
	if !strings.Contains(res.Tail, "started") {
		t.Fatalf("output lost: %q", res.Tail)
	}
}

func TestNonZeroExitCarriesTheCodeAndTheOutputTail(t *testing.T) {
	_, err := Run(context.Background(), Spec{Argv: []string{"/bin/sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"}})
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 {
		t.Fatalf("got %v", err)
	}
	if !strings.Contains(ee.Tail, "to-stderr") || !strings.Contains(ee.Tail, "to-stdout") {
		t.Fatalf("tail %q", ee.Tail)
	}
}

func TestTimeoutKillsTheWholeProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	_, err := Run(context.Background(), Spec{Argv: []string{"/bin/sh", "-c", "sleep 60 & echo $! > " + pidFile + "; wait"}, Timeout: 500 * time.Millisecond})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v", err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	waitGone(t, pid)
}

func TestStdoutIsKeptWholeAndBounded(t *testing.T) {
	res, err := Run(context.Background(), Spec{Argv: []string{"/bin/echo", "a=1"}})
	if err != nil || string(res.Stdout) != "a=1\n" {
		t.Fatalf("%q %v", res.Stdout, err)
	}
	if _, err := Run(context.Background(), Spec{Argv: []string{"/bin/sh", "-c", "head -c 2000 /dev/zero"}, MaxStdout: 1000}); err == nil {
		t.Fatal("stdout over the bound accepted")
	}
}

func TestRunsAsAnotherUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test needs root (CI runs as root)")
	}
	res, err := Run(context.Background(), Spec{Argv: []string{"/usr/bin/id", "-u"}, Cred: &syscall.Credential{Uid: 65534, Gid: 65534}})
	if err != nil || strings.TrimSpace(string(res.Stdout)) != "65534" {
		t.Fatalf("%q %v", res.Stdout, err)
	}
}

func TestCanceledContextIsNotAVerdict(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(200 * time.Millisecond); cancel() }()
	_, err := Run(ctx, Spec{Argv: []string{"/bin/sleep", "30"}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
}

// counting is a program that appends a line to a file each time it runs, then sleeps.
func counting(t *testing.T, dir string, sleep string) (argv []string, count func() int) {
	t.Helper()
	script := filepath.Join(dir, "count.sh")
	runs := filepath.Join(dir, "runs")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho run >> "+runs+"\nsleep "+sleep+"\necho done\nexit 4\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{script}, func() int {
		b, _ := os.ReadFile(runs)
		return strings.Count(string(b), "run\n")
	}
}

func TestDurableRunRecordsTheOutcome(t *testing.T) {
	dir := t.TempDir()
	argv, count := counting(t, dir, "0")
	d := Durable{Spec: Spec{Argv: argv}, Status: filepath.Join(dir, "st"), Output: filepath.Join(dir, "out")}
	o, err := d.Run(context.Background())
	if err != nil || o.State != Exited || o.Code != 4 || o.Inherited || !strings.Contains(o.Tail, "done") {
		t.Fatalf("%+v %v", o, err)
	}
	// Asked again (a resumed install), it reports the same outcome and does not run again.
	o, err = d.Run(context.Background())
	if err != nil || o.Code != 4 || !o.Inherited || count() != 1 {
		t.Fatalf("%+v %v, runs %d", o, err, count())
	}
}

// TestAgentKilledWhileAutoStartRunsNeverStartsASecondCopy: an agent (a child process) starts the
// program and is SIGKILLed while it runs; the next agent inherits the run, waits for it and
// learns its exit code; the program ran once.
func TestAgentKilledWhileAutoStartRunsNeverStartsASecondCopy(t *testing.T) {
	dir := t.TempDir()
	argv, count := counting(t, dir, "2")
	status, output := filepath.Join(dir, "st"), filepath.Join(dir, "out")
	agentKilledWhileItRuns(t, argv, status, output, count)

	d := Durable{Spec: Spec{Argv: argv}, Status: status, Output: output, Poll: 50 * time.Millisecond}
	o, err := d.Run(context.Background())
	if err != nil || o.State != Exited || o.Code != 4 || !o.Inherited {
		t.Fatalf("%+v %v", o, err)
	}
	if n := count(); n != 1 {
		t.Fatalf("the program ran %d times", n)
	}
}

// TestShimKilledWithTheProgramIsLostNotRerun: the whole process group dies (systemd stopping the
// agent's control group, say) while the program runs: the outcome is unknown and the program is
// not started again by Run; the caller decides (autoStartRerunnable).
func TestShimKilledWithTheProgramIsLostNotRerun(t *testing.T) {
	dir := t.TempDir()
	argv, count := counting(t, dir, "30")
	status, output := filepath.Join(dir, "st"), filepath.Join(dir, "out")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	d := Durable{Spec: Spec{Argv: argv}, Status: status, Output: output, Poll: 50 * time.Millisecond}
	go func() { _, err := d.Run(ctx); done <- err }()
	waitFor(t, func() bool { return count() == 1 })
	f, _ := os.Open(status)
	rec, _ := readStatus(f)
	f.Close()
	if !rec.started {
		t.Fatal("no started record while the program runs")
	}
	_ = syscall.Kill(-rec.pid, syscall.SIGKILL)
	cancel()
	<-done
	o, err := d.Run(context.Background())
	if err != nil || o.State != Lost {
		t.Fatalf("%+v %v", o, err)
	}
	if count() != 1 {
		t.Fatalf("ran %d times", count())
	}
}

// TestAgentDeadBeforeTheStartRunsItOnce: a status file left empty (the agent died after creating
// it, before the shim started) means nothing ran: the next Run starts it.
func TestAgentDeadBeforeTheStartRunsItOnce(t *testing.T) {
	dir := t.TempDir()
	argv, count := counting(t, dir, "0")
	status := filepath.Join(dir, "st")
	if err := os.WriteFile(status, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d := Durable{Spec: Spec{Argv: argv}, Status: status, Output: filepath.Join(dir, "out")}
	o, err := d.Run(context.Background())
	if err != nil || o.Code != 4 || o.Inherited || count() != 1 {
		t.Fatalf("%+v %v runs %d", o, err, count())
	}
}

func TestInheritedRunPastItsTimeoutIsKilled(t *testing.T) {
	dir := t.TempDir()
	argv, count := counting(t, dir, "30")
	status, output := filepath.Join(dir, "st"), filepath.Join(dir, "out")
	agentKilledWhileItRuns(t, argv, status, output, count)
	d := Durable{Spec: Spec{Argv: argv, Timeout: time.Second}, Status: status, Output: output, Poll: 50 * time.Millisecond}
	start := time.Now()
	_, err := d.Run(context.Background())
	if !errors.Is(err, ErrTimeout) || time.Since(start) > 10*time.Second {
		t.Fatalf("got %v after %s", err, time.Since(start))
	}
}

func TestDurableRunsAsAnotherUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test needs root (CI runs as root)")
	}
	dir := t.TempDir()
	d := Durable{Spec: Spec{Argv: []string{"/usr/bin/id", "-u"}, Cred: &syscall.Credential{Uid: 65534, Gid: 65534}}, Status: filepath.Join(dir, "st"), Output: filepath.Join(dir, "out")}
	o, err := d.Run(context.Background())
	if err != nil || !o.OK() || strings.TrimSpace(o.Tail) != "65534" {
		t.Fatalf("%+v %v", o, err)
	}
}

// agentKilledWhileItRuns starts an agent (this test binary, see TestMain) that runs argv
// durably, and SIGKILLs it once the program has started.
func agentKilledWhileItRuns(t *testing.T, argv []string, status, output string, count func() int) {
	t.Helper()
	agent := exec.Command(os.Args[0])
	agent.Env = append(os.Environ(), "RUN_TEST_AGENT=1", "RUN_TEST_ARGV="+strings.Join(argv, " "), "RUN_TEST_STATUS="+status, "RUN_TEST_OUTPUT="+output)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return count() == 1 })
	_ = agent.Process.Kill()
	_ = agent.Wait()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	waitFor(t, func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		return err != nil || strings.Contains(string(b), ") Z ")
	})
}
