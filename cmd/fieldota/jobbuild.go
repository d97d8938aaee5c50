package main

// jobbuild.go: the signed job document of a release, as `fieldota job` (and `fieldota release`)
// write it.

import (
	"crypto"
	"errors"
	"fmt"
	"time"

	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
)

// jobSpec is one release to write a job document for.
type jobSpec struct {
	Key             crypto.Signer
	Algorithm       verify.Algorithm
	SignatureFormat string // codesign (default), freertos or none: the detached signature per file
	CertChain       string // PEM chain of the key for codesign objects, "" = none
	Files           []string
	// Prepared, when set, are the files as stored (compressFlags.prepare) instead of Files.
	Prepared []releaseFile
	URLs     []string // one per file, as written in the document (a URL or a placeholder)
	Release  releaseFlags
	// NoCopies leaves the plain copies of the signed values out of the document (a device
	// reads them only to check they agree).
	NoCopies bool
	Now      time.Time
}

// buildJobDocument signs the files and the release statement and writes the document. Every
// document carries the statement: a device acts on nothing else.
func buildJobDocument(s jobSpec) ([]byte, *verify.Release, error) {
	files := s.Prepared
	if files == nil {
		if len(s.Files) == 0 || len(s.URLs) != len(s.Files) {
			return nil, nil, usageErr(errors.New("give one URL per file"))
		}
		var err error
		if files, err = digestFiles(s.Files); err != nil {
			return nil, nil, err
		}
	}
	if len(s.URLs) != len(files) {
		return nil, nil, usageErr(errors.New("give one URL per file"))
	}
	if s.Now.IsZero() {
		s.Now = time.Now()
	}
	p, err := s.Release.predicate(files, s.Now)
	if err != nil {
		return nil, nil, usageErr(err)
	}
	env, rel, err := attest(s.Key, files, p)
	if err != nil {
		return nil, nil, usageErr(err)
	}
	d := &jobdoc.Document{Operation: jobdoc.OperationInstall, Attestation: env}
	if !s.NoCopies {
		d.Version, d.Target, d.Compatible = rel.Version, rel.Target, rel.Compatible
		if rel.Target == jobdoc.TargetFiles {
			d.WorkingDirectory, d.PackageName = rel.WorkingDirectory, rel.PackageName
			autoStart := rel.AutoStart
			d.AutoStart = &autoStart
		}
	}
	for i, f := range files {
		e := jobdoc.File{FileName: f.name, URL: s.URLs[i], Size: -1}
		if !s.NoCopies {
			e.Size, e.SHA256 = f.size, f.digest
			if s.Release.mode != "" {
				e.Mode = rel.Files[i].Mode
			}
		}
		switch s.SignatureFormat {
		case "", "codesign":
			cs, err := sign.MakeCodesign(s.Key, s.Algorithm, f.digest, f.size)
			if err != nil {
				return nil, nil, usageErr(err)
			}
			e.Codesign = &jobdoc.Codesign{Signature: cs.Signature, SignatureAlgorithm: cs.SignatureAlgorithm,
				RawPayloadSize: cs.RawPayloadSize, KeyID: cs.KeyID}
			if s.CertChain != "" {
				chain, err := sign.LoadCertificateChain(s.CertChain, s.Key)
				if err != nil {
					return nil, nil, usageErr(err)
				}
				e.Codesign.CertificateChain = []byte(chain)
			}
		case "freertos":
			if s.Algorithm != "" && s.Algorithm != verify.ECDSASHA256 {
				return nil, nil, usageErr(errors.New("sig-sha256-ecdsa is ECDSA only"))
			}
			sig, err := sign.SignDigest(s.Key, verify.ECDSASHA256, f.digest)
			if err != nil {
				return nil, nil, usageErr(err)
			}
			e.SigSHA256ECDSA = b64Std(sig)
		case "none":
		default:
			return nil, nil, usageErr(fmt.Errorf("--signature-format %q: want codesign, freertos or none", s.SignatureFormat))
		}
		d.Files = append(d.Files, e)
	}
	doc, err := jobdoc.Encode(d)
	if err != nil {
		return nil, nil, usageErr(err)
	}
	return doc, rel, nil
}
