package swap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/fieldota/fieldota/ota/run"
)

// Restart runs the configured restart argv (e.g. systemctl restart myapp) directly, never through
// a shell, bounded by timeout. The error carries the tail of its output.
func Restart(ctx context.Context, argv []string, timeout time.Duration) error {
	if len(argv) == 0 {
		return errors.New("no restart command configured")
	}
	// Output goes to a file, not a pipe: a helper that leaves a daemon behind cannot hold us.
	_, err := run.Run(ctx, run.Spec{Argv: argv, Timeout: timeout})
	return err
}

// ErrNotRunning means the watched process is gone, a zombie, or runs another binary.
var ErrNotRunning = errors.New("process not running the target binary")

// Runs checks that process pid is alive (not a zombie) and executes the file now at target —
// the new binary after a swap, the old one after a restore.
func Runs(pid int, target string) error {
	if pid <= 0 {
		return fmt.Errorf("%w: no pid", ErrNotRunning)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return fmt.Errorf("%w: pid %d: %v", ErrNotRunning, pid, err)
	}
	// The state letter follows the last ')' (the command name may contain parentheses).
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return fmt.Errorf("%w: pid %d has exited", ErrNotRunning, pid)
	}
	exe, err := os.Stat(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return fmt.Errorf("%w: pid %d: %v", ErrNotRunning, pid, err)
	}
	tf, err := os.Stat(target)
	if err != nil {
		return err
	}
	if !os.SameFile(exe, tf) {
		return fmt.Errorf("%w: pid %d runs another file than %s", ErrNotRunning, pid, target)
	}
	return nil
}

// PID reads a process id from a pid file or from the output of a command (for systemd:
// systemctl show -p MainPID --value myapp). 0 means "none yet".
func PID(ctx context.Context, pidFile string, pidCommand []string) (int, error) {
	var b []byte
	var err error
	switch {
	case pidFile != "":
		b, err = os.ReadFile(pidFile)
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
	case len(pidCommand) > 0:
		var res run.Result
		res, err = run.Run(ctx, run.Spec{Argv: pidCommand, Timeout: 30 * time.Second})
		b = res.Stdout
	default:
		return 0, errors.New("no pid source configured")
	}
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("pid source gave %q", s)
	}
	return n, nil
}
