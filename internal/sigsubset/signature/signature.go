// Package signature mirrors the verifiers of github.com/sigstore/sigstore/pkg/signature that the
// device uses — same constructors, same VerifySignature semantics — on the standard library
// (see package sigsubset for why).
package signature

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"
)

// VerifyOption is an option of VerifySignature (package options).
type VerifyOption interface {
	ApplyDigest(*[]byte)
	ApplyCryptoSignerOpts(*crypto.SignerOpts)
}

// Verifier checks a signature over a message (or a digest given with options.WithDigest).
type Verifier interface {
	PublicKey() (crypto.PublicKey, error)
	VerifySignature(signature, message io.Reader, opts ...VerifyOption) error
}

// The hashes sigstore accepts for verifying, less SHA-1 and SHA-224, which no fieldota signature
// uses.
var verifyHashes = []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512}

// digestFor returns the digest to verify: the one an option supplies (its length checked
// against the hash), or the message hashed with the hash in force; hash 0 means the message
// itself (Ed25519).
func digestFor(message io.Reader, def crypto.Hash, allowed []crypto.Hash, opts []VerifyOption) ([]byte, crypto.Hash, error) {
	var digest []byte
	var so crypto.SignerOpts = def
	for _, o := range opts {
		o.ApplyDigest(&digest)
		o.ApplyCryptoSignerOpts(&so)
	}
	h := so.HashFunc()
	if !slices.Contains(allowed, h) {
		return nil, 0, fmt.Errorf("unsupported hash algorithm: %q not in %v", h.String(), allowed)
	}
	if len(digest) > 0 {
		if h != 0 && len(digest) != h.Size() {
			return nil, 0, errors.New("unexpected length of digest for hash function specified")
		}
		return digest, h, nil
	}
	if message == nil {
		return nil, 0, errors.New("message cannot be nil")
	}
	if h == 0 {
		b, err := io.ReadAll(message)
		return b, h, err
	}
	w := h.New()
	if _, err := io.Copy(w, message); err != nil {
		return nil, 0, fmt.Errorf("hashing message: %w", err)
	}
	return w.Sum(nil), h, nil
}

func readSig(r io.Reader) ([]byte, error) {
	if r == nil {
		return nil, errors.New("nil signature passed to VerifySignature")
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("reading signature: %w", err)
	}
	return b, nil
}

// ECDSAVerifier verifies ECDSA signatures, ASN.1 DER or IEEE P1363 (r‖s) encoded.
type ECDSAVerifier struct {
	pub *ecdsa.PublicKey
	h   crypto.Hash
}

// LoadECDSAVerifier returns a verifier for pub that hashes messages with h.
func LoadECDSAVerifier(pub *ecdsa.PublicKey, h crypto.Hash) (*ECDSAVerifier, error) {
	if pub == nil {
		return nil, errors.New("invalid ECDSA public key specified")
	}
	if !slices.Contains(verifyHashes, h) {
		return nil, errors.New("invalid hash function specified")
	}
	return &ECDSAVerifier{pub: pub, h: h}, nil
}

// PublicKey returns the key.
func (v *ECDSAVerifier) PublicKey() (crypto.PublicKey, error) { return v.pub, nil }

// VerifySignature checks sig over message or the digest of options.WithDigest.
func (v *ECDSAVerifier) VerifySignature(signature, message io.Reader, opts ...VerifyOption) error {
	digest, _, err := digestFor(message, v.h, verifyHashes, opts)
	if err != nil {
		return err
	}
	sig, err := readSig(signature)
	if err != nil {
		return err
	}
	if _, err := v.pub.ECDH(); err != nil { // the point is on the curve (VerifyASN1 would panic)
		return fmt.Errorf("invalid ECDSA public key for %s", v.pub.Params().Name)
	}
	var rs struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(sig, &rs); err == nil {
		if !ecdsa.VerifyASN1(v.pub, digest, sig) {
			return errors.New("invalid signature when validating ASN.1 encoded signature")
		}
		return nil
	}
	if len(sig) == 0 || len(sig) > 132 || len(sig)%2 != 0 {
		return errors.New("ecdsa: Invalid IEEE_P1363 encoded bytes")
	}
	r, s := new(big.Int).SetBytes(sig[:len(sig)/2]), new(big.Int).SetBytes(sig[len(sig)/2:])
	if !ecdsa.Verify(v.pub, digest, r, s) {
		return errors.New("invalid signature when validating IEEE_P1363 encoded signature")
	}
	return nil
}

