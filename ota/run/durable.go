package run

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fieldota/fieldota/ota/durable"
)

// A durable run goes through a shim: the agent's own executable started with ShimArg. The
// agent creates the status file, takes an exclusive flock on it and hands that open file to the
// shim, so the lock is held for as long as the shim lives — by the shim alone once the agent is
// gone. The shim writes "started <pid> <start-ticks> <unix-nanos>" and fsyncs before it starts
// the program, then "exited <code>" (or "signal <name>") and fsyncs after. An agent that finds
// the status file:
//   - locked: the shim still runs (the program with it): wait for it, never start another;
//   - unlocked and empty: nothing was ever started: start it;
//   - unlocked with "started" only: the shim died with the program's outcome unknown (a power
//     cut, or systemd killing the agent's whole control group): Lost;
//   - unlocked with "exited": that is the outcome.

// ShimArg is the first argument that makes the agent's binary act as the shim (MaybeShim).
const ShimArg = "__fieldota-run-shim"

// Durable is one program run whose outcome survives the agent.
type Durable struct {
	Spec Spec
	// Status and Output are files in a directory only root can write (the job's staging
	// directory); Output receives the program's stdout and stderr.
	Status, Output string
	// Exe is the shim's executable; "" = /proc/self/exe (the running agent, even if its file
	// was replaced since).
	Exe string
	// Poll is how often an inherited run is checked; 0 = 250 ms.
	Poll time.Duration
}

// State of a durable run.
type State int

// The states.
const (
	Exited State = iota // ran to its end: Code says how
	Lost                // started, but whatever ran it died before recording an outcome
)

// Outcome of a durable run.
type Outcome struct {
	State     State
	Code      int    // exit code; -1 when killed by a signal
	Signal    string // the signal, if any
	Inherited bool   // the program was started by an earlier agent
	Tail      string // the last TailSize characters of its output
}

// OK tells whether the program ran and exited 0.
func (o Outcome) OK() bool { return o.State == Exited && o.Code == 0 && o.Signal == "" }

