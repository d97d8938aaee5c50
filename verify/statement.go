package verify

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/fieldota/fieldota/ota/names"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/zimage"
)

// The release statement: an in-toto Statement in a DSSE envelope, exactly what
// `cosign attest-blob --key k --type PredicateType --predicate pred.json file` writes for one
// file, and what `fieldota job` writes for one or more (one subject per file).
const (
	// PredicateType is fieldota's release predicate, version 2: the whole install intent
	// (docs/signing.md). Version 1 signed only version and compatibility and is refused.
	PredicateType = "https://fieldota.dev/release/v2"
	// PredicateTypeV1 is recognised only to refuse it with a clear message.
	PredicateTypeV1 = "https://fieldota.dev/release/v1"
	// StatementV01 and StatementV1 are the accepted in-toto Statement types (cosign v2 writes v0.1).
	StatementV01 = "https://in-toto.io/Statement/v0.1"
	StatementV1  = "https://in-toto.io/Statement/v1"
)

// Limits of a statement (it travels inside a job document).
const (
	MaxFiles      = 16
	MaxCompatible = 64
	MaxFileSize   = int64(1) << 42
)

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

// Predicate is what the release team signs, the contents of the `--predicate pred.json` file
// given to cosign or written by `fieldota job`. Its keys are named like the job document's
// fields, whose plain copies must equal them. Unknown keys are refused: the predicate is ours,
// and a typo such as `allowDowngrad` must not silently mean false.
type Predicate struct {
	Target         string   `json:"target"`
	Version        string   `json:"version"`
	Compatible     []string `json:"compatible,omitempty"`
	AllowDowngrade bool     `json:"allowDowngrade,omitempty"`
	// Expires (RFC 3339), if set, is when devices stop accepting the release.
	Expires string `json:"expires,omitempty"`
	// Force reinstalls a release that is already what runs (same signed version and digests),
	// which a device otherwise reports SUCCEEDED alreadyInstalled=true without downloading.
	Force bool `json:"force,omitempty"`
	// Files maps each file name (a subject's name) to what it must be.
	Files map[string]PredicateFile `json:"files"`

	// Target files.
	WorkingDirectory string `json:"workingDirectory,omitempty"`
	PackageName      string `json:"packageName,omitempty"`
	AutoStart        bool   `json:"autoStart,omitempty"`
	// AutoStartRerunnable says the program may be started again when the agent restarted while
	// it ran and its outcome is unknown (docs/job-document.md, "autoStart runs once").
	AutoStartRerunnable bool `json:"autoStartRerunnable,omitempty"`

	// Target binary: the managed binary's name, mapped to a path by the device's configuration.
	Binary string `json:"binary,omitempty"`

	// Package is the Software Package Catalog name the device reports this release under in
	// its `$package` shadow ([a-zA-Z0-9-_.]{1,128}); empty: the device's configured name.
	Package string `json:"package,omitempty"`
}

// PredicateFile is the signed description of one file. Size (and the subject's sha256) are
// the object as stored and downloaded; a compressed file (docs/delta-updates.md) also signs the
// values of its zimage.Manifest: the installed bytes (raw), the full part a full install reads,
// the frame size and, for a slot image, the block index of a delta install.
type PredicateFile struct {
	Size int64  `json:"size"`
	Mode string `json:"mode,omitempty"` // target files: octal permission bits

	Compression   string         `json:"compression,omitempty"` // "zstd"; "" = the file is stored as installed
	Raw           *zimage.Digest `json:"raw,omitempty"`
	Full          *zimage.Digest `json:"full,omitempty"`
	FullFrameSize int64          `json:"fullFrameSize,omitempty"`
	Delta         *zimage.Delta  `json:"delta,omitempty"`
}

// PredicateFileOf is the predicate entry of a compressed file: the manifest's values, with the
// stored object's size (the subject carries its sha256).
func PredicateFileOf(m zimage.Manifest) PredicateFile {
	raw, full := m.Raw, m.Full
	var d *zimage.Delta
	if m.Delta != nil {
		dd := *m.Delta
		d = &dd
	}
	return PredicateFile{Size: m.Stored.Size, Compression: m.Compression, Raw: &raw, Full: &full, FullFrameSize: m.FullFrameSize, Delta: d}
}

