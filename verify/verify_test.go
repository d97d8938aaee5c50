package verify_test

import (
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
)

var payload = []byte("#!/usr/bin/env python3\nprint('fieldota test payload')\n")

type world struct {
	k        testKeys
	ca       *testCA
	ts       *verify.TrustStore
	digest   []byte
	pred     verify.Predicate
	policy   verify.Policy
	installV string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	k := getKeys(t)
	ca := newCA(t, "fieldota test code-signing CA")
	ts, err := verify.NewTrustStore(
		[]crypto.PublicKey{k.p256.Public(), k.p384.Public(), k.ed.Public(), k.rsa.Public()},
		[]*x509.Certificate{ca.cert})
	if err != nil {
		t.Fatal(err)
	}
	return &world{
		k: k, ca: ca, ts: ts, digest: digestOf(payload),
		pred: release("1.2.0"),
		policy: verify.Policy{RequireStatement: true, Installed: verify.Installed{Version: "1.1.0", Signed: true},
			DeviceCompatible: []string{"board-rev-c", "any-linux"}},
	}
}

// base is a fully signed input: codesign (P-256, key id) plus the release statement, with the
// plain copies the seed's document carries.
func (w *world) base(t *testing.T) verify.Input {
	return verify.Input{
		Name: "install.py", Digest: w.digest, Size: int64(len(payload)),
		Expected: verify.Expected{Size: int64(len(payload)), SHA256: w.digest},
		Signature: &verify.Signature{
			Algorithm: verify.ECDSASHA256, Value: sigB64(t, w.k.p256, verify.ECDSASHA256, w.digest),
			KeyID: keyID(t, w.k.p256), RawPayloadSize: int64(len(payload)),
		},
		Attestation: attest(t, w.k.p256, w.digest, w.pred),
		Plain: verify.Plain{Target: "files", Version: "1.2.0", Compatible: []string{"board-rev-c"},
			WorkingDirectory: "/opt/app/x", PackageName: "install.py", AutoStart: ptr(true)},
	}
}

func ptr[T any](v T) *T { return &v }

// with returns the test predicate changed by edit.
func (w *world) with(edit func(p *verify.Predicate)) verify.Predicate {
	p := w.pred
	p.Files = map[string]verify.PredicateFile{}
	for k, v := range w.pred.Files {
		p.Files[k] = v
	}
	edit(&p)
	return p
}

