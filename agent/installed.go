package agent

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"

	"github.com/fieldota/fieldota/ota/durable"
	"github.com/fieldota/fieldota/verify"
)

// installedFile records what runs per target, written only when an install is committed:
// anti-rollback compares against it, and `fieldota-agent status` shows it.
const installedFile = "installed.json"

// errInstalledCorrupt: installed.json cannot be read as a record; no retry mends it, an operator
// must (anti-rollback has nothing to compare against until then).
var errInstalledCorrupt = errors.New(installedFile + " is corrupt")

// installed maps a target key (flow.key: "files:/opt/app/releases/x" with every symlink
// resolved, "binary:/usr/bin/myapp", "slot") to what was committed there.
type installed map[string]installedEntry

// installedEntry is one committed release. Only a Signed entry can refuse a signed release as
// a downgrade (verify.Installed).
type installedEntry struct {
	Version string            `json:"version"`
	Signed  bool              `json:"signed"`
	Files   map[string]string `json:"files,omitempty"` // name → sha256 (hex) of what was installed
	// Package is the signed `$package` name of the release ("" = the configured one).
	Package string `json:"package,omitempty"`
	// Previous is what ran before this commit: what a rollback command goes back to.
	Previous *installedEntry `json:"previous,omitempty"`
}

// UnmarshalJSON also reads the first format, a bare version string: recorded before releases
// were signed as a whole, it counts as unsigned.
func (e *installedEntry) UnmarshalJSON(b []byte) error {
	var v string
	if err := json.Unmarshal(b, &v); err == nil {
		*e = installedEntry{Version: v}
		return nil
	}
	type plain installedEntry
	return json.Unmarshal(b, (*plain)(e))
}

func (e installedEntry) policy() verify.Installed {
	return verify.Installed{Version: e.Version, Signed: e.Signed}
}

func loadInstalled(stateDir string) (installed, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, installedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return installed{}, nil
	}
	if err != nil {
		return nil, err
	}
	var m installed
	if err := json.Unmarshal(b, &m); err != nil {
		// Refuse rather than start empty: an empty record would let any downgrade through.
		return nil, fmt.Errorf("%w: %w", errInstalledCorrupt, err)
	}
	if m == nil {
		m = installed{}
	}
	return m, nil
}

// InstalledVersions reads stateDir's installed.json as the agent does and returns the version
// committed per target key (none recorded: empty). A record the agent would refuse is
// errInstalledCorrupt. The power-loss judge (test/powercut/judge) reads recovered disks with it.
func InstalledVersions(stateDir string) (map[string]string, error) {
	m, err := loadInstalled(stateDir)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(m))
	for key, e := range m {
		out[key] = e.Version
	}
	return out, nil
}

// recordInstalled records r as what runs at key.
func recordInstalled(stateDir, key string, r *verify.Release) error {
	m, err := loadInstalled(stateDir)
	if err != nil {
		return err
	}
	e := installedEntry{Version: r.Version, Signed: r.Signed, Files: map[string]string{}, Package: r.Package}
	for _, f := range r.Files {
		e.Files[f.Name] = hex.EncodeToString(f.RawSHA256()) // what runs: the decompressed bytes
	}
	if old, ok := m[key]; ok {
		e.Previous = old.Previous
		if old.Version != e.Version || !maps.Equal(old.Files, e.Files) {
			old.Previous = nil // one step back is kept, not a chain
			e.Previous = &old
		}
	}
	m[key] = e
	return writeInstalled(stateDir, m)
}

func writeInstalled(stateDir string, m installed) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(filepath.Join(stateDir, installedFile), append(b, '\n'), 0o600)
}

// isInstalled tells whether r is exactly what was committed at key.
func isInstalled(stateDir, key string, r *verify.Release) bool {
	m, err := loadInstalled(stateDir)
	if err != nil {
		return false
	}
	e, ok := m[key]
	if !ok || e.Version != r.Version || e.Signed != r.Signed || len(e.Files) != len(r.Files) {
		return false
	}
	for _, f := range r.Files {
		if e.Files[f.Name] != hex.EncodeToString(f.RawSHA256()) {
			return false
		}
	}
	return true
}
