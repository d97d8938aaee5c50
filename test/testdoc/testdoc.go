// Package testdoc writes signed job documents for tests in the seed's layout (one file as an
// object, autoStart as a string, a presigned-URL placeholder, an AWS codesign object), so that
// every test speaks the document format one way.
package testdoc

import (
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"

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
	Compatible []string // nil = ["board-rev-c"]
}

// For describes content published as name.
func For(name string, content []byte, version string) Doc {
	sum := sha256.Sum256(content)
	return Doc{Name: name, Size: int64(len(content)), SHA256: sum[:], Version: version}
}

// Signed returns the document's JSON with a codesign object made by key over SHA256.
func (d Doc) Signed(key crypto.Signer) (string, error) {
	cs, err := sign.MakeCodesign(key, verify.ECDSASHA256, d.SHA256, d.Size)
	if err != nil {
		return "", err
	}
	bucket, target, compatible := d.Bucket, d.Target, d.Compatible
	if bucket == "" {
		bucket = "bucket"
	}
	if target == "" {
		target = "files"
	}
	if compatible == nil {
		compatible = []string{"board-rev-c"}
	}
	doc := map[string]any{
		"operation":  "install",
		"version":    d.Version,
		"target":     target,
		"compatible": compatible,
		"files": map[string]any{
			"fileName": d.Name,
			"url":      "${aws:iot:s3-presigned-url:https://s3.eu-west-1.amazonaws.com/" + bucket + "/" + d.Name + "}",
			"size":     d.Size,
			"sha256":   hex.EncodeToString(d.SHA256),
			"codesign": cs,
		},
	}
	if target == "files" {
		doc["workingDirectory"] = d.WorkDir
		doc["packageName"] = d.Name
		doc["autoStart"] = map[bool]string{true: "true", false: "false"}[d.AutoStart] // the seed writes a string
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	return string(b), err
}
