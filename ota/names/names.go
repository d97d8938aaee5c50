// Package names holds the rules for every name and path a release may make the device use: file
// names, the working directory, the managed binary's name, file modes. Both the signed release
// statement (package verify) and the plain job document (package ota/jobdoc) are held to the
// same rules, so a value that passes one passes the other, and a refusal reads the same.
//
// The rules refuse what a human reviewing a release could misread or what the device reserves:
// control, format (bidi overrides such as U+202E) and unassigned characters, the agent's own
// ".fieldota-" prefix, paths that are not clean and absolute, and modes that let another user
// change what root installed.
package names

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits.
const (
	MaxName    = 255  // bytes in one file name (NAME_MAX)
	MaxPath    = 4096 // bytes in a path (PATH_MAX)
	MaxBinary  = 64
	MaxCompat  = 128
	MaxVersion = 128
)

// Reserved is the prefix of every file the agent itself keeps beside installed files (backups,
// markers, temp files): a release may not name one.
const Reserved = ".fieldota-"

// Name refuses anything that is not a plain, printable file name the agent does not reserve.
func Name(n string) error {
	switch {
	case n == "" || n == "." || n == "..":
		return fmt.Errorf("%q is not a file name", Clip(n))
	case len(n) > MaxName:
		return fmt.Errorf("name longer than %d bytes", MaxName)
	case strings.ContainsAny(n, "/\\"):
		return fmt.Errorf("%q is not a base name", Clip(n))
	case strings.HasPrefix(n, Reserved):
		return fmt.Errorf("%q starts with %q, which the agent reserves for its own files", Clip(n), Reserved)
	}
	return Printable(n)
}

// Printable refuses invalid UTF-8 and control, format (bidi overrides, zero-width joiners…),
// space other than U+0020, private-use and unassigned characters: a name must read the same to
// a reviewer and to the file system.
func Printable(s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%q is not valid UTF-8", Clip(s))
	}
	for i, r := range s {
		// IsPrint is letters, marks, numbers, punctuation, symbols and the ASCII space: it leaves
		// out control and format characters (U+202E among them), other spaces, private-use and
		// unassigned code points.
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%q has the invisible or control character %U at byte %d", Clip(s), r, i)
		}
	}
	return nil
}

// Dir refuses a directory path that is not absolute, not clean (no "..", ".", "//" or trailing
// slash), too long or not printable. The device never cleans a path for the sender: a signed
// value and its plain copy must be the same string.
func Dir(p string) error {
	switch {
	case p == "":
		return errors.New("empty path")
	case len(p) > MaxPath:
		return fmt.Errorf("path longer than %d bytes", MaxPath)
	case !filepath.IsAbs(p):
		return fmt.Errorf("%q is not an absolute path", Clip(p))
	case filepath.Clean(p) != p:
		return fmt.Errorf("%q is not a clean path (it would be %q)", Clip(p), Clip(filepath.Clean(p)))
	}
	if err := Printable(p); err != nil {
		return err
	}
	for _, part := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if strings.HasPrefix(part, Reserved) {
			return fmt.Errorf("%q has a component starting with %q, which the agent reserves", Clip(p), Reserved)
		}
	}
	return nil
}

// Binary refuses a managed binary's name that is not a short [A-Za-z0-9._-] word: it is looked up
// in the device's configuration, never used as a path.
func Binary(n string) error {
	if n == "" || len(n) > MaxBinary || n == "." || n == ".." {
		return fmt.Errorf("binary name %q: want 1 to %d characters", Clip(n), MaxBinary)
	}
	if strings.Trim(n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" {
		return fmt.Errorf("binary name %q: only letters, digits, '.', '_' and '-'", Clip(n))
	}
	return nil
}

// Compatible refuses a compatibility name that is empty, long or not printable.
func Compatible(c string) error {
	if c == "" || len(c) > MaxCompat {
		return fmt.Errorf("compatible name %q: want 1 to %d characters", Clip(c), MaxCompat)
	}
	return Printable(c)
}

// ParseMode reads octal permission bits ("0755"). It refuses set-id and sticky bits, and any
// group or other write bit: a file root placed must not be changeable by another user.
func ParseMode(s string) (fs.FileMode, error) {
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n == 0 || n > 0o777 {
		return 0, fmt.Errorf("mode %q: want octal permission bits such as \"0755\" (no setuid, setgid or sticky bit)", Clip(s))
	}
	m := fs.FileMode(n)
	if err := Mode(m); err != nil {
		return 0, err
	}
	return m, nil
}

// Mode refuses bits beyond rwx for user/group/other and group or other write.
func Mode(m fs.FileMode) error {
	switch {
	case m&^fs.ModePerm != 0:
		return fmt.Errorf("mode %v has bits beyond the permission bits", m)
	case m&0o022 != 0:
		return fmt.Errorf("mode %04o lets group or others write the file", uint32(m))
	}
	return nil
}

// FormatMode writes a mode the way documents and statements carry it.
func FormatMode(m fs.FileMode) string { return fmt.Sprintf("%04o", uint32(m.Perm())) }

// Clip shortens a value for a message (values come from hostile documents).
func Clip(s string) string {
	if len(s) > 64 {
		s = s[:64]
		for !utf8.ValidString(s) && len(s) > 0 {
			s = s[:len(s)-1]
		}
		return s + "…"
	}
	return s
}
