// Package jobdoc parses and validates fieldota's AWS IoT job document (docs/job-document.md)
// into typed structs. It is strict about the fields it knows — types, sizes, paths, URLs,
// encodings — and ignores (but lists) keys it does not know, because AWS tooling adds its own
// (`presign`, `payloadLocation`, …). Every refusal is INVALID_DOCUMENT, except an unknown
// operation (UNSUPPORTED_OPERATION); a malformed signature also matches SIGNATURE_INVALID
// through the wrapped cause. Signatures are checked cryptographically by package verify.
package jobdoc

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify"
)

// Limits. AWS caps a job document at 32768 characters as created (placeholders unexpanded);
// the device receives it with presigned URLs expanded (~1.5 KB each), so the device accepts more.
const (
	MaxAuthoredSize = 32768 // what `fieldota job` may write (AWS CreateJob limit)
	MaxDocumentSize = 65536 // what the device accepts, after URL expansion
	MaxFiles        = 16
	MaxURLLength    = 8192
	MaxFileSize     = int64(1) << 42
	MaxCompatible   = 64
	maxNameLen      = 255
	maxCompatLen    = 128
	maxDepth        = 16
	maxChainPEM     = 16 << 10
)

// Operations and targets.
const (
	OperationInstall = "install"

	TargetFiles  Target = "files"
	TargetSlot   Target = "slot"
	TargetBinary Target = "binary"
)

// Target says which installer takes the files.
type Target string

// Document is a validated job document.
type Document struct {
	Operation        string
	Version          string // "" only when an attestation carries it
	PackageName      string
	AutoStart        bool
	WorkingDirectory string // cleaned absolute path (target files only)
	Target           Target
	Files            []File
	Attestation      []byte   // DSSE envelope JSON for every file without its own; nil = none
	Compatible       []string // nil = not stated
	Unknown          []string // keys fieldota ignored, e.g. "presign", "files[0].fileType"
}

// File is one payload of a document.
type File struct {
	FileName       string
	URL            string // https (http only if allowed), or an unexpanded presigned placeholder if allowed
	Size           int64
	SHA256         []byte
	Codesign       *Codesign
	SigSHA256ECDSA string      // FreeRTOS-style base64 DER signature
	Mode           os.FileMode // permission bits for target files; 0 = installer default
	Attestation    []byte      // this file's own DSSE envelope JSON; nil = the document's
}

// Codesign is the AWS code-signing object of a file entry.
type Codesign struct {
	Signature          string // base64
	SignatureAlgorithm string // verify.Algorithm name; "" = SHA256withECDSA
	RawPayloadSize     int64  // 0 = not stated
	KeyID              string // fieldota extension: hex SHA-256 of the SubjectPublicKeyInfo
	CertificateChain   []byte // PEM, leaf first
}

// Options are the device's limits on documents.
type Options struct {
	AllowedRoots      []string // workingDirectory must lie under one; none = target files refused
	AllowInsecureHTTP bool     // config download.allow_insecure_http
	AllowPlaceholders bool     // accept unexpanded ${aws:iot:s3-presigned-url…} (operator tools only)
}

var placeholderRE = regexp.MustCompile(`^\$\{aws:iot:s3-presigned-url(?:-v2)?:([^{}]+)\}$`)

// invalid builds an INVALID_DOCUMENT error; a trailing %w becomes the cause (so a malformed
// signature also matches SIGNATURE_INVALID) and is printed once.
func invalid(format string, args ...any) error {
	if n := len(args); n > 0 && strings.HasSuffix(format, "%w") {
		if cause, ok := args[n-1].(error); ok {
			msg := strings.TrimSuffix(strings.TrimSuffix(format, "%w"), ": ")
			return &reason.Error{Code: reason.InvalidDocument, Msg: fmt.Sprintf(msg, args[:n-1]...), Err: cause}
		}
	}
	return reason.Errorf(reason.InvalidDocument, format, args...)
}

