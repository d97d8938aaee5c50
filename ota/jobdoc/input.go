package jobdoc

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/fieldota/fieldota/verify"
)

// Signature returns the file's detached signature material for package verify, nil if unsigned.
func (f File) Signature() *verify.Signature {
	switch {
	case f.Codesign != nil:
		return &verify.Signature{
			Algorithm: verify.Algorithm(f.Codesign.SignatureAlgorithm), Value: f.Codesign.Signature,
			KeyID: f.Codesign.KeyID, CertChain: f.Codesign.CertificateChain, RawPayloadSize: f.Codesign.RawPayloadSize,
		}
	case f.SigSHA256ECDSA != "":
		return &verify.Signature{Algorithm: verify.ECDSASHA256, Value: f.SigSHA256ECDSA}
	}
	return nil
}

// VerifyInput is what package verify needs about file i, with the document's expectations
// filled in. The caller sets Digest and Size from the download (ts.Precheck needs neither).
func (d *Document) VerifyInput(i int) verify.Input {
	f := d.Files[i]
	att := f.Attestation
	if att == nil {
		att = d.Attestation
	}
	return verify.Input{
		Name:        f.FileName,
		Expected:    verify.Expected{Size: f.Size, SHA256: f.SHA256},
		Signature:   f.Signature(),
		Attestation: att,
		Plain:       verify.Claims{Version: d.Version, Compatible: d.Compatible},
	}
}

// Encode writes a document in the layout of docs/job-document.md: one file as an object (like
// the seed), several as an array; attestations as base64 of the envelope JSON. The result is
// parsed back (placeholders allowed, any root) and must fit AWS's MaxAuthoredSize.
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
		Size           int64     `json:"size"`
		SHA256         string    `json:"sha256"`
		Codesign       *codesign `json:"codesign,omitempty"`
		SigSHA256ECDSA string    `json:"sig-sha256-ecdsa,omitempty"`
		Mode           string    `json:"mode,omitempty"`
		Attestation    string    `json:"attestation,omitempty"`
	}
	type doc struct {
		Operation        string   `json:"operation"`
		Version          string   `json:"version,omitempty"`
		PackageName      string   `json:"packageName,omitempty"`
		AutoStart        bool     `json:"autoStart"`
		WorkingDirectory string   `json:"workingDirectory,omitempty"`
		Target           Target   `json:"target"`
		Files            any      `json:"files"`
		Attestation      string   `json:"attestation,omitempty"`
		Compatible       []string `json:"compatible,omitempty"`
	}
	out := doc{Operation: d.Operation, Version: d.Version, PackageName: d.PackageName, AutoStart: d.AutoStart,
		WorkingDirectory: d.WorkingDirectory, Target: d.Target, Compatible: d.Compatible, Attestation: b64(d.Attestation)}
	if out.Operation == "" {
		out.Operation = OperationInstall
	}
	if out.Target == "" {
		out.Target = TargetFiles
	}
	var fs []file
	for _, f := range d.Files {
		e := file{FileName: f.FileName, URL: f.URL, Size: f.Size, SHA256: hex.EncodeToString(f.SHA256),
			SigSHA256ECDSA: f.SigSHA256ECDSA, Attestation: b64(f.Attestation)}
		if f.Mode != 0 {
			e.Mode = fmt.Sprintf("%04o", uint32(f.Mode.Perm()))
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
	if _, err := Parse(b, Options{AllowedRoots: []string{"/"}, AllowInsecureHTTP: true, AllowPlaceholders: true}); err != nil {
		return nil, fmt.Errorf("encoded document does not parse: %w", err)
	}
	return b, nil
}

func b64(b []byte) string {
	if b == nil {
		return ""
	}
	return base64.StdEncoding.EncodeToString(b)
}
