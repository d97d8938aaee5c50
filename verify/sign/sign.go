// Package sign makes what package verify checks: key pairs, detached signatures over a file's
// SHA-256 (cosign `sign-blob` format), AWS-style `codesign` objects, and DSSE attestations
// byte-compatible with `cosign attest-blob --type https://fieldota.dev/release/v1`. It is used
// by the fieldota CLI and the tests; the device agent never links it.
package sign

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"

	"github.com/fieldota/fieldota/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/dsse"
	"github.com/sigstore/sigstore/pkg/signature/options"
)

// KeyTypes accepted by GenerateKey; the first is the default.
var KeyTypes = []string{"ecdsa-p256", "ed25519", "ecdsa-p384", "rsa-3072"}

// GenerateKey makes a new private key of one of KeyTypes.
func GenerateKey(kind string) (crypto.Signer, error) {
	switch kind {
	case "", "ecdsa-p256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ecdsa-p384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case "rsa-3072":
		return rsa.GenerateKey(rand.Reader, 3072)
	}
	return nil, fmt.Errorf("key type %q: want one of %v", kind, KeyTypes)
}

// WriteKeyPair writes the private key (PKCS#8 PEM, mode 0600, never overwriting) and the
// public key (PEM, 0644). It returns the key id.
func WriteKeyPair(priv crypto.Signer, privPath, pubPath string) (string, error) {
	privPEM, err := cryptoutils.MarshalPrivateKeyToPEM(priv)
	if err != nil {
		return "", err
	}
	pubPEM, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		return "", err
	}
	if err := writeNew(privPath, privPEM, 0o600); err != nil {
		return "", err
	}
	if err := writeNew(pubPath, pubPEM, 0o644); err != nil {
		return "", err
	}
	return verify.KeyID(priv.Public())
}

// writeNew creates path exclusively: a key is never silently replaced.
func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// PasswordEnv names the environment variable holding the password of an encrypted key
// (cosign's encrypted keys included); unset means the key is not encrypted.
const PasswordEnv = "FIELDOTA_KEY_PASSWORD"

// LoadPrivateKey reads a PEM private key: PKCS#8, PKCS#1, SEC1 EC, or an encrypted cosign key
// (password from FIELDOTA_KEY_PASSWORD).
func LoadPrivateKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pw := []byte(os.Getenv(PasswordEnv))
	k, err := cryptoutils.UnmarshalPEMToPrivateKey(data, cryptoutils.StaticPasswordFunc(pw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: key type %T cannot sign", path, k)
	}
	if err := verify.CheckKey(s.Public()); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// DigestFile streams a file through SHA-256.
func DigestFile(name string) (digest []byte, size int64, err error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, 0, err
	}
	return h.Sum(nil), n, nil
}

// SignDigest signs a file's SHA-256 with alg ("" = the key's default). ECDSA returns ASN.1
// DER, as cosign sign-blob and openssl do.
func SignDigest(key crypto.Signer, alg verify.Algorithm, digest []byte) ([]byte, error) {
	if alg == "" {
		var err error
		if alg, err = verify.AlgorithmFor(key.Public()); err != nil {
			return nil, err
		}
	}
	var (
		sv  signature.SignerVerifier
		err error
	)
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		if alg != verify.ECDSASHA256 {
			return nil, fmt.Errorf("an ECDSA key cannot make %s signatures", alg)
		}
		sv, err = signature.LoadECDSASignerVerifier(k, crypto.SHA256)
	case *rsa.PrivateKey:
		switch alg {
		case verify.RSASHA256:
			sv, err = signature.LoadRSAPKCS1v15SignerVerifier(k, crypto.SHA256)
		case verify.RSAPSSSHA256:
			sv, err = signature.LoadRSAPSSSignerVerifier(k, crypto.SHA256, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		default:
			return nil, fmt.Errorf("an RSA key cannot make %s signatures", alg)
		}
	case ed25519.PrivateKey:
		if alg != verify.Ed25519SHA256 {
			return nil, fmt.Errorf("an Ed25519 key cannot make %s signatures", alg)
		}
		// fieldota's convention: the message is the 32-byte digest (docs/signing.md).
		return ed25519.Sign(k, digest), nil
	default:
		return nil, fmt.Errorf("key type %T not supported", key)
	}
	if err != nil {
		return nil, err
	}
	return sv.SignMessage(nil, options.WithDigest(digest), options.WithCryptoSignerOpts(crypto.SHA256))
}

// Codesign is the AWS code-signing object of a job document file entry.
type Codesign struct {
	Signature          string `json:"signature"`
	SignatureAlgorithm string `json:"signatureAlgorithm"`
	RawPayloadSize     int64  `json:"rawPayloadSize"`
	KeyID              string `json:"keyId,omitempty"`            // fieldota extension
	CertificateChain   string `json:"certificateChain,omitempty"` // PEM, leaf first
}

// MakeCodesign signs digest and wraps the signature as a codesign object naming the key.
func MakeCodesign(key crypto.Signer, alg verify.Algorithm, digest []byte, size int64) (Codesign, error) {
	if alg == "" {
		var err error
		if alg, err = verify.AlgorithmFor(key.Public()); err != nil {
			return Codesign{}, err
		}
	}
	sig, err := SignDigest(key, alg, digest)
	if err != nil {
		return Codesign{}, err
	}
	id, err := verify.KeyID(key.Public())
	if err != nil {
		return Codesign{}, err
	}
	return Codesign{Signature: base64.StdEncoding.EncodeToString(sig), SignatureAlgorithm: string(alg), RawPayloadSize: size, KeyID: id}, nil
}

