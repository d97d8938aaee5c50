// Package verify decides whether a downloaded payload may be installed: it checks the code
// signature (AWS code-signing `codesign` object, FreeRTOS `sig-sha256-ecdsa`, or a cosign-style
// detached signature) and the optional DSSE attestation against the keys and CAs pinned on the
// device, then applies the policy (unsigned, anti-rollback, device compatibility).
//
// The payload itself is never read here: the downloader hashes it while streaming and passes
// the SHA-256 and byte count. ECDSA and RSA verify over that digest (sigstore's
// options.WithDigest); Ed25519 signs the 32-byte digest by fieldota's convention (docs/signing.md).
// Every refusal is a *reason.Error, so callers decide with errors.Is(err, reason.X).
package verify

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"slices"
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

// Claims are the release facts stated by the plain (unsigned) document fields.
type Claims struct {
	Version    string
	Compatible []string // nil = not stated
}

// Expected is what the document says the payload is.
type Expected struct {
	Size   int64  // -1 = not stated
	SHA256 []byte // nil = not stated
}

// Input is everything Verify needs about one file.
type Input struct {
	Name        string // file name, for messages only
	Digest      []byte // SHA-256 of the bytes actually downloaded
	Size        int64  // number of bytes actually downloaded
	Expected    Expected
	Signature   *Signature // nil = no detached signature
	Attestation []byte     // DSSE envelope JSON; nil = none
	Plain       Claims
}

// Policy is the device's side of the decision.
type Policy struct {
	AllowUnsigned    bool      // config verify.allow_unsigned
	InstalledVersion string    // version of the target now installed; "" = none known (no rollback check)
	DeviceCompatible []string  // the device's configured compatibility names
	Now              time.Time // for certificate validity; zero = time.Now()
}

// Verdict describes an accepted payload.
type Verdict struct {
	Signed           bool      // a signature or attestation verified
	KeyID            string    // key of the detached signature ("" if none)
	Algorithm        Algorithm // of the detached signature
	Attested         bool      // the attestation verified
	AttestationKeyID string
	Version          string   // the version enforced (signed if attested, else plain)
	Compatible       []string // the compatibility list enforced
	AllowDowngrade   bool     // granted by the signed predicate
}

// Verify checks a downloaded file. The order is fixed so the reported reason is stable:
// size, digest, signature, attestation, agreement of plain and signed fields, then policy
// (unsigned, downgrade, compatibility).
//
// A nil *TrustStore trusts no key: for a device with allow_unsigned and no key configured,
// unsigned payloads pass and every signature is refused rather than ignored.
func (ts *TrustStore) Verify(in Input, p Policy) (Verdict, error) {
	if ts == nil {
		ts = &TrustStore{}
	}
	var vd Verdict
	if len(in.Digest) != sha256.Size {
		return vd, reason.Errorf(reason.Internal, "verify %s: digest of %d bytes, want a SHA-256", clip(in.Name), len(in.Digest))
	}
	if in.Expected.Size >= 0 && in.Size != in.Expected.Size {
		return vd, reason.Errorf(reason.SizeMismatch, "%s: downloaded %d bytes, the document says %d", clip(in.Name), in.Size, in.Expected.Size)
	}
	if in.Signature != nil && in.Signature.RawPayloadSize != 0 && in.Size != in.Signature.RawPayloadSize {
		return vd, reason.Errorf(reason.SizeMismatch, "%s: downloaded %d bytes, rawPayloadSize says %d", clip(in.Name), in.Size, in.Signature.RawPayloadSize)
	}
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}

	var leaf *candidate // a certificate-carried key, also allowed to sign the attestation
	if s := in.Signature; s != nil {
		c, alg, err := ts.verifySignature(s, in.Digest, now)
		if err != nil {
			return vd, err
		}
		vd.Signed, vd.KeyID, vd.Algorithm = true, c.id, alg
		if len(s.CertChain) > 0 {
			leaf = &c
		}
	}

	vd.Version, vd.Compatible = in.Plain.Version, in.Plain.Compatible
	if in.Attestation != nil {
		st, id, err := ts.verifyAttestation(in.Attestation, leaf)
		if err != nil {
			return vd, err
		}
		if !st.names(in.Digest) {
			return vd, reason.Errorf(reason.DigestMismatch, "%s: the attestation's subject is not the payload (sha256 %s)", clip(in.Name), hex.EncodeToString(in.Digest))
		}
		pr := st.Predicate
		if in.Plain.Version != "" && in.Plain.Version != pr.Version {
			return vd, reason.Errorf(reason.InvalidDocument, "%s: plain version %q disagrees with the signed version %q", clip(in.Name), clip(in.Plain.Version), clip(pr.Version))
		}
		if in.Plain.Compatible != nil && !sameSet(in.Plain.Compatible, pr.Compatible) {
			return vd, reason.Errorf(reason.InvalidDocument, "%s: plain compatible list %q disagrees with the signed one %q", clip(in.Name), in.Plain.Compatible, pr.Compatible)
		}
		vd.Signed, vd.Attested, vd.AttestationKeyID = true, true, id
		vd.Version, vd.Compatible, vd.AllowDowngrade = pr.Version, pr.Compatible, pr.AllowDowngrade
	}

	// The plain sha256 is checked after the signatures: bytes that are not what the owner signed
	// are reported as SIGNATURE_INVALID (the stronger, more useful verdict); DIGEST_MISMATCH is
	// left for a document whose own sha256 disagrees with correctly signed bytes, and for
	// unsigned payloads.
	if in.Expected.SHA256 != nil && !bytes.Equal(in.Expected.SHA256, in.Digest) {
		return vd, reason.Errorf(reason.DigestMismatch, "%s: sha256 %s, the document says %s", clip(in.Name), hex.EncodeToString(in.Digest), hex.EncodeToString(in.Expected.SHA256))
	}
	if !vd.Signed && !p.AllowUnsigned {
		return vd, reason.Errorf(reason.Unsigned, "%s carries no signature and unsigned updates are not allowed", clip(in.Name))
	}
	if err := checkPolicy(vd, p); err != nil {
		return vd, err
	}
	return vd, nil
}

