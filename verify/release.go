package verify

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/fieldota/fieldota/ota/names"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/zimage"
)

// Target says which installer a release is for.
type Target string

// The targets.
const (
	TargetFiles  Target = "files"
	TargetSlot   Target = "slot"
	TargetBinary Target = "binary"
)

// Release is everything the device acts on for one job: what each file is and where and how it
// is installed. It is built once from a verified release statement (Signed) — or, on a device
// configured to accept codesign-only releases, from the plain document (then only the bytes are
// signed) — and installers take their values from it, never from the job document.
type Release struct {
	Signed bool   // every value below comes from a verified release statement
	KeyID  string // the statement's signer (Signed only)

	Target         Target
	Version        string
	Compatible     []string // empty = any device
	AllowDowngrade bool
	Expires        time.Time // zero = never
	// Force: install even when this release is already what runs (signed only: a plain
	// document cannot ask for it).
	Force bool
	Files []File // in the document's order

	WorkingDirectory    string // target files
	PackageName         string // target files: the file autoStart runs
	AutoStart           bool
	AutoStartRerunnable bool
	Binary              string // target binary: the managed binary's name ("" = the device's own, unsigned releases only)
	Package             string // the `$package` name it is reported under ("" = the device's configured name)
}

// File is one file of a release.
type File struct {
	Name   string
	Size   int64       // the object as stored and downloaded (what the document's plain size copies)
	SHA256 []byte      // its digest (the document's plain sha256)
	Mode   fs.FileMode // target files: the permission bits it is placed with (defaulted)
	// Compressed is the signed manifest of a compressed file (validated); nil when the file is
	// stored as installed. Installers then take the installed bytes' size and digest from
	// RawSize and RawSHA256.
	Compressed *zimage.Manifest
	// Signature is the detached signature the document carries for it, if any: checked over
	// the downloaded bytes too.
	Signature *Signature
}

// RawSize is the size of the installed bytes: the decompressed size of a compressed file.
func (f File) RawSize() int64 {
	if f.Compressed != nil {
		return f.Compressed.Raw.Size
	}
	return f.Size
}

// RawSHA256 is the digest of the installed bytes: the decompressed digest of a compressed file.
func (f File) RawSHA256() []byte {
	if f.Compressed != nil {
		return f.Compressed.Raw.Sum()
	}
	return f.SHA256
}

// Claims is what a job document states in plain, unsigned fields, with the signature material
// it carries. Zero values mean "not stated".
type Claims struct {
	Statement        []byte // DSSE envelope JSON of the release statement; nil = none
	Target           Target
	Version          string
	Compatible       []string // nil = not stated
	WorkingDirectory string
	PackageName      string
	AutoStart        *bool
	Files            []FileClaim
	// DigestFromSignature: the files state no sha256, only a detached signature over their
	// bytes (create-ota-update's afr_ota documents); the digest is learned at download and the
	// signature is what binds it. Only ever a codesign-only release.
	DigestFromSignature bool

	// bare: a lone detached signature checked by Verify — bytes only, no install intent.
	bare bool
}

// FileClaim is one plain files[] entry.
type FileClaim struct {
	Name      string
	Size      int64  // -1 = not stated
	SHA256    []byte // nil = not stated
	Mode      fs.FileMode
	Signature *Signature // nil = none
}

// Installed is what the device records as running for a target.
type Installed struct {
	Version string
	// Signed says the version came from a verified release statement. Only a signed record can
	// refuse a signed release as a downgrade: a version an operator merely typed must never
	// freeze a device on old software.
	Signed bool
}

// Policy is the device's side of the decision.
type Policy struct {
	// AllowUnsigned accepts documents with no signature at all (config verify.allow_unsigned,
	// development only). Signature material that is present is still checked.
	AllowUnsigned bool
	// RequireStatement refuses a document without a signed release statement (config
	// verify.require_release_statement, default on). Off accepts codesign-only releases, whose
	// install parameters are then whatever the job's author wrote.
	RequireStatement bool
	Installed        Installed // of the release's target; zero = nothing known
	DeviceCompatible []string
	Now              time.Time // zero = time.Now()
}

func (p Policy) now() time.Time {
	if p.Now.IsZero() {
		return time.Now()
	}
	return p.Now
}