// Run starts the program unless an earlier agent did, and waits for its outcome. The timeout
// counts from the program's first start. ctx ending returns ctx.Err() with the program left
// running for the next agent to inherit.
func (d Durable) Run(ctx context.Context) (Outcome, error) {
	st, err := os.OpenFile(d.Status, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return Outcome{}, fmt.Errorf("run: status file: %w", err)
	}
	defer st.Close()
	if err := durable.SyncDir(dirOf(d.Status)); err != nil {
		return Outcome{}, err
	}
	inherited, killed := false, false
	for {
		err := syscall.Flock(int(st.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return Outcome{}, fmt.Errorf("run: lock %s: %w", d.Status, err)
		}
		// A shim of an earlier agent still runs the program.
		inherited = true
		k, err := d.overdue(st)
		if err != nil {
			return Outcome{}, err
		}
		killed = killed || k
		if err := sleep(ctx, d.poll()); err != nil {
			return Outcome{}, err
		}
	}
	rec, err := readStatus(st)
	if err != nil {
		return Outcome{}, err
	}
	switch {
	case killed && !rec.exited:
		return Outcome{}, fmt.Errorf("%s: %w after %s", Describe(d.Spec.Argv), ErrTimeout, d.timeout())
	case rec.exited:
		return d.outcome(rec, true), nil
	case rec.started:
		return Outcome{State: Lost, Code: -1, Inherited: true, Tail: d.tail()}, nil
	case inherited:
		// The shim ended without writing "started": it never ran the program.
	}
	return d.start(ctx, st)
}

func (d Durable) poll() time.Duration {
	if d.Poll > 0 {
		return d.Poll
	}
	return 250 * time.Millisecond
}

func (d Durable) timeout() time.Duration {
	if d.Spec.Timeout > 0 {
		return d.Spec.Timeout
	}
	return DefaultTimeout
}

// start runs the shim with the locked status file and waits for it.
func (d Durable) start(ctx context.Context, st *os.File) (Outcome, error) {
	if len(d.Spec.Argv) == 0 || d.Spec.Argv[0] == "" {
		return Outcome{}, errors.New("run: empty argv")
	}
	if err := st.Truncate(0); err != nil {
		return Outcome{}, err
	}
	out, err := os.OpenFile(d.Output, os.O_WRONLY|os.O_CREATE|os.O_APPEND|os.O_TRUNC, 0o600)
	if err != nil {
		return Outcome{}, fmt.Errorf("run: output file: %w", err)
	}
	defer out.Close()
	exe := d.Exe
	if exe == "" {
		exe = "/proc/self/exe"
	}
	// The program outlives an agent that stops (a shutdown is not a verdict on it): only its
	// timeout ends it, never ctx.
	tctx, cancel := context.WithTimeout(context.Background(), d.timeout())
	cmd := exec.CommandContext(tctx, exe, append([]string{ShimArg}, d.Spec.Argv...)...)
	prepare(cmd, d.Spec)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, out, out
	cmd.ExtraFiles = []*os.File{st} // fd 3: the status file, with the agent's lock on it
	if err := cmd.Start(); err != nil {
		cancel()
		return Outcome{}, fmt.Errorf("%s: %w", Describe(d.Spec.Argv), err)
	}
	waited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		cancel() // the timeout context lives as long as the program, not as this call
		waited <- err
	}()
	select {
	case <-ctx.Done():
		// Leave it running: the next agent inherits it through the status file's lock.
		return Outcome{}, ctx.Err()
	case err = <-waited:
	}
	if errors.Is(tctx.Err(), context.DeadlineExceeded) {
		return Outcome{}, fmt.Errorf("%s: %w after %s", Describe(d.Spec.Argv), ErrTimeout, d.timeout())
	}
	rec, rerr := readStatus(st)
	if rerr != nil {
		return Outcome{}, rerr
	}
	if rec.exited {
		return d.outcome(rec, false), nil
	}
	if !rec.started {
		// The shim could not even start the program (exec failed): it says why on stderr.
		var ee *exec.ExitError
		if errors.As(err, &ee) || err == nil {
			return Outcome{}, fmt.Errorf("%s: not started: %s", Describe(d.Spec.Argv), clipTail(strings.TrimSpace(d.tail()), 300))
		}
		return Outcome{}, fmt.Errorf("%s: %w", Describe(d.Spec.Argv), err)
	}
	return Outcome{State: Lost, Code: -1, Tail: d.tail()}, nil
}

func (d Durable) outcome(rec status, inherited bool) Outcome {
	return Outcome{State: Exited, Code: rec.code, Signal: rec.signal, Inherited: inherited, Tail: d.tail()}
}

func (d Durable) tail() string {
	f, err := os.Open(d.Output)
	if err != nil {
		return ""
	}
	defer f.Close()
	return tailOf(f)
}

// overdue kills an inherited shim's process group once the program has run longer than the
// timeout since its first start. The pid is checked against its recorded start time first, so
// a reused pid is never killed.
func (d Durable) overdue(st *os.File) (bool, error) {
	rec, err := readStatus(st)
	if err != nil || !rec.started || rec.exited {
		return false, err
	}
	if time.Since(time.Unix(0, rec.startedAt)) <= d.timeout() {
		return false, nil
	}
	if ticks, err := startTicks(rec.pid); err == nil && ticks == rec.ticks {
		return true, syscall.Kill(-rec.pid, syscall.SIGKILL)
	}
	return false, nil
}

type status struct {
	started   bool
	pid       int
	ticks     uint64
	startedAt int64
	exited    bool
	code      int
	signal    string
}