// Parse reads and validates a job document.
func Parse(data []byte, opt Options) (*Document, error) {
	if len(data) > MaxDocumentSize {
		return nil, invalid("document of %d bytes exceeds %d", len(data), MaxDocumentSize)
	}
	if !utf8.Valid(data) {
		return nil, invalid("document is not valid UTF-8")
	}
	if err := checkStructure(data); err != nil {
		return nil, invalid("%w", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, invalid("document: %w", err)
	}
	d := &Document{}
	var err error

	// The operation first: an unknown one is UNSUPPORTED_OPERATION whatever else is wrong.
	if d.Operation, err = reqString(top, "operation"); err != nil {
		return nil, err
	}
	if d.Operation != OperationInstall {
		return nil, reason.Errorf(reason.UnsupportedOperation, "operation %q is not supported (only %q)", clip(d.Operation), OperationInstall)
	}
	for k := range top {
		switch k {
		case "operation", "version", "packageName", "autoStart", "workingDirectory", "target", "files", "attestation", "compatible":
		default:
			d.Unknown = append(d.Unknown, clip(k))
		}
	}
	if d.Version, err = optString(top, "version"); err != nil {
		return nil, err
	}
	if d.PackageName, err = optString(top, "packageName"); err != nil {
		return nil, err
	}
	if d.AutoStart, err = optBool(top, "autoStart"); err != nil {
		return nil, err
	}
	tgt, err := optString(top, "target")
	if err != nil {
		return nil, err
	}
	switch Target(tgt) {
	case "", TargetFiles:
		d.Target = TargetFiles
	case TargetSlot, TargetBinary:
		d.Target = Target(tgt)
	default:
		return nil, invalid("target %q: want files, slot or binary", clip(tgt))
	}
	if d.Attestation, err = attestation(top, "attestation"); err != nil {
		return nil, err
	}
	if d.Compatible, err = compatible(top); err != nil {
		return nil, err
	}
	if d.Files, err = files(top, opt, &d.Unknown); err != nil {
		return nil, err
	}
	wd, err := optString(top, "workingDirectory")
	if err != nil {
		return nil, err
	}
	if err := d.checkTarget(wd, opt); err != nil {
		return nil, err
	}
	if d.Version != "" {
		if _, err := verify.ParseVersion(d.Version); err != nil {
			return nil, invalid("version: %w", err)
		}
	} else if !d.attested() {
		return nil, invalid("version is required (unless one document-wide attestation carries it)")
	}
	slices.Sort(d.Unknown)
	return d, nil
}

// attested reports whether one document-wide attestation covers every file, so the signed
// version may stand alone. With per-file attestations the plain version is required: each
// signed version must then equal it, so all files carry one version.
func (d *Document) attested() bool {
	if d.Attestation == nil {
		return false
	}
	for _, f := range d.Files {
		if f.Attestation != nil {
			return false
		}
	}
	return true
}

func (d *Document) checkTarget(wd string, opt Options) error {
	if d.PackageName != "" {
		if err := checkBaseName(d.PackageName); err != nil {
			return invalid("packageName: %w", err)
		}
	}
	if d.Target != TargetFiles {
		if len(d.Files) != 1 {
			return invalid("target %s takes exactly one file, got %d", d.Target, len(d.Files))
		}
		if wd != "" || d.AutoStart {
			return invalid("workingDirectory and autoStart apply to target files only")
		}
		return nil
	}
	if wd == "" {
		return invalid("workingDirectory is required for target files")
	}
	clean, err := confine(wd, opt.AllowedRoots)
	if err != nil {
		return invalid("workingDirectory: %w", err)
	}
	d.WorkingDirectory = clean
	if d.AutoStart {
		if d.PackageName == "" {
			return invalid("autoStart needs packageName, the file to run")
		}
		if !slices.ContainsFunc(d.Files, func(f File) bool { return f.FileName == d.PackageName }) {
			return invalid("autoStart: packageName %q is not one of the files", clip(d.PackageName))
		}
	}
	return nil
}

// confine returns the cleaned path if it lies under one of roots. Symlinks are not resolved
// here (the directory may not exist yet): the installer must not follow them out of the root.
func confine(p string, roots []string) (string, error) {
	if !filepath.IsAbs(p) || strings.ContainsRune(p, 0) || len(p) > 4096 {
		return "", fmt.Errorf("%q is not an absolute path", clip(p))
	}
	clean := filepath.Clean(p)
	if len(roots) == 0 {
		return "", errors.New("no allowed root is configured (files.allowed_roots)")
	}
	for _, r := range roots {
		r = filepath.Clean(r)
		if !filepath.IsAbs(r) {
			continue
		}
		if r == "/" || clean == r || strings.HasPrefix(clean, r+"/") {
			return clean, nil
		}
	}
	return "", fmt.Errorf("%q is not under an allowed root %q", clip(clean), roots)
}

func files(top map[string]json.RawMessage, opt Options, unknown *[]string) ([]File, error) {
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
	seen := map[string]bool{}
	for i, e := range entries {
		f, err := file(e, opt, fmt.Sprintf("files[%d]", i), unknown)
		if err != nil {
			return nil, err
		}
		if seen[f.FileName] {
			return nil, invalid("files[%d]: fileName %q appears twice", i, clip(f.FileName))
		}
		seen[f.FileName] = true
		out = append(out, f)
	}
	return out, nil
}

func file(raw json.RawMessage, opt Options, at string, unknown *[]string) (File, error) {
	var f File
	if firstByte(raw) != '{' {
		return f, invalid("%s must be an object", at)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return f, invalid("%s: %w", at, err)
	}
	for k := range m {
		switch k {
		case "fileName", "url", "size", "sha256", "codesign", "sig-sha256-ecdsa", "mode", "attestation":
		default:
			*unknown = append(*unknown, at+"."+clip(k))
		}
	}
	var err error
	if f.FileName, err = reqString(m, "fileName"); err != nil {
		return f, prefix(at, err)
	}
	if err := checkBaseName(f.FileName); err != nil {
		return f, invalid("%s.fileName: %w", at, err)
	}
	if f.URL, err = reqString(m, "url"); err != nil {
		return f, prefix(at, err)
	}
	if err := checkURL(f.URL, opt); err != nil {
		return f, invalid("%s.url: %w", at, err)
	}
	if f.Size, err = reqInt(m, "size"); err != nil {
		return f, prefix(at, err)
	}
	if f.Size < 0 || f.Size > MaxFileSize {
		return f, invalid("%s.size %d out of range", at, f.Size)
	}
	h, err := reqString(m, "sha256")
	if err != nil {
		return f, prefix(at, err)
	}
	if f.SHA256, err = hex.DecodeString(h); err != nil || len(f.SHA256) != 32 {
		return f, invalid("%s.sha256 must be 64 hex digits", at)
	}
	if f.Codesign, err = codesign(m, at, unknown); err != nil {
		return f, err
	}
	if f.Codesign != nil && f.Codesign.RawPayloadSize != 0 && f.Codesign.RawPayloadSize != f.Size {
		return f, invalid("%s: codesign.rawPayloadSize %d differs from size %d", at, f.Codesign.RawPayloadSize, f.Size)
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
		n, err := strconv.ParseUint(mode, 8, 32)
		if err != nil || n == 0 || n > 0o777 {
			return f, invalid("%s.mode %q: want octal permission bits such as \"0755\" (no setuid/setgid/sticky)", at, clip(mode))
		}
		f.Mode = os.FileMode(n)
	}
	if f.Attestation, err = attestation(m, "attestation"); err != nil {
		return f, prefix(at, err)
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
		switch k {
		case "signature", "signatureAlgorithm", "rawPayloadSize", "keyId", "certificateChain":
		default: // payloadLocation, hashAlgorithm… are AWS bookkeeping
			*unknown = append(*unknown, at+"."+clip(k))
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

// attestation accepts base64 of the envelope JSON (what `fieldota job` writes), or the
// envelope as a JSON object.
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

func compatible(top map[string]json.RawMessage) ([]string, error) {
	raw, ok := top["compatible"]
	if !ok {
		return nil, nil
	}
	if firstByte(raw) != '[' {
		return nil, invalid("compatible must be an array of strings")
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, invalid("compatible must be an array of strings: %w", err)
	}
	if len(list) > MaxCompatible {
		return nil, invalid("compatible: %d names, at most %d", len(list), MaxCompatible)
	}
	if list == nil {
		list = []string{}
	}
	for _, c := range list {
		if c == "" || len(c) > maxCompatLen || strings.IndexFunc(c, unicode.IsControl) >= 0 {
			return nil, invalid("compatible name %q: want 1 to %d printable characters", clip(c), maxCompatLen)
		}
	}
	return list, nil
}

// checkBaseName refuses anything that is not a plain file name.
func checkBaseName(n string) error {
	switch {
	case n == "" || n == "." || n == "..":
		return fmt.Errorf("%q is not a file name", n)
	case len(n) > maxNameLen:
		return fmt.Errorf("name longer than %d bytes", maxNameLen)
	case strings.ContainsAny(n, "/\\"):
		return fmt.Errorf("%q is not a base name", clip(n))
	case strings.IndexFunc(n, unicode.IsControl) >= 0:
		return fmt.Errorf("%q contains control characters", clip(n))
	}
	return nil
}

func checkURL(s string, opt Options) error {
	if len(s) > MaxURLLength {
		return fmt.Errorf("longer than %d characters", MaxURLLength)
	}
	if m := placeholderRE.FindStringSubmatch(s); m != nil {
		if !opt.AllowPlaceholders {
			return errors.New("an unexpanded presigned-URL placeholder (was the job created with presignedUrlConfig?)")
		}
		return nil
	}
	if strings.Contains(s, "${") {
		return errors.New("malformed ${…} placeholder")
	}
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL") // the parse error would echo the query (a secret)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && opt.AllowInsecureHTTP:
	case u.Scheme == "http":
		return errors.New("http is refused (download.allow_insecure_http is off)")
	default:
		return fmt.Errorf("scheme %q: want https", clip(u.Scheme))
	}
	if u.Host == "" || u.User != nil {
		return errors.New("want https://host/path with no user information")
	}
	return nil
}

// checkStructure walks the tokens once: the document must be one JSON object, nested at most
// maxDepth deep, with no duplicate key in any object (two parsers could read different values).
func checkStructure(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	type frame struct {
		obj       bool
		expectKey bool
		keys      map[string]bool
	}
	var stack []*frame
	values := 0
	valueDone := func() {
		if len(stack) == 0 {
			values++
		} else if top := stack[len(stack)-1]; top.obj {
			top.expectKey = true
		}
	}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("not JSON: %w", err)
		}
		if len(stack) == 0 && values == 0 {
			if d, ok := tok.(json.Delim); !ok || d != '{' {
				return errors.New("the document must be a JSON object")
			}
		}
		if len(stack) == 0 && values > 0 {
			return errors.New("data after the document")
		}
		if n := len(stack); n > 0 && stack[n-1].obj && stack[n-1].expectKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:n-1]
				valueDone()
				continue
			}
			k := tok.(string)
			if stack[n-1].keys[k] {
				return fmt.Errorf("key %q appears twice", clip(k))
			}
			stack[n-1].keys[k] = true
			stack[n-1].expectKey = false
			continue
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{', '[':
				if len(stack) >= maxDepth {
					return fmt.Errorf("nested deeper than %d", maxDepth)
				}
				stack = append(stack, &frame{obj: v == '{', expectKey: v == '{', keys: map[string]bool{}})
			case ']':
				stack = stack[:len(stack)-1]
				valueDone()
			}
		default:
			valueDone()
		}
	}
	if values != 1 {
		return errors.New("the document must be one JSON object")
	}
	return nil
}

