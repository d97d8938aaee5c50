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
	"os"
	"path/filepath"
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
func Write(path string, perm fs.FileMode, fill func(w io.Writer) error) (err error) {
	if err := refuseIrregular(path); err != nil {
		return err
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, TempPrefix+base+"-")
	if err != nil {
		return fmt.Errorf("durable write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close() // already failing; the first error is the one worth reporting
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("durable write %s: chmod: %w", path, err)
	}
	if err = fill(f); err != nil {
		return fmt.Errorf("durable write %s: %w", path, err)
	}
	if syncBeforeRename {
		if err = f.Sync(); err != nil {
			return fmt.Errorf("durable write %s: fsync: %w", path, err)
		}
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("durable write %s: close: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("durable write %s: rename: %w", path, err)
	}
	return SyncDir(dir)
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
		return fmt.Errorf("durable write %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: %w (%s)", path, ErrNotRegular, fi.Mode().Type())
	}
	return nil
}