// PredicateJSON is the predicate file a release team hands to `cosign attest-blob --predicate`.
func PredicateJSON(p verify.Predicate) ([]byte, error) {
	return json.MarshalIndent(p, "", "  ")
}

// statement mirrors in-toto-golang's Statement as cosign marshals it: header fields in this
// order, the predicate as a generic map (so its keys come out sorted, as cosign's do).
type statement struct {
	Type          string           `json:"_type"`
	PredicateType string           `json:"predicateType"`
	Subject       []verify.Subject `json:"subject"`
	Predicate     map[string]any   `json:"predicate"`
}

// StatementJSON is the in-toto Statement v0.1 cosign attest-blob builds for a file named name
// (cosign uses the path's base name) with the given predicate file contents.
func StatementJSON(name string, digest []byte, predicateFile []byte) ([]byte, error) {
	return ReleaseStatementJSON([]verify.Subject{Subject(name, digest)}, predicateFile)
}

// Subject names one file of a release by its base name and SHA-256.
func Subject(name string, digest []byte) verify.Subject {
	return verify.Subject{Name: path.Base(name), Digest: map[string]string{"sha256": hex.EncodeToString(digest)}}
}

// ReleaseStatementJSON is the Statement of a release of one or more files, in cosign's layout.
func ReleaseStatementJSON(subjects []verify.Subject, predicateFile []byte) ([]byte, error) {
	var pred map[string]any
	dec := json.NewDecoder(bytes.NewReader(predicateFile))
	dec.UseNumber() // sizes stay exact integers
	if err := dec.Decode(&pred); err != nil {
		return nil, fmt.Errorf("predicate: %w", err)
	}
	if pred == nil {
		return nil, errors.New("predicate: not a JSON object")
	}
	return json.Marshal(statement{Type: verify.StatementV01, PredicateType: verify.PredicateType, Subject: subjects, Predicate: pred})
}

// Attest builds the DSSE envelope (JSON, as cosign prints it, without the trailing newline)
// over the Statement for one file. ECDSA and RSA sign SHA-256(PAE), Ed25519 signs PAE itself.
// Its keyid is empty, as cosign leaves it.
func Attest(key crypto.Signer, name string, digest []byte, p verify.Predicate) ([]byte, error) {
	predFile, err := PredicateJSON(p)
	if err != nil {
		return nil, err
	}
	payload, err := ReleaseStatementJSON([]verify.Subject{Subject(name, digest)}, predFile)
	if err != nil {
		return nil, err
	}
	return Envelope(key, payload)
}

// AttestRelease signs the release statement of every file of a release, naming the key in the
// signature's keyid (its fieldota key id), so a device tells a statement by a key it does not
// trust (UNTRUSTED_KEY) from a forged one (SIGNATURE_INVALID).
func AttestRelease(key crypto.Signer, subjects []verify.Subject, p verify.Predicate) ([]byte, error) {
	predFile, err := PredicateJSON(p)
	if err != nil {
		return nil, err
	}
	payload, err := ReleaseStatementJSON(subjects, predFile)
	if err != nil {
		return nil, err
	}
	env, err := Envelope(key, payload)
	if err != nil {
		return nil, err
	}
	id, err := verify.KeyID(key.Public())
	if err != nil {
		return nil, err
	}
	var e verify.Envelope
	if err := json.Unmarshal(env, &e); err != nil {
		return nil, err
	}
	for i := range e.Signatures {
		e.Signatures[i].KeyID = id // not covered by the signature (DSSE): a hint, checked on use
	}
	return json.Marshal(e)
}

// Envelope signs any in-toto payload into a DSSE envelope with sigstore's DSSE wrapper,
// the code path cosign uses.
func Envelope(key crypto.Signer, payload []byte) ([]byte, error) {
	var (
		sv  signature.SignerVerifier
		err error
	)
	switch k := key.(type) {
	case *rsa.PrivateKey:
		sv, err = signature.LoadRSAPKCS1v15SignerVerifier(k, crypto.SHA256)
	default:
		sv, err = signature.LoadSignerVerifier(key, crypto.SHA256)
	}
	if err != nil {
		return nil, err
	}
	return dsse.WrapSigner(sv, verify.PayloadType).SignMessage(bytes.NewReader(payload))
}

// LoadCertificateChain reads a PEM chain (leaf first) for a codesign object and checks that the
// leaf certifies key, so a mismatched certificate is caught when signing, not on the device.
func LoadCertificateChain(path string, key crypto.Signer) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	certs, err := cryptoutils.UnmarshalCertificatesFromPEMLimited(data, 8)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if len(certs) == 0 {
		return "", fmt.Errorf("%s: no certificate", path)
	}
	leafID, err := verify.KeyID(certs[0].PublicKey)
	if err != nil {
		return "", err
	}
	keyID, err := verify.KeyID(key.Public())
	if err != nil {
		return "", err
	}
	if leafID != keyID {
		return "", fmt.Errorf("%s: the first certificate is for key %s, not the signing key %s", path, leafID, keyID)
	}
	return string(data), nil
}
