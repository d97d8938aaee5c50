// Package swap replaces one executable file in place so that a power cut at any instant leaves a
// working binary at the target path, and puts the previous one back on demand.
//
// Staging and the checksum re-check go through minio/selfupdate (PrepareAndCheckBinary, with an
// explicit TargetPath and the verified digest as Checksum); the commit is ours, because the
// library's CommitBinary removes the target before renaming the new file in (a window with no
// binary at all), fsyncs nothing, and first deletes whatever is at OldSavePath. The sequence here:
//
//  1. free-space check (statfs) and a size bound: selfupdate reads the whole update into memory;
//  2. <dir>/.<name>.new written by selfupdate, then given the old file's owner and mode, fsynced;
//  3. the current binary hard-linked to <dir>/.<name>.prev, directory fsynced: the backup exists
//     durably before anything replaces the target, and costs no space;
//  4. rename(.new, target) over the existing file — atomic, so there is no instant without a
//     binary at the target — then the directory fsynced.
//
// Restore renames the backup over the target the same way. Every step is safe to repeat after
// a crash; which step a crash interrupted is read from the files themselves (the target's digest
// and the backup's presence), never guessed.
package swap

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/minio/selfupdate"

	"github.com/fieldota/fieldota/ota/confine"
	"github.com/fieldota/fieldota/ota/durable"
	"github.com/fieldota/fieldota/ota/reason"
)

// DefaultMaxSize bounds a binary: selfupdate holds the whole update in memory while staging.
const DefaultMaxSize = 64 << 20

// reserve is kept free on the target's filesystem beyond the new binary itself.
const reserve = 1 << 20

// BackupPath is where the previous binary is kept: beside the target (a hard link needs the same
// filesystem; one directory means one fsync makes it durable). The systemd units name it too.
func BackupPath(target string) string {
	return filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+".prev")
}

// NewPath is where the new binary is staged; selfupdate's own convention.
func NewPath(target string) string {
	return filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+".new")
}

// Update is a verified payload to put at Target.
type Update struct {
	Target  string // absolute path of the binary to replace (symlinks already resolved)
	Staged  string // the downloaded, verified payload
	SHA256  []byte // the digest that was verified; selfupdate re-checks the bytes against it
	MaxSize int64  // 0 = DefaultMaxSize
	// Fresh says no earlier attempt of this install ran: stale .new and .prev files from before
	// are removed. On a resumed attempt the files say how far the crash got.
	Fresh bool
}

// step is called after each durable step; the faultinject build kills the process there.
var step = func(string) {}

// removeStale removes a stale staged file or backup (a test plants a link right after it).
var removeStale = os.Remove

// Install swaps u.Staged in at u.Target, keeping the old binary at BackupPath. It returns nil
// once the new binary is durably at the target and the old one durably at the backup.
func Install(u Update) error {
	target, backup, newPath := u.Target, BackupPath(u.Target), NewPath(u.Target)
	// Only root may change the directory: the staged file, the backup link and the rename all
	// live there.
	if _, err := confine.Check(filepath.Dir(target), nil); err != nil {
		return err
	}
	old, err := regular(target)
	if err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	if !u.Fresh {
		done, err := HasDigest(target, u.SHA256)
		if err != nil {
			return reason.Wrap(reason.InstallFailed, err)
		}
		if done {
			// The rename happened before the crash; the backup was made durable before it.
			if _, err := os.Lstat(backup); err != nil {
				return reason.Errorf(reason.InstallFailed, "%s already holds the new binary but the backup %s is gone: %w", target, backup, err)
			}
			return nil
		}
	}
	// The target still holds the old binary: start over from it. A backup left here is either
	// stale (an earlier job kept it) or a link to the current target; both are replaced.
	for _, p := range []string{newPath, backup} {
		if err := removeStale(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return reason.Wrap(reason.InstallFailed, err)
		}
	}
	if err := stage(u, old); err != nil {
		return err
	}
	step("staged")
	if err := os.Link(target, backup); err != nil {
		return reason.Errorf(reason.InstallFailed, "keep the old binary: %w", err)
	}
	if err := durable.SyncDir(filepath.Dir(target)); err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	step("backed-up")
	// rename over the existing file: the target path names the old or the new binary at every
	// instant, never nothing.
	if err := durable.Rename(newPath, target); err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	step("replaced")
	return nil
}

