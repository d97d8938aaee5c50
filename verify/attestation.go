package verify

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"

	"github.com/fieldota/fieldota/internal/sigsubset/signature"
	"github.com/fieldota/fieldota/internal/sigsubset/signature/dsse"
	"github.com/fieldota/fieldota/ota/reason"
)

// The attestation format: exactly what `cosign attest-blob --key k --type PredicateType
// --predicate pred.json file` writes.
const (
	// PayloadType is the DSSE payload type of an in-toto Statement.
	PayloadType = "application/vnd.in-toto+json"
	// PredicateType is fieldota's release predicate.
	PredicateType = "https://fieldota.dev/release/v1"
	// StatementV01 and StatementV1 are the accepted in-toto Statement types (cosign v2 writes v0.1).
	StatementV01 = "https://in-toto.io/Statement/v0.1"
	StatementV1  = "https://in-toto.io/Statement/v1"
)

// MaxEnvelopeSize bounds an attestation: it travels inside a job document (≤ 32 KiB).
const MaxEnvelopeSize = 16 << 10

// maxEnvelopeSignatures bounds the signatures tried per envelope.
const maxEnvelopeSignatures = 8

// Envelope is a DSSE envelope as cosign writes it.
type Envelope struct {
	PayloadType string              `json:"payloadType"`
	Payload     string              `json:"payload"`
	Signatures  []EnvelopeSignature `json:"signatures"`
}

// EnvelopeSignature is one DSSE signature (base64).
type EnvelopeSignature struct {
	KeyID string `json:"keyid"`
	Sig   string `json:"sig"`
}

// Statement is an in-toto Statement carrying fieldota's release predicate.
type Statement struct {
	Type          string    `json:"_type"`
	PredicateType string    `json:"predicateType"`
	Subject       []Subject `json:"subject"`
	Predicate     Predicate `json:"predicate"`
}

// Subject names one artifact by digest.
type Subject struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

// Predicate is what the release team signs about the artifact, the contents of
// the `--predicate pred.json` file given to cosign or written by `fieldota sign`.
type Predicate struct {
	Version        string   `json:"version"`
	Compatible     []string `json:"compatible,omitempty"`
	AllowDowngrade bool     `json:"allowDowngrade"`
}

// ParseEnvelope checks the structure of a DSSE envelope (JSON) without verifying it: size,
// payload type, base64 of payload and signatures. Failures are SIGNATURE_INVALID, since the
// attestation is signature material.
func ParseEnvelope(data []byte) (*Envelope, error) {
	if len(data) == 0 {
		return nil, reason.Errorf(reason.SignatureInvalid, "empty attestation")
	}
	if len(data) > MaxEnvelopeSize {
		return nil, reason.Errorf(reason.SignatureInvalid, "attestation larger than %d bytes", MaxEnvelopeSize)
	}
	var env Envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&env); err != nil {
		return nil, reason.Errorf(reason.SignatureInvalid, "attestation is not a DSSE envelope: %w", err)
	}
	if dec.More() {
		return nil, reason.Errorf(reason.SignatureInvalid, "attestation has data after the envelope")
	}
	if env.PayloadType != PayloadType {
		return nil, reason.Errorf(reason.SignatureInvalid, "attestation payloadType %q, want %q", clip(env.PayloadType), PayloadType)
	}
	if _, err := decodeB64(env.Payload); err != nil || env.Payload == "" {
		return nil, reason.Errorf(reason.SignatureInvalid, "attestation payload is not base64")
	}
	if len(env.Signatures) == 0 || len(env.Signatures) > maxEnvelopeSignatures {
		return nil, reason.Errorf(reason.SignatureInvalid, "attestation carries %d signatures (want 1 to %d)", len(env.Signatures), maxEnvelopeSignatures)
	}
	for _, s := range env.Signatures {
		if _, err := ParseSignature(s.Sig); err != nil {
			return nil, err
		}
	}
	return &env, nil
}

// decodeB64 accepts standard and URL base64, as the DSSE specification allows.
func decodeB64(s string) ([]byte, error) {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.URLEncoding.DecodeString(s)
}

