package jobs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"

	"github.com/fieldota/fieldota/test/testpki"
)

// TestSignerKeyNeedsItsOwnCertificate: with Key (a TPM or token signer) the certificate file is
// paired with the signer, never with a key file; a certificate for another key is refused at
// Dial time, and a rotated certificate on disk is read at the next handshake.
func TestSignerKeyNeedsItsOwnCertificate(t *testing.T) {
	ca, err := testpki.NewCA("ca")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Client("dev1")
	if err != nil {
		t.Fatal(err)
	}
	tc, err := pair.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath := filepath.Join(dir, "device.crt")
	if err := os.WriteFile(certPath, pair.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	ep := endpoint{host: "localhost", port: 8883, tls: true}
	good := tc.PrivateKey.(*ecdsa.PrivateKey)
	cfg := Config{CertFile: certPath, Key: good}
	c, err := cfg.tlsConfig(ep)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil || got.PrivateKey != good || got.Leaf.Subject.CommonName != "dev1" {
		t.Fatalf("client certificate: %v %v", got, err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := (Config{CertFile: certPath, Key: other}).tlsConfig(ep); err == nil {
		t.Fatal("a certificate for another key was accepted")
	}
	if _, err := (Config{Key: good}).tlsConfig(ep); err == nil {
		t.Fatal("a signer without a certificate was accepted")
	}
	// The file is replaced by a certificate for another key: the next handshake refuses it
	// rather than presenting a pair that cannot work.
	p2, _ := ca.Client("dev1")
	if err := os.WriteFile(certPath, p2.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetClientCertificate(&tls.CertificateRequestInfo{}); err == nil {
		t.Fatal("handshake used a certificate for another key")
	}
}
