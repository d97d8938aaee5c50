package agent

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify"
)

// create-ota-update documents (afr_ota, HTTP): their one file and its AWS Signer signature are
// all they say, so the device decides the rest from its configuration — afr_ota.target and
// afr_ota.working_directory — and accepts them only where verify.require_release_statement is
// off (a codesign-only release: docs/signing.md lists what that gives away). Their version is
// 0.0.0 with the signature's digest as build metadata: one afr_ota release never counts as a
// downgrade of another (they carry no version to compare), and a target that a signed release
// put at a higher version refuses them.

func (a *Agent) afrClaims(c verify.Claims) (verify.Claims, error) {
	cfg := a.cfg.AFROTA
	if cfg.Target == "" {
		return c, reason.Errorf(reason.UnsupportedOperation, "afr_ota documents (aws iot create-ota-update) are disabled on this device: afr_ota.target is not set")
	}
	c.Target = verify.Target(cfg.Target)
	if cfg.Target == "files" {
		c.WorkingDirectory = cfg.WorkingDirectory
	}
	sig := ""
	for _, f := range c.Files {
		if f.Signature != nil {
			sig += f.Signature.Value
		}
	}
	sum := sha256.Sum256([]byte(sig))
	c.Version = "0.0.0+afr." + hex.EncodeToString(sum[:6])
	return c, nil
}

// afrDigests gives an afr_ota release the digests its download learned (and its signature
// verified): the installers place exactly those bytes.
func afrDigests(rel *verify.Release, j *ota.Journal) {
	for i := range rel.Files {
		if rel.Files[i].SHA256 == nil && i < len(j.Staged) && j.Staged[i].SHA256 != "" {
			if sum, err := hex.DecodeString(j.Staged[i].SHA256); err == nil && len(sum) == sha256.Size {
				rel.Files[i].SHA256 = sum
			}
		}
	}
}