// ParseStatement reads a Statement and checks its types and predicate strictly. It is only
// ever applied to a payload whose signature verified.
func ParseStatement(payload []byte) (*Statement, error) {
	var raw struct {
		Type          string          `json:"_type"`
		PredicateType string          `json:"predicateType"`
		Subject       []Subject       `json:"subject"`
		Predicate     json.RawMessage `json:"predicate"`
	}
	if err := json.Unmarshal(payload, &raw); err != nil {
		return nil, reason.Errorf(reason.InvalidDocument, "attestation statement: %w", err)
	}
	if raw.Type != StatementV01 && raw.Type != StatementV1 {
		return nil, reason.Errorf(reason.InvalidDocument, "attestation statement type %q is not an in-toto Statement v0.1 or v1", clip(raw.Type))
	}
	if raw.PredicateType != PredicateType {
		return nil, reason.Errorf(reason.InvalidDocument, "attestation predicateType %q, want %q", clip(raw.PredicateType), PredicateType)
	}
	if len(raw.Subject) == 0 {
		return nil, reason.Errorf(reason.InvalidDocument, "attestation has no subject")
	}
	st := &Statement{Type: raw.Type, PredicateType: raw.PredicateType, Subject: raw.Subject}
	dec := json.NewDecoder(bytes.NewReader(raw.Predicate))
	dec.DisallowUnknownFields() // the predicate is ours: an unknown key is a signing-side mistake
	if err := dec.Decode(&st.Predicate); err != nil {
		return nil, reason.Errorf(reason.InvalidDocument, "attestation predicate: %w", err)
	}
	if _, err := ParseVersion(st.Predicate.Version); err != nil {
		return nil, reason.Errorf(reason.InvalidDocument, "attestation predicate: %w", err)
	}
	for _, c := range st.Predicate.Compatible {
		if c == "" {
			return nil, reason.Errorf(reason.InvalidDocument, "attestation predicate: empty compatible name")
		}
	}
	return st, nil
}

// names reports whether the statement has a subject with this SHA-256.
func (st *Statement) names(digest []byte) bool {
	want := hex.EncodeToString(digest)
	for _, s := range st.Subject {
		if strings.EqualFold(s.Digest["sha256"], want) {
			return true
		}
	}
	return false
}

// dsseVerifiers are the sigstore verifiers a key may have signed an envelope with: SHA-256 for
// ECDSA and RSA (cosign's choice for P-256 and RSA keys), plus sigstore's default for the key
// (SHA-384 for P-384, which cosign uses), and pure Ed25519 — the PAE is small, so reading it
// whole is harmless.
func dsseVerifiers(pub crypto.PublicKey) []signature.Verifier {
	var out []signature.Verifier
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if v, err := signature.LoadECDSAVerifier(k, crypto.SHA256); err == nil {
			out = append(out, v)
		}
		if v, err := signature.LoadECDSAVerifier(k, crypto.SHA384); err == nil && k.Curve.Params().BitSize == 384 {
			out = append(out, v)
		}
	case *rsa.PublicKey:
		if v, err := signature.LoadRSAPKCS1v15Verifier(k, crypto.SHA256); err == nil {
			out = append(out, v)
		}
	case ed25519.PublicKey:
		if v, err := signature.LoadED25519Verifier(k); err == nil {
			out = append(out, v)
		}
	}
	return out
}

// verifyEnvelope returns the verified payload and the id of the key that signed it.
func verifyEnvelope(envJSON []byte, keys []candidate) ([]byte, string, error) {
	if _, err := ParseEnvelope(envJSON); err != nil {
		return nil, "", err
	}
	for _, c := range keys {
		for _, v := range dsseVerifiers(c.pub) {
			var payload []byte
			w := dsse.WrapVerifier(v, dsse.WithExpectedPayloadType(PayloadType), dsse.WithDecodedPayload(&payload))
			if err := w.VerifySignature(bytes.NewReader(envJSON), nil); err == nil {
				return payload, c.id, nil
			}
		}
	}
	return nil, "", reason.Errorf(reason.SignatureInvalid, "attestation verifies under none of the %d trusted keys", len(keys))
}

// candidate is a key a signature may be checked against.
type candidate struct {
	id  string
	pub crypto.PublicKey
}
