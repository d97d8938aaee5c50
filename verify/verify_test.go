package verify_test

import (
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
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
		pred:   verify.Predicate{Version: "1.2.0", Compatible: []string{"board-rev-c"}},
		policy: verify.Policy{InstalledVersion: "1.1.0", DeviceCompatible: []string{"board-rev-c", "any-linux"}},
	}
}

// base is a fully signed input: codesign (P-256, key id) plus attestation.
func (w *world) base(t *testing.T) verify.Input {
	return verify.Input{
		Name: "install.py", Digest: w.digest, Size: int64(len(payload)),
		Expected: verify.Expected{Size: int64(len(payload)), SHA256: w.digest},
		Signature: &verify.Signature{
			Algorithm: verify.ECDSASHA256, Value: sigB64(t, w.k.p256, verify.ECDSASHA256, w.digest),
			KeyID: keyID(t, w.k.p256), RawPayloadSize: int64(len(payload)),
		},
		Attestation: attest(t, w.k.p256, w.digest, w.pred),
		Plain:       verify.Claims{Version: "1.2.0", Compatible: []string{"board-rev-c"}},
	}
}

// TestAttacks is the attack table of issue 4: every case must be refused, each with its reason.
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
		{"correctly signed bytes, document sha256 wrong", func(in *verify.Input, p *verify.Policy) {
			in.Expected.SHA256 = otherDigest
		}, reason.DigestMismatch},
		{"one payload bit flipped, document digest forged to match", func(in *verify.Input, p *verify.Policy) {
			in.Digest, in.Expected.SHA256 = digestOf(flipped), digestOf(flipped)
		}, reason.SignatureInvalid},
		{"size mismatch", func(in *verify.Input, p *verify.Policy) { in.Size-- }, reason.SizeMismatch},
		{"size mismatch against rawPayloadSize", func(in *verify.Input, p *verify.Policy) { in.Signature.RawPayloadSize++ }, reason.SizeMismatch},
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
		{"downgrade via the plain version", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = nil
			in.Plain.Version = "1.0"
		}, reason.DowngradeRefused},
		{"downgrade via the signed predicate", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, verify.Predicate{Version: "1.0.9", Compatible: []string{"board-rev-c"}})
			in.Plain.Version = ""
		}, reason.DowngradeRefused},
		{"downgrade to a pre-release of the installed version", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = nil
			in.Plain.Version = "1.1.0-rc.1"
		}, reason.DowngradeRefused},
		{"attestation subject is not the payload digest", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, otherDigest, w.pred)
		}, reason.DigestMismatch},
		{"attestation signed by an untrusted key", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.other, w.digest, w.pred)
		}, reason.SignatureInvalid},
		{"attestation payload swapped after signing", func(in *verify.Input, p *verify.Policy) {
			var env verify.Envelope
			_ = json.Unmarshal(in.Attestation, &env)
			other := attest(t, w.k.p256, w.digest, verify.Predicate{Version: "9.9.9", Compatible: []string{"board-rev-c"}, AllowDowngrade: true})
			var env2 verify.Envelope
			_ = json.Unmarshal(other, &env2)
			env.Payload = env2.Payload
			in.Attestation, _ = json.Marshal(env)
		}, reason.SignatureInvalid},
		{"plain version differs from the signed version", func(in *verify.Input, p *verify.Policy) { in.Plain.Version = "1.3.0" }, reason.InvalidDocument},
		{"plain compatible list differs from the signed one", func(in *verify.Input, p *verify.Policy) {
			in.Plain.Compatible = []string{"board-rev-a"}
		}, reason.InvalidDocument},
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
		{"installed version unparsable (fail closed)", func(in *verify.Input, p *verify.Policy) { p.InstalledVersion = "garbage" }, reason.DowngradeRefused},
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
		attest  bool
	}
	cases := []tc{
		{"codesign ECDSA P-256 with key id and attestation", func(in *verify.Input, p *verify.Policy) {}, w.k.p256, true},
		{"codesign ECDSA P-384", func(in *verify.Input, p *verify.Policy) {
			in.Signature.KeyID = keyID(t, w.k.p384)
			in.Signature.Value = sigB64(t, w.k.p384, verify.ECDSASHA256, w.digest)
			in.Attestation = nil
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
		{"FreeRTOS sig-sha256-ecdsa (no key id, no attestation)", func(in *verify.Input, p *verify.Policy) {
			in.Signature = &verify.Signature{Algorithm: verify.ECDSASHA256, Value: sigB64(t, w.k.p256, verify.ECDSASHA256, w.digest)}
			in.Attestation = nil
		}, w.k.p256, false},
		{"cosign sign-blob detached signature, algorithm from the key", func(in *verify.Input, p *verify.Policy) {
			in.Signature = &verify.Signature{Value: sigB64(t, w.k.p256, verify.ECDSASHA256, w.digest) + "\n"}
		}, w.k.p256, true},
		{"certificate chain leaf → CA", func(in *verify.Input, p *verify.Policy) {
			in.Signature = &verify.Signature{Algorithm: verify.ECDSASHA256, CertChain: w.ca.leaf(t, w.k.other.Public(), nil),
				Value: sigB64(t, w.k.other, verify.ECDSASHA256, w.digest)}
		}, w.k.other, true},
		{"certificate chain leaf → intermediate → CA, attestation by the leaf", func(in *verify.Input, p *verify.Policy) {
			chain := append(inter.leaf(t, w.k.other.Public(), nil), pemOf(inter.cert)...)
			in.Signature = &verify.Signature{Algorithm: verify.ECDSASHA256, CertChain: chain,
				Value: sigB64(t, w.k.other, verify.ECDSASHA256, w.digest)}
			in.Attestation = attest(t, w.k.other, w.digest, w.pred)
		}, w.k.other, true},
		{"attestation only, ECDSA P-384", func(in *verify.Input, p *verify.Policy) {
			in.Signature, in.Attestation = nil, attest(t, w.k.p384, w.digest, w.pred)
		}, nil, true},
		{"attestation only, in-toto Statement v1", func(in *verify.Input, p *verify.Policy) {
			st, _ := sign.StatementJSON("install.py", w.digest, []byte(`{"version":"1.2.0","compatible":["board-rev-c"]}`))
			st = []byte(strings.Replace(string(st), verify.StatementV01, verify.StatementV1, 1))
			env, err := sign.Envelope(w.k.p256, st)
			if err != nil {
				t.Fatal(err)
			}
			in.Signature, in.Attestation = nil, env
		}, nil, true},
		{"signed downgrade allowed by the predicate", func(in *verify.Input, p *verify.Policy) {
			in.Attestation = attest(t, w.k.p256, w.digest, verify.Predicate{Version: "1.0.0", Compatible: []string{"board-rev-c"}, AllowDowngrade: true})
			in.Plain.Version = "1.0.0"
		}, w.k.p256, true},
		{"same version reinstalled", func(in *verify.Input, p *verify.Policy) { p.InstalledVersion = "1.2.0" }, w.k.p256, true},
		{"nothing installed yet", func(in *verify.Input, p *verify.Policy) { p.InstalledVersion = "" }, w.k.p256, true},
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
			if c.wantKey != nil && vd.KeyID != keyID(t, c.wantKey) {
				t.Fatalf("key id %s, want %s", vd.KeyID, keyID(t, c.wantKey))
			}
			if vd.Attested != c.attest {
				t.Fatalf("attested = %v, want %v", vd.Attested, c.attest)
			}
			if vd.Signed != (c.wantKey != nil || c.attest) {
				t.Fatalf("signed = %v", vd.Signed)
			}
			// Precheck, before any download, must let every accepted case through.
			if err := w.ts.Precheck(in, p); err != nil {
				t.Fatalf("precheck refused: %v", err)
			}
		})
	}
}

