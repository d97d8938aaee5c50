package jobdoc

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/fieldota/fieldota/ota/names"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify"
)

var (
	fileKeys     = []string{"fileName", "url", "size", "sha256", "codesign", "sig-sha256-ecdsa", "mode"}
	codesignKeys = []string{"signature", "signatureAlgorithm", "rawPayloadSize", "keyId", "certificateChain"}
)

// files reads `files`: one object, or an array of objects. Without a release statement every
// entry must state its size and sha256 (nothing else says what the bytes are).
func files(top map[string]json.RawMessage, opt Options, attested bool, unknown *[]string) ([]File, error) {
	raw, ok := top["files"]
	if !ok || isNull(raw) {
		return nil, invalid("files is required")
	}
	var entries []json.RawMessage
	switch firstByte(raw) {
	case '{':
		entries = []json.RawMessage{raw}
	case '[':
		if err := json.Unmarshal(raw, &entries); err != nil {
			return nil, invalid("files: %w", err)
		}
	default:
		return nil, invalid("files must be an object or an array of objects")
	}
	if len(entries) == 0 || len(entries) > MaxFiles {
		return nil, invalid("files: %d entries (want 1 to %d)", len(entries), MaxFiles)
	}
	out := make([]File, 0, len(entries))
	for i, e := range entries {
		at := fmt.Sprintf("files[%d]", i)
		f, err := file(e, opt, attested, at, unknown)
		if err != nil {
			return nil, err
		}
		if slices.ContainsFunc(out, func(g File) bool { return g.FileName == f.FileName }) {
			return nil, invalid("%s.fileName %q appears twice", at, names.Clip(f.FileName))
		}
		out = append(out, f)
	}
	return out, nil
}

func file(raw json.RawMessage, opt Options, attested bool, at string, unknown *[]string) (File, error) {
	f := File{Size: -1}
	if firstByte(raw) != '{' {
		return f, invalid("%s must be an object", at)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return f, invalid("%s: %w", at, err)
	}
	if _, ok := m["attestation"]; ok {
		return f, invalid("%s.attestation: one release statement (the document's attestation) signs every file; per-file attestations are not accepted", at)
	}
	for k := range m {
		if !slices.Contains(fileKeys, k) {
			*unknown = append(*unknown, at+"."+names.Clip(k))
		}
	}
	var err error
	if f.FileName, err = reqString(m, "fileName"); err != nil {
		return f, prefix(at, err)
	}
	if err := names.Name(f.FileName); err != nil {
		return f, invalid("%s.fileName: %w", at, err)
	}
	if f.URL, err = reqString(m, "url"); err != nil {
		return f, prefix(at, err)
	}
	if err := checkURL(f.URL, opt); err != nil {
		return f, invalid("%s.url: %w", at, err)
	}
	if _, ok := m["size"]; ok || !attested {
		if f.Size, err = reqInt(m, "size"); err != nil {
			return f, prefix(at, err)
		}
		if f.Size < 0 || f.Size > MaxFileSize {
			return f, invalid("%s.size %d out of range", at, f.Size)
		}
	}
	if _, ok := m["sha256"]; ok || !attested {
		h, err := reqString(m, "sha256")
		if err != nil {
			return f, prefix(at, err)
		}
		if f.SHA256, err = hex.DecodeString(h); err != nil || len(f.SHA256) != 32 {
			return f, invalid("%s.sha256 must be 64 hex digits", at)
		}
	}
	if f.Codesign, err = codesign(m, at, unknown); err != nil {
		return f, err
	}
	if f.SigSHA256ECDSA, err = optString(m, "sig-sha256-ecdsa"); err != nil {
		return f, prefix(at, err)
	}
	if f.SigSHA256ECDSA != "" {
		if f.Codesign != nil {
			return f, invalid("%s carries both codesign and sig-sha256-ecdsa: sign once", at)
		}
		if _, err := verify.ParseSignature(f.SigSHA256ECDSA); err != nil {
			return f, invalid("%s.sig-sha256-ecdsa: %w", at, err)
		}
	}
	mode, err := optString(m, "mode")
	if err != nil {
		return f, prefix(at, err)
	}
	if mode != "" {
		if f.Mode, err = names.ParseMode(mode); err != nil {
			return f, invalid("%s.%w", at, err)
		}
	}
	return f, nil
}

