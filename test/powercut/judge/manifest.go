package judge

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// ManifestFile is the name of a recording's manifest inside its directory.
const ManifestFile = "recording.json"

// Manifest describes a recording directory, so that it can be judged again offline (the
// replay command): the disk before the recording, the write log, the slot images, the layout,
// the jobs and the service's timeline. Paths are relative to the directory or absolute.
type Manifest struct {
	Base   string            `json:"base"`
	Log    string            `json:"log"`
	SlotA  string            `json:"slotA"`
	SlotB  string            `json:"slotB"`
	Layout Layout            `json:"layout"`
	Jobs   []Job             `json:"jobs"`
	Events []Event           `json:"events"`
	Docs   map[string]string `json:"docs,omitempty"` // job id -> the signed document
	// Payloads of files and binary jobs (job id -> path), which Job does not serialise.
	Payloads map[string]string `json:"payloads,omitempty"`
}

// Save writes m into dir.
func (m *Manifest) Save(dir string) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, ManifestFile), append(b, '\n'), 0o644)
}

// LoadManifest reads dir's manifest.
func LoadManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", ManifestFile, err)
	}
	return &m, nil
}

// Path resolves a manifest path against dir.
func Path(dir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// Recording loads the slot images and payloads the manifest names.
func (m *Manifest) Recording(dir string) (*Recording, error) {
	rec := &Recording{Layout: m.Layout, Jobs: append([]Job(nil), m.Jobs...), Events: append([]Event(nil), m.Events...)}
	var err error
	if rec.SlotA, err = os.ReadFile(Path(dir, m.SlotA)); err != nil {
		return nil, err
	}
	if rec.SlotB, err = os.ReadFile(Path(dir, m.SlotB)); err != nil {
		return nil, err
	}
	for i := range rec.Jobs {
		if p := m.Payloads[rec.Jobs[i].ID]; p != "" {
			if rec.Jobs[i].Payload, err = os.ReadFile(Path(dir, p)); err != nil {
				return nil, err
			}
		}
	}
	return rec, nil
}
