package verify_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
)

// testKeys are generated once per test binary: RSA generation is slow under -race.
type testKeys struct {
	p256, p384, other *ecdsa.PrivateKey
	ed                ed25519.PrivateKey
	rsa               *rsa.PrivateKey
}

var (
	keysOnce sync.Once
	keys     testKeys
)

func getKeys(t testing.TB) testKeys {
	t.Helper()
	keysOnce.Do(func() {
		must := func(err error) {
			if err != nil {
				panic(err)
			}
		}
		var err error
		keys.p256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		keys.p384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		must(err)
		keys.other, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		_, keys.ed, err = ed25519.GenerateKey(rand.Reader)
		must(err)
		keys.rsa, err = rsa.GenerateKey(rand.Reader, 2048)
		must(err)
	})
	return keys
}

func keyID(t testing.TB, k crypto.Signer) string {
	t.Helper()
	id, err := verify.KeyID(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func sigB64(t testing.TB, k crypto.Signer, alg verify.Algorithm, digest []byte) string {
	t.Helper()
	s, err := sign.SignDigest(k, alg, digest)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(s)
}

// attest signs a one-file release statement for install.py.
func attest(t testing.TB, k crypto.Signer, digest []byte, p verify.Predicate) []byte {
	t.Helper()
	return attestAs(t, k, "install.py", digest, p)
}

func attestAs(t testing.TB, k crypto.Signer, name string, digest []byte, p verify.Predicate) []byte {
	t.Helper()
	env, err := sign.Attest(k, name, digest, p)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// release is the predicate of a files release of install.py (the seed's example), version v.
func release(v string) verify.Predicate {
	return verify.Predicate{
		Target: "files", Version: v, Compatible: []string{"board-rev-c"},
		WorkingDirectory: "/opt/app/x", PackageName: "install.py", AutoStart: true,
		Files: map[string]verify.PredicateFile{"install.py": {Size: int64(len(payload))}},
	}
}

func digestOf(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// testCA issues code-signing certificates for the certificate-chain cases.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var serialN int64

func newCA(t testing.TB, cn string) *testCA {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serialN++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serialN), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{c, k}
}

// leaf issues a certificate for pub; mod adjusts the template (validity, EKU).
func (ca *testCA) leaf(t testing.TB, pub crypto.PublicKey, mod func(*x509.Certificate)) []byte {
	t.Helper()
	serialN++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serialN), Subject: pkix.Name{CommonName: "release signer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	}
	if mod != nil {
		mod(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func (ca *testCA) intermediate(t testing.TB) *testCA {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serialN++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serialN), Subject: pkix.Name{CommonName: "intermediate"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{c, k}
}

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