func codesign(m map[string]json.RawMessage, at string, unknown *[]string) (*Codesign, error) {
	raw, ok := m["codesign"]
	if !ok {
		return nil, nil
	}
	at += ".codesign"
	if firstByte(raw) != '{' {
		return nil, invalid("%s must be an object", at)
	}
	var cm map[string]json.RawMessage
	if err := json.Unmarshal(raw, &cm); err != nil {
		return nil, invalid("%s: %w", at, err)
	}
	for k := range cm {
		if !slices.Contains(codesignKeys, k) { // payloadLocation, hashAlgorithm… are AWS bookkeeping
			*unknown = append(*unknown, at+"."+names.Clip(k))
		}
	}
	c := &Codesign{}
	var err error
	if c.Signature, err = reqString(cm, "signature"); err != nil {
		return nil, prefix(at, err)
	}
	if _, err := verify.ParseSignature(c.Signature); err != nil {
		return nil, invalid("%s.signature: %w", at, err)
	}
	if c.SignatureAlgorithm, err = optString(cm, "signatureAlgorithm"); err != nil {
		return nil, prefix(at, err)
	}
	if _, err := verify.ParseAlgorithm(c.SignatureAlgorithm); err != nil {
		return nil, invalid("%s.signatureAlgorithm: %w", at, err)
	}
	if _, ok := cm["rawPayloadSize"]; ok {
		if c.RawPayloadSize, err = reqInt(cm, "rawPayloadSize"); err != nil {
			return nil, prefix(at, err)
		}
		if c.RawPayloadSize <= 0 {
			return nil, invalid("%s.rawPayloadSize must be positive", at)
		}
	}
	if c.KeyID, err = optString(cm, "keyId"); err != nil {
		return nil, prefix(at, err)
	}
	if c.KeyID != "" {
		if b, err := hex.DecodeString(c.KeyID); err != nil || len(b) != 32 || strings.ToLower(c.KeyID) != c.KeyID {
			return nil, invalid("%s.keyId must be 64 lowercase hex digits", at)
		}
	}
	if c.CertificateChain, err = certChain(cm, at); err != nil {
		return nil, err
	}
	return c, nil
}

// certChain accepts a PEM string, or AWS's CustomCodeSigning shape
// {"certificateName": …, "inlineDocument": "<base64 of the PEM chain>"}.
func certChain(cm map[string]json.RawMessage, at string) ([]byte, error) {
	raw, ok := cm["certificateChain"]
	if !ok {
		return nil, nil
	}
	at += ".certificateChain"
	var pemText []byte
	switch firstByte(raw) {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, invalid("%s: %w", at, err)
		}
		pemText = []byte(s)
	case '{':
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil {
			return nil, invalid("%s: %w", at, err)
		}
		doc, err := reqString(obj, "inlineDocument")
		if err != nil {
			return nil, prefix(at, err)
		}
		if pemText, err = base64.StdEncoding.DecodeString(doc); err != nil {
			return nil, invalid("%s.inlineDocument is not base64", at)
		}
		if _, err := optString(obj, "certificateName"); err != nil {
			return nil, prefix(at, err)
		}
	default:
		return nil, invalid("%s must be a PEM string or an object with inlineDocument", at)
	}
	if len(pemText) == 0 || len(pemText) > maxChainPEM || !bytes.Contains(pemText, []byte("-----BEGIN CERTIFICATE-----")) {
		return nil, invalid("%s must hold PEM certificates (at most %d bytes)", at, maxChainPEM)
	}
	return pemText, nil
}

// attestation reads the release statement: base64 of the envelope JSON (what `fieldota job`
// writes), or the envelope as a JSON object.
func attestation(m map[string]json.RawMessage, key string) ([]byte, error) {
	raw, ok := m[key]
	if !ok {
		return nil, nil
	}
	var env []byte
	switch firstByte(raw) {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, invalid("%s: %w", key, err)
		}
		var err error
		if env, err = base64.StdEncoding.DecodeString(strings.TrimSpace(s)); err != nil {
			return nil, invalid("%s: %w", key, reason.Errorf(reason.SignatureInvalid, "not base64"))
		}
	case '{':
		env = bytes.Clone(raw)
	default:
		return nil, invalid("%s must be a base64 string or a DSSE envelope object", key)
	}
	if _, err := verify.ParseEnvelope(env); err != nil {
		return nil, invalid("%s: %w", key, err)
	}
	return env, nil
}
