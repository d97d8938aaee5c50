package certs

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/fieldota/fieldota/test/testpki"
)

func csrPEM(t *testing.T, k crypto.Signer, cn string) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func TestCSRSignedKeepsSubjectAndKey(t *testing.T) {
	a, err := New("us-east-1", "123456789012", nil)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	out, err := a.CreateCertificateFromCsr(CreateCertificateFromCsrInput{CertificateSigningRequest: csrPEM(t, k, "dev1"), SetAsActive: true})
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode([]byte(out.CertificatePem))
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(a.CACertPEM())
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("issued certificate does not verify: %v", err)
	}
	if cert.Subject.CommonName != "dev1" || !k.PublicKey.Equal(cert.PublicKey) || !cert.NotAfter.Equal(notAfter) {
		t.Fatalf("certificate: %v %v", cert.Subject, cert.NotAfter)
	}
	if len(out.CertificateID) != 64 || out.CertificateArn != "arn:aws:iot:us-east-1:123456789012:cert/"+out.CertificateID || a.Status(out.CertificateID) != StatusActive {
		t.Fatalf("output %+v status %s", out, a.Status(out.CertificateID))
	}
}

// TestForgedCSRsRefused: a CSR whose signature does not match its key (no proof of possession),
// garbage, and weak keys get no certificate.
func TestForgedCSRsRefused(t *testing.T) {
	a, _ := New("us-east-1", "123456789012", nil)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := csrPEM(t, k, "dev1")
	blk, _ := pem.Decode([]byte(good))
	blk.Bytes[len(blk.Bytes)-3] ^= 0xff // in the signature
	tampered := string(pem.EncodeToMemory(blk))
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	for name, csr := range map[string]string{
		"tampered signature": tampered,
		"not PEM":            "hello",
		"RSA 1024":           csrPEM(t, weak, "dev1"),
		"P-224":              csrPEM(t, p224, "dev1"),
	} {
		if _, err := a.CreateCertificateFromCsr(CreateCertificateFromCsrInput{CertificateSigningRequest: csr}); !errors.Is(err, ErrInvalidCSR) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestInactiveCertificateCannotConnect: created without setAsActive, deactivated for a rotation,
// or revoked, the certificate fails the TLS handshake; revoked cannot be undone.
func TestInactiveCertificateCannotConnect(t *testing.T) {
	a, _ := New("us-east-1", "123456789012", nil)
	srvCA, _ := testpki.NewCA("server CA")
	srv, _ := srvCA.Server("broker")
	sc, _ := srv.TLSCertificate()
	tc := a.ServerTLS(&tls.Config{Certificates: []tls.Certificate{sc}, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tc)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	out, err := a.CreateCertificateFromCsr(CreateCertificateFromCsrInput{CertificateSigningRequest: csrPEM(t, k, "dev1")})
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode([]byte(out.CertificatePem))
	connect := func() error {
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{RootCAs: srvCA.Pool(), ServerName: "localhost",
			Certificates: []tls.Certificate{{Certificate: [][]byte{blk.Bytes}, PrivateKey: k}}}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		// TLS 1.3: the server's verdict on the client certificate arrives with the first read.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		// Accepted: the server completes the handshake and closes (EOF); refused: an alert.
		if _, err = c.Read(make([]byte, 1)); errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	steps := []struct {
		status string
		ok     bool
	}{{"", false}, {StatusActive, true}, {StatusInactive, false}, {StatusActive, true}, {StatusRevoked, false}}
	for _, s := range steps {
		if s.status != "" {
			if err := a.UpdateCertificate(out.CertificateID, s.status); err != nil {
				t.Fatal(err)
			}
		}
		if err := connect(); (err == nil) != s.ok {
			t.Fatalf("status %s: connect = %v", a.Status(out.CertificateID), err)
		}
	}
	if err := a.UpdateCertificate(out.CertificateID, StatusActive); !errors.Is(err, ErrInvalidStatus) {
		t.Fatalf("revoked certificate re-activated: %v", err)
	}
	if err := a.UpdateCertificate("nope", StatusActive); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
}
