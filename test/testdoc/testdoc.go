// Package testdoc writes signed job documents for tests in the seed's layout (one file as an
// object, autoStart as a string, a presigned-URL placeholder, an AWS codesign object) with the
// release statement that signs the whole install intent, so that every test speaks the document
// format one way.
package testdoc

import (
	"crypto"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"

	"github.com/fieldota/fieldota/ota/names"
	"github.com/fieldota/fieldota/ota/zimage"
	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
)

// Doc describes one single-file install document.
type Doc struct {
	Target     string // "files" (default), "slot" or "binary"
	Name       string // file name; the URL is the placeholder for s3://Bucket/Name
	Bucket     string // default "bucket"
	Size       int64
	SHA256     []byte
	Version    string
	WorkDir    string   // files: workingDirectory
	AutoStart  bool     // files: start Name after placing it
	Rerunnable bool     // files: autoStartRerunnable
	Mode       string   // files: the file's mode, "" = default
	Binary     string   // binary: the managed binary's name (default: Name)
	Compatible []string // nil = ["board-rev-c"]
	Expires    string   // RFC 3339, "" = never
	Package    string   // the signed $package name, "" = none
	Force      bool     // sign force: reinstall even if already installed
	// Compressed signs the file as a compressed object (Size and SHA256 are then the stored
	// object's, as ForCompressed sets them).
	Compressed *zimage.Manifest

	// NoStatement writes a codesign-only document (AWS Signer style).
	NoStatement bool
	// Plain overrides plain copies after signing (an attacker's edit), e.g. {"version": "9.0"}.
	Plain map[string]any
	// FilePlain overrides fields of the files entry after signing, e.g. {"fileName": "x"}.
	FilePlain map[string]any
}

// For describes content published as name.
func For(name string, content []byte, version string) Doc {
	sum := sha256.Sum256(content)
	return Doc{Name: name, Size: int64(len(content)), SHA256: sum[:], Version: version}
}

// ForCompressed describes a compressed object (ota/zimage) published as name.
func ForCompressed(name string, m zimage.Manifest, version string) Doc {
	return Doc{Name: name, Size: m.Stored.Size, SHA256: m.Stored.Sum(), Version: version, Compressed: &m}
}

// Predicate is the release the document signs.
func (d Doc) Predicate() verify.Predicate {
	target, compatible := d.Target, d.Compatible
	if target == "" {
		target = "files"
	}
	if compatible == nil {
		compatible = []string{"board-rev-c"}
	}
	p := verify.Predicate{Target: target, Version: d.Version, Compatible: compatible, Expires: d.Expires, Package: d.Package, Force: d.Force,
		Files: map[string]verify.PredicateFile{d.Name: {Size: d.Size, Mode: d.Mode}}}
	if d.Compressed != nil {
		pf := verify.PredicateFileOf(*d.Compressed)
		pf.Mode = d.Mode
		p.Files[d.Name] = pf
	}
	switch target {
	case "files":
		p.WorkingDirectory, p.AutoStart, p.AutoStartRerunnable = d.WorkDir, d.AutoStart, d.Rerunnable
		if d.AutoStart {
			p.PackageName = d.Name
		}
	case "binary":
		p.Binary = d.Binary
		if p.Binary == "" {
			p.Binary = d.Name
		}
	}
	return p
}

// Statement is the document's release statement (a DSSE envelope, JSON).
func (d Doc) Statement(key crypto.Signer) ([]byte, error) {
	return sign.Attest(key, d.Name, d.SHA256, d.Predicate())
}

// Signed returns the document's JSON: a codesign object made by key over SHA256 and, unless
// NoStatement, the release statement, with the plain copies the seed's document carries.
func (d Doc) Signed(key crypto.Signer) (string, error) {
	cs, err := sign.MakeCodesign(key, verify.ECDSASHA256, d.SHA256, d.Size)
	if err != nil {
		return "", err
	}
	bucket := d.Bucket
	if bucket == "" {
		bucket = "bucket"
	}
	p := d.Predicate()
	file := map[string]any{
		"fileName": d.Name,
		"url":      "${aws:iot:s3-presigned-url:https://s3.eu-west-1.amazonaws.com/" + bucket + "/" + d.Name + "}",
		"size":     d.Size,
		"sha256":   hex.EncodeToString(d.SHA256),
		"codesign": cs,
	}
	if d.Mode != "" {
		m, err := names.ParseMode(d.Mode)
		if err != nil {
			return "", err
		}
		file["mode"] = names.FormatMode(m)
	}
	doc := map[string]any{
		"operation":  "install",
		"version":    d.Version,
		"target":     p.Target,
		"compatible": p.Compatible,
		"files":      file,
	}
	if p.Target == "files" {
		doc["workingDirectory"] = d.WorkDir
		if d.AutoStart {
			doc["packageName"] = d.Name
		}
		doc["autoStart"] = map[bool]string{true: "true", false: "false"}[d.AutoStart] // the seed writes a string
	}
	if !d.NoStatement {
		env, err := d.Statement(key)
		if err != nil {
			return "", err
		}
		doc["attestation"] = base64.StdEncoding.EncodeToString(env)
	}
	for k, v := range d.Plain {
		if v == nil {
			delete(doc, k)
		} else {
			doc[k] = v
		}
	}
	for k, v := range d.FilePlain {
		if v == nil {
			delete(file, k)
		} else {
			file[k] = v
		}
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	return string(b), err
}