// Release decides what a document may make the device do, before any byte is downloaded: it
// verifies the release statement (trusted key, well-formed) and that every plain field is
// absent or a copy of its signed value; without a statement it builds the release from the plain
// fields if the policy accepts codesign-only (or unsigned) releases. It does not apply the
// policy's rollback, compatibility and expiry rules: that is CheckPolicy, once the caller knows
// which target the release installs to.
func (ts *TrustStore) Release(c Claims, p Policy) (*Release, error) {
	if ts == nil {
		ts = &TrustStore{}
	}
	if c.Statement == nil {
		if p.RequireStatement && !p.AllowUnsigned {
			return nil, reason.Errorf(reason.Unsigned, "the document carries no signed release statement (attestation) and verify.require_release_statement is on")
		}
		return plainRelease(c, p)
	}
	now := p.now()
	var leaf *candidate // a code-signing certificate carried by a file may sign the statement too
	for _, f := range c.Files {
		if s := f.Signature; s != nil && len(s.CertChain) > 0 {
			pub, id, err := ts.leafFromChain(s.CertChain, now)
			if err != nil {
				return nil, err
			}
			leaf = &candidate{id, pub}
			break
		}
	}
	cands := make([]candidate, 0, len(ts.ids)+1)
	if leaf != nil {
		cands = append(cands, *leaf)
	}
	for _, id := range ts.ids {
		cands = append(cands, candidate{id, ts.keys[id]})
	}
	payload, id, err := verifyEnvelope(c.Statement, cands)
	if err != nil {
		return nil, err
	}
	st, err := ParseStatement(payload)
	if err != nil {
		return nil, err
	}
	r, err := st.release(id)
	if err != nil {
		return nil, err
	}
	if err := r.agree(c); err != nil {
		return nil, err
	}
	return r, nil
}

// agree checks that every plain field the document states equals its signed value, and puts
// the files in the document's order with their detached signatures.
func (r *Release) agree(c Claims) error {
	mismatch := func(field string, plain, signed any) error {
		return reason.Errorf(reason.DocumentMismatch, "%s is %v in the document but %v in the signed release", field, plain, signed)
	}
	if c.Target != "" && c.Target != r.Target {
		return mismatch("target", quote(string(c.Target)), quote(string(r.Target)))
	}
	if c.Version != "" && c.Version != r.Version {
		return mismatch("version", quote(c.Version), quote(r.Version))
	}
	if c.Compatible != nil && !sameSet(c.Compatible, r.Compatible) {
		return mismatch("compatible", quoteAll(c.Compatible), quoteAll(r.Compatible))
	}
	if c.WorkingDirectory != "" && c.WorkingDirectory != r.WorkingDirectory {
		return mismatch("workingDirectory", quote(c.WorkingDirectory), quote(r.WorkingDirectory))
	}
	if c.PackageName != "" && c.PackageName != r.PackageName {
		return mismatch("packageName", quote(c.PackageName), quote(r.PackageName))
	}
	if c.AutoStart != nil && *c.AutoStart != r.AutoStart {
		return mismatch("autoStart", *c.AutoStart, r.AutoStart)
	}
	if len(c.Files) != len(r.Files) {
		return reason.Errorf(reason.DocumentMismatch, "the document lists %d files but the signed release has %d (%s)", len(c.Files), len(r.Files), quoteAll(r.names()))
	}
	ordered := make([]File, 0, len(r.Files))
	for i, fc := range c.Files {
		at := fmt.Sprintf("files[%d]", i)
		k := slices.IndexFunc(r.Files, func(f File) bool { return f.Name == fc.Name })
		if k < 0 {
			return reason.Errorf(reason.DocumentMismatch, "%s.fileName %s is not a file of the signed release (%s)", at, quote(fc.Name), quoteAll(r.names()))
		}
		f := r.Files[k]
		if fc.Size >= 0 && fc.Size != f.Size {
			return mismatch(at+".size", fc.Size, f.Size)
		}
		if fc.SHA256 != nil && !bytes.Equal(fc.SHA256, f.SHA256) {
			return mismatch(at+".sha256", hex.EncodeToString(fc.SHA256), hex.EncodeToString(f.SHA256))
		}
		if fc.Mode != 0 && fc.Mode != f.Mode {
			return mismatch(at+".mode", quote(names.FormatMode(fc.Mode)), quote(names.FormatMode(f.Mode)))
		}
		if s := fc.Signature; s != nil && s.RawPayloadSize != 0 && s.RawPayloadSize != f.Size {
			return mismatch(at+".codesign.rawPayloadSize", s.RawPayloadSize, f.Size)
		}
		f.Signature = fc.Signature
		ordered = append(ordered, f)
	}
	r.Files = ordered
	return nil
}