// RSAPKCS1v15Verifier verifies RSA PKCS #1 v1.5 signatures.
type RSAPKCS1v15Verifier struct {
	pub *rsa.PublicKey
	h   crypto.Hash
}

// LoadRSAPKCS1v15Verifier returns a verifier for pub that hashes messages with h.
func LoadRSAPKCS1v15Verifier(pub *rsa.PublicKey, h crypto.Hash) (*RSAPKCS1v15Verifier, error) {
	if pub == nil {
		return nil, errors.New("invalid RSA public key specified")
	}
	if !slices.Contains(verifyHashes, h) {
		return nil, errors.New("invalid hash function specified")
	}
	return &RSAPKCS1v15Verifier{pub: pub, h: h}, nil
}

// PublicKey returns the key.
func (v *RSAPKCS1v15Verifier) PublicKey() (crypto.PublicKey, error) { return v.pub, nil }

// VerifySignature checks sig over message or the digest of options.WithDigest.
func (v *RSAPKCS1v15Verifier) VerifySignature(signature, message io.Reader, opts ...VerifyOption) error {
	digest, h, err := digestFor(message, v.h, verifyHashes, opts)
	if err != nil {
		return err
	}
	sig, err := readSig(signature)
	if err != nil {
		return err
	}
	return rsa.VerifyPKCS1v15(v.pub, h, digest, sig)
}

// RSAPSSVerifier verifies RSA-PSS signatures.
type RSAPSSVerifier struct {
	pub  *rsa.PublicKey
	h    crypto.Hash
	opts *rsa.PSSOptions
}

// LoadRSAPSSVerifier returns a verifier for pub that hashes messages with h; nil opts accept
// any salt length.
func LoadRSAPSSVerifier(pub *rsa.PublicKey, h crypto.Hash, opts *rsa.PSSOptions) (*RSAPSSVerifier, error) {
	if pub == nil {
		return nil, errors.New("invalid RSA public key specified")
	}
	if !slices.Contains(verifyHashes, h) {
		return nil, errors.New("invalid hash function specified")
	}
	return &RSAPSSVerifier{pub: pub, h: h, opts: opts}, nil
}

// PublicKey returns the key.
func (v *RSAPSSVerifier) PublicKey() (crypto.PublicKey, error) { return v.pub, nil }

// VerifySignature checks sig over message or the digest of options.WithDigest.
func (v *RSAPSSVerifier) VerifySignature(signature, message io.Reader, opts ...VerifyOption) error {
	digest, h, err := digestFor(message, v.h, verifyHashes, opts)
	if err != nil {
		return err
	}
	sig, err := readSig(signature)
	if err != nil {
		return err
	}
	pss := v.opts
	if pss == nil {
		pss = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}
	}
	return rsa.VerifyPSS(v.pub, h, digest, sig, pss)
}

// ED25519Verifier verifies pure Ed25519 signatures over the message.
type ED25519Verifier struct {
	pub ed25519.PublicKey
}

// LoadED25519Verifier returns a verifier for pub.
func LoadED25519Verifier(pub ed25519.PublicKey) (*ED25519Verifier, error) {
	if pub == nil {
		return nil, errors.New("invalid ED25519 public key specified")
	}
	if len(pub) != ed25519.PublicKeySize {
		return nil, errors.New("invalid size for ED25519 key")
	}
	return &ED25519Verifier{pub: pub}, nil
}

// PublicKey returns the key.
func (v *ED25519Verifier) PublicKey() (crypto.PublicKey, error) { return v.pub, nil }

// VerifySignature checks sig over the whole message; options are ignored, as sigstore does.
func (v *ED25519Verifier) VerifySignature(signature, message io.Reader, _ ...VerifyOption) error {
	msg, _, err := digestFor(message, 0, []crypto.Hash{0}, nil)
	if err != nil {
		return err
	}
	sig, err := readSig(signature)
	if err != nil {
		return err
	}
	if !ed25519.Verify(v.pub, msg, sig) {
		return errors.New("failed to verify signature")
	}
	return nil
}