// TestPrecheckRefusesOnlyWhatNoDownloadCanChange: before the download, an unsigned document, a
// plain downgrade and a foreign device are refused (REJECTED while QUEUED); a bad signature and a
// downgrade that a signed predicate may allow are left to Verify over the downloaded bytes.
func TestPrecheckRefusesOnlyWhatNoDownloadCanChange(t *testing.T) {
	w := newWorld(t)
	cases := []struct {
		name string
		edit func(in *verify.Input)
		want error // nil = passes the precheck
	}{
		{"fully signed release", func(in *verify.Input) {}, nil},
		{"unsigned", func(in *verify.Input) { in.Signature, in.Attestation = nil, nil }, reason.Unsigned},
		{"plain downgrade without attestation", func(in *verify.Input) {
			in.Attestation = nil
			in.Plain.Version = "1.0.0"
		}, reason.DowngradeRefused},
		{"incompatible device", func(in *verify.Input) { in.Plain.Compatible = []string{"board-rev-a"} }, reason.IncompatibleDevice},
		{"bad signature is left to the download", func(in *verify.Input) {
			in.Signature.Value = sigB64(t, w.k.p256, verify.ECDSASHA256, digestOf([]byte("other")))
		}, nil},
		{"downgrade a signed predicate may allow is left to the download", func(in *verify.Input) {
			in.Plain.Version = "1.0.0"
			in.Attestation = attest(t, w.k.p256, w.digest, verify.Predicate{Version: "1.0.0", Compatible: []string{"board-rev-c"}, AllowDowngrade: true})
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := w.base(t)
			in.Digest, in.Size = nil, 0 // nothing downloaded yet
			c.edit(&in)
			err := w.ts.Precheck(in, w.policy)
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
	in.Signature, in.Attestation = nil, nil
	allow := w.policy
	allow.AllowUnsigned = true
	if _, err := ts.Verify(in, allow); err != nil {
		t.Fatalf("unsigned, allowed: %v", err)
	}
	if _, err := ts.Verify(in, verify.Policy{}); !errors.Is(err, reason.Unsigned) {
		t.Fatalf("unsigned, not allowed: %v", err)
	}
}
