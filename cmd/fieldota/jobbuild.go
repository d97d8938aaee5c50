package main

// jobbuild.go: the one place that turns a release's files and facts into a signed job document;
// `fieldota job` writes what it returns and `fieldota release` uploads and publishes it.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
)

// jobSpec is everything a job document is built from (the flags of `fieldota job`).
type jobSpec struct {
	keyPath, alg, target, wd, pkg, mode, sigFormat string
	chainPath                                      string
	files, urls, presigns                          []string
	autoStart, noAttest                            bool
	rel                                            releaseFlags
}

// buildJobDocument signs the files and returns the encoded document. --presign S3 URLs become
// ${aws:iot:s3-presigned-url:…}; a URL that already is a placeholder (release's version-pinned
// -v2 form) is written as given. Errors are usage (2) or I/O (2) errors for the CLI.
func buildJobDocument(spec jobSpec) ([]byte, error) {
	files, urls, presigns := spec.files, spec.urls, spec.presigns
	if len(files) == 0 || len(urls)+len(presigns) != len(files) || (len(urls) > 0 && len(presigns) > 0) {
		return nil, usageErr(errors.New("give --file once per file, and as many --url or as many --presign"))
	}
	key, err := sign.LoadPrivateKey(spec.keyPath)
	if err != nil {
		return nil, usageErr(err)
	}
	a, err := verify.ParseAlgorithm(spec.alg)
	if err != nil {
		return nil, usageErr(err)
	}
	p, err := spec.rel.predicate()
	if err != nil {
		return nil, usageErr(fmt.Errorf("--version: %w", err))
	}
	d := &jobdoc.Document{Operation: jobdoc.OperationInstall, Version: spec.rel.version, Target: jobdoc.Target(spec.target),
		WorkingDirectory: spec.wd, PackageName: spec.pkg, AutoStart: spec.autoStart, Compatible: spec.rel.compatible}
	var perm os.FileMode
	if spec.mode != "" {
		n, err := strconv.ParseUint(spec.mode, 8, 32)
		if err != nil {
			return nil, usageErr(fmt.Errorf("--mode %q: %w", spec.mode, err))
		}
		perm = os.FileMode(n)
	}
	for i, path := range files {
		digest, size, err := sign.DigestFile(path)
		if err != nil {
			return nil, ioErr(err)
		}
		u := ""
		if len(urls) > 0 {
			u = urls[i]
		} else {
			u = "${aws:iot:s3-presigned-url:" + presigns[i] + "}"
		}
		f := jobdoc.File{FileName: filepath.Base(path), URL: u, Size: size, SHA256: digest, Mode: perm}
		switch spec.sigFormat {
		case "codesign":
			cs, err := sign.MakeCodesign(key, a, digest, size)
			if err != nil {
				return nil, usageErr(err)
			}
			f.Codesign = &jobdoc.Codesign{Signature: cs.Signature, SignatureAlgorithm: cs.SignatureAlgorithm,
				RawPayloadSize: cs.RawPayloadSize, KeyID: cs.KeyID}
			if spec.chainPath != "" {
				chain, err := sign.LoadCertificateChain(spec.chainPath, key)
				if err != nil {
					return nil, usageErr(err)
				}
				f.Codesign.CertificateChain = []byte(chain)
			}
		case "freertos":
			if a != "" && a != verify.ECDSASHA256 {
				return nil, usageErr(errors.New("sig-sha256-ecdsa is ECDSA only"))
			}
			s, err := sign.SignDigest(key, verify.ECDSASHA256, digest)
			if err != nil {
				return nil, usageErr(err)
			}
			f.SigSHA256ECDSA = b64Std(s)
		case "none":
		default:
			return nil, usageErr(fmt.Errorf("--signature-format %q: want codesign, freertos or none", spec.sigFormat))
		}
		if !spec.noAttest {
			env, err := sign.Attest(key, path, digest, p)
			if err != nil {
				return nil, usageErr(err)
			}
			if len(files) == 1 {
				d.Attestation = env
			} else {
				f.Attestation = env // cosign-style: one subject per attestation
			}
		}
		d.Files = append(d.Files, f)
	}
	doc, err := jobdoc.Encode(d)
	if err != nil {
		return nil, usageErr(err)
	}
	return doc, nil
}
