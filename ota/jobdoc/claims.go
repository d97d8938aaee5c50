package jobdoc

import "github.com/fieldota/fieldota/verify"

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

// Claims hands package verify what the document states: its plain fields, which must be
// copies of the release statement's values, and the signature material it carries.
func (d *Document) Claims() verify.Claims {
	c := verify.Claims{
		Statement: d.Attestation, Target: d.Target, Version: d.Version, Compatible: d.Compatible,
		WorkingDirectory: d.WorkingDirectory, PackageName: d.PackageName, AutoStart: d.AutoStart,
		DigestFromSignature: d.AFROTA,
	}
	for _, f := range d.Files {
		c.Files = append(c.Files, verify.FileClaim{Name: f.FileName, Size: f.Size, SHA256: f.SHA256, Mode: f.Mode, Signature: f.Signature()})
	}
	return c
}
