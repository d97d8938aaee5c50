package main

import (
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"time"

	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/agent/identity"
)

// deviceKey is the MQTT identity as the Jobs client takes it: a PEM file read at every
// handshake (KeyFile), or a signer whose key stays in its TPM or token.
type deviceKey struct {
	KeyFile string
	Signer  crypto.Signer
	key     *identity.Key
}

func (d *deviceKey) Close() error { return d.key.Close() }

// openIdentity opens mqtt.key at start, so that a missing token, a wrong PIN or an empty TPM
// handle stops the agent with a sentence naming it rather than failing every reconnect.
func openIdentity(cfg *config.Config) (*deviceKey, error) {
	spec := cfg.MQTT.KeyRef()
	if spec == "" || cfg.MQTT.CertFile == "" {
		return &deviceKey{}, nil // plain tcp:// to the emulator
	}
	ref, err := identity.Parse(spec, cfg.MQTT.TPMDevice)
	if err != nil {
		return nil, fmt.Errorf("mqtt.key: %w", err)
	}
	if ref.Kind == identity.KindFile {
		return &deviceKey{KeyFile: ref.Path}, nil
	}
	k, err := identity.Open(ref)
	if err != nil {
		return nil, fmt.Errorf("mqtt.key %s: %w", ref, err)
	}
	return &deviceKey{Signer: k.Signer, key: k}, nil
}

// identityStatus says where the key lives and which certificate goes with it, for
// `fieldota-agent status`. It opens neither the TPM nor the token (no PIN is read) and shows
// nothing secret.
func identityStatus(cfg *config.Config) map[string]any {
	spec := cfg.MQTT.KeyRef()
	if spec == "" {
		return nil
	}
	out := map[string]any{}
	if ref, err := identity.Parse(spec, cfg.MQTT.TPMDevice); err != nil {
		out["error"] = err.Error()
	} else {
		out["key"] = ref.Describe()
		if ref.Kind == identity.KindPKCS11 && !identity.PKCS11Supported {
			out["warning"] = identity.ErrNoPKCS11.Error()
		}
	}
	if cfg.MQTT.CertFile != "" {
		out["certificate"] = certificateStatus(cfg.MQTT.CertFile)
	}
	return out
}

func certificateStatus(path string) map[string]string {
	st := map[string]string{"path": path}
	b, err := os.ReadFile(path)
	if err != nil {
		st["error"] = err.Error()
		return st
	}
	leaf, _, err := identity.Leaf(b)
	if err != nil {
		st["error"] = err.Error()
		return st
	}
	fp := sha256.Sum256(leaf.Raw)
	// AWS IoT's certificateId is the SHA-256 of the DER certificate, in hex.
	st["certificateId"] = hex.EncodeToString(fp[:])
	st["subject"] = leaf.Subject.String()
	st["issuer"] = leaf.Issuer.String()
	st["notAfter"] = leaf.NotAfter.UTC().Format(time.RFC3339)
	return st
}