// manifest is the compressed file's manifest (nil for a file stored as installed), validated:
// every refusal names the field.
func (pf PredicateFile) manifest(name string, sum []byte, target Target) (*zimage.Manifest, error) {
	if pf.Compression == "" {
		if pf.Raw != nil || pf.Full != nil || pf.FullFrameSize != 0 || pf.Delta != nil {
			return nil, fmt.Errorf("files.%s: raw, full, fullFrameSize and delta apply to a compressed file only (no compression given)", name)
		}
		return nil, nil
	}
	if pf.Raw == nil || pf.Full == nil {
		return nil, fmt.Errorf("files.%s: a compressed file signs raw and full", name)
	}
	if pf.Delta != nil && target != TargetSlot {
		return nil, fmt.Errorf("files.%s.delta: a block index applies to target slot only", name)
	}
	m := zimage.Manifest{Compression: pf.Compression, Stored: zimage.Digest{Size: pf.Size, SHA256: hex.EncodeToString(sum)},
		Raw: *pf.Raw, Full: *pf.Full, FullFrameSize: pf.FullFrameSize, Delta: pf.Delta}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("files.%s: %w", name, err)
	}
	if m.Raw.Size > MaxFileSize {
		return nil, fmt.Errorf("files.%s.raw.size %d out of range", name, m.Raw.Size)
	}
	return &m, nil
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
		return nil, reason.Errorf(reason.InvalidDocument, "release statement: %w", err)
	}
	if raw.Type != StatementV01 && raw.Type != StatementV1 {
		return nil, reason.Errorf(reason.InvalidDocument, "release statement type %q is not an in-toto Statement v0.1 or v1", clip(raw.Type))
	}
	switch raw.PredicateType {
	case PredicateType:
	case PredicateTypeV1:
		return nil, reason.Errorf(reason.InvalidDocument, "release statement predicateType %s signs only version and compatibility; sign the whole release with %s (fieldota job, docs/signing.md)", PredicateTypeV1, PredicateType)
	default:
		return nil, reason.Errorf(reason.InvalidDocument, "release statement predicateType %q, want %q", clip(raw.PredicateType), PredicateType)
	}
	st := &Statement{Type: raw.Type, PredicateType: raw.PredicateType, Subject: raw.Subject}
	dec := json.NewDecoder(bytes.NewReader(raw.Predicate))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st.Predicate); err != nil {
		return nil, reason.Errorf(reason.InvalidDocument, "release predicate: %w", err)
	}
	return st, nil
}

