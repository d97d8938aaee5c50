// Package softhsm makes SoftHSM2 tokens (Debian's softhsm2) for tests: a private token
// directory and configuration per test, pointed at by SOFTHSM2_CONF, and tokens initialised with
// softhsm2-util. A missing SoftHSM fails the test: scripts/deps.sh installs it.
package softhsm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Module is Debian's SoftHSM2 PKCS#11 module.
const Module = "/usr/lib/softhsm/libsofthsm2.so"

// HSM is one SoftHSM2 configuration with its own token directory.
type HSM struct {
	Conf     string // the SOFTHSM2_CONF file
	TokenDir string
}

// Env is the environment entry a process needs to see these tokens.
func (h *HSM) Env() string { return "SOFTHSM2_CONF=" + h.Conf }

// New makes an empty SoftHSM2 configuration in a temporary directory.
func New(t testing.TB) *HSM {
	t.Helper()
	if _, err := os.Stat(Module); err != nil {
		t.Fatalf("%s missing: run scripts/deps.sh as root (Debian package softhsm2); PKCS#11 tests never skip", Module)
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		t.Fatal("softhsm2-util not found: run scripts/deps.sh as root (Debian package softhsm2)")
	}
	dir := t.TempDir()
	h := &HSM{Conf: filepath.Join(dir, "softhsm2.conf"), TokenDir: filepath.Join(dir, "tokens")}
	if err := os.MkdirAll(h.TokenDir, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", h.TokenDir)
	if err := os.WriteFile(h.Conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return h
}

// InitToken initialises a token with a label, a user PIN and an SO PIN.
func (h *HSM) InitToken(t testing.TB, label, pin string) {
	t.Helper()
	if err := h.run("--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", pin+"-so"); err != nil {
		t.Fatal(err)
	}
}

func (h *HSM) run(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "softhsm2-util", args...)
	cmd.Env = append(os.Environ(), h.Env())
	out, err := cmd.CombinedOutput()
	if err != nil {
		return errors.Join(fmt.Errorf("softhsm2-util %v: %w", args, err), errors.New(string(out)))
	}
	return nil
}
