// Package durable is the one place that makes writes survive a power cut: every file the agent
// must find intact after a crash (journal, checkpoints, installed files, binaries) goes through it.
//
// The recipe is the classic one: write a temp file in the same directory, fsync it, close it
// (checking the error), rename it over the target, then fsync the directory so the rename
// itself is durable. Readers see the old file or the new one, never a torn one.
package durable

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// TempPrefix starts the name of every temp file this package creates, so that cleanup after a
// crash can find them (see RemoveTemps).
const TempPrefix = ".fieldota-tmp-"

// WriteFile atomically replaces path with data.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	return Write(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// Write atomically replaces path with what fill writes. fill must not keep w.
// It refuses to replace anything that is not a regular file (a symlink, a device, a directory):
// a state file turned into a symlink is an attack or a mistake, never something to follow.
func Write(path string, perm fs.FileMode, fill func(w io.Writer) error) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("durable write %s: %w", path, err)
	}
	defer r.Close()
	if err := WriteAt(r, base, perm, fill); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	return nil
}

// Rename moves oldPath to newPath (same filesystem) and makes the move durable by syncing both
// directories. It is the only rename of state or payload files outside Write.
func Rename(oldPath, newPath string) error {
	if err := refuseIrregular(newPath); err != nil {
		return err
	}
	if err := os.Rename(oldPath, newPath); err != nil {
		return fmt.Errorf("durable rename: %w", err)
	}
	if err := SyncDir(filepath.Dir(newPath)); err != nil {
		return err
	}
	if od := filepath.Dir(oldPath); od != filepath.Dir(newPath) {
		return SyncDir(od)
	}
	return nil
}

// Remove deletes path (absent is fine) and syncs its directory, so a deleted journal stays deleted.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("durable remove: %w", err)
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir fsyncs a directory so that entries created, renamed or removed in it survive a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	if err := d.Sync(); err != nil {
		_ = d.Close()
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	if err := d.Close(); err != nil {
		return fmt.Errorf("sync dir %s: close: %w", dir, err)
	}
	return nil
}

// RemoveTemps deletes temp files a crashed Write left in dir and returns how many it removed.
func RemoveTemps(dir string) (int, error) {
	matches, err := filepath.Glob(filepath.Join(dir, TempPrefix+"*"))
	if err != nil {
		return 0, err
	}
	for _, m := range matches {
		if err := os.Remove(m); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return 0, err
		}
	}
	if len(matches) > 0 {
		return len(matches), SyncDir(dir)
	}
	return 0, nil
}

// ErrNotRegular is returned when a write would replace something that is not a regular file.
var ErrNotRegular = errors.New("refusing to replace a non-regular file")

func refuseIrregular(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("durable rename %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: %w (%s)", path, ErrNotRegular, fi.Mode().Type())
	}
	return nil
}

// The *At functions do the same inside an os.Root: a directory the agent opened after checking
// that no one else can change it (package confine). Names are relative to the root and never
// resolve outside it.

// WriteAt atomically replaces name inside r with what fill writes.
func WriteAt(r *os.Root, name string, perm fs.FileMode, fill func(w io.Writer) error) (err error) {
	if err := refuseIrregularAt(r, name); err != nil {
		return err
	}
	dir, base := filepath.Split(name)
	var f *os.File
	var tmp string
	for range 100 {
		tmp = filepath.Join(dir, TempPrefix+base+"-"+strconv.FormatUint(rand.Uint64(), 36))
		f, err = r.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("durable write %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			_ = f.Close() // already failing; the first error is the one worth reporting
			_ = r.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("durable write %s: chmod: %w", name, err)
	}
	if err = fill(f); err != nil {
		return fmt.Errorf("durable write %s: %w", name, err)
	}
	if syncBeforeRename { // only the power-loss harness's fault build turns it off
		if err = f.Sync(); err != nil {
			return fmt.Errorf("durable write %s: fsync: %w", name, err)
		}
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("durable write %s: close: %w", name, err)
	}
	if err = r.Rename(tmp, name); err != nil {
		return fmt.Errorf("durable write %s: rename: %w", name, err)
	}
	return SyncDirAt(r, dir)
}

// RenameAt moves old to new inside r and makes the move durable.
func RenameAt(r *os.Root, old, new string) error {
	if err := refuseIrregularAt(r, new); err != nil {
		return err
	}
	if err := r.Rename(old, new); err != nil {
		return fmt.Errorf("durable rename: %w", err)
	}
	if err := SyncDirAt(r, filepath.Dir(new)); err != nil {
		return err
	}
	if od := filepath.Dir(old); od != filepath.Dir(new) {
		return SyncDirAt(r, od)
	}
	return nil
}

// LinkAt makes new a hard link to old inside r, durably.
func LinkAt(r *os.Root, old, new string) error {
	if err := r.Link(old, new); err != nil {
		return fmt.Errorf("durable link: %w", err)
	}
	return SyncDirAt(r, filepath.Dir(new))
}

// RemoveAt deletes name inside r (absent is fine), durably.
func RemoveAt(r *os.Root, name string) error {
	if err := r.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("durable remove: %w", err)
	}
	return SyncDirAt(r, filepath.Dir(name))
}

// MkdirAt creates directory name inside r with exactly perm (the umask does not apply) and
// makes it durable in its parent. An existing directory is fs.ErrExist.
func MkdirAt(r *os.Root, name string, perm fs.FileMode) error {
	if err := r.Mkdir(name, perm); err != nil {
		return err
	}
	if err := r.Chmod(name, perm); err != nil {
		return fmt.Errorf("mkdir %s: chmod: %w", name, err)
	}
	return SyncDirAt(r, filepath.Dir(name))
}

// SyncDirAt fsyncs directory dir ("" or "." = the root itself) inside r.
func SyncDirAt(r *os.Root, dir string) error {
	if dir == "" {
		dir = "."
	}
	d, err := r.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	if err := d.Sync(); err != nil {
		_ = d.Close()
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return d.Close()
}

// RemoveTempsAt deletes temp files a crashed WriteAt left in r's top directory.
func RemoveTempsAt(r *os.Root) (int, error) {
	d, err := r.Open(".")
	if err != nil {
		return 0, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range names {
		if strings.HasPrefix(name, TempPrefix) {
			if err := r.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return n, err
			}
			n++
		}
	}
	if n > 0 {
		return n, SyncDirAt(r, ".")
	}
	return 0, nil
}

func refuseIrregularAt(r *os.Root, name string) error {
	fi, err := r.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("durable write %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: %w (%s)", name, ErrNotRegular, fi.Mode().Type())
	}
	return nil
}
