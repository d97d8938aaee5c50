package verify

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"

	"github.com/fieldota/fieldota/internal/sigsubset/signature"
	"github.com/fieldota/fieldota/internal/sigsubset/signature/dsse"
	"github.com/fieldota/fieldota/ota/reason"
)

// PayloadType is the DSSE payload type of an in-toto Statement.
const PayloadType = "application/vnd.in-toto+json"

// MaxEnvelopeSize bounds a release statement's envelope: it travels inside a job document
// (≤ 32 KiB as created).
const MaxEnvelopeSize = 16 << 10

// maxEnvelopeSignatures bounds the signatures tried per envelope.
const maxEnvelopeSignatures = 8

// Envelope is a DSSE envelope as cosign writes it.
type Envelope struct {
	PayloadType string              `json:"payloadType"`
	Payload     string              `json:"payload"`
	Signatures  []EnvelopeSignature `json:"signatures"`
}

// EnvelopeSignature is one DSSE signature (base64). KeyID is empty (cosign's choice) or the
// fieldota key id of the key that made it; a signature naming another key is refused.
type EnvelopeSignature struct {
	KeyID string `json:"keyid"`
	Sig   string `json:"sig"`
}

// ParseEnvelope checks the structure of a DSSE envelope (JSON) without verifying it: size,
// payload type, base64 of payload and signatures, key ids. Failures are SIGNATURE_INVALID,
// since the envelope is signature material.
func ParseEnvelope(data []byte) (*Envelope, error) {
	if len(data) == 0 {
		return nil, reason.Errorf(reason.SignatureInvalid, "empty release statement envelope")
	}
	if len(data) > MaxEnvelopeSize {
		return nil, reason.Errorf(reason.SignatureInvalid, "release statement envelope larger than %d bytes", MaxEnvelopeSize)
	}
	var env Envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&env); err != nil {
		return nil, reason.Errorf(reason.SignatureInvalid, "release statement is not a DSSE envelope: %w", err)
	}
	if dec.More() {
		return nil, reason.Errorf(reason.SignatureInvalid, "release statement has data after the envelope")
	}
	if env.PayloadType != PayloadType {
		return nil, reason.Errorf(reason.SignatureInvalid, "envelope payloadType %q, want %q", clip(env.PayloadType), PayloadType)
	}
	if _, err := decodeB64(env.Payload); err != nil || env.Payload == "" {
		return nil, reason.Errorf(reason.SignatureInvalid, "envelope payload is not base64")
	}
	if len(env.Signatures) == 0 || len(env.Signatures) > maxEnvelopeSignatures {
		return nil, reason.Errorf(reason.SignatureInvalid, "envelope carries %d signatures (want 1 to %d)", len(env.Signatures), maxEnvelopeSignatures)
	}
	for i, s := range env.Signatures {
		if _, err := ParseSignature(s.Sig); err != nil {
			return nil, err
		}
		if s.KeyID != "" && !isKeyID(s.KeyID) {
			return nil, reason.Errorf(reason.SignatureInvalid, "envelope signature %d: keyid %q is neither empty nor a fieldota key id (64 lowercase hex digits)", i, clip(s.KeyID))
		}
	}
	return &env, nil
}

func isKeyID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// decodeB64 accepts standard and URL base64, as the DSSE specification allows.
func decodeB64(s string) ([]byte, error) {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.URLEncoding.DecodeString(s)
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

// verifyEnvelope returns the verified payload and the id of the key that signed it. Each
// signature is checked on its own: one naming a key id is tried only against that key (a
// trusted key id that does not verify is SIGNATURE_INVALID; an unknown one UNTRUSTED_KEY when no
// other signature verifies), an anonymous one against every candidate.
func verifyEnvelope(envJSON []byte, keys []candidate) ([]byte, string, error) {
	env, err := ParseEnvelope(envJSON)
	if err != nil {
		return nil, "", err
	}
	if len(keys) == 0 {
		return nil, "", reason.Errorf(reason.UntrustedKey, "release statement: no trusted key configured")
	}
	unknown := 0
	for _, s := range env.Signatures {
		cands := keys
		if s.KeyID != "" {
			cands = nil
			for _, c := range keys {
				if c.id == s.KeyID {
					cands = append(cands, c)
				}
			}
			if len(cands) == 0 {
				unknown++
				continue
			}
		}
		// The key is chosen: check this one signature alone, keyid cleared (sigstore would
		// compare it with its own notion of a key id, not fieldota's).
		one, err := json.Marshal(Envelope{PayloadType: env.PayloadType, Payload: env.Payload, Signatures: []EnvelopeSignature{{Sig: s.Sig}}})
		if err != nil {
			return nil, "", reason.Errorf(reason.Internal, "release statement: %w", err)
		}
		for _, c := range cands {
			for _, v := range dsseVerifiers(c.pub) {
				var payload []byte
				w := dsse.WrapVerifier(v, dsse.WithExpectedPayloadType(PayloadType), dsse.WithDecodedPayload(&payload))
				if err := w.VerifySignature(bytes.NewReader(one), nil); err == nil {
					return payload, c.id, nil
				}
			}
		}
	}
	if unknown == len(env.Signatures) {
		return nil, "", reason.Errorf(reason.UntrustedKey, "release statement is signed only by keys this device does not trust (keyid %s)", clip(env.Signatures[0].KeyID))
	}
	return nil, "", reason.Errorf(reason.SignatureInvalid, "release statement verifies under none of the %d trusted keys", len(keys))
}

// candidate is a key a signature may be checked against.
type candidate struct {
	id  string
	pub crypto.PublicKey
}