// TestAttacks is the attack table: every case must be refused, each with its own reason. The
// first part is issue 4's (detached signatures, certificates, the first attestation); the second
// is issue 11's: the release statement signs the whole install intent, and the document's plain
// fields may only copy it. Where issue 11 changed a verdict it says so: a plain field that
// contradicts the signed release is DOCUMENT_MISMATCH, decided before any download.
func TestAttacks(t *testing.T) {
	w := newWorld(t)
	otherDigest := digestOf([]byte("some other release"))
	flipped := append([]byte(nil), payload...)
	flipped[7] ^= 0x01

	cases := []struct {
		name   string
		mutate func(in *verify.Input, p *verify.Policy)
		want   reason.Code
	}{
		{"unsigned", func(in *verify.Input, p *verify.Policy) { in.Signature, in.Attestation = nil, nil }, reason.Unsigned},
		{"wrong key claiming a trusted key id", func(in *verify.Input, p *verify.Policy) {
			in.Signature.Value = sigB64(t, w.k.other, verify.ECDSASHA256, w.digest)
		}, reason.SignatureInvalid},
		{"wrong key without key id (cosign sign-blob style)", func(in *verify.Input, p *verify.Policy) {
			in.Signature.KeyID, in.Signature.Algorithm = "", ""
			in.Signature.Value = sigB64(t, w.k.other, verify.ECDSASHA256, w.digest)
		}, reason.SignatureInvalid},
		{"truncated signature", func(in *verify.Input, p *verify.Policy) {
			raw, _ := base64.StdEncoding.DecodeString(in.Signature.Value)
			in.Signature.Value = base64.StdEncoding.EncodeToString(raw[:len(raw)-6])
		}, reason.SignatureInvalid},
		{"bad base64", func(in *verify.Input, p *verify.Policy) { in.Signature.Value = "MEUCIQ!!not*base64" }, reason.SignatureInvalid},
		{"signature over other bytes", func(in *verify.Input, p *verify.Policy) {
			in.Signature.Value = sigB64(t, w.k.p256, verify.ECDSASHA256, otherDigest)
		}, reason.SignatureInvalid},
		// A payload that is not what the owner signed is SIGNATURE_INVALID, whatever the plain sha256 says.
		{"one payload bit flipped", func(in *verify.Input, p *verify.Policy) { in.Digest = digestOf(flipped) }, reason.SignatureInvalid},
		{"one payload bit flipped, unsigned payload allowed", func(in *verify.Input, p *verify.Policy) {
			in.Digest, in.Signature, in.Attestation = digestOf(flipped), nil, nil
			p.AllowUnsigned = true
		}, reason.DigestMismatch},
		// issue 11: the plain sha256 is a copy of the signed digest; a different one is refused at once.
		{"correctly signed bytes, document sha256 wrong", func(in *verify.Input, p *verify.Policy) {
			in.Expected.SHA256 = otherDigest
		}, reason.DocumentMismatch},
		{"one payload bit flipped, document digest forged to match", func(in *verify.Input, p *verify.Policy) {
			in.Digest, in.Expected.SHA256 = digestOf(flipped), digestOf(flipped)
		}, reason.DocumentMismatch},
		{"one payload bit flipped, codesign-only device, document digest forged to match", func(in *verify.Input, p *verify.Policy) {
			in.Digest, in.Expected.SHA256, in.Attestation = digestOf(flipped), digestOf(flipped), nil
			p.RequireStatement = false
		}, reason.SignatureInvalid},
		{"size mismatch", func(in *verify.Input, p *verify.Policy) { in.Size-- }, reason.SizeMismatch},
		{"rawPayloadSize disagrees with the signed size", func(in *verify.Input, p *verify.Policy) { in.Signature.RawPayloadSize++ }, reason.DocumentMismatch},
		{"size mismatch against rawPayloadSize, codesign-only device", func(in *verify.Input, p *verify.Policy) {
			in.Attestation, p.RequireStatement = nil, false
			in.Signature.RawPayloadSize++
			in.Expected.Size = in.Signature.RawPayloadSize
		}, reason.SizeMismatch},
		{"algorithm mismatch: RSA signature claimed as ECDSA", func(in *verify.Input, p *verify.Policy) {
			in.Signature.KeyID = ""
			in.Signature.Value = sigB64(t, w.k.rsa, verify.RSASHA256, w.digest)
		}, reason.SignatureInvalid},
		{"algorithm mismatch: RSA signature claimed as ECDSA, naming the RSA key", func(in *verify.Input, p *verify.Policy) {
			in.Signature.KeyID = keyID(t, w.k.rsa)
			in.Signature.Value = sigB64(t, w.k.rsa, verify.RSASHA256, w.digest)
		}, reason.SignatureInvalid},
		{"unsupported algorithm SHA1withRSA", func(in *verify.Input, p *verify.Policy) { in.Signature.Algorithm = "SHA1withRSA" }, reason.SignatureInvalid},
		{"key id not trusted", func(in *verify.Input, p *verify.Policy) {
			in.Signature.KeyID = keyID(t, w.k.other)
			in.Signature.Value = sigB64(t, w.k.other, verify.ECDSASHA256, w.digest)
		}, reason.UntrustedKey},
		{"expired certificate", func(in *verify.Input, p *verify.Policy) {
			in.Signature.KeyID = ""
			in.Signature.CertChain = w.ca.leaf(t, w.k.other.Public(), func(c *x509.Certificate) {
				c.NotBefore, c.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
			})
			in.Signature.Value = sigB64(t, w.k.other, verify.ECDSASHA256, w.digest)
		}, reason.UntrustedKey},
		{"certificate valid now but expired at the injected clock", func(in *verify.Input, p *verify.Policy) {
			in.Signature.KeyID = ""
			in.Signature.CertChain = w.ca.leaf(t, w.k.other.Public(), nil)
			in.Signature.Value = sigB64(t, w.k.other, verify.ECDSASHA256, w.digest)
			p.Now = time.Now().Add(48 * time.Hour)
		}, reason.UntrustedKey},
		{"certificate without the code-signing EKU", func(in *verify.Input, p *verify.Policy) {
			in.Signature.KeyID = ""
			in.Signature.CertChain = w.ca.leaf(t, w.k.other.Public(), func(c *x509.Certificate) {
				c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			})
			in.Signature.Value = sigB64(t, w.k.other, verify.ECDSASHA256, w.digest)
		}, reason.UntrustedKey},
		{"certificate without any EKU", func(in *verify.Input, p *verify.Policy) {
			in.Signature.KeyID = ""
			in.Signature.CertChain = w.ca.leaf(t, w.k.other.Public(), func(c *x509.Certificate) { c.ExtKeyUsage = nil })
			in.Signature.Value = sigB64(t, w.k.other, verify.ECDSASHA256, w.digest)
		}, reason.UntrustedKey},
		{"chain to a foreign CA", func(in *verify.Input, p *verify.Policy) {
			in.Signature.KeyID = ""
			in.Signature.CertChain = newCA(t, "attacker CA").leaf(t, w.k.other.Public(), nil)
			in.Signature.Value = sigB64(t, w.k.other, verify.ECDSASHA256, w.digest)
		}, reason.UntrustedKey},
		{"downgrade via the plain version, codesign-only device", func(in *verify.Input, p *verify.Policy) {
			in.Attestation, p.RequireStatement = nil, false
			in.Plain.Version = "1.0"
		}, reason.DowngradeRefused},
		{"downgrade via the signed predicate", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.Version = "1.0.9" }))
			in.Plain.Version = ""
		}, reason.DowngradeRefused},
		{"downgrade to a pre-release of the installed version", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.Version = "1.1.0-rc.1" }))
			in.Plain.Version = ""
		}, reason.DowngradeRefused},
		{"attestation subject is not the payload digest", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, otherDigest, w.pred)
			in.Expected.SHA256 = nil
		}, reason.DigestMismatch},
		{"attestation signed by an untrusted key", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.other, w.digest, w.pred)
		}, reason.SignatureInvalid},
		{"attestation payload swapped after signing", func(in *verify.Input, p *verify.Policy) {
			var env verify.Envelope
			_ = json.Unmarshal(in.Attestation, &env)
			other := attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.Version, p.AllowDowngrade = "9.9.9", true }))
			var env2 verify.Envelope
			_ = json.Unmarshal(other, &env2)
			env.Payload = env2.Payload
			in.Attestation, _ = json.Marshal(env)
		}, reason.SignatureInvalid},
		{"plain version differs from the signed version", func(in *verify.Input, p *verify.Policy) { in.Plain.Version = "1.3.0" }, reason.DocumentMismatch},
		{"plain compatible list differs from the signed one", func(in *verify.Input, p *verify.Policy) {
			in.Plain.Compatible = []string{"board-rev-a"}
		}, reason.DocumentMismatch},
		{"incompatible device", func(in *verify.Input, p *verify.Policy) { p.DeviceCompatible = []string{"board-rev-a"} }, reason.IncompatibleDevice},
		{"incompatible device via the signed list (plain list removed)", func(in *verify.Input, p *verify.Policy) {
			in.Plain.Compatible = nil
			p.DeviceCompatible = nil
		}, reason.IncompatibleDevice},
		{"bad signature is refused even when unsigned updates are allowed", func(in *verify.Input, p *verify.Policy) {
			p.AllowUnsigned = true
			in.Signature.Value = sigB64(t, w.k.p256, verify.ECDSASHA256, otherDigest)
		}, reason.SignatureInvalid},
		{"cosign-style Ed25519 over the whole file (not fieldota's convention)", func(in *verify.Input, p *verify.Policy) {
			in.Signature.Algorithm, in.Signature.KeyID = verify.Ed25519SHA256, keyID(t, w.k.ed)
			s, _ := w.k.ed.Sign(nil, payload, crypto.Hash(0))
			in.Signature.Value = base64.StdEncoding.EncodeToString(s)
		}, reason.SignatureInvalid},
		{"installed version unparsable (fail closed)", func(in *verify.Input, p *verify.Policy) { p.Installed.Version = "garbage" }, reason.DowngradeRefused},

		// Issue 11: the release statement is the authority for everything the device does.
		{"no release statement (codesign only) on a device that requires one", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = nil
		}, reason.Unsigned},
		{"replay relabelled: an old signed 1.0 sent as version 9.0", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.Version = "1.0" }))
			in.Plain.Version = "9.0"
		}, reason.DocumentMismatch},
		{"release for board-x with the plain compatible list relabelled", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.Compatible = []string{"board-x"} }))
		}, reason.DocumentMismatch},
		{"release for board-x, plain list removed", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.Compatible = []string{"board-x"} }))
			in.Plain.Compatible = nil
		}, reason.IncompatibleDevice},
		{"statement signed for another file name (factory-wipe.sh sent as install.py)", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attestAs(t, w.k.p256, "factory-wipe.sh", w.digest, w.with(func(p *verify.Predicate) {
				p.PackageName, p.Files = "factory-wipe.sh", map[string]verify.PredicateFile{"factory-wipe.sh": {Size: int64(len(payload))}}
			}))
		}, reason.DocumentMismatch},
		{"statement for another target", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) {
				p.Target, p.WorkingDirectory, p.PackageName, p.AutoStart = "slot", "", "", false
			}))
			in.Plain.WorkingDirectory, in.Plain.PackageName, in.Plain.AutoStart = "", "", nil
		}, reason.DocumentMismatch},
		{"statement for another working directory", func(in *verify.Input, p *verify.Policy) {
			in.Plain.WorkingDirectory = "/opt/app/other"
		}, reason.DocumentMismatch},
		{"autoStart added to a release that does not start anything", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.AutoStart = false }))
		}, reason.DocumentMismatch},
		{"packageName changed to another file", func(in *verify.Input, p *verify.Policy) { in.Plain.PackageName = "other.py" }, reason.DocumentMismatch},
		{"mode changed from the signed one", func(in *verify.Input, p *verify.Policy) { in.Plain.Mode = 0o700 }, reason.DocumentMismatch},
		{"size changed from the signed one", func(in *verify.Input, p *verify.Policy) { in.Expected.Size++ }, reason.DocumentMismatch},
		{"expired statement", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.Expires = "2026-01-01T00:00:00Z" }))
			p.Now = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
		}, reason.ReleaseExpired},
		{"statement from an untrusted key", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.other, w.digest, w.pred)
		}, reason.SignatureInvalid},
		{"statement naming an untrusted key id", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = withKeyID(t, attest(t, w.k.other, w.digest, w.pred), keyID(t, w.k.other))
		}, reason.UntrustedKey},
		{"statement naming a trusted key id but signed by another key", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = withKeyID(t, attest(t, w.k.other, w.digest, w.pred), keyID(t, w.k.p256))
		}, reason.SignatureInvalid},
		{"statement for one payload reused with another", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, otherDigest, w.pred)
			in.Signature, in.Expected.SHA256 = nil, nil
		}, reason.DigestMismatch},
		{"statement of the old predicate type v1 (version only)", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = statementOf(t, w.k.p256, verify.PredicateTypeV1, `{"version":"1.2.0"}`, w.digest)
		}, reason.InvalidDocument},
		{"statement with an unknown predicate key", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = statementOf(t, w.k.p256, verify.PredicateType, `{"target":"files","version":"1.2.0","workingDirectory":"/opt/app/x","files":{"install.py":{"size":52}},"runAsRoot":true}`, w.digest)
		}, reason.InvalidDocument},
		{"statement with a group-writable mode", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) {
				p.Files["install.py"] = verify.PredicateFile{Size: int64(len(payload)), Mode: "0777"}
			}))
		}, reason.InvalidDocument},
		{"statement with a setuid mode", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) {
				p.Files["install.py"] = verify.PredicateFile{Size: int64(len(payload)), Mode: "4755"}
			}))
		}, reason.InvalidDocument},
		{"statement naming a file with a right-to-left override", func(in *verify.Input, p *verify.Policy) {
			name := "install‮yp.sh"
			in.Name = name
			in.Attestation = attestAs(t, w.k.p256, name, w.digest, w.with(func(p *verify.Predicate) {
				p.PackageName, p.Files = name, map[string]verify.PredicateFile{name: {Size: int64(len(payload))}}
			}))
			in.Plain.PackageName = name
		}, reason.InvalidDocument},
		{"statement naming a file with the agent's reserved prefix", func(in *verify.Input, p *verify.Policy) {
			name := ".fieldota-prev-install.py"
			in.Name = name
			in.Attestation = attestAs(t, w.k.p256, name, w.digest, w.with(func(p *verify.Predicate) {
				p.AutoStart, p.PackageName, p.Files = false, "", map[string]verify.PredicateFile{name: {Size: int64(len(payload))}}
			}))
			in.Plain.PackageName, in.Plain.AutoStart = "", nil
		}, reason.InvalidDocument},
		{"statement with a working directory that is not clean", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.WorkingDirectory = "/opt/app/x/../../../etc" }))
			in.Plain.WorkingDirectory = ""
		}, reason.InvalidDocument},
		{"statement that starts a file it does not ship", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.PackageName = "sh" }))
			in.Plain.PackageName = ""
		}, reason.InvalidDocument},
		{"statement with a subject that is not among its files", func(in *verify.Input, p *verify.Policy) {
			st, _ := sign.ReleaseStatementJSON([]verify.Subject{sign.Subject("install.py", w.digest), sign.Subject("extra.bin", otherDigest)}, mustJSON(t, w.pred))
			in.Attestation = envelopeOf(t, w.k.p256, st)
		}, reason.InvalidDocument},
		{"statement with one file signed twice", func(in *verify.Input, p *verify.Policy) {
			st, _ := sign.ReleaseStatementJSON([]verify.Subject{sign.Subject("install.py", w.digest), sign.Subject("install.py", otherDigest)},
				mustJSON(t, w.with(func(p *verify.Predicate) { p.Files["other"] = verify.PredicateFile{Size: 1} })))
			in.Attestation = envelopeOf(t, w.k.p256, st)
		}, reason.InvalidDocument},
		{"statement for a slot with an empty image", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, verify.Predicate{Target: "slot", Version: "1.2.0",
				Files: map[string]verify.PredicateFile{"install.py": {Size: 0}}})
			in.Plain = verify.Plain{}
		}, reason.InvalidDocument},
		{"statement for a binary with a path as its name", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, verify.Predicate{Target: "binary", Version: "1.2.0", Binary: "../../usr/bin/sudo",
				Files: map[string]verify.PredicateFile{"install.py": {Size: int64(len(payload))}}})
			in.Plain = verify.Plain{}
		}, reason.InvalidDocument},
		{"signed release older than the signed record", func(in *verify.Input, p *verify.Policy) {
			p.Installed = verify.Installed{Version: "2.0.0", Signed: true}
		}, reason.DowngradeRefused},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in, p := w.base(t), w.policy
			c.mutate(&in, &p)
			vd, err := w.ts.Verify(in, p)
			if err == nil {
				t.Fatalf("accepted (%+v), want %s", vd, c.want)
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("refused with %v, want %s", err, c.want)
			}
			t.Logf("refused: %v", err)
			for _, other := range reason.All {
				if other != c.want && errors.Is(err, other) {
					t.Fatalf("error also matches %s: %v", other, err)
				}
			}
		})
	}
}

