package swap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota/reason"
)

type fixture struct {
	dir, target, staged string
	old, new            []byte
	sum                 []byte
}

func newFixture(t *testing.T, mode os.FileMode) fixture {
	t.Helper()
	f := fixture{dir: t.TempDir(), old: []byte("#!/bin/sh\necho v1\n"), new: []byte("#!/bin/sh\necho v2\n")}
	f.target = filepath.Join(f.dir, "myapp")
	f.staged = filepath.Join(t.TempDir(), "0.payload")
	if err := os.WriteFile(f.target, f.old, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(f.target, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.staged, f.new, 0o600); err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(f.new)
	f.sum = s[:]
	return f
}

func (f fixture) update(fresh bool) Update {
	return Update{Target: f.target, Staged: f.staged, SHA256: f.sum, Fresh: fresh}
}

func read(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSwapKeepsModeAndOwnerAndADurableBackup(t *testing.T) {
	f := newFixture(t, 0o751)
	// A foreign owner and a set-gid bit: chown after selfupdate created the file (as us) must
	// keep both (chown clears set-id bits, so the mode is applied after it). Needs root.
	if err := os.Chown(f.target, 1234, 5678); err != nil {
		t.Fatalf("this test runs as root: %v", err)
	}
	if err := os.Chmod(f.target, 0o751|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(f.target)
	if err := Install(f.update(true)); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.target); !bytes.Equal(got, f.new) {
		t.Fatalf("target holds %q", got)
	}
	if got := read(t, BackupPath(f.target)); !bytes.Equal(got, f.old) {
		t.Fatalf("backup holds %q", got)
	}
	after, _ := os.Stat(f.target)
	if after.Mode() != before.Mode() {
		t.Fatalf("mode %v, want %v", after.Mode(), before.Mode())
	}
	bs, as := before.Sys().(*syscall.Stat_t), after.Sys().(*syscall.Stat_t)
	if bs.Uid != as.Uid || bs.Gid != as.Gid {
		t.Fatalf("owner %d:%d, want %d:%d", as.Uid, as.Gid, bs.Uid, bs.Gid)
	}
	if _, err := os.Lstat(NewPath(f.target)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("staging file left: %v", err)
	}
	if err := Restore(f.target, f.sum); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.target); !bytes.Equal(got, f.old) {
		t.Fatalf("after restore target holds %q", got)
	}
	// Restoring twice is a no-op, not an error.
	if err := Restore(f.target, f.sum); err != nil {
		t.Fatal(err)
	}
}

type crash struct{ at string }

// TestCrashAtEachSwapStepLeavesAWorkingBinary cuts the swap after every durable step (the
// process "dies" there), then checks the target still holds one whole binary, that resuming
// finishes the swap, and that a rollback from there restores the old one.
func TestCrashAtEachSwapStepLeavesAWorkingBinary(t *testing.T) {
	for _, at := range []string{"staged", "backed-up", "replaced"} {
		t.Run(at, func(t *testing.T) {
			f := newFixture(t, 0o755)
			step = func(s string) {
				if s == at {
					panic(crash{s})
				}
			}
			func() {
				defer func() {
					if r := recover(); r == nil {
						t.Fatal("no crash")
					}
				}()
				_ = Install(f.update(true))
			}()
			step = func(string) {}
			got := read(t, f.target)
			if !bytes.Equal(got, f.old) && !bytes.Equal(got, f.new) {
				t.Fatalf("target holds %q after a crash at %s", got, at)
			}
			if err := Install(f.update(false)); err != nil {
				t.Fatal(err)
			}
			if got := read(t, f.target); !bytes.Equal(got, f.new) {
				t.Fatalf("resumed swap left %q", got)
			}
			if err := Restore(f.target, f.sum); err != nil {
				t.Fatal(err)
			}
			if got := read(t, f.target); !bytes.Equal(got, f.old) {
				t.Fatalf("rollback left %q", got)
			}
		})
	}
	step = func(string) {}
}

func TestStagedBinaryTamperedAfterVerifyIsRefused(t *testing.T) {
	f := newFixture(t, 0o755)
	if err := os.WriteFile(f.staged, []byte("evil"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Install(f.update(true))
	if !errors.Is(err, reason.DigestMismatch) {
		t.Fatalf("err = %v, want DIGEST_MISMATCH", err)
	}
	if got := read(t, f.target); !bytes.Equal(got, f.old) {
		t.Fatalf("target changed to %q", got)
	}
}

func TestOversizedBinaryIsRefusedBeforeItIsReadIntoMemory(t *testing.T) {
	f := newFixture(t, 0o755)
	u := f.update(true)
	u.MaxSize = 4
	if err := Install(u); !errors.Is(err, reason.InsufficientSpace) {
		t.Fatalf("err = %v, want INSUFFICIENT_SPACE", err)
	}
	if got := read(t, f.target); !bytes.Equal(got, f.old) {
		t.Fatalf("target changed to %q", got)
	}
}

func TestSymlinkTargetIsRefused(t *testing.T) {
	f := newFixture(t, 0o755)
	link := filepath.Join(f.dir, "link")
	if err := os.Symlink(f.target, link); err != nil {
		t.Fatal(err)
	}
	u := f.update(true)
	u.Target = link
	if err := Install(u); !errors.Is(err, reason.InstallFailed) {
		t.Fatalf("err = %v", err)
	}
}

func TestRestoreWithoutBackupOfANewBinaryFails(t *testing.T) {
	f := newFixture(t, 0o755)
	if err := Install(f.update(true)); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(BackupPath(f.target)); err != nil {
		t.Fatal(err)
	}
	if err := Restore(f.target, f.sum); !errors.Is(err, reason.InstallFailed) {
		t.Fatalf("err = %v", err)
	}
}

func TestStaleKeptBackupIsNeverRestoredOverTheCurrentBinary(t *testing.T) {
	f := newFixture(t, 0o755)
	if err := os.WriteFile(BackupPath(f.target), []byte("ancient"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A rollback before the swap replaced anything must leave the current binary alone.
	if err := Restore(f.target, f.sum); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.target); !bytes.Equal(got, f.old) {
		t.Fatalf("target became %q", got)
	}
	if err := Install(f.update(true)); err != nil {
		t.Fatal(err)
	}
	if got := read(t, BackupPath(f.target)); !bytes.Equal(got, f.old) {
		t.Fatalf("backup holds %q, want the binary just replaced", got)
	}
}

func TestRunsTellsTheBinaryAProcessExecutes(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	sleep, _ = filepath.EvalSymlinks(sleep)
	cmd := exec.Command(sleep, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if err := Runs(cmd.Process.Pid, sleep); err != nil {
		t.Fatal(err)
	}
	if err := Runs(cmd.Process.Pid, "/proc/self/exe"); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("another binary: err = %v", err)
	}
	_ = cmd.Process.Kill()
	time.Sleep(100 * time.Millisecond) // let it become a zombie (not reaped yet)
	if err := Runs(cmd.Process.Pid, sleep); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("zombie: err = %v", err)
	}
}

func TestRestartRunsArgvWithoutAShellAndReportsFailure(t *testing.T) {
	if err := Restart(context.Background(), []string{"true"}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := Restart(context.Background(), []string{"false"}, 5*time.Second); err == nil {
		t.Fatal("false succeeded")
	}
	if err := Restart(context.Background(), []string{"echo", "$(reboot)"}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestStartCounter(t *testing.T) {
	d := t.TempDir()
	for want := 1; want <= 3; want++ {
		n, err := CountStart(d)
		if err != nil || n != want {
			t.Fatalf("count %d %v, want %d", n, err, want)
		}
	}
	if err := ResetStarts(d); err != nil {
		t.Fatal(err)
	}
	if n, _ := Starts(d); n != 0 {
		t.Fatalf("after reset %d", n)
	}
}

func TestBinaryLargerThanTheFreeSpaceIsRefusedBeforeStaging(t *testing.T) {
	f := newFixture(t, 0o755)
	var st syscall.Statfs_t
	if err := syscall.Statfs(f.dir, &st); err != nil {
		t.Fatal(err)
	}
	// A sparse payload as large as the free space takes no space itself.
	free := int64(st.Bavail) * int64(st.Bsize)
	if err := os.Truncate(f.staged, free); err != nil {
		t.Fatal(err)
	}
	u := f.update(true)
	u.MaxSize = free * 2
	if err := Install(u); !errors.Is(err, reason.InsufficientSpace) {
		t.Fatalf("err = %v, want INSUFFICIENT_SPACE", err)
	}
	if got := read(t, f.target); !bytes.Equal(got, f.old) {
		t.Fatalf("target changed to %q", got)
	}
	if _, err := os.Lstat(NewPath(f.target)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("staging file left: %v", err)
	}
}

// TestPlantedSymlinkInAUserWritableDirectoryNeverMakesRootOverwriteItsTarget is attack 6: a user
// who can write the managed binary's directory plants .<name>.new -> /any/file, which
// selfupdate's O_TRUNC open would follow. Such a directory is refused before anything is opened.
func TestPlantedSymlinkInAUserWritableDirectoryNeverMakesRootOverwriteItsTarget(t *testing.T) {
	f := newFixture(t, 0o755)
	victim := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(victim, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(f.dir, 65534, 65534); err != nil { // the user's directory (needs root)
		t.Fatal(err)
	}
	if err := os.Symlink(victim, NewPath(f.target)); err != nil {
		t.Fatal(err)
	}
	if err := Install(f.update(true)); !errors.Is(err, reason.UnsafePath) {
		t.Fatalf("got %v, want UNSAFE_PATH", err)
	}
	if string(read(t, victim)) != "precious" || !bytes.Equal(read(t, f.target), f.old) {
		t.Fatal("a file changed")
	}
}

// TestStagedBinaryIsCreatedExclusively: even in root's own directory, the staged file is
// created with O_EXCL|O_NOFOLLOW, so a link that appeared there is never followed.
func TestStagedBinaryIsCreatedExclusively(t *testing.T) {
	f := newFixture(t, 0o755)
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("precious"), 0o600)
	// Plant the link right before staging, after Install removed stale files.
	planted := false
	removeStale = func(p string) error {
		err := os.Remove(p)
		if p == NewPath(f.target) && !planted {
			planted = true
			_ = os.Symlink(victim, p)
		}
		return err
	}
	defer func() { removeStale = os.Remove }()
	err := Install(f.update(true))
	if !planted || !errors.Is(err, reason.InstallFailed) || string(read(t, victim)) != "precious" {
		t.Fatalf("planted %v, err %v, victim %q", planted, err, read(t, victim))
	}
}