// stage writes NewPath through selfupdate and makes it durable with the old file's owner and mode.
func stage(u Update, old fs.FileInfo) error {
	max := u.MaxSize
	if max <= 0 {
		max = DefaultMaxSize
	}
	in, err := os.Open(u.Staged)
	if err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	if fi.Size() > max {
		return reason.Errorf(reason.InsufficientSpace, "binary of %d bytes exceeds swap.max_size %d (staging holds it in memory)", fi.Size(), max)
	}
	if err := checkSpace(filepath.Dir(u.Target), fi.Size()); err != nil {
		return err
	}
	perm := old.Mode() & fs.ModePerm
	// selfupdate opens .<name>.new with O_CREATE|O_TRUNC, following a symlink. Create it here
	// first, exclusively and without following one: a planted link makes this fail instead of
	// making root overwrite its target. (Install removed any stale entry, and the directory is
	// root's alone, so nothing can replace the file between here and selfupdate's open.)
	nf, err := os.OpenFile(NewPath(u.Target), os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return reason.Errorf(reason.InstallFailed, "create %s: %w", NewPath(u.Target), err)
	}
	if err := nf.Close(); err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	h := sha256.New()
	// Our own hash of what selfupdate read tells a digest mismatch from any other failure
	// without reading its error text.
	err = selfupdate.PrepareAndCheckBinary(io.TeeReader(io.LimitReader(in, max+1), h), selfupdate.Options{
		TargetPath:  u.Target,
		TargetMode:  perm,
		Checksum:    u.SHA256,
		OldSavePath: BackupPath(u.Target),
	})
	if err != nil {
		_ = os.Remove(NewPath(u.Target))
		if !bytes.Equal(h.Sum(nil), u.SHA256) {
			return reason.Errorf(reason.DigestMismatch, "staged binary changed since it was verified")
		}
		return reason.Errorf(reason.InstallFailed, "stage new binary: %w", err)
	}
	return finish(NewPath(u.Target), old)
}

// finish gives the staged file the old binary's owner and full mode (chown first: it clears
// set-id bits) and fsyncs it; selfupdate creates it under our umask and never syncs.
func finish(path string, old fs.FileInfo) error {
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	defer f.Close()
	if st, ok := old.Sys().(*syscall.Stat_t); ok {
		if err := f.Chown(int(st.Uid), int(st.Gid)); err != nil {
			return reason.Errorf(reason.InstallFailed, "keep owner %d:%d of the old binary: %w", st.Uid, st.Gid, err)
		}
	}
	mode := old.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	if err := f.Chmod(mode); err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	if err := f.Sync(); err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	if err := f.Close(); err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	return durable.SyncDir(filepath.Dir(path))
}

// checkSpace refuses to stage when the filesystem cannot hold the new binary (the backup is a
// hard link and takes no space).
func checkSpace(dir string, size int64) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if free < size+reserve {
		return reason.Errorf(reason.InsufficientSpace, "%s has %d bytes free, the new binary needs %d", dir, free, size+reserve)
	}
	return nil
}

// Restore puts the previous binary back at target after Install (or part of it). If target
// does not hold the new binary, nothing replaced it yet (or it was already restored) and there
// is nothing to do; otherwise the backup is renamed over it, atomically and durably.
func Restore(target string, newSHA []byte) error {
	isNew, err := HasDigest(target, newSHA)
	if err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	if !isNew {
		_ = os.Remove(NewPath(target)) // a stale stage is never worth keeping
		return nil
	}
	backup := BackupPath(target)
	if _, err := regular(backup); err != nil {
		return reason.Errorf(reason.InstallFailed, "no previous binary to restore: %w", err)
	}
	if err := durable.Rename(backup, target); err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	step("restored")
	return nil
}

// Discard removes the backup once the new binary is committed (swap.keep_old = false).
func Discard(target string) error {
	if err := durable.Remove(BackupPath(target)); err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	return nil
}

// HasDigest reports whether the file at path has the given sha256.
func HasDigest(path string, sum []byte) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	var h hash.Hash = sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, err
	}
	return bytes.Equal(h.Sum(nil), sum), nil
}

// regular returns the file info of path, which must be a regular file (not a symlink: the
// caller resolves symlinks once, at startup, so a rename never replaces a link by a file).
func regular(path string) (fs.FileInfo, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	return fi, nil
}