func readStatus(f *os.File) (status, error) {
	var s status
	b := make([]byte, 512)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return s, fmt.Errorf("run: read status: %w", err)
	}
	for _, line := range strings.Split(string(b[:n]), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 4 && f[0] == "started":
			pid, e1 := strconv.Atoi(f[1])
			ticks, e2 := strconv.ParseUint(f[2], 10, 64)
			at, e3 := strconv.ParseInt(f[3], 10, 64)
			if e1 == nil && e2 == nil && e3 == nil {
				s.started, s.pid, s.ticks, s.startedAt = true, pid, ticks, at
			}
		case len(f) == 2 && f[0] == "exited":
			if c, err := strconv.Atoi(f[1]); err == nil {
				s.exited, s.code = true, c
			}
		case len(f) == 2 && f[0] == "signal":
			s.exited, s.code, s.signal = true, -1, f[1]
		}
	}
	return s, nil
}

// ownStartTicks is the shim's own start time, through /proc/self: right even where the /proc
// mounted is not the PID namespace's own (a sandbox that made a PID namespace only).
func ownStartTicks() (uint64, error) { return ticksOf("/proc/self/stat") }

// startTicks is field 22 of /proc/<pid>/stat: when the process started, in clock ticks since
// boot. Together with the pid it names one process for the life of the boot.
func startTicks(pid int) (uint64, error) { return ticksOf(fmt.Sprintf("/proc/%d/stat", pid)) }

func ticksOf(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field 22 is f[19].
	if len(f) < 20 {
		return 0, errors.New("short stat")
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func dirOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		return p[:i]
	}
	return "."
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// MaybeShim makes the binary act as the shim when started with ShimArg; call it first in main
// (and in TestMain of packages whose tests run durable programs). It does not return then.
func MaybeShim() {
	if len(os.Args) < 3 || os.Args[1] != ShimArg {
		return
	}
	os.Exit(shim(os.Args[2:]))
}

// shim runs argv and records its outcome in the status file on fd 3.
func shim(argv []string) int {
	st := os.NewFile(3, "status")
	syscall.CloseOnExec(3) // the program must not hold the lock
	ticks, err := ownStartTicks()
	if err != nil {
		fmt.Fprintf(os.Stderr, "fieldota shim: %v\n", err)
		return 127
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	cmd.Env = os.Environ()
	// The program stays in the shim's process group: killing the group kills both. "started" is
	// durable before the program can run, so no crash can hide that it did.
	started := fmt.Sprintf("started %d %d %d\n", os.Getpid(), ticks, time.Now().UnixNano())
	if err := record(st, started); err != nil {
		fmt.Fprintf(os.Stderr, "fieldota shim: %v\n", err)
		return 127
	}
	err = cmd.Run()
	line := "exited 0\n"
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			line = "signal " + strings.ReplaceAll(ws.Signal().String(), " ", "-") + "\n"
		} else {
			line = fmt.Sprintf("exited %d\n", ee.ExitCode())
		}
	default:
		fmt.Fprintf(os.Stderr, "fieldota shim: %v\n", err)
		line = "exited 127\n"
	}
	if err := record(st, started+line); err != nil {
		fmt.Fprintf(os.Stderr, "fieldota shim: %v\n", err)
		return 127
	}
	return 0
}

// record rewrites the status file from offset 0 and makes it durable.
func record(f *os.File, s string) error {
	if _, err := f.WriteAt([]byte(s), 0); err != nil {
		return err
	}
	return f.Sync()
}

// Stop ends a run still in progress — its shim's whole process group — and returns once it is
// gone, for a rollback: the program must not go on with the files put back under it. A run
// that has ended, or never started, is left as it is.
func (d Durable) Stop(ctx context.Context) error {
	st, err := os.OpenFile(d.Status, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("run: status file: %w", err)
	}
	defer st.Close()
	for {
		err := syscall.Flock(int(st.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return syscall.Flock(int(st.Fd()), syscall.LOCK_UN)
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("run: lock %s: %w", d.Status, err)
		}
		if rec, err := readStatus(st); err == nil && rec.started && !rec.exited {
			if ticks, err := startTicks(rec.pid); err == nil && ticks == rec.ticks {
				_ = syscall.Kill(-rec.pid, syscall.SIGKILL)
			}
		}
		if err := sleep(ctx, d.poll()); err != nil {
			return err
		}
	}
}
