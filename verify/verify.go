// Package verify decides what a job may make the device do. Its authority is the signed release
// statement (a DSSE-enveloped in-toto Statement, statement.go): for each file its name, size and
// SHA-256, and the release's target, version, compatibility, expiry and install parameters. A
// job document's plain fields are only copies of those (release.go); installers receive the
// verified Release, never the document. Detached code signatures (the AWS `codesign` object,
// FreeRTOS `sig-sha256-ecdsa`, cosign-style) are checked over the payload's bytes too, and are
// all a device configured for codesign-only releases (AWS Signer pipelines) has.
//
// The order follows the job: Release and CheckPolicy while the execution is still QUEUED (a
// refusal is REJECTED, before any byte is downloaded), CheckPayload over the downloaded bytes
// and again over the staged bytes right before they are installed.
//
// The payload itself is never read here: the downloader hashes it while streaming and passes
// the SHA-256 and byte count. ECDSA and RSA verify over that digest (sigstore's
// options.WithDigest); Ed25519 signs the 32-byte digest by fieldota's convention (docs/signing.md).
// Every refusal is a *reason.Error, so callers decide with errors.Is(err, reason.X).
package verify

import (
	"io/fs"
	"time"

	"github.com/fieldota/fieldota/ota/reason"
)

// Signature is the detached signature material of one file, as carried by a job document.
type Signature struct {
	Algorithm      Algorithm // "" = the key's default (FreeRTOS sig-sha256-ecdsa sets ECDSASHA256)
	Value          string    // base64 of the DER/raw signature bytes
	KeyID          string    // optional: hex SHA-256 of the signer's SubjectPublicKeyInfo
	CertChain      []byte    // optional: PEM certificates, leaf first, issued under a configured CA
	RawPayloadSize int64     // optional (0 = not stated): AWS `rawPayloadSize`
}

// Input is a one-file verification as `fieldota verify` and the attack table make it: the plain
// claims of the file's entry, its signature material, and the digest and size of the bytes.
type Input struct {
	Name      string // file name
	Digest    []byte // SHA-256 of the bytes actually downloaded
	Size      int64  // number of bytes actually downloaded
	Expected  Expected
	Signature *Signature // nil = no detached signature
	// Attestation is the release statement's DSSE envelope JSON; nil = none.
	Attestation []byte
	Plain       Plain
}

// Expected is what the document's file entry says the payload is.
type Expected struct {
	Size   int64  // -1 = not stated (then the downloaded size is taken as stated)
	SHA256 []byte // nil = not stated
}

// Plain are the document-wide plain fields of a one-file verification.
type Plain struct {
	Target           Target
	Version          string
	Compatible       []string
	WorkingDirectory string
	PackageName      string
	AutoStart        *bool
	Mode             fs.FileMode
}

// Verdict describes an accepted payload.
type Verdict struct {
	Release *Release
	Payload PayloadVerdict
}

// Verify makes every check a device makes for one file, in the device's order: the release
// (statement and plain copies), the policy, then the bytes. The device runs the same steps
// apart (Release and CheckPolicy while the job is QUEUED, CheckPayload after the download).
func (ts *TrustStore) Verify(in Input, p Policy) (Verdict, error) {
	size := in.Expected.Size
	if size < 0 {
		size = in.Size
	}
	c := Claims{
		Statement: in.Attestation, Target: in.Plain.Target, Version: in.Plain.Version, Compatible: in.Plain.Compatible,
		WorkingDirectory: in.Plain.WorkingDirectory, PackageName: in.Plain.PackageName, AutoStart: in.Plain.AutoStart,
		Files: []FileClaim{{Name: in.Name, Size: size, SHA256: in.Expected.SHA256, Mode: in.Plain.Mode, Signature: in.Signature}},
	}
	if in.Attestation == nil && in.Plain.Target == "" {
		// A bare detached signature: it signs the bytes and nothing about their install.
		c.bare = true
		if c.Files[0].SHA256 == nil {
			c.Files[0].SHA256 = in.Digest
		}
	}
	r, err := ts.Release(c, p)
	if err != nil {
		return Verdict{}, err
	}
	if err := CheckPolicy(r, p); err != nil {
		return Verdict{Release: r}, err
	}
	pv, err := ts.CheckPayload(r, 0, in.Digest, in.Size, p.now())
	return Verdict{Release: r, Payload: pv}, err
}

func (ts *TrustStore) verifySignature(s *Signature, digest []byte, now time.Time) (candidate, Algorithm, error) {
	sig, err := ParseSignature(s.Value)
	if err != nil {
		return candidate{}, "", err
	}
	alg := s.Algorithm
	if alg != "" {
		if alg, err = ParseAlgorithm(string(alg)); err != nil {
			return candidate{}, "", err
		}
	}
	var cands []candidate
	switch {
	case len(s.CertChain) > 0:
		pub, id, err := ts.leafFromChain(s.CertChain, now)
		if err != nil {
			return candidate{}, "", err
		}
		if s.KeyID != "" && s.KeyID != id {
			return candidate{}, "", reason.Errorf(reason.UntrustedKey, "keyId %s is not the certificate's key %s", clip(s.KeyID), id)
		}
		cands = []candidate{{id, pub}}
	case s.KeyID != "":
		pub, ok := ts.keys[s.KeyID]
		if !ok {
			return candidate{}, "", reason.Errorf(reason.UntrustedKey, "key %s is not in the trust store", clip(s.KeyID))
		}
		cands = []candidate{{s.KeyID, pub}}
	default:
		for _, id := range ts.ids {
			cands = append(cands, candidate{id, ts.keys[id]})
		}
		if len(cands) == 0 {
			return candidate{}, "", reason.Errorf(reason.UntrustedKey, "no trusted key: the signature names no certificate and only CAs are configured")
		}
	}
	tried := 0
	for _, c := range cands {
		a := alg
		if a == "" {
			if a, err = AlgorithmFor(c.pub); err != nil {
				continue
			}
		}
		if !a.fits(c.pub) {
			continue
		}
		tried++
		if verifyDigest(c.pub, a, digest, sig) == nil {
			return c, a, nil
		}
	}
	if tried == 0 {
		return candidate{}, "", reason.Errorf(reason.SignatureInvalid, "no trusted key can make a %s signature", alg)
	}
	return candidate{}, "", reason.Errorf(reason.SignatureInvalid, "signature verifies under none of the %d candidate trusted keys", tried)
}
