// Package jobdoc is the syntax of fieldota's AWS IoT job document (docs/job-document.md): it
// parses a document into typed fields and refuses what is malformed — types, sizes, names,
// paths, URLs, encodings — naming the field and why. What the fields mean, and whether the
// device may act on them, is package verify's: Claims hands it the plain fields (which must be
// copies of the signed release statement's values) and the signature material.
//
// Unknown keys are ignored but listed, because AWS tooling adds its own (`presign`,
// `payloadLocation`, …). Every refusal is INVALID_DOCUMENT, except an unknown operation
// (UNSUPPORTED_OPERATION); a malformed signature also matches SIGNATURE_INVALID through the
// wrapped cause.
//
// The files: parse.go (the top level), files.go (file entries and their signatures), url.go
// (payload URLs and presigned-URL placeholders), fields.go (strict JSON readers), claims.go
// (what verify receives), encode.go (what `fieldota job` writes).
package jobdoc

import (
	"os"

	"github.com/fieldota/fieldota/verify"
)

// Limits. AWS caps a job document at 32768 characters as created (placeholders unexpanded);
// the device receives it with presigned URLs expanded (~1.5 KB each), so the device accepts more.
const (
	MaxAuthoredSize = 32768 // what `fieldota job` may write (AWS CreateJob limit)
	MaxDocumentSize = 65536 // what the device accepts, after URL expansion
	MaxFiles        = verify.MaxFiles
	MaxURLLength    = 8192
	MaxFileSize     = verify.MaxFileSize
	MaxCompatible   = verify.MaxCompatible
	maxDepth        = 16
	maxChainPEM     = 16 << 10
)

// OperationInstall is the one operation fieldota runs.
const OperationInstall = "install"

// Target says which installer takes the files.
type Target = verify.Target

// The targets.
const (
	TargetFiles  = verify.TargetFiles
	TargetSlot   = verify.TargetSlot
	TargetBinary = verify.TargetBinary
)

// Document is a parsed job document. Every field holds what the document states, or its zero
// value when the field is absent: a document with a release statement may leave every copy out.
type Document struct {
	Operation        string
	Version          string
	PackageName      string
	AutoStart        *bool
	WorkingDirectory string
	Target           Target // "" = not stated (files, without a statement)
	Files            []File
	Attestation      []byte   // DSSE envelope JSON of the release statement; nil = none
	Compatible       []string // nil = not stated
	Unknown          []string // keys fieldota ignored, e.g. "presign", "files[0].fileType"
	// AFROTA marks a document of `aws iot create-ota-update` (afr.go): one file with a size and
	// a detached signature, and nothing else stated.
	AFROTA bool
}

// File is one payload of a document.
type File struct {
	FileName       string
	URL            string // as written: a URL, or an unexpanded presigned placeholder if allowed
	Size           int64  // -1 = not stated
	SHA256         []byte // nil = not stated
	Codesign       *Codesign
	SigSHA256ECDSA string      // FreeRTOS-style base64 DER signature
	Mode           os.FileMode // permission bits for target files; 0 = not stated
}

// Codesign is the AWS code-signing object of a file entry.
type Codesign struct {
	Signature          string // base64
	SignatureAlgorithm string // verify.Algorithm name; "" = SHA256withECDSA
	RawPayloadSize     int64  // 0 = not stated
	KeyID              string // fieldota extension: hex SHA-256 of the SubjectPublicKeyInfo
	CertificateChain   []byte // PEM, leaf first
}

// Options are the reader's limits on documents.
type Options struct {
	// AllowPlaceholders accepts unexpanded ${aws:iot:s3-presigned-url…} URLs: operator tools
	// read documents as created, devices as delivered.
	AllowPlaceholders bool
}

// AutoStartValue is the document's autoStart, false when absent.
func (d *Document) AutoStartValue() bool { return d.AutoStart != nil && *d.AutoStart }
