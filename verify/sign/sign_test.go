package sign_test

import (
	"crypto/elliptic"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"

	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

func TestKeyRoundTripEveryType(t *testing.T) {
	dir := t.TempDir()
	d := sha256.Sum256([]byte("x"))
	for _, kind := range sign.KeyTypes {
		k, err := sign.GenerateKey(kind)
		if err != nil {
			t.Fatal(err)
		}
		priv, pub := filepath.Join(dir, kind+".key"), filepath.Join(dir, kind+".pub")
		if _, err := sign.WriteKeyPair(k, priv, pub); err != nil {
			t.Fatal(err)
		}
		if _, err := sign.WriteKeyPair(k, priv, pub); err == nil {
			t.Fatalf("%s: an existing key was overwritten", kind)
		}
		loaded, err := sign.LoadPrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sign.SignDigest(loaded, "", d[:]); err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
	}
}

func TestSignDigestRefusesAlgorithmOfAnotherKeyType(t *testing.T) {
	k, _ := sign.GenerateKey("ecdsa-p256")
	d := sha256.Sum256([]byte("x"))
	for _, a := range []verify.Algorithm{verify.RSASHA256, verify.Ed25519SHA256, verify.RSAPSSSHA256} {
		if _, err := sign.SignDigest(k, a, d[:]); err == nil {
			t.Errorf("ECDSA key made a %s signature", a)
		}
	}
}

// TestLoadEncryptedCosignKey: cosign generate-key-pair writes an ENCRYPTED SIGSTORE PRIVATE KEY.
func TestLoadEncryptedCosignKey(t *testing.T) {
	privPEM, _, err := cryptoutils.GeneratePEMEncodedECDSAKeyPair(elliptic.P256(), cryptoutils.StaticPasswordFunc([]byte("s3cret")))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "cosign.key")
	if err := os.WriteFile(p, privPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(sign.PasswordEnv, "wrong")
	if _, err := sign.LoadPrivateKey(p); err == nil {
		t.Fatal("wrong password accepted")
	}
	t.Setenv(sign.PasswordEnv, "s3cret")
	if _, err := sign.LoadPrivateKey(p); err != nil {
		t.Fatal(err)
	}
}
