// Package run is the one way the agent runs another program: an argv list (never a shell), a
// timeout, a chosen environment, its own process group (a timeout or a cancel kills the
// program's children too), optionally another user's credentials, and its output captured in
// files rather than pipes — so that exit status 0 is success even when the program leaves a
// child running that keeps its stdout open (`app &`), and such a child never gets EPIPE when
// the agent goes away.
//
// Durable (durable.go) adds what autoStart needs: the program's outcome recorded by a small
// shim process in a status file, so that an agent killed while the program runs learns, once
// restarted, whether it still runs or how it ended, and never starts it a second time.
package run

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// DefaultTimeout bounds a program when the caller gives no timeout.
const DefaultTimeout = 5 * time.Minute

// MinimalEnv is what a program from a release gets (autoStart): no agent secrets, no proxy
// settings with credentials.
var MinimalEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/"}

// Spec is one program to run.
type Spec struct {
	Argv    []string
	Dir     string
	Env     []string // nil = the agent's own (the device's configured tools); releases get MinimalEnv
	Stdin   io.Reader
	Timeout time.Duration // 0 = DefaultTimeout
	// Cred runs the program as another user (uid, gid, supplementary groups); nil = as the agent.
	Cred *syscall.Credential
	// MaxStdout bounds the stdout kept whole in Result.Stdout (0 = 64 KiB); more is an error for
	// callers that parse it (Stdout), and only cut for those that do not.
	MaxStdout int
}

// Result of a program that ran to its end.
type Result struct {
	ExitCode int
	Stdout   []byte // at most MaxStdout bytes
	// Tail is the last TailSize characters of stderr then stdout, for messages and reports.
	Tail string
}

// TailSize is how much output a Result keeps for messages (statusDetails values hold 1024).
const TailSize = 1024

// ExitError is a program that ran but did not exit 0.
type ExitError struct {
	Argv   []string
	Code   int    // -1 when killed by a signal
	Signal string // the signal, if any
	Tail   string
}

func (e *ExitError) Error() string {
	how := fmt.Sprintf("exit status %d", e.Code)
	if e.Signal != "" {
		how = "killed by " + e.Signal
	}
	if t := strings.TrimSpace(e.Tail); t != "" {
		return fmt.Sprintf("%s: %s (%s)", Describe(e.Argv), how, clipTail(t, 300))
	}
	return fmt.Sprintf("%s: %s", Describe(e.Argv), how)
}

// ErrTimeout is returned (wrapped) when the program outlived its timeout and was killed.
var ErrTimeout = errors.New("timed out")

// Run runs s to its end. It returns an *ExitError for a non-zero exit, an error wrapping
// ErrTimeout when the timeout killed it, and ctx.Err() when ctx ended first.
func Run(ctx context.Context, s Spec) (Result, error) {
	if len(s.Argv) == 0 || s.Argv[0] == "" {
		return Result{}, errors.New("run: empty argv")
	}
	out, err := anonFile()
	if err != nil {
		return Result{}, err
	}
	defer out.Close()
	errf, err := anonFile()
	if err != nil {
		return Result{}, err
	}
	defer errf.Close()

	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(rctx, s.Argv[0], s.Argv[1:]...)
	prepare(cmd, s)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s.Stdin, out, errf
	err = cmd.Run()
	res := Result{ExitCode: exitCode(cmd.ProcessState)}
	max := s.MaxStdout
	if max <= 0 {
		max = 64 << 10
	}
	var rerr error
	res.Stdout, rerr = readHead(out, max)
	res.Tail = tailOf(errf, out)
	if err == nil {
		return res, rerr
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	if errors.Is(rctx.Err(), context.DeadlineExceeded) {
		return res, fmt.Errorf("%s: %w after %s", Describe(s.Argv), ErrTimeout, timeout)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return res, exitErr(s.Argv, ee.ProcessState, res.Tail)
	}
	return res, fmt.Errorf("%s: %w", Describe(s.Argv), err)
}

// prepare applies what every program gets: its own process group, killed whole on timeout or
// cancel; the environment; the credentials.
func prepare(cmd *exec.Cmd, s Spec) {
	cmd.Dir = s.Dir
	cmd.Env = s.Env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.Cred}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// No pipes are used, so nothing can hold Wait up; the delay only bounds the stdin copy.
	cmd.WaitDelay = 2 * time.Second
}

func exitErr(argv []string, ps *os.ProcessState, tail string) *ExitError {
	e := &ExitError{Argv: argv, Code: exitCode(ps), Tail: tail}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		e.Signal = ws.Signal().String()
	}
	return e
}

func exitCode(ps *os.ProcessState) int {
	if ps == nil {
		return -1
	}
	return ps.ExitCode()
}

// anonFile is an unnamed temp file: output goes to a file, not a pipe (see the package comment).
func anonFile() (*os.File, error) {
	f, err := os.CreateTemp("", "fieldota-run-")
	if err != nil {
		return nil, fmt.Errorf("run: output file: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("run: output file: %w", err)
	}
	return f, nil
}

func readHead(f *os.File, max int) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	n := fi.Size()
	if n > int64(max) {
		b := make([]byte, max)
		_, err := f.ReadAt(b, 0)
		if err != nil && err != io.EOF {
			return nil, err
		}
		return b, fmt.Errorf("run: stdout of %d bytes exceeds %d", n, max)
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, err
	}
	return b, nil
}

// tailOf is the last TailSize characters of the files' contents, in order.
func tailOf(files ...*os.File) string {
	var parts []string
	for _, f := range files {
		if s := strings.TrimSpace(readTail(f, 4*TailSize)); s != "" {
			parts = append(parts, s)
		}
	}
	return clipTail(strings.Join(parts, "\n"), TailSize)
}

func readTail(f *os.File, n int64) string {
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-n, 0)
	b := make([]byte, fi.Size()-off)
	m, _ := f.ReadAt(b, off)
	return strings.ToValidUTF8(string(b[:m]), "")
}

func clipTail(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[len(r)-n:])
}

// Describe shows an argv for messages.
func Describe(argv []string) string {
	s := strings.Join(argv, " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