// plainRelease is the release of a document without a statement: the device was configured to
// trust whoever can create jobs for everything but the bytes (docs/signing.md).
func plainRelease(c Claims, p Policy) (*Release, error) {
	r := &Release{Target: c.Target, Version: c.Version, Compatible: slices.Clone(c.Compatible),
		WorkingDirectory: c.WorkingDirectory, PackageName: c.PackageName}
	if r.Target == "" {
		r.Target = TargetFiles
	}
	if c.AutoStart != nil {
		r.AutoStart = *c.AutoStart
	}
	if r.Version != "" {
		if _, err := ParseVersion(r.Version); err != nil {
			return nil, reason.Errorf(reason.InvalidDocument, "version: %w", err)
		}
	}
	if len(c.Files) == 0 {
		return nil, reason.Errorf(reason.InvalidDocument, "the document lists no file")
	}
	for i, fc := range c.Files {
		signatureOnly := c.DigestFromSignature && fc.Signature != nil && fc.SHA256 == nil && fc.Size > 0
		if !signatureOnly && (fc.Size < 0 || len(fc.SHA256) != 32) {
			return nil, reason.Errorf(reason.InvalidDocument, "files[%d]: size and sha256 are required without a release statement", i)
		}
		if fc.Signature == nil && !p.AllowUnsigned {
			return nil, reason.Errorf(reason.Unsigned, "%s carries no signature and unsigned updates are not allowed", quote(fc.Name))
		}
		if fc.Signature != nil && fc.Signature.RawPayloadSize != 0 && fc.Signature.RawPayloadSize != fc.Size {
			return nil, reason.Errorf(reason.InvalidDocument, "files[%d]: codesign.rawPayloadSize %d differs from size %d", i, fc.Signature.RawPayloadSize, fc.Size)
		}
		r.Files = append(r.Files, File{Name: fc.Name, Size: fc.Size, SHA256: slices.Clone(fc.SHA256), Mode: fc.Mode, Signature: fc.Signature})
	}
	if c.bare {
		return r, nil
	}
	if err := r.checkTarget(); err != nil {
		return nil, reason.Errorf(reason.InvalidDocument, "%w", err)
	}
	return r, nil
}

