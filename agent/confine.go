package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/fieldota/fieldota/ota/reason"
)

// confined checks that dir, with every symlink resolved, still lies under one of the allowed
// roots (resolved too). jobdoc checks the text of workingDirectory; this catches a symlink
// planted inside an allowed root that points outside it. Components that do not exist yet are
// created by the installer as plain directories.
func confined(dir string, roots []string) error {
	real, err := resolveExisting(dir)
	if err != nil {
		return reason.Errorf(reason.InstallFailed, "resolving working directory: %w", err)
	}
	for _, r := range roots {
		// A root that does not exist yet is created by the installer, like the directory.
		rr, err := resolveExisting(r)
		if err != nil {
			continue
		}
		if real == rr || strings.HasPrefix(real, rr+string(filepath.Separator)) {
			return nil
		}
	}
	return reason.Errorf(reason.InvalidDocument, "workingDirectory %s resolves to %s, outside the allowed roots", dir, real)
}

// resolveExisting resolves symlinks in the longest existing prefix of p and appends the rest.
func resolveExisting(p string) (string, error) {
	p = filepath.Clean(p)
	var rest []string
	for {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(append([]string{real}, rest...)...), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(p)
		if parent == p {
			return "", fmt.Errorf("%s: %w", p, os.ErrNotExist)
		}
		rest = append([]string{filepath.Base(p)}, rest...)
		p = parent
	}
}
