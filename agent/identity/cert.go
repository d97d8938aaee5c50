package identity

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// CSR is a PEM certificate signing request for the key, subject CN = the thing name (AWS IoT
// keeps the subject; the emulator takes the CN as the thing). The TPM or token signs it.
func CSR(k crypto.Signer, thingName string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: thingName},
	}, k)
	if err != nil {
		return nil, fmt.Errorf("identity: signing the CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// CertificatePEM takes what `aws iot create-certificate-from-csr` printed (its JSON, with
// certificatePem) or a PEM certificate chain, and returns the PEM chain.
func CertificatePEM(b []byte) ([]byte, error) {
	t := bytes.TrimSpace(b)
	if len(t) > 0 && t[0] == '{' {
		var out struct {
			CertificatePem string `json:"certificatePem"`
		}
		if err := json.Unmarshal(t, &out); err != nil {
			return nil, fmt.Errorf("identity: certificate JSON: %w", err)
		}
		if out.CertificatePem == "" {
			return nil, errors.New("identity: certificate JSON has no certificatePem")
		}
		return []byte(out.CertificatePem), nil
	}
	return b, nil
}

// Leaf parses the first certificate of a PEM chain.
func Leaf(chainPEM []byte) (*x509.Certificate, [][]byte, error) {
	var ders [][]byte
	rest := chainPEM
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			ders = append(ders, blk.Bytes)
		}
	}
	if len(ders) == 0 {
		return nil, nil, errors.New("identity: no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(ders[0])
	if err != nil {
		return nil, nil, fmt.Errorf("identity: certificate: %w", err)
	}
	return leaf, ders, nil
}

// MatchCertificate checks that the certificate carries pub, the key's public half, and is valid
// at now: a certificate for another key would only fail later, at every handshake.
func MatchCertificate(leaf *x509.Certificate, pub crypto.PublicKey, now time.Time) error {
	eq, ok := pub.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !eq.Equal(leaf.PublicKey) {
		return fmt.Errorf("%w (certificate %s, serial %x)", ErrMismatch, leaf.Subject, leaf.SerialNumber)
	}
	if now.After(leaf.NotAfter) {
		return fmt.Errorf("identity: certificate %s expired at %s", leaf.Subject, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}