// release turns a verified statement into the release it signs, checking every value against
// the same rules the job document's plain fields obey (package names).
func (st *Statement) release(keyID string) (*Release, error) {
	p := st.Predicate
	bad := func(format string, args ...any) error {
		return reason.Errorf(reason.InvalidDocument, "release predicate: "+format, args...)
	}
	r := &Release{Signed: true, KeyID: keyID, Version: p.Version, AllowDowngrade: p.AllowDowngrade, Force: p.Force}
	switch Target(p.Target) {
	case TargetFiles, TargetSlot, TargetBinary:
		r.Target = Target(p.Target)
	default:
		return nil, bad("target %q: want files, slot or binary", clip(p.Target))
	}
	if _, err := ParseVersion(p.Version); err != nil {
		return nil, bad("%w", err)
	}
	if len(p.Compatible) > MaxCompatible {
		return nil, bad("%d compatible names, at most %d", len(p.Compatible), MaxCompatible)
	}
	for _, c := range p.Compatible {
		if err := names.Compatible(c); err != nil {
			return nil, bad("%w", err)
		}
	}
	r.Compatible = slices.Clone(p.Compatible)
	if p.Expires != "" {
		t, err := time.Parse(time.RFC3339, p.Expires)
		if err != nil {
			return nil, bad("expires %q is not an RFC 3339 time", clip(p.Expires))
		}
		r.Expires = t
	}

	// Subjects and files name the same set: one digest per signed file, nothing extra.
	if len(st.Subject) == 0 || len(st.Subject) > MaxFiles {
		return nil, bad("%d subjects (want 1 to %d)", len(st.Subject), MaxFiles)
	}
	if len(p.Files) != len(st.Subject) {
		return nil, bad("%d subjects but %d files: each file needs exactly one subject", len(st.Subject), len(p.Files))
	}
	for _, s := range st.Subject {
		if err := names.Name(s.Name); err != nil {
			return nil, bad("subject name: %w", err)
		}
		pf, ok := p.Files[s.Name]
		if !ok {
			return nil, bad("subject %q is not among the files", clip(s.Name))
		}
		if slices.ContainsFunc(r.Files, func(f File) bool { return f.Name == s.Name }) {
			return nil, bad("subject %q appears twice", clip(s.Name))
		}
		sum, err := hex.DecodeString(s.Digest["sha256"])
		if err != nil || len(sum) != 32 {
			return nil, bad("subject %q has no sha256 digest of 64 hex digits", clip(s.Name))
		}
		if pf.Size < 0 || pf.Size > MaxFileSize || (pf.Size == 0 && r.Target != TargetFiles) {
			return nil, bad("files.%s.size %d out of range", clip(s.Name), pf.Size)
		}
		f := File{Name: s.Name, Size: pf.Size, SHA256: sum}
		if f.Compressed, err = pf.manifest(clip(s.Name), sum, r.Target); err != nil {
			return nil, bad("%w", err)
		}
		if pf.Mode != "" {
			if r.Target != TargetFiles {
				return nil, bad("files.%s.mode applies to target files only", clip(s.Name))
			}
			if f.Mode, err = names.ParseMode(pf.Mode); err != nil {
				return nil, bad("files.%s.%w", clip(s.Name), err)
			}
		}
		r.Files = append(r.Files, f)
	}

	r.WorkingDirectory, r.PackageName, r.AutoStart, r.AutoStartRerunnable = p.WorkingDirectory, p.PackageName, p.AutoStart, p.AutoStartRerunnable
	r.Binary = p.Binary
	if p.Package != "" && !packageName.MatchString(p.Package) {
		return nil, bad("package %q must match [a-zA-Z0-9-_.]{1,128}", clip(p.Package))
	}
	r.Package = p.Package
	if err := r.checkTarget(); err != nil {
		return nil, bad("%w", err)
	}
	return r, nil
}

// checkTarget applies the per-target rules shared by signed and plain releases.
func (r *Release) checkTarget() error {
	if r.PackageName != "" {
		if err := names.Name(r.PackageName); err != nil {
			return fmt.Errorf("packageName: %w", err)
		}
	}
	switch r.Target {
	case TargetFiles:
		if r.Binary != "" {
			return fmt.Errorf("binary applies to target binary only")
		}
		if err := names.Dir(r.WorkingDirectory); err != nil {
			return fmt.Errorf("workingDirectory: %w", err)
		}
		if r.AutoStart {
			if r.PackageName == "" {
				return fmt.Errorf("autoStart needs packageName, the file to run")
			}
			if !slices.ContainsFunc(r.Files, func(f File) bool { return f.Name == r.PackageName }) {
				return fmt.Errorf("autoStart: packageName %q is not one of the files", clip(r.PackageName))
			}
		} else if r.AutoStartRerunnable {
			return fmt.Errorf("autoStartRerunnable without autoStart")
		}
		for i := range r.Files {
			if r.Files[i].Mode == 0 {
				// The default: readable, and the program to start executable (it is run
				// without a shell).
				r.Files[i].Mode = 0o644
				if r.AutoStart && r.Files[i].Name == r.PackageName {
					r.Files[i].Mode = 0o755
				}
			}
		}
	case TargetSlot, TargetBinary:
		if len(r.Files) != 1 {
			return fmt.Errorf("target %s takes exactly one file, got %d", r.Target, len(r.Files))
		}
		if r.WorkingDirectory != "" || r.AutoStart || r.AutoStartRerunnable {
			return fmt.Errorf("workingDirectory and autoStart apply to target files only")
		}
		if r.Target == TargetSlot && r.Binary != "" {
			return fmt.Errorf("binary applies to target binary only")
		}
		if r.Target == TargetBinary && (r.Signed || r.Binary != "") {
			if err := names.Binary(r.Binary); err != nil {
				return err
			}
		}
	}
	return nil
}

// packageName is the Software Package Catalog's package name pattern.
var packageName = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,128}$`)
