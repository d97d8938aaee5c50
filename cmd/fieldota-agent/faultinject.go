//go:build faultinject

package main

import (
	"os"
	"syscall"

	"github.com/fieldota/fieldota/ota"
)

// Built only with -tags faultinject, for the crash tests: FIELDOTA_KILL_IN_STATE=download makes
// the agent SIGKILL itself right after it persisted that state — the same as a power cut there.
// FIELDOTA_KILL_MARKER names a file created first, so that one kill per test run is enough.
func init() {
	state := ota.State(os.Getenv("FIELDOTA_KILL_IN_STATE"))
	marker := os.Getenv("FIELDOTA_KILL_MARKER")
	if state == "" {
		return
	}
	onTransition = func(j *ota.Journal) {
		if j.State != state {
			return
		}
		if marker != "" {
			f, err := os.OpenFile(marker, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return // already killed once in this state
			}
			_ = f.Sync()
			_ = f.Close()
		}
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}