// Precheck decides, before any byte is downloaded, what the document states about itself that
// no download can change: that it carries a signature at all (unless unsigned updates are
// allowed), and that its plain version and compatibility pass the policy. A job refused here is
// REJECTED while still QUEUED. Signatures are checked over the downloaded bytes by Verify, so a
// bad signature ends the job FAILED (SIGNATURE_INVALID) after the download; a refusal based on
// unsigned claims is safe (it only ever refuses), and Verify enforces the signed claims again.
func (ts *TrustStore) Precheck(in Input, p Policy) error {
	if in.Signature == nil && in.Attestation == nil && !p.AllowUnsigned {
		return reason.Errorf(reason.Unsigned, "%s carries no signature and unsigned updates are not allowed", clip(in.Name))
	}
	if in.Attestation != nil {
		// A signed predicate may allow a downgrade; that is decided once its signature is checked.
		p.InstalledVersion = ""
	}
	return checkPolicy(Verdict{Version: in.Plain.Version, Compatible: in.Plain.Compatible}, p)
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

func (ts *TrustStore) verifyAttestation(env []byte, leaf *candidate) (*Statement, string, error) {
	cands := make([]candidate, 0, len(ts.ids)+1)
	if leaf != nil {
		cands = append(cands, *leaf)
	}
	for _, id := range ts.ids {
		cands = append(cands, candidate{id, ts.keys[id]})
	}
	if len(cands) == 0 {
		return nil, "", reason.Errorf(reason.UntrustedKey, "attestation: no trusted key configured")
	}
	payload, id, err := verifyEnvelope(env, cands)
	if err != nil {
		return nil, "", err
	}
	st, err := ParseStatement(payload)
	if err != nil {
		return nil, "", err
	}
	return st, id, nil
}

// checkPolicy applies anti-rollback and compatibility to the enforced claims.
func checkPolicy(vd Verdict, p Policy) error {
	if vd.Version == "" {
		// job documents always state one (package jobdoc); a bare detached signature checked by
		// the CLI may not, and then there is nothing to roll back against.
		if p.InstalledVersion != "" {
			return reason.Errorf(reason.InvalidDocument, "no version stated (plain or signed) to compare with the installed %s", clip(p.InstalledVersion))
		}
	} else if err := checkRollback(vd, p); err != nil {
		return err
	}
	return checkCompatible(vd, p)
}

func checkRollback(vd Verdict, p Policy) error {
	nv, err := ParseVersion(vd.Version)
	if err != nil {
		return reason.Errorf(reason.InvalidDocument, "%w", err)
	}
	if p.InstalledVersion != "" && !vd.AllowDowngrade {
		iv, err := ParseVersion(p.InstalledVersion)
		if err != nil {
			// Fail closed: a downgrade cannot be ruled out. A signed allowDowngrade recovers.
			return reason.Errorf(reason.DowngradeRefused, "installed version cannot be compared: %w", err)
		}
		if nv.Compare(iv) < 0 {
			return reason.Errorf(reason.DowngradeRefused, "version %s is older than the installed %s", clip(vd.Version), clip(p.InstalledVersion))
		}
	}
	return nil
}

func checkCompatible(vd Verdict, p Policy) error {
	if len(vd.Compatible) > 0 {
		ok := false
		for _, c := range vd.Compatible {
			if slices.Contains(p.DeviceCompatible, c) {
				ok = true
				break
			}
		}
		if !ok {
			return reason.Errorf(reason.IncompatibleDevice, "the update is for %q; this device is %q", vd.Compatible, p.DeviceCompatible)
		}
	}
	return nil
}

func sameSet(a, b []string) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(slices.Compact(x), slices.Compact(y))
}