// CheckPolicy applies the device's rules to a release: not expired, not older than what runs
// (unless the signed release allows a downgrade), and for this device.
func CheckPolicy(r *Release, p Policy) error {
	now := p.now()
	if !r.Expires.IsZero() && now.After(r.Expires) {
		return reason.Errorf(reason.ReleaseExpired, "the signed release expired at %s (now %s)", r.Expires.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if err := checkRollback(r, p.Installed); err != nil {
		return err
	}
	return checkCompatible(r, p.DeviceCompatible)
}

func checkRollback(r *Release, in Installed) error {
	// A signed release is compared only with a signed record; an unsigned release with any.
	if in.Version == "" || r.AllowDowngrade || (r.Signed && !in.Signed) {
		return nil
	}
	if r.Version == "" {
		return reason.Errorf(reason.InvalidDocument, "no version stated to compare with the installed %s", clip(in.Version))
	}
	nv, err := ParseVersion(r.Version)
	if err != nil {
		return reason.Errorf(reason.InvalidDocument, "%w", err)
	}
	iv, err := ParseVersion(in.Version)
	if err != nil {
		// Fail closed: a downgrade cannot be ruled out. A signed allowDowngrade recovers.
		return reason.Errorf(reason.DowngradeRefused, "installed version cannot be compared: %w", err)
	}
	if nv.Compare(iv) < 0 {
		return reason.Errorf(reason.DowngradeRefused, "version %s is older than the installed %s", clip(r.Version), clip(in.Version))
	}
	return nil
}

func checkCompatible(r *Release, device []string) error {
	if len(r.Compatible) == 0 {
		return nil
	}
	for _, c := range r.Compatible {
		if slices.Contains(device, c) {
			return nil
		}
	}
	return reason.Errorf(reason.IncompatibleDevice, "the release is for %s; this device is %s", quoteAll(r.Compatible), quoteAll(device))
}

// CheckPayload checks a downloaded (or staged, re-hashed) file i of the release: its size, the
// detached signature it carries if any, and its SHA-256 — the signed digest of a signed release.
// The detached signature is checked before the digest so that bytes that are not what a
// codesign object signed read SIGNATURE_INVALID.
func (ts *TrustStore) CheckPayload(r *Release, i int, digest []byte, size int64, now time.Time) (PayloadVerdict, error) {
	var vd PayloadVerdict
	if i < 0 || i >= len(r.Files) {
		return vd, reason.Errorf(reason.Internal, "no file %d in the release", i)
	}
	f := r.Files[i]
	if len(digest) != 32 {
		return vd, reason.Errorf(reason.Internal, "%s: digest of %d bytes, want a SHA-256", quote(f.Name), len(digest))
	}
	if size != f.Size {
		return vd, reason.Errorf(reason.SizeMismatch, "%s: %d bytes, the release says %d", quote(f.Name), size, f.Size)
	}
	if now.IsZero() {
		now = time.Now()
	}
	if s := f.Signature; s != nil {
		if ts == nil {
			ts = &TrustStore{}
		}
		c, alg, err := ts.verifySignature(s, digest, now)
		if err != nil {
			return vd, err
		}
		vd.KeyID, vd.Algorithm = c.id, alg
	}
	if f.SHA256 == nil && f.Signature != nil {
		return vd, nil // the signature just verified over digest is all that binds these bytes
	}
	if !bytes.Equal(digest, f.SHA256) {
		what := "the document says"
		if r.Signed {
			what = "the signed release says"
		}
		return vd, reason.Errorf(reason.DigestMismatch, "%s: sha256 %s, %s %s", quote(f.Name), hex.EncodeToString(digest), what, hex.EncodeToString(f.SHA256))
	}
	return vd, nil
}

// CheckInstalled is CheckPayload for the installed bytes of file i — decompressed, staged or
// written to a slot, re-hashed by the caller: for a compressed file their size and digest must be
// the signed raw ones, and a detached signature, which covers the object as stored, is checked
// over the signed stored digest (the same statement binds that object to these bytes: its full
// part and raw digests were checked as it was decompressed). For any other file it is
// CheckPayload.
func (ts *TrustStore) CheckInstalled(r *Release, i int, digest []byte, size int64, now time.Time) (PayloadVerdict, error) {
	if i < 0 || i >= len(r.Files) || r.Files[i].Compressed == nil {
		return ts.CheckPayload(r, i, digest, size, now)
	}
	f := r.Files[i]
	if len(digest) != 32 {
		return PayloadVerdict{}, reason.Errorf(reason.Internal, "%s: digest of %d bytes, want a SHA-256", quote(f.Name), len(digest))
	}
	if size != f.RawSize() {
		return PayloadVerdict{}, reason.Errorf(reason.SizeMismatch, "%s: %d bytes installed, the signed release says %d decompressed", quote(f.Name), size, f.RawSize())
	}
	vd, err := ts.CheckPayload(r, i, f.SHA256, f.Size, now)
	if err != nil {
		return vd, err
	}
	if !bytes.Equal(digest, f.RawSHA256()) {
		return vd, reason.Errorf(reason.DigestMismatch, "%s: decompressed sha256 %s, the signed release says %s", quote(f.Name), hex.EncodeToString(digest), f.Compressed.Raw.SHA256)
	}
	return vd, nil
}

// PayloadVerdict says which detached signature, if any, verified over a payload.
type PayloadVerdict struct {
	KeyID     string
	Algorithm Algorithm
}

func (r *Release) names() []string {
	out := make([]string, len(r.Files))
	for i, f := range r.Files {
		out[i] = f.Name
	}
	return out
}

func quote(s string) string { return fmt.Sprintf("%q", clip(s)) }

func quoteAll(list []string) string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = quote(s)
	}
	return "[" + strings.Join(out, ", ") + "]"
}

func sameSet(a, b []string) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(slices.Compact(x), slices.Compact(y))
}
