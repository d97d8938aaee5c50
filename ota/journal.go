package ota

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/fieldota/fieldota/ota/durable"
)

// JournalSchema is bumped whenever a persisted field changes meaning. A journal with a newer
// schema than this binary knows is refused, never guessed at (an agent rolled back to an
// older release must not misread its successor's journal).
const JournalSchema = 1

// Journal is everything needed to resume a job after kill -9 or a power cut. It is written
// whole, atomically, before each state runs.
type Journal struct {
	Schema          int    `json:"schema"`
	JobID           string `json:"jobId"`
	ExecutionNumber int64  `json:"executionNumber"`
	VersionNumber   int64  `json:"versionNumber"` // last versionNumber the service told us
	State           State  `json:"state"`
	Transitions     int    `json:"transitions"` // loop breaker, survives restarts
	Restarts        int    `json:"restarts"`    // times the agent resumed this journal
	// Mark is the state and durable progress at the last restart: a restart that finds more
	// progress in the same state is not counted as a loop.
	Mark      ProgressMark `json:"mark,omitzero"`
	StartedAt time.Time    `json:"startedAt"`
	UpdatedAt time.Time    `json:"updatedAt"`

	// Document is the job document as received, presigned URLs included; URLs go stale, so
	// downloads ask for fresh ones instead of trusting these.
	Document json.RawMessage `json:"document,omitempty"`
	Target   string          `json:"target,omitempty"`  // files | slot | binary
	Version  string          `json:"version,omitempty"` // the version being installed
	// TargetKey is where the release installs, resolved (agent/installed.go): a copy, checked
	// against the document's verified release wherever it is used.
	TargetKey string `json:"targetKey,omitempty"`
	// PreviousVersion is what ran before; it is what a rollback must find running again.
	PreviousVersion string `json:"previousVersion,omitempty"`

	Staged []Staged `json:"staged,omitempty"` // downloaded payloads
	Slot   string   `json:"slot,omitempty"`   // A/B slot written / being tried
	// Data holds installer-specific facts (backup paths, boot ids) as strings, so that each
	// installer owns its keys without widening this struct.
	Data map[string]string `json:"data,omitempty"`

	// Wait is set while the update policy says "not now" (the waiting states).
	Wait *Wait `json:"wait,omitempty"`

	Progress int     `json:"progress,omitempty"` // last reported download percent
	Report   *Report `json:"report,omitempty"`   // set once the terminal status is decided
}

// ProgressMark records how far a state had got when the agent last restarted in it.
type ProgressMark struct {
	State    State `json:"state,omitempty"`
	Progress int64 `json:"progress,omitempty"`
}

// Staged is one downloaded payload.
type Staged struct {
	Name       string `json:"name"`
	Path       string `json:"path"`
	Checkpoint string `json:"checkpoint,omitempty"`
	Size       int64  `json:"size"`
	SHA256     string `json:"sha256,omitempty"` // hex, set once the download completed
	Mode       uint32 `json:"mode,omitempty"`
}

// Wait is what a job waits for while the update policy says not now (docs/update-policy.md).
type Wait struct {
	Phase  string    `json:"phase"`            // download | install | reboot | restart
	Since  time.Time `json:"since"`            // the first "not now" of this phase
	Until  time.Time `json:"until,omitempty"`  // when a window opens, when known
	Reason string    `json:"reason,omitempty"` // one line: the hook's or the policy's
	// ReportBy is when the waiting report, and with it the step timer, must be renewed.
	ReportBy time.Time `json:"reportBy,omitempty"`
	// TimesOut is the execution's in-progress deadline, once the service's answers revealed it.
	TimesOut time.Time `json:"timesOut,omitempty"`
}

// Report is a terminal status as it will be sent in UpdateJobExecution.
type Report struct {
	Status  string            `json:"status"` // SUCCEEDED | FAILED | REJECTED
	Details map[string]string `json:"details"`
}

// ErrNoJournal means no job is in progress.
var ErrNoJournal = errors.New("no journal")

// ErrJournalSchema means the journal was written by a newer agent.
var ErrJournalSchema = errors.New("journal written by a newer agent")

// Store keeps the one journal of the job in progress in a state directory.
type Store struct {
	Dir string
	Now func() time.Time // injectable; nil means time.Now
}

// JournalFile is the journal's name inside the state directory.
const JournalFile = "journal.json"

func (s *Store) path() string { return filepath.Join(s.Dir, JournalFile) }

func (s *Store) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Save writes j durably.
func (s *Store) Save(j *Journal) error {
	j.Schema = JournalSchema
	j.UpdatedAt = s.now().UTC()
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	return durable.WriteFile(s.path(), append(b, '\n'), 0o600)
}

// Load reads the journal; ErrNoJournal when there is none. A corrupt journal is an error, not
// "start fresh": forgetting an in-flight update is how devices end up half-updated and unreported.
func (s *Store) Load() (*Journal, error) {
	b, err := os.ReadFile(s.path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoJournal
	}
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	var j Journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("journal %s is corrupt: %w", s.path(), err)
	}
	if j.Schema > JournalSchema {
		return nil, fmt.Errorf("%w: schema %d > %d", ErrJournalSchema, j.Schema, JournalSchema)
	}
	if _, err := Resume(j.State); err != nil {
		return nil, err
	}
	return &j, nil
}

// Remove deletes the journal once a job is done.
func (s *Store) Remove() error { return durable.Remove(s.path()) }
