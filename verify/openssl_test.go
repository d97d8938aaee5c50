package verify_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
)

// openssl runs the real Debian openssl; a missing binary fails the test (never a skip).
func openssl(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is required (scripts/deps.sh installs it): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, bin, args...).CombinedOutput()
}

func mustOpenssl(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := openssl(t, args...)
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func writePayload(t *testing.T, dir string) (string, []byte, int64) {
	t.Helper()
	p := filepath.Join(dir, "payload.bin")
	if err := os.WriteFile(p, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	d, n, err := sign.DigestFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, d, n
}

// TestOpensslSignatureAccepted: `openssl dgst -sha256 -sign` signatures verify in fieldota.
func TestOpensslSignatureAccepted(t *testing.T) {
	cases := []struct {
		name    string
		genpkey []string
		sigopts []string
		alg     verify.Algorithm
	}{
		{"ECDSA P-256", []string{"-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"}, nil, verify.ECDSASHA256},
		{"ECDSA P-384", []string{"-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"}, nil, verify.ECDSASHA256},
		{"RSA-2048 PKCS#1 v1.5", []string{"-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"}, nil, verify.RSASHA256},
		{"RSA-2048 PSS", []string{"-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"},
			[]string{"-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"}, verify.RSAPSSSHA256},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			file, d, n := writePayload(t, dir)
			key, pub, sig := filepath.Join(dir, "k.pem"), filepath.Join(dir, "pub.pem"), filepath.Join(dir, "sig.der")
			mustOpenssl(t, append([]string{"genpkey", "-out", key}, c.genpkey...)...)
			mustOpenssl(t, "pkey", "-in", key, "-pubout", "-out", pub)
			mustOpenssl(t, append(append([]string{"dgst", "-sha256", "-sign", key, "-out", sig}, c.sigopts...), file)...)
			raw, err := os.ReadFile(sig)
			if err != nil {
				t.Fatal(err)
			}
			ts, err := verify.LoadTrustStore([]string{pub}, nil)
			if err != nil {
				t.Fatal(err)
			}
			in := verify.Input{Name: "payload.bin", Digest: d, Size: n, Expected: verify.Expected{Size: n, SHA256: d},
				Signature: &verify.Signature{Algorithm: c.alg, Value: base64.StdEncoding.EncodeToString(raw)},
				Plain:     verify.Plain{Version: "1.0.0"}}
			vd, err := ts.Verify(in, verify.Policy{})
			if err != nil {
				t.Fatalf("openssl signature refused: %v", err)
			}
			// The key id is what openssl prints for the DER SubjectPublicKeyInfo.
			der := mustOpenssl(t, "pkey", "-pubin", "-in", pub, "-outform", "DER")
			sum := sha256.Sum256(der)
			if vd.Payload.KeyID != hex.EncodeToString(sum[:]) {
				t.Fatalf("key id %s, openssl DER sha256 %x", vd.Payload.KeyID, sum)
			}
			// And the same signature over a flipped payload is refused.
			in.Digest = digestOf(append([]byte{payload[0] ^ 1}, payload[1:]...))
			in.Expected.SHA256 = in.Digest
			if _, err := ts.Verify(in, verify.Policy{}); !errors.Is(err, reason.SignatureInvalid) {
				t.Fatalf("flipped payload: %v", err)
			}
		})
	}
}

// TestFieldotaSignatureVerifiesWithOpenssl: what fieldota signs, `openssl dgst -sha256 -verify` accepts.
func TestFieldotaSignatureVerifiesWithOpenssl(t *testing.T) {
	k := getKeys(t)
	cases := []struct {
		name    string
		key     crypto.Signer
		alg     verify.Algorithm
		sigopts []string
	}{
		{"ECDSA P-256", k.p256, verify.ECDSASHA256, nil},
		{"ECDSA P-384", k.p384, verify.ECDSASHA256, nil},
		{"RSA PKCS#1 v1.5", k.rsa, verify.RSASHA256, nil},
		{"RSA PSS", k.rsa, verify.RSAPSSSHA256, []string{"-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:-1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			file, d, _ := writePayload(t, dir)
			priv, pub, sigf := filepath.Join(dir, "k.key"), filepath.Join(dir, "k.pub"), filepath.Join(dir, "sig.der")
			if _, err := sign.WriteKeyPair(c.key, priv, pub); err != nil {
				t.Fatal(err)
			}
			s, err := sign.SignDigest(c.key, c.alg, d)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(sigf, s, 0o644); err != nil {
				t.Fatal(err)
			}
			out := mustOpenssl(t, append(append([]string{"dgst", "-sha256", "-verify", pub, "-signature", sigf}, c.sigopts...), file)...)
			if !strings.Contains(string(out), "Verified OK") {
				t.Fatalf("openssl: %s", out)
			}
			// openssl must also be able to say no: a flipped signature byte.
			s[len(s)/2] ^= 0x40
			_ = os.WriteFile(sigf, s, 0o644)
			if out, err := openssl(t, append(append([]string{"dgst", "-sha256", "-verify", pub, "-signature", sigf}, c.sigopts...), file)...); err == nil {
				t.Fatalf("openssl accepted a corrupted signature: %s", out)
			}
		})
	}
}

// TestEd25519ConventionWithOpenssl pins fieldota's Ed25519 convention (the message is the
// 32-byte SHA-256 of the file) against openssl's pure Ed25519, both ways.
func TestEd25519ConventionWithOpenssl(t *testing.T) {
	dir := t.TempDir()
	_, d, n := writePayload(t, dir)
	dgst := filepath.Join(dir, "digest.bin")
	if err := os.WriteFile(dgst, d, 0o644); err != nil {
		t.Fatal(err)
	}
	key, pub, sigf := filepath.Join(dir, "ed.pem"), filepath.Join(dir, "ed.pub"), filepath.Join(dir, "ed.sig")
	mustOpenssl(t, "genpkey", "-algorithm", "ED25519", "-out", key)
	mustOpenssl(t, "pkey", "-in", key, "-pubout", "-out", pub)
	mustOpenssl(t, "pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", dgst, "-out", sigf)
	raw, _ := os.ReadFile(sigf)
	ts, err := verify.LoadTrustStore([]string{pub}, nil)
	if err != nil {
		t.Fatal(err)
	}
	in := verify.Input{Name: "payload.bin", Digest: d, Size: n, Expected: verify.Expected{Size: n, SHA256: d},
		Signature: &verify.Signature{Algorithm: verify.Ed25519SHA256, Value: base64.StdEncoding.EncodeToString(raw)},
		Plain:     verify.Plain{Version: "1.0.0"}}
	if _, err := ts.Verify(in, verify.Policy{}); err != nil {
		t.Fatalf("openssl Ed25519 over the digest refused: %v", err)
	}

	// Other way: fieldota's Ed25519 signature verifies with openssl over the digest file.
	priv, err := sign.LoadPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sign.SignDigest(priv, verify.Ed25519SHA256, d)
	if err != nil {
		t.Fatal(err)
	}
	_ = os.WriteFile(sigf, s, 0o644)
	out := mustOpenssl(t, "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", dgst, "-sigfile", sigf)
	if !strings.Contains(string(out), "Signature Verified Successfully") {
		t.Fatalf("openssl: %s", out)
	}
}