// TestAccepted covers every algorithm and format that must verify.
func TestAccepted(t *testing.T) {
	w := newWorld(t)
	inter := w.ca.intermediate(t)
	type tc struct {
		name    string
		mutate  func(in *verify.Input, p *verify.Policy)
		wantKey crypto.Signer // key of the detached signature, nil if none
		signed  bool          // the release comes from a verified statement
	}
	codesignOnly := func(in *verify.Input, p *verify.Policy) { in.Attestation, p.RequireStatement = nil, false }
	cases := []tc{
		{"codesign ECDSA P-256 with key id and release statement", func(in *verify.Input, p *verify.Policy) {}, w.k.p256, true},
		{"codesign ECDSA P-384, codesign-only device", func(in *verify.Input, p *verify.Policy) {
			in.Signature.KeyID = keyID(t, w.k.p384)
			in.Signature.Value = sigB64(t, w.k.p384, verify.ECDSASHA256, w.digest)
			codesignOnly(in, p)
		}, w.k.p384, false},
		{"codesign Ed25519 over the SHA-256 digest", func(in *verify.Input, p *verify.Policy) {
			in.Signature.Algorithm, in.Signature.KeyID = verify.Ed25519SHA256, keyID(t, w.k.ed)
			in.Signature.Value = sigB64(t, w.k.ed, verify.Ed25519SHA256, w.digest)
			in.Attestation = attest(t, w.k.ed, w.digest, w.pred)
		}, w.k.ed, true},
		{"codesign RSA PKCS#1 v1.5 without key id", func(in *verify.Input, p *verify.Policy) {
			in.Signature.Algorithm, in.Signature.KeyID = verify.RSASHA256, ""
			in.Signature.Value = sigB64(t, w.k.rsa, verify.RSASHA256, w.digest)
			in.Attestation = attest(t, w.k.rsa, w.digest, w.pred)
		}, w.k.rsa, true},
		{"codesign RSA-PSS", func(in *verify.Input, p *verify.Policy) {
			in.Signature.Algorithm, in.Signature.KeyID = verify.RSAPSSSHA256, keyID(t, w.k.rsa)
			in.Signature.Value = sigB64(t, w.k.rsa, verify.RSAPSSSHA256, w.digest)
		}, w.k.rsa, true},
		{"FreeRTOS sig-sha256-ecdsa (no key id), codesign-only device", func(in *verify.Input, p *verify.Policy) {
			in.Signature = &verify.Signature{Algorithm: verify.ECDSASHA256, Value: sigB64(t, w.k.p256, verify.ECDSASHA256, w.digest)}
			codesignOnly(in, p)
		}, w.k.p256, false},
		{"cosign sign-blob detached signature, algorithm from the key", func(in *verify.Input, p *verify.Policy) {
			in.Signature = &verify.Signature{Value: sigB64(t, w.k.p256, verify.ECDSASHA256, w.digest) + "\n"}
		}, w.k.p256, true},
		{"certificate chain leaf → CA", func(in *verify.Input, p *verify.Policy) {
			in.Signature = &verify.Signature{Algorithm: verify.ECDSASHA256, CertChain: w.ca.leaf(t, w.k.other.Public(), nil),
				Value: sigB64(t, w.k.other, verify.ECDSASHA256, w.digest)}
		}, w.k.other, true},
		{"certificate chain leaf → intermediate → CA, statement by the leaf", func(in *verify.Input, p *verify.Policy) {
			chain := append(inter.leaf(t, w.k.other.Public(), nil), pemOf(inter.cert)...)
			in.Signature = &verify.Signature{Algorithm: verify.ECDSASHA256, CertChain: chain,
				Value: sigB64(t, w.k.other, verify.ECDSASHA256, w.digest)}
			in.Attestation = attest(t, w.k.other, w.digest, w.pred)
		}, w.k.other, true},
		{"statement only, ECDSA P-384", func(in *verify.Input, p *verify.Policy) {
			in.Signature, in.Attestation = nil, attest(t, w.k.p384, w.digest, w.pred)
		}, nil, true},
		{"statement only, in-toto Statement v1", func(in *verify.Input, p *verify.Policy) {
			st, _ := sign.StatementJSON("install.py", w.digest, mustJSON(t, w.pred))
			st = []byte(strings.Replace(string(st), verify.StatementV01, verify.StatementV1, 1))
			in.Signature, in.Attestation = nil, envelopeOf(t, w.k.p256, st)
		}, nil, true},
		{"statement only, no plain copies at all", func(in *verify.Input, p *verify.Policy) {
			in.Signature, in.Plain, in.Expected = nil, verify.Plain{}, verify.Expected{Size: -1}
		}, nil, true},
		{"statement whose keyid names its signing key", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = withKeyID(t, in.Attestation, keyID(t, w.k.p256))
		}, w.k.p256, true},
		{"statement with a foreign signature before the trusted one", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = twoSignatures(t, attest(t, w.k.other, w.digest, w.pred), in.Attestation)
		}, w.k.p256, true},
		{"statement that expires later", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.Expires = "2030-01-01T00:00:00Z" }))
			p.Now = time.Date(2029, 12, 31, 0, 0, 0, 0, time.UTC)
		}, w.k.p256, true},
		{"signed downgrade allowed by the predicate", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.Version, p.AllowDowngrade = "1.0.0", true }))
			in.Plain.Version = "1.0.0"
		}, w.k.p256, true},
		{"an unsigned record (9.0) never freezes a signed release", func(in *verify.Input, p *verify.Policy) {
			p.Installed = verify.Installed{Version: "9.0"}
		}, w.k.p256, true},
		{"same version reinstalled", func(in *verify.Input, p *verify.Policy) { p.Installed.Version = "1.2.0" }, w.k.p256, true},
		{"nothing installed yet", func(in *verify.Input, p *verify.Policy) { p.Installed = verify.Installed{} }, w.k.p256, true},
		{"unsigned but allowed by config", func(in *verify.Input, p *verify.Policy) {
			in.Signature, in.Attestation, p.AllowUnsigned = nil, nil, true
		}, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in, p := w.base(t), w.policy
			c.mutate(&in, &p)
			vd, err := w.ts.Verify(in, p)
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if c.wantKey != nil && vd.Payload.KeyID != keyID(t, c.wantKey) {
				t.Fatalf("key id %s, want %s", vd.Payload.KeyID, keyID(t, c.wantKey))
			}
			if vd.Release.Signed != c.signed {
				t.Fatalf("signed release = %v, want %v", vd.Release.Signed, c.signed)
			}
			if c.signed && (vd.Release.WorkingDirectory != "/opt/app/x" || !vd.Release.AutoStart || vd.Release.Files[0].Mode != 0o755) {
				t.Fatalf("the signed install intent was not carried: %+v", vd.Release)
			}
		})
	}
}

