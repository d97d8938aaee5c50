// Package files places the files of a files-mode release atomically in their working
// directory, and puts the previous ones back on demand. Every operation goes through an os.Root
// on the working directory that package confine checked and opened (no one but root — or the
// files' own user, files.run_as, whose rights alone are then used — can change the path), and
// every write through ota/durable.
//
// Every step can be re-run after a crash: the previous version of each file is kept as a hard
// link beside it until the install is committed, and a file that did not exist before is marked
// so that a restore removes it. Starting the program (autoStart) is the agent's: it must be
// journaled around (package run, Durable).
package files

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/fieldota/fieldota/ota/confine"
	"github.com/fieldota/fieldota/ota/durable"
	"github.com/fieldota/fieldota/ota/names"
	"github.com/fieldota/fieldota/ota/reason"
)

// File is one verified payload to place.
type File struct {
	Name string      // base name in the working directory
	Mode fs.FileMode // permission bits of the placed file
	// Staged is the verified payload, opened by the caller in its own (root-only) staging
	// directory, so the files' user never needs to reach it. Read from offset 0.
	Staged *os.File
	// SHA256 is the signed digest: the staged bytes are hashed before anything is placed, and
	// again while they are copied into place, so bytes that changed since they were verified
	// are never installed.
	SHA256 []byte
}

// Plan is one files install.
type Plan struct {
	Dir   confine.Checked // the working directory, checked by confine.Check
	Files []File
	User  *confine.User // files.run_as; nil = root
}

// Names of the markers kept beside each file until commit or restore.
const (
	prevPrefix = names.Reserved + "prev-" // hard link to the file as it was before the install
	newPrefix  = names.Reserved + "new-"  // the file did not exist before the install
)

// Place puts the files in place. On failure the previous files are back and the error carries
// INSTALL_FAILED (DIGEST_MISMATCH for staged bytes that are not the signed ones). Calling Place
// again after a crash at any point is safe: it first restores, then places.
func Place(p Plan) error {
	if err := validate(p); err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	for _, f := range p.Files {
		if f.Staged == nil {
			return reason.Errorf(reason.Internal, "%s: no staged payload", f.Name)
		}
		if err := rehash(f); err != nil {
			return err
		}
	}
	return in(p, func(r *os.Root) error {
		if err := restore(r, p); err != nil {
			return reason.Errorf(reason.InstallFailed, "restoring files of an interrupted install: %w", err)
		}
		for _, f := range p.Files {
			if err := place(r, f); err != nil {
				rerr := restore(r, p)
				if errors.Is(err, reason.DigestMismatch) {
					return errors.Join(err, rerr)
				}
				return reason.Errorf(reason.InstallFailed, "placing %s: %w", f.Name, errors.Join(err, rerr))
			}
		}
		return nil
	})
}

// Restore puts back every file of p as it was before an interrupted or failed install.
func Restore(p Plan) error {
	if err := validate(p); err != nil {
		return err
	}
	return in(p, func(r *os.Root) error { return restore(r, p) })
}

// Commit drops the previous copies: the new files are now the ones to keep.
func Commit(p Plan) error {
	if err := validate(p); err != nil {
		return err
	}
	return in(p, func(r *os.Root) error {
		var errs []error
		for _, f := range p.Files {
			errs = append(errs, durable.RemoveAt(r, prevPrefix+f.Name), durable.RemoveAt(r, newPrefix+f.Name))
		}
		return errors.Join(errs...)
	})
}

// in runs fn with the working directory open as an os.Root, with the files' user's rights.
func in(p Plan, fn func(r *os.Root) error) error {
	return confine.As(p.User, func() error {
		r, err := confine.Open(p.Dir)
		if err != nil {
			return err
		}
		defer r.Close()
		return fn(r)
	})
}

func validate(p Plan) error {
	if len(p.Files) == 0 {
		return errors.New("no files")
	}
	seen := map[string]bool{}
	for _, f := range p.Files {
		if err := names.Name(f.Name); err != nil {
			return err
		}
		if seen[f.Name] {
			return fmt.Errorf("file %q listed twice", f.Name)
		}
		seen[f.Name] = true
		if err := names.Mode(f.Mode); err != nil || f.Mode == 0 {
			return fmt.Errorf("%s: mode %04o refused", f.Name, uint32(f.Mode))
		}
	}
	return nil
}

// rehash checks the staged bytes against the signed digest before anything is placed.
func rehash(f File) error {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f.Staged, 0, 1<<62)); err != nil {
		return reason.Errorf(reason.InstallFailed, "reading staged %s: %w", f.Name, err)
	}
	if !bytes.Equal(h.Sum(nil), f.SHA256) {
		return reason.Errorf(reason.DigestMismatch, "staged %s is not the signed payload (changed since it was verified)", f.Name)
	}
	return nil
}

// place keeps the current file as a hard link (or marks it new), then atomically replaces it.
func place(r *os.Root, f File) error {
	fi, err := r.Lstat(f.Name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := durable.WriteAt(r, newPrefix+f.Name, 0o600, func(io.Writer) error { return nil }); err != nil {
			return err
		}
	case err != nil:
		return err
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s exists and is not a regular file", f.Name)
	default:
		if err := durable.LinkAt(r, f.Name, prevPrefix+f.Name); err != nil {
			return fmt.Errorf("keeping previous %s: %w", f.Name, err)
		}
	}
	return durable.WriteAt(r, f.Name, f.Mode.Perm(), func(w io.Writer) error {
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(w, h), io.NewSectionReader(f.Staged, 0, 1<<62)); err != nil {
			return err
		}
		if !bytes.Equal(h.Sum(nil), f.SHA256) {
			return reason.Errorf(reason.DigestMismatch, "staged %s changed while it was placed", f.Name)
		}
		return nil
	})
}

// restore puts back every file as it was before an interrupted or failed install, and removes
// the temp files a crash inside a durable write may have left.
func restore(r *os.Root, p Plan) error {
	var errs []error
	if _, err := durable.RemoveTempsAt(r); err != nil {
		errs = append(errs, err)
	}
	for _, f := range p.Files {
		prev, marker := prevPrefix+f.Name, newPrefix+f.Name
		if pfi, err := r.Lstat(prev); err == nil {
			// rename(2) between two links of one inode succeeds and does nothing, so a crash
			// before the new file replaced the target needs the spare link removed instead.
			if tfi, err := r.Lstat(f.Name); err == nil && os.SameFile(pfi, tfi) {
				errs = append(errs, durable.RemoveAt(r, prev))
			} else {
				errs = append(errs, durable.RenameAt(r, prev, f.Name))
			}
			continue
		}
		if _, err := r.Lstat(marker); err == nil {
			errs = append(errs, durable.RemoveAt(r, f.Name), durable.RemoveAt(r, marker))
		}
	}
	return errors.Join(errs...)
}