// Field readers: strict JSON types, null refused.

func reqString(m map[string]json.RawMessage, k string) (string, error) {
	if _, ok := m[k]; !ok {
		return "", invalid("%s is required", k)
	}
	s, err := optString(m, k)
	if err == nil && s == "" {
		return "", invalid("%s must not be empty", k)
	}
	return s, err
}

func optString(m map[string]json.RawMessage, k string) (string, error) {
	raw, ok := m[k]
	if !ok {
		return "", nil
	}
	if firstByte(raw) != '"' {
		return "", invalid("%s must be a string", k)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", invalid("%s: %w", k, err)
	}
	return s, nil
}

func optBool(m map[string]json.RawMessage, k string) (bool, error) {
	raw, ok := m[k]
	if !ok {
		return false, nil
	}
	switch string(bytes.TrimSpace(raw)) {
	case "true", `"true"`:
		return true, nil
	case "false", `"false"`:
		return false, nil
	}
	return false, invalid("%s must be true, false, \"true\" or \"false\"", k)
}

func reqInt(m map[string]json.RawMessage, k string) (int64, error) {
	raw, ok := m[k]
	if !ok {
		return 0, invalid("%s is required", k)
	}
	t := string(bytes.TrimSpace(raw))
	if t == "" || !(t[0] == '-' || t[0] >= '0' && t[0] <= '9') {
		return 0, invalid("%s must be an integer", k)
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil {
		return 0, invalid("%s must be an integer, got %s", k, clip(t))
	}
	return n, nil
}

func prefix(at string, err error) error {
	var re *reason.Error
	if errors.As(err, &re) {
		return &reason.Error{Code: re.Code, Msg: at + "." + re.Msg, Err: re.Err}
	}
	return err
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

func firstByte(raw json.RawMessage) byte {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return 0
	}
	return t[0]
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