// TestRefusedBeforeTheDownload: Release and CheckPolicy — what the device runs while the
// execution is QUEUED — refuse everything the document's signed release decides, and leave only
// the bytes (their digest and detached signature) to after the download.
func TestRefusedBeforeTheDownload(t *testing.T) {
	w := newWorld(t)
	cases := []struct {
		name string
		edit func(in *verify.Input, p *verify.Policy)
		want error // nil = passes before the download
	}{
		{"fully signed release", func(in *verify.Input, p *verify.Policy) {}, nil},
		{"unsigned", func(in *verify.Input, p *verify.Policy) { in.Signature, in.Attestation = nil, nil }, reason.Unsigned},
		{"no statement", func(in *verify.Input, p *verify.Policy) { in.Attestation = nil }, reason.Unsigned},
		{"untrusted statement", func(in *verify.Input, p *verify.Policy) { in.Attestation = attest(t, w.k.other, w.digest, w.pred) }, reason.SignatureInvalid},
		{"plain field disagrees", func(in *verify.Input, p *verify.Policy) { in.Plain.Version = "9.0" }, reason.DocumentMismatch},
		{"signed downgrade", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.Version = "1.0.0" }))
			in.Plain.Version = ""
		}, reason.DowngradeRefused},
		{"expired", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.Expires = "2000-01-01T00:00:00Z" }))
		}, reason.ReleaseExpired},
		{"incompatible device", func(in *verify.Input, p *verify.Policy) { p.DeviceCompatible = []string{"board-rev-a"} }, reason.IncompatibleDevice},
		{"bad codesign signature is left to the download", func(in *verify.Input, p *verify.Policy) {
			in.Signature.Value = sigB64(t, w.k.p256, verify.ECDSASHA256, digestOf([]byte("other")))
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in, p := w.base(t), w.policy
			c.edit(&in, &p)
			fc := verify.FileClaim{Name: in.Name, Size: in.Expected.Size, SHA256: in.Expected.SHA256, Signature: in.Signature}
			r, err := w.ts.Release(verify.Claims{Statement: in.Attestation, Version: in.Plain.Version, Compatible: in.Plain.Compatible,
				Files: []verify.FileClaim{fc}}, p)
			if err == nil {
				err = verify.CheckPolicy(r, p)
			}
			if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestNilTrustStoreTrustsNothing(t *testing.T) {
	w := newWorld(t)
	var ts *verify.TrustStore
	in := w.base(t)
	if _, err := ts.Verify(in, verify.Policy{AllowUnsigned: true}); !errors.Is(err, reason.UntrustedKey) {
		t.Fatalf("signed input with no trust store: %v, want UNTRUSTED_KEY", err)
	}
	in.Attestation = nil
	if _, err := ts.Verify(in, verify.Policy{AllowUnsigned: true, DeviceCompatible: []string{"board-rev-c"}}); !errors.Is(err, reason.UntrustedKey) {
		t.Fatalf("codesign with no trust store: %v, want UNTRUSTED_KEY", err)
	}
	in.Signature, in.Attestation = nil, nil
	allow := w.policy
	allow.AllowUnsigned = true
	if _, err := ts.Verify(in, allow); err != nil {
		t.Fatalf("unsigned, allowed: %v", err)
	}
	if _, err := ts.Verify(in, verify.Policy{RequireStatement: true}); !errors.Is(err, reason.Unsigned) {
		t.Fatalf("unsigned, not allowed: %v", err)
	}
}

// withKeyID sets the keyid of every signature of an envelope.
func withKeyID(t *testing.T, env []byte, id string) []byte {
	t.Helper()
	var e verify.Envelope
	if err := json.Unmarshal(env, &e); err != nil {
		t.Fatal(err)
	}
	for i := range e.Signatures {
		e.Signatures[i].KeyID = id
	}
	b, _ := json.Marshal(e)
	return b
}

// twoSignatures puts the signatures of a before those of b, over b's payload.
func twoSignatures(t *testing.T, a, b []byte) []byte {
	t.Helper()
	var ea, eb verify.Envelope
	if json.Unmarshal(a, &ea) != nil || json.Unmarshal(b, &eb) != nil {
		t.Fatal("bad envelopes")
	}
	eb.Signatures = append(ea.Signatures, eb.Signatures...)
	out, _ := json.Marshal(eb)
	return out
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func envelopeOf(t *testing.T, k crypto.Signer, statement []byte) []byte {
	t.Helper()
	env, err := sign.Envelope(k, statement)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// statementOf signs a one-subject statement with a predicate given as JSON text.
func statementOf(t *testing.T, k crypto.Signer, predicateType, predicate string, digest []byte) []byte {
	t.Helper()
	st := fmt.Sprintf(`{"_type":%q,"predicateType":%q,"subject":[{"name":"install.py","digest":{"sha256":"%x"}}],"predicate":%s}`,
		verify.StatementV01, predicateType, digest, predicate)
	return envelopeOf(t, k, []byte(st))
}

// TestForceIsSignedOrNothing: only the signed predicate can ask for a reinstall; a codesign-only
// release (plain fields, written by whoever creates jobs) never carries force.
func TestForceIsSignedOrNothing(t *testing.T) {
	w := newWorld(t)
	in := w.base(t)
	in.Attestation = attest(t, w.k.p256, w.digest, w.with(func(p *verify.Predicate) { p.Force = true }))
	vd, err := w.ts.Verify(in, w.policy)
	if err != nil || !vd.Release.Force {
		t.Fatalf("signed force: %v, force=%v", err, vd.Release != nil && vd.Release.Force)
	}
	in = w.base(t)
	if vd, err = w.ts.Verify(in, w.policy); err != nil || vd.Release.Force {
		t.Fatalf("statement without force: %v, force=%v", err, vd.Release != nil && vd.Release.Force)
	}
	p := w.policy
	in.Attestation, p.RequireStatement = nil, false
	if vd, err = w.ts.Verify(in, p); err != nil || vd.Release.Force {
		t.Fatalf("codesign-only release: %v, force=%v", err, vd.Release != nil && vd.Release.Force)
	}
}
