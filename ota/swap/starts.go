package swap

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/fieldota/fieldota/ota/durable"
)

// Journal Data keys the binary flow writes before the swap touches anything; the recovery mode
// reads them without the agent's code.
const (
	JournalTarget = "swap.target" // the resolved path being swapped
	JournalSelf   = "swap.self"   // "true" when it is the agent's own binary
)

// StartsFile counts the starts of a swapped-in agent that have not yet passed probation. The
// recovery mode (fieldota-agent recover, run before every start) increments it; the agent
// removes it when it commits or finishes a rollback. Too many starts means the new agent cannot
// come up, and recovery puts the old one back.
const StartsFile = "swap-starts"

// CountStart durably increments the start counter in stateDir and returns the new count.
func CountStart(stateDir string) (int, error) {
	n, err := Starts(stateDir)
	if err != nil {
		return 0, err
	}
	n++
	if err := durable.WriteFile(filepath.Join(stateDir, StartsFile), []byte(strconv.Itoa(n)+"\n"), 0o600); err != nil {
		return 0, err
	}
	return n, nil
}

// Starts returns the current count (0 when there is none).
func Starts(stateDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, StartsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		// A torn counter cannot happen through durable.WriteFile; if it does, count high so
		// that recovery errs toward the known-good binary.
		return 1 << 20, fmt.Errorf("%s is corrupt: %w", StartsFile, err)
	}
	return n, nil
}

// ResetStarts removes the counter.
func ResetStarts(stateDir string) error {
	return durable.Remove(filepath.Join(stateDir, StartsFile))
}
