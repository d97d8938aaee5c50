package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/fieldota/fieldota/ota/durable"
)

// installedFile records the version installed per target, written only when an install is
// committed: anti-rollback compares against it, and `fieldota-agent status` shows it.
const installedFile = "installed.json"

// errInstalledCorrupt: installed.json cannot be read as a record; no retry mends it, an operator
// must (anti-rollback has nothing to compare against until then).
var errInstalledCorrupt = errors.New(installedFile + " is corrupt")

// installed maps a target key (Agent.targetKey: "files:/opt/app/x", "slot", "binary:/usr/bin/myapp")
// to a version.
type installed map[string]string

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

func recordInstalled(stateDir, target, version string) error {
	m, err := loadInstalled(stateDir)
	if err != nil {
		return err
	}
	m[target] = version
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(filepath.Join(stateDir, installedFile), append(b, '\n'), 0o600)
}
