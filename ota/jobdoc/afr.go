package jobdoc

import (
	"encoding/json"
	"path"
	"slices"
	"strconv"

	"github.com/fieldota/fieldota/ota/names"
	"github.com/fieldota/fieldota/verify"
)

// Documents written by `aws iot create-ota-update` for HTTP: {"afr_ota":{"protocols":["HTTP"],
// "files":[{"filepath","filesize","fileid","certfile","update_data_url","auth_scheme",
// "sig-sha256-ecdsa"}]}} (aws-iot-jobs.md §4.2). They carry one file, its size and an AWS Signer
// ECDSA signature over its bytes, and nothing else: no digest, no version, no target. The agent
// decides those from its configuration (afr_ota.*), and only where it accepts codesign-only
// releases (docs/signing.md says what that gives away).

var afrFileKeys = []string{"filepath", "filesize", "fileid", "certfile", "fileType", "attr", "update_data_url", "auth_scheme", "sig-sha256-ecdsa"}

// afrOTA parses an afr_ota document into a Document with AFROTA set: its one file named after
// the base of filepath (or "file-<fileid>"), its URL, size and signature.
func afrOTA(top map[string]json.RawMessage, opt Options) (*Document, error) {
	var afr map[string]json.RawMessage
	if firstByte(top["afr_ota"]) != '{' || json.Unmarshal(top["afr_ota"], &afr) != nil {
		return nil, invalid("afr_ota must be an object")
	}
	d := &Document{Operation: OperationInstall, AFROTA: true}
	for k := range top {
		if k != "afr_ota" {
			d.Unknown = append(d.Unknown, names.Clip(k))
		}
	}
	var protocols []string
	if err := json.Unmarshal(afr["protocols"], &protocols); err != nil {
		return nil, invalid("afr_ota.protocols must be an array of strings")
	}
	if !slices.Contains(protocols, "HTTP") {
		return nil, invalid("afr_ota.protocols %v: only HTTP delivery (update_data_url) is supported, not MQTT streams", protocols)
	}
	var entries []json.RawMessage
	if err := json.Unmarshal(afr["files"], &entries); err != nil || len(entries) != 1 {
		return nil, invalid("afr_ota.files must list exactly one file (as the FreeRTOS OTA agent)")
	}
	var m map[string]json.RawMessage
	if firstByte(entries[0]) != '{' || json.Unmarshal(entries[0], &m) != nil {
		return nil, invalid("afr_ota.files[0] must be an object")
	}
	for k := range m {
		if !slices.Contains(afrFileKeys, k) {
			d.Unknown = append(d.Unknown, "afr_ota.files[0]."+names.Clip(k))
		}
	}
	at := "afr_ota.files[0]"
	f := File{}
	var err error
	if f.Size, err = reqInt(m, "filesize"); err != nil {
		return nil, prefix(at, err)
	}
	if f.Size <= 0 || f.Size > MaxFileSize {
		return nil, invalid("%s.filesize %d out of range", at, f.Size)
	}
	id, err := reqInt(m, "fileid")
	if err != nil {
		return nil, prefix(at, err)
	}
	fp, err := optString(m, "filepath")
	if err != nil {
		return nil, prefix(at, err)
	}
	// filepath is where a FreeRTOS device writes the file; here only its base name is kept, and
	// the directory is the device's (afr_ota.working_directory).
	f.FileName = "file-" + strconv.FormatInt(id, 10)
	if fp != "" {
		f.FileName = path.Base(fp)
	}
	if err := names.Name(f.FileName); err != nil {
		return nil, invalid("%s.filepath: %w", at, err)
	}
	if f.URL, err = reqString(m, "update_data_url"); err != nil {
		return nil, prefix(at, err)
	}
	if err := checkURL(f.URL, opt); err != nil {
		return nil, invalid("%s.update_data_url: %w", at, err)
	}
	if scheme, err := optString(m, "auth_scheme"); err != nil || (scheme != "" && scheme != "aws.s3.presigned") {
		return nil, invalid("%s.auth_scheme %q: only aws.s3.presigned is supported", at, names.Clip(scheme))
	}
	if f.SigSHA256ECDSA, err = reqString(m, "sig-sha256-ecdsa"); err != nil {
		return nil, prefix(at, err)
	}
	if _, err := verify.ParseSignature(f.SigSHA256ECDSA); err != nil {
		return nil, invalid("%s.sig-sha256-ecdsa: %w", at, err)
	}
	d.Files = []File{f}
	slices.Sort(d.Unknown)
	return d, nil
}
