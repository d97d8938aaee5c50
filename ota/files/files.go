// Package files installs a files-mode update: it places verified files atomically in a working
// directory with their modes, optionally starts the package, and puts the previous files back
// when the start fails. Every step can be re-run after a crash: the previous version of each file
// is kept as a hard link beside it until the install is committed, and a file that did not exist
// before is marked so that a restore removes it.
package files

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/durable"
	"github.com/fieldota/fieldota/ota/reason"
)

// File is one verified payload to place.
type File struct {
	Name   string      // base name in the working directory
	Staged string      // path of the verified, staged payload
	Mode   fs.FileMode // permission bits to give the placed file
	// SHA256, when set, is checked while the staged payload is copied into place: bytes that
	// changed on disk since they were verified are never placed.
	SHA256 []byte
}

// Plan is one files install.
type Plan struct {
	Dir   string // working directory (already confined to an allowed root by the caller)
	Files []File
	// Start, if set, is the base name of the file to run after placing (autoStart).
	Start   string
	Timeout time.Duration // for Start; 0 means 5 minutes
}

// Result of a successful install.
type Result struct {
	Output string // the last OutputTail characters of the started program's output
}

// OutputTail is how much program output is kept: statusDetails values hold 1024 characters.
const OutputTail = 1024

// Names of the markers kept beside each file until commit or restore.
const (
	prevPrefix = ".fieldota-prev-" // hard link to the file as it was before the install
	newPrefix  = ".fieldota-new-"  // the file did not exist before the install
)

// Install places the files, runs Start if set, and commits. On failure the previous files are
// back in place and the error carries INSTALL_FAILED or AUTOSTART_FAILED (with the output).
// Calling Install again after a crash at any point is safe: it first restores, then installs.
func Install(ctx context.Context, p Plan) (Result, error) {
	if err := validate(p); err != nil {
		return Result{}, reason.Wrap(reason.InstallFailed, err)
	}
	if err := Restore(p); err != nil {
		return Result{}, reason.Errorf(reason.InstallFailed, "restoring files of an interrupted install: %w", err)
	}
	for _, f := range p.Files {
		if err := place(p.Dir, f); err != nil {
			rerr := Restore(p)
			return Result{}, reason.Errorf(reason.InstallFailed, "placing %s: %w", f.Name, errors.Join(err, rerr))
		}
	}
	var res Result
	if p.Start != "" {
		out, err := run(ctx, p)
		res.Output = out
		if err != nil {
			if ctx.Err() != nil {
				// Shutting down, not a verdict on the package: leave it for the resumed install.
				return res, ctx.Err()
			}
			if rerr := Restore(p); rerr != nil {
				err = errors.Join(err, fmt.Errorf("restoring previous files: %w", rerr))
			}
			return res, &StartError{Err: reason.Errorf(reason.AutostartFailed, "%s: %w", p.Start, err), Output: out}
		}
	}
	if err := Commit(p); err != nil {
		return res, reason.Errorf(reason.InstallFailed, "committing: %w", err)
	}
	return res, nil
}

// StartError is an autoStart failure with the program's output tail.
type StartError struct {
	Err    error
	Output string
}

func (e *StartError) Error() string { return e.Err.Error() }
func (e *StartError) Unwrap() error { return e.Err }

func validate(p Plan) error {
	if !filepath.IsAbs(p.Dir) {
		return fmt.Errorf("working directory %q is not absolute", p.Dir)
	}
	if len(p.Files) == 0 {
		return errors.New("no files")
	}
	seen := map[string]bool{}
	for _, f := range p.Files {
		if f.Name == "" || f.Name != filepath.Base(f.Name) || f.Name == "." || f.Name == ".." || strings.HasPrefix(f.Name, ".fieldota-") {
			return fmt.Errorf("file name %q is not a plain base name", f.Name)
		}
		if seen[f.Name] {
			return fmt.Errorf("file %q listed twice", f.Name)
		}
		seen[f.Name] = true
	}
	if p.Start != "" && !seen[p.Start] {
		return fmt.Errorf("packageName %q is not one of the files", p.Start)
	}
	return nil
}

// place keeps the current file as a hard link (or marks it new), then atomically replaces it.
func place(dir string, f File) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	target := filepath.Join(dir, f.Name)
	prev := filepath.Join(dir, prevPrefix+f.Name)
	fi, err := os.Lstat(target)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := durable.WriteFile(filepath.Join(dir, newPrefix+f.Name), nil, 0o600); err != nil {
			return err
		}
	case err != nil:
		return err
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s exists and is not a regular file", target)
	default:
		if err := os.Link(target, prev); err != nil {
			return fmt.Errorf("keeping previous %s: %w", f.Name, err)
		}
		if err := durable.SyncDir(dir); err != nil {
			return err
		}
	}
	src, err := os.Open(f.Staged)
	if err != nil {
		return err
	}
	defer src.Close()
	return durable.Write(target, f.Mode.Perm(), func(w io.Writer) error {
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(w, h), src); err != nil {
			return err
		}
		if f.SHA256 != nil && !bytes.Equal(h.Sum(nil), f.SHA256) {
			return reason.Errorf(reason.DigestMismatch, "staged %s changed since it was verified", f.Name)
		}
		return nil
	})
}

// Restore puts back every file of p as it was before an interrupted or failed install, and
// removes the temp files a crash inside a durable write may have left in the directory.
func Restore(p Plan) error {
	var errs []error
	if _, err := durable.RemoveTemps(p.Dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, f := range p.Files {
		target := filepath.Join(p.Dir, f.Name)
		prev := filepath.Join(p.Dir, prevPrefix+f.Name)
		marker := filepath.Join(p.Dir, newPrefix+f.Name)
		if pfi, err := os.Lstat(prev); err == nil {
			// rename(2) between two links of one inode succeeds and does nothing, so a crash
			// before the new file replaced the target needs the spare link removed instead.
			if tfi, err := os.Lstat(target); err == nil && os.SameFile(pfi, tfi) {
				errs = append(errs, durable.Remove(prev))
			} else {
				errs = append(errs, durable.Rename(prev, target))
			}
			continue
		}
		if _, err := os.Lstat(marker); err == nil {
			errs = append(errs, durable.Remove(target), durable.Remove(marker))
		}
	}
	return errors.Join(errs...)
}

// Commit drops the previous copies: the new files are now the ones to keep.
func Commit(p Plan) error {
	var errs []error
	for _, f := range p.Files {
		errs = append(errs,
			durable.Remove(filepath.Join(p.Dir, prevPrefix+f.Name)),
			durable.Remove(filepath.Join(p.Dir, newPrefix+f.Name)))
	}
	return errors.Join(errs...)
}

// minimalEnv is all a started package gets: no agent secrets, no proxy settings with credentials.
var minimalEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/"}

// run starts the package directly (never through a shell) in its directory and returns the
// tail of its combined output.
func run(ctx context.Context, p Plan) (string, error) {
	timeout := p.Timeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(p.Dir, p.Start))
	cmd.Dir = p.Dir
	cmd.Env = minimalEnv
	tail := &tailBuffer{max: 4 * OutputTail}
	cmd.Stdout, cmd.Stderr = tail, tail
	// Own process group, so a timeout kills the package's children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	out := ota.Tail(tail.String(), OutputTail)
	if ctx.Err() == context.DeadlineExceeded {
		return out, fmt.Errorf("timed out after %s", timeout)
	}
	return out, err
}

// tailBuffer keeps the last max bytes written to it, so a chatty program cannot fill memory.
type tailBuffer struct {
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return strings.ToValidUTF8(string(t.buf), "") }
