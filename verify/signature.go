package verify

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/fieldota/fieldota/internal/sigsubset/signature"
	"github.com/fieldota/fieldota/internal/sigsubset/signature/options"
	"github.com/fieldota/fieldota/ota/reason"
)

// Algorithm names a detached-signature scheme, spelled like the AWS code-signing
// `signatureAlgorithm` field. Every scheme signs the SHA-256 of the raw file bytes.
type Algorithm string

const (
	// ECDSA (P-256 or P-384) over SHA-256(file), ASN.1 DER: AWS Signer, FreeRTOS
	// sig-sha256-ecdsa, `openssl dgst -sha256 -sign`, `cosign sign-blob` (P-256 keys).
	ECDSASHA256 Algorithm = "SHA256withECDSA"
	// RSA PKCS#1 v1.5 over SHA-256(file): `openssl dgst -sha256 -sign` with an RSA key.
	RSASHA256 Algorithm = "SHA256withRSA"
	// RSA-PSS (salt length = hash length when signing, any when verifying) over SHA-256(file).
	RSAPSSSHA256 Algorithm = "SHA256withRSA/PSS"
	// Ed25519 over the 32-byte SHA-256(file) — fieldota's convention, not cosign's (cosign's
	// Ed25519 signs the whole file, which cannot be verified without reading it again).
	Ed25519SHA256 Algorithm = "SHA256withEd25519"
)

// Algorithms lists the accepted names.
var Algorithms = []Algorithm{ECDSASHA256, RSASHA256, RSAPSSSHA256, Ed25519SHA256}

// ParseAlgorithm accepts the names of Algorithms; "" means "from the key's type" (ECDSA,
// PKCS#1 v1.5 for RSA, Ed25519). SHA-1 schemes are refused.
func ParseAlgorithm(s string) (Algorithm, error) {
	if s == "" {
		return "", nil
	}
	for _, a := range Algorithms {
		if s == string(a) {
			return a, nil
		}
	}
	return "", reason.Errorf(reason.SignatureInvalid, "signature algorithm %q not supported (want one of %v)", clip(s), Algorithms)
}

// AlgorithmFor is the default algorithm for a key.
func AlgorithmFor(pub crypto.PublicKey) (Algorithm, error) {
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return ECDSASHA256, nil
	case *rsa.PublicKey:
		return RSASHA256, nil
	case ed25519.PublicKey:
		return Ed25519SHA256, nil
	}
	return "", fmt.Errorf("key type %T not supported", pub)
}

// fits reports whether a key can produce signatures of algorithm a.
func (a Algorithm) fits(pub crypto.PublicKey) bool {
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return a == ECDSASHA256
	case *rsa.PublicKey:
		return a == RSASHA256 || a == RSAPSSSHA256
	case ed25519.PublicKey:
		return a == Ed25519SHA256
	}
	return false
}

// Limits on encoded signatures: RSA-4096 is 512 bytes, DER ECDSA P-384 at most 104.
const (
	maxSignatureBytes  = 1024
	maxSignatureBase64 = 2048
)

// ParseSignature decodes a base64 signature as it appears in a job document or in a
// `cosign sign-blob` output file (standard alphabet; surrounding whitespace ignored).
// Every failure is SIGNATURE_INVALID.
func ParseSignature(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, reason.Errorf(reason.SignatureInvalid, "empty signature")
	}
	if len(s) > maxSignatureBase64 {
		return nil, reason.Errorf(reason.SignatureInvalid, "signature longer than %d base64 characters", maxSignatureBase64)
	}
	sig, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, reason.Errorf(reason.SignatureInvalid, "signature is not valid base64: %w", err)
	}
	if len(sig) == 0 || len(sig) > maxSignatureBytes {
		return nil, reason.Errorf(reason.SignatureInvalid, "signature of %d bytes", len(sig))
	}
	return sig, nil
}

// verifyDigest checks sig over a SHA-256 digest with one key. ECDSA and RSA go through
// sigstore's verifiers with options.WithDigest, so the payload is never read again; Ed25519
// verifies the 32-byte digest itself as its message (fieldota's convention, see Ed25519SHA256).
func verifyDigest(pub crypto.PublicKey, alg Algorithm, digest, sig []byte) error {
	var (
		v   signature.Verifier
		err error
	)
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		v, err = signature.LoadECDSAVerifier(k, crypto.SHA256)
	case *rsa.PublicKey:
		if alg == RSAPSSSHA256 {
			v, err = signature.LoadRSAPSSVerifier(k, crypto.SHA256, nil)
		} else {
			v, err = signature.LoadRSAPKCS1v15Verifier(k, crypto.SHA256)
		}
	case ed25519.PublicKey:
		v, err = signature.LoadED25519Verifier(k)
		if err != nil {
			return err
		}
		return v.VerifySignature(bytes.NewReader(sig), bytes.NewReader(digest))
	default:
		return fmt.Errorf("key type %T not supported", pub)
	}
	if err != nil {
		return err
	}
	return v.VerifySignature(bytes.NewReader(sig), nil, options.WithDigest(digest), options.WithCryptoSignerOpts(crypto.SHA256))
}
