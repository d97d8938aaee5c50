package verify_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/fieldota/fieldota/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

func writePEM(t *testing.T, dir, name string, blocks ...*pem.Block) string {
	t.Helper()
	var b []byte
	for _, blk := range blocks {
		b = append(b, pem.EncodeToMemory(blk)...)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func pubBlock(t *testing.T, pub any) *pem.Block {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return &pem.Block{Type: "PUBLIC KEY", Bytes: der}
}

func TestLoadTrustStore(t *testing.T) {
	k := getKeys(t)
	dir := t.TempDir()
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	ca := newCA(t, "ca")
	good := writePEM(t, dir, "two.pub", pubBlock(t, k.p256.Public()), pubBlock(t, k.ed.Public()))
	caFile := writePEM(t, dir, "ca.pem", &pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
	leafFile := writePEM(t, dir, "leaf.pem", func() *pem.Block { b, _ := pem.Decode(ca.leaf(t, k.p256.Public(), nil)); return b }())
	empty := filepath.Join(dir, "empty.pub")
	_ = os.WriteFile(empty, nil, 0o644)

	ts, err := verify.LoadTrustStore([]string{good}, []string{caFile})
	if err != nil {
		t.Fatal(err)
	}
	if len(ts.KeyIDs()) != 2 {
		t.Fatalf("key ids %v", ts.KeyIDs())
	}
	if _, err := verify.LoadTrustStore(nil, []string{caFile}); err != nil {
		t.Fatalf("CA-only store: %v", err)
	}
	for name, c := range map[string]struct{ keys, cas []string }{
		"nothing configured (fails closed)": {nil, nil},
		"missing file":                      {[]string{filepath.Join(dir, "nope.pub")}, nil},
		"empty file":                        {[]string{empty}, nil},
		"ECDSA P-224 key":                   {[]string{writePEM(t, dir, "p224.pub", pubBlock(t, p224.Public()))}, nil},
		"RSA-1024 key":                      {[]string{writePEM(t, dir, "rsa1024.pub", pubBlock(t, rsa1024.Public()))}, nil},
		"certificate given as a key":        {[]string{caFile}, nil},
		"private key given as a key": {[]string{writePEM(t, dir, "priv.pem", func() *pem.Block {
			b, _ := cryptoutils.MarshalPrivateKeyToPEM(k.p256)
			blk, _ := pem.Decode(b)
			return blk
		}())}, nil},
		"non-CA certificate as CA": {nil, []string{leafFile}},
	} {
		if _, err := verify.LoadTrustStore(c.keys, c.cas); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
