package verify

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/fieldota/fieldota/ota/reason"
)

// MinRSABits is the smallest RSA modulus a trust store accepts.
const MinRSABits = 2048

// maxTrustFile bounds a key or CA file read from the configuration.
const maxTrustFile = 1 << 20

// TrustStore holds the keys pinned on the device and, optionally, the CAs that may issue
// code-signing certificates carried in job documents. It is read-only after loading and safe
// for concurrent use.
type TrustStore struct {
	keys  map[string]crypto.PublicKey // key id → key
	ids   []string                    // key ids in configuration order
	roots *x509.CertPool              // nil when no CA is configured
	nCAs  int
}

// KeyID is the hex SHA-256 of the key's DER SubjectPublicKeyInfo (what `openssl pkey -pubin
// -outform DER | sha256sum` prints), so operators can compute it with stock tools.
func KeyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// CheckKey refuses key types and sizes fieldota does not accept: ECDSA P-256/P-384, Ed25519
// and RSA of at least MinRSABits.
func CheckKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s not accepted (P-256 or P-384)", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("Ed25519 key of %d bytes", len(k))
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < MinRSABits {
			return fmt.Errorf("RSA key of %d bits is below %d", k.N.BitLen(), MinRSABits)
		}
	default:
		return fmt.Errorf("key type %T not accepted", pub)
	}
	return nil
}

// LoadTrustStore reads PEM public keys ("PUBLIC KEY", several per file allowed) and PEM CA
// certificates. It fails closed: no key and no CA at all is an error, as is any unreadable or
// unacceptable entry (a half-loaded trust store would silently drop a key the operator pinned).
func LoadTrustStore(keyFiles, caFiles []string) (*TrustStore, error) {
	var keys []crypto.PublicKey
	for _, path := range keyFiles {
		blocks, err := readPEM(path)
		if err != nil {
			return nil, err
		}
		for _, b := range blocks {
			if b.Type != "PUBLIC KEY" {
				return nil, fmt.Errorf("trust store: %s: PEM block %q, want PUBLIC KEY", path, b.Type)
			}
			pub, err := x509.ParsePKIXPublicKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("trust store: %s: %w", path, err)
			}
			keys = append(keys, pub)
		}
	}
	var cas []*x509.Certificate
	for _, path := range caFiles {
		blocks, err := readPEM(path)
		if err != nil {
			return nil, err
		}
		for _, b := range blocks {
			if b.Type != "CERTIFICATE" {
				return nil, fmt.Errorf("trust store: %s: PEM block %q, want CERTIFICATE", path, b.Type)
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("trust store: %s: %w", path, err)
			}
			cas = append(cas, c)
		}
	}
	return NewTrustStore(keys, cas)
}

func readPEM(path string) ([]*pem.Block, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("trust store: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("trust store: %w", err)
	}
	if st.Size() > maxTrustFile {
		return nil, fmt.Errorf("trust store: %s is larger than %d bytes", path, maxTrustFile)
	}
	data := make([]byte, st.Size())
	if _, err := f.ReadAt(data, 0); err != nil && st.Size() > 0 {
		return nil, fmt.Errorf("trust store: %s: %w", path, err)
	}
	var blocks []*pem.Block
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		blocks = append(blocks, b)
	}
	if len(blocks) == 0 {
		return nil, fmt.Errorf("trust store: %s holds no PEM block", path)
	}
	return blocks, nil
}

// NewTrustStore builds a trust store from parsed keys and CA certificates.
func NewTrustStore(keys []crypto.PublicKey, cas []*x509.Certificate) (*TrustStore, error) {
	if len(keys) == 0 && len(cas) == 0 {
		return nil, errors.New("trust store: no key and no CA configured (refusing to verify nothing)")
	}
	ts := &TrustStore{keys: map[string]crypto.PublicKey{}}
	for _, k := range keys {
		if err := CheckKey(k); err != nil {
			return nil, fmt.Errorf("trust store: %w", err)
		}
		id, err := KeyID(k)
		if err != nil {
			return nil, fmt.Errorf("trust store: %w", err)
		}
		if _, dup := ts.keys[id]; !dup {
			ts.keys[id] = k
			ts.ids = append(ts.ids, id)
		}
	}
	if len(cas) > 0 {
		ts.roots = x509.NewCertPool()
		for _, c := range cas {
			if !c.IsCA {
				return nil, fmt.Errorf("trust store: certificate %q is not a CA", c.Subject)
			}
			ts.roots.AddCert(c)
		}
		ts.nCAs = len(cas)
	}
	return ts, nil
}

// KeyIDs lists the ids of the pinned keys, in configuration order.
func (ts *TrustStore) KeyIDs() []string { return slices.Clone(ts.ids) }

// maxChain bounds the certificates accepted from a job document.
const maxChain = 8

// leafFromChain validates a PEM chain (leaf first, then intermediates) carried in a job
// document and returns the leaf's key. Every failure is UNTRUSTED_KEY: the key is not one the
// device may trust, whatever the signature says.
func (ts *TrustStore) leafFromChain(chainPEM []byte, now time.Time) (crypto.PublicKey, string, error) {
	if ts.roots == nil {
		return nil, "", reason.Errorf(reason.UntrustedKey, "the document carries a signing certificate but no CA is configured")
	}
	var certs []*x509.Certificate
	rest := chainPEM
	for len(certs) <= maxChain {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, "", reason.Errorf(reason.UntrustedKey, "certificate chain holds a %q block", clip(b.Type))
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, "", reason.Errorf(reason.UntrustedKey, "certificate chain: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 || len(certs) > maxChain {
		return nil, "", reason.Errorf(reason.UntrustedKey, "certificate chain must hold 1 to %d certificates", maxChain)
	}
	leaf := certs[0]
	// Go treats a certificate without EKU as good for anything; code signing must be explicit.
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageCodeSigning) {
		return nil, "", reason.Errorf(reason.UntrustedKey, "certificate %q lacks the code-signing extended key usage", clip(leaf.Subject.String()))
	}
	if leaf.KeyUsage != 0 && leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return nil, "", reason.Errorf(reason.UntrustedKey, "certificate %q lacks the digitalSignature key usage", clip(leaf.Subject.String()))
	}
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, "", reason.Errorf(reason.UntrustedKey, "certificate %q is valid from %s to %s, not at %s",
			clip(leaf.Subject.String()), leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: ts.roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	}); err != nil {
		return nil, "", reason.Errorf(reason.UntrustedKey, "certificate %q does not chain to a configured CA: %w", clip(leaf.Subject.String()), err)
	}
	if err := CheckKey(leaf.PublicKey); err != nil {
		return nil, "", reason.Errorf(reason.UntrustedKey, "certificate key: %w", err)
	}
	id, err := KeyID(leaf.PublicKey)
	if err != nil {
		return nil, "", reason.Errorf(reason.UntrustedKey, "certificate key: %w", err)
	}
	return leaf.PublicKey, id, nil
}
