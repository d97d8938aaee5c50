package jobdoc

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/fieldota/fieldota/ota/names"
)

// Encode writes a document in the layout of docs/job-document.md: one file as an object (like
// the seed), several as an array; the release statement as base64 of the envelope JSON; fields
// left at their zero value are left out. The result is parsed back (placeholders allowed) and
// must fit AWS's MaxAuthoredSize.
func Encode(d *Document) ([]byte, error) {
	type codesign struct {
		Signature          string `json:"signature"`
		SignatureAlgorithm string `json:"signatureAlgorithm,omitempty"`
		RawPayloadSize     int64  `json:"rawPayloadSize,omitempty"`
		KeyID              string `json:"keyId,omitempty"`
		CertificateChain   string `json:"certificateChain,omitempty"`
	}
	type file struct {
		FileName       string    `json:"fileName"`
		URL            string    `json:"url"`
		Size           *int64    `json:"size,omitempty"`
		SHA256         string    `json:"sha256,omitempty"`
		Codesign       *codesign `json:"codesign,omitempty"`
		SigSHA256ECDSA string    `json:"sig-sha256-ecdsa,omitempty"`
		Mode           string    `json:"mode,omitempty"`
	}
	type doc struct {
		Operation        string   `json:"operation"`
		Version          string   `json:"version,omitempty"`
		PackageName      string   `json:"packageName,omitempty"`
		AutoStart        *bool    `json:"autoStart,omitempty"`
		WorkingDirectory string   `json:"workingDirectory,omitempty"`
		Target           Target   `json:"target,omitempty"`
		Files            any      `json:"files"`
		Attestation      string   `json:"attestation,omitempty"`
		Compatible       []string `json:"compatible,omitempty"`
	}
	out := doc{Operation: d.Operation, Version: d.Version, PackageName: d.PackageName, AutoStart: d.AutoStart,
		WorkingDirectory: d.WorkingDirectory, Target: d.Target, Compatible: d.Compatible}
	if d.Attestation != nil {
		out.Attestation = base64.StdEncoding.EncodeToString(d.Attestation)
	}
	if out.Operation == "" {
		out.Operation = OperationInstall
	}
	var fs []file
	for _, f := range d.Files {
		e := file{FileName: f.FileName, URL: f.URL, SigSHA256ECDSA: f.SigSHA256ECDSA}
		if f.Size >= 0 {
			size := f.Size
			e.Size = &size
		}
		if f.SHA256 != nil {
			e.SHA256 = hex.EncodeToString(f.SHA256)
		}
		if f.Mode != 0 {
			e.Mode = names.FormatMode(f.Mode)
		}
		if c := f.Codesign; c != nil {
			e.Codesign = &codesign{c.Signature, c.SignatureAlgorithm, c.RawPayloadSize, c.KeyID, string(c.CertificateChain)}
		}
		fs = append(fs, e)
	}
	if len(fs) == 1 {
		out.Files = fs[0]
	} else {
		out.Files = fs
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, err
	}
	b = append(b, '\n')
	if len(b) > MaxAuthoredSize {
		return nil, fmt.Errorf("document of %d bytes exceeds AWS's %d", len(b), MaxAuthoredSize)
	}
	if _, err := Parse(b, Options{AllowPlaceholders: true}); err != nil {
		return nil, fmt.Errorf("encoded document does not parse: %w", err)
	}
	return b, nil
}
