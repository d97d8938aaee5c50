// Package slot installs a payload into the inactive slot of an A/B pair and drives the
// bootloader through one small variable protocol (docs/ab-slots.md): find the slot the device
// booted (the kernel command line or the mounted root, cross-checked with the bootloader
// environment), stream the payload into the other slot, read it back and re-hash it, then ask
// the bootloader for one trial boot; after the reboot, commit or fall back.
//
// The bootloader is reached through Bootloader, two methods over a key=value environment;
// U-Boot (fw_printenv/fw_setenv), GRUB (grub-editenv), a plain file and user commands
// implement it. Every change is one batch, so that a redundant U-Boot environment switches
// all variables at once or not at all.
package slot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"

	"github.com/fieldota/fieldota/ota/reason"
)

// The variable protocol shared with the bootloader scripts in docs/ab-slots.md.
const (
	// VarSlot names the slot the bootloader boots: "a" or "b".
	VarSlot = "fieldota_slot"
	// VarTry is "1" while a trial boot of VarSlot is pending (Mender's upgrade_available).
	VarTry = "fieldota_try"
	// VarBootCount counts trial boots; the bootloader increments it while VarTry is 1.
	VarBootCount = "bootcount"
	// VarBootLimit is how many trial boots are allowed before the bootloader falls back.
	VarBootLimit = "bootlimit"
	// VarBadPrefix + slot name is "1" once the slot failed (set by the bootloader when it gave
	// up, by the agent when the health check failed).
	VarBadPrefix = "fieldota_bad_"
	// VarCanary is written and read back before an install: proof that the environment is
	// writable from Linux before a byte of the slot is touched.
	VarCanary = "fieldota_canary"
)

// Env is a bootloader environment; a variable set to "" is removed.
type Env map[string]string

// Bootloader reads and writes the environment shared with the bootloader.
type Bootloader interface {
	// Get returns the whole environment; an environment that cannot be read (bad CRC, missing
	// file) is an error, never a default.
	Get(ctx context.Context) (Env, error)
	// Set changes all the given variables in one write. The protocol never removes a variable
	// (a cleared flag is "0"), so that GRUB too changes everything in one grub-editenv run;
	// "" still means remove for callers that need it.
	Set(ctx context.Context, vars Env) error
}

var (
	keyRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)
)

// checkVars refuses names and values that could not round-trip through every backend.
func checkVars(vars Env) error {
	for k, v := range vars {
		if !keyRE.MatchString(k) {
			return fmt.Errorf("bootloader variable name %q not allowed", k)
		}
		for _, c := range []byte(v) {
			if c < 0x20 || c == 0x7f {
				return fmt.Errorf("bootloader variable %s: control character in value", k)
			}
		}
	}
	return nil
}

// Status is the protocol's view of an environment.
type Status struct {
	Slot      string // slot the bootloader boots next
	Try       bool   // a trial boot of Slot is pending
	BootCount int
	BootLimit int
	Bad       map[string]bool
}

// StatusOf reads the protocol variables out of env.
func StatusOf(env Env) Status {
	s := Status{Slot: env[VarSlot], Try: env[VarTry] == "1", Bad: map[string]bool{}}
	s.BootCount, _ = strconv.Atoi(env[VarBootCount])
	s.BootLimit, _ = strconv.Atoi(env[VarBootLimit])
	for _, n := range Names {
		s.Bad[n] = env[VarBadPrefix+n] == "1"
	}
	return s
}

// ReadStatus reads the environment through bl.
func ReadStatus(ctx context.Context, bl Bootloader) (Status, error) {
	env, err := bl.Get(ctx)
	if err != nil {
		return Status{}, reason.Wrap(reason.InstallFailed, fmt.Errorf("reading the bootloader environment: %w", err))
	}
	return StatusOf(env), nil
}

// Canary proves the environment can be read, written and read back, and clears the bad mark
// of the slot about to be written (a mark set later then belongs to this install). It changes
// nothing the bootloader acts on.
func Canary(ctx context.Context, bl Bootloader, target string) error {
	if _, err := bl.Get(ctx); err != nil {
		return reason.Wrap(reason.InstallFailed, fmt.Errorf("bootloader environment unreadable: %w", err))
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	nonce := hex.EncodeToString(b[:])
	if err := bl.Set(ctx, Env{VarCanary: nonce, VarBadPrefix + target: "0"}); err != nil {
		return reason.Wrap(reason.InstallFailed, fmt.Errorf("bootloader environment not writable: %w", err))
	}
	env, err := bl.Get(ctx)
	if err != nil {
		return reason.Wrap(reason.InstallFailed, fmt.Errorf("bootloader environment unreadable after a write: %w", err))
	}
	if env[VarCanary] != nonce {
		return reason.Errorf(reason.InstallFailed, "bootloader environment canary did not read back (wrote %s, read %q): writes do not reach the environment", nonce, env[VarCanary])
	}
	return nil
}

// TryBoot asks for trial boots of slot (at most limit before the bootloader falls back).
func TryBoot(ctx context.Context, bl Bootloader, slot string, limit int) error {
	if limit < 1 {
		limit = 1
	}
	return set(ctx, bl, Env{VarSlot: slot, VarTry: "1", VarBootCount: "0", VarBootLimit: strconv.Itoa(limit), VarBadPrefix + slot: "0"})
}

// Commit makes slot the one booted from now on.
func Commit(ctx context.Context, bl Bootloader, slot string) error {
	return set(ctx, bl, Env{VarSlot: slot, VarTry: "0", VarBootCount: "0", VarBadPrefix + slot: "0"})
}

// Revert marks bad as failed and boots good again, ending any trial.
func Revert(ctx context.Context, bl Bootloader, good, bad string) error {
	return set(ctx, bl, Env{VarSlot: good, VarTry: "0", VarBootCount: "0", VarBadPrefix + bad: "1"})
}

func set(ctx context.Context, bl Bootloader, vars Env) error {
	if err := bl.Set(ctx, vars); err != nil {
		return reason.Wrap(reason.InstallFailed, fmt.Errorf("writing the bootloader environment: %w", err))
	}
	return nil
}
