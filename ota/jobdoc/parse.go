package jobdoc

import (
	"encoding/json"
	"slices"
	"unicode/utf8"

	"github.com/fieldota/fieldota/ota/names"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify"
)

// topKeys are the document-level keys fieldota reads.
var topKeys = []string{"operation", "version", "packageName", "autoStart", "workingDirectory", "target", "files", "attestation", "compatible"}

// Parse reads a job document and checks its syntax. It does not decide what the device may do:
// that needs the release statement verified (package verify, through Claims).
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
	if _, ok := top["afr_ota"]; ok {
		return afrOTA(top, opt) // aws iot create-ota-update's document (afr.go)
	}
	d := &Document{}
	var err error

	// The operation first: an unknown one is UNSUPPORTED_OPERATION whatever else is wrong.
	if d.Operation, err = reqString(top, "operation"); err != nil {
		return nil, err
	}
	if d.Operation != OperationInstall {
		return nil, reason.Errorf(reason.UnsupportedOperation, "operation %q is not supported (only %q)", names.Clip(d.Operation), OperationInstall)
	}
	for k := range top {
		if !slices.Contains(topKeys, k) {
			d.Unknown = append(d.Unknown, names.Clip(k))
		}
	}
	if d.Version, err = optString(top, "version"); err != nil {
		return nil, err
	}
	if d.Version != "" {
		if _, err := verify.ParseVersion(d.Version); err != nil {
			return nil, invalid("version: %w", err)
		}
	}
	if d.PackageName, err = optString(top, "packageName"); err != nil {
		return nil, err
	}
	if d.PackageName != "" {
		if err := names.Name(d.PackageName); err != nil {
			return nil, invalid("packageName: %w", err)
		}
	}
	if d.AutoStart, err = optBool(top, "autoStart"); err != nil {
		return nil, err
	}
	if d.WorkingDirectory, err = optString(top, "workingDirectory"); err != nil {
		return nil, err
	}
	if d.WorkingDirectory != "" {
		if err := names.Dir(d.WorkingDirectory); err != nil {
			return nil, invalid("workingDirectory: %w", err)
		}
	}
	tgt, err := optString(top, "target")
	if err != nil {
		return nil, err
	}
	switch Target(tgt) {
	case "", TargetFiles, TargetSlot, TargetBinary:
		d.Target = Target(tgt)
	default:
		return nil, invalid("target %q: want files, slot or binary", names.Clip(tgt))
	}
	if d.Attestation, err = attestation(top, "attestation"); err != nil {
		return nil, err
	}
	if d.Compatible, err = compatible(top); err != nil {
		return nil, err
	}
	if d.Files, err = files(top, opt, d.Attestation != nil, &d.Unknown); err != nil {
		return nil, err
	}
	if d.Version == "" && d.Attestation == nil {
		return nil, invalid("version is required (unless the release statement carries it)")
	}
	slices.Sort(d.Unknown)
	return d, nil
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
	for i, c := range list {
		if err := names.Compatible(c); err != nil {
			return nil, invalid("compatible[%d]: %w", i, err)
		}
	}
	return list, nil
}
