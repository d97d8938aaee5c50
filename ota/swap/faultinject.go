//go:build faultinject

package swap

import (
	"os"
	"syscall"
)

// Built only with -tags faultinject, for the crash tests: FIELDOTA_KILL_AT_SWAP_STEP=replaced
// makes the process SIGKILL itself right after that durable step (staged, backed-up, replaced,
// restored) — a power cut inside the swap. FIELDOTA_KILL_MARKER makes it happen once.
func init() {
	at := os.Getenv("FIELDOTA_KILL_AT_SWAP_STEP")
	marker := os.Getenv("FIELDOTA_KILL_MARKER")
	if at == "" {
		return
	}
	step = func(name string) {
		if name != at {
			return
		}
		if marker != "" {
			f, err := os.OpenFile(marker, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return
			}
			_ = f.Sync()
			_ = f.Close()
		}
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}
