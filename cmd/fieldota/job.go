package main

// job.go: `fieldota job` writes a complete signed job document for one or more files, ready for
// `aws iot create-job --document file://…` and for the emulator.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
	"github.com/spf13/cobra"
)

func init() { register(newJobCmd) }

func newJobCmd() *cobra.Command {
	var (
		keyPath, alg, out, target, wd, pkg, mode, sigFormat string
		chainPath                                           string
		files, urls, presigns                               []string
		autoStart, noAttest                                 bool
		rel                                                 releaseFlags
	)
	cmd := &cobra.Command{
		Use:   "job --key KEY --file FILE (--url URL | --presign S3URL) --version V [flags]",
		Short: "Write a signed job document for files (AWS IoT create-job and the emulator)",
		Long: `Write a job document (docs/job-document.md) for one or more files, each signed with a
codesign object (or FreeRTOS sig-sha256-ecdsa) and an attestation of version and compatibility.

--presign s3URL writes the AWS placeholder ${aws:iot:s3-presigned-url:s3URL}, which AWS IoT (or
'fieldota sim') expands into a presigned URL on every delivery; --url writes a URL as given.
Repeat --file with one --url or --presign each, in the same order.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 || len(urls)+len(presigns) != len(files) || (len(urls) > 0 && len(presigns) > 0) {
				return usageErr(errors.New("give --file once per file, and as many --url or as many --presign"))
			}
			key, err := sign.LoadPrivateKey(keyPath)
			if err != nil {
				return usageErr(err)
			}
			a, err := verify.ParseAlgorithm(alg)
			if err != nil {
				return usageErr(err)
			}
			p, err := rel.predicate()
			if err != nil {
				return usageErr(fmt.Errorf("--version: %w", err))
			}
			d := &jobdoc.Document{Operation: jobdoc.OperationInstall, Version: rel.version, Target: jobdoc.Target(target),
				WorkingDirectory: wd, PackageName: pkg, AutoStart: autoStart, Compatible: rel.compatible}
			var perm os.FileMode
			if mode != "" {
				n, err := strconv.ParseUint(mode, 8, 32)
				if err != nil {
					return usageErr(fmt.Errorf("--mode %q: %w", mode, err))
				}
				perm = os.FileMode(n)
			}
			for i, path := range files {
				digest, size, err := sign.DigestFile(path)
				if err != nil {
					return ioErr(err)
				}
				u := ""
				if len(urls) > 0 {
					u = urls[i]
				} else {
					u = "${aws:iot:s3-presigned-url:" + presigns[i] + "}"
				}
				f := jobdoc.File{FileName: filepath.Base(path), URL: u, Size: size, SHA256: digest, Mode: perm}
				switch sigFormat {
				case "codesign":
					cs, err := sign.MakeCodesign(key, a, digest, size)
					if err != nil {
						return usageErr(err)
					}
					f.Codesign = &jobdoc.Codesign{Signature: cs.Signature, SignatureAlgorithm: cs.SignatureAlgorithm,
						RawPayloadSize: cs.RawPayloadSize, KeyID: cs.KeyID}
					if chainPath != "" {
						chain, err := sign.LoadCertificateChain(chainPath, key)
						if err != nil {
							return usageErr(err)
						}
						f.Codesign.CertificateChain = []byte(chain)
					}
				case "freertos":
					if a != "" && a != verify.ECDSASHA256 {
						return usageErr(errors.New("sig-sha256-ecdsa is ECDSA only"))
					}
					s, err := sign.SignDigest(key, verify.ECDSASHA256, digest)
					if err != nil {
						return usageErr(err)
					}
					f.SigSHA256ECDSA = b64Std(s)
				case "none":
				default:
					return usageErr(fmt.Errorf("--signature-format %q: want codesign, freertos or none", sigFormat))
				}
				if !noAttest {
					env, err := sign.Attest(key, path, digest, p)
					if err != nil {
						return usageErr(err)
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
				return usageErr(err)
			}
			if err := writeCLIFile(out, doc, 0o644); err != nil {
				return ioErr(err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&keyPath, "key", "", "private signing key (PEM)")
	f.StringVar(&alg, "algorithm", "", "signature algorithm (default from the key)")
	f.StringArrayVar(&files, "file", nil, "payload file (repeatable)")
	f.StringArrayVar(&urls, "url", nil, "download URL of the file as written in the document (repeatable)")
	f.StringArrayVar(&presigns, "presign", nil, "S3 URL to wrap in ${aws:iot:s3-presigned-url:…} (repeatable)")
	f.StringVar(&target, "target", "files", "installer: files, slot or binary")
	f.StringVar(&wd, "working-directory", "", "target files: directory on the device (under its allowed roots)")
	f.StringVar(&pkg, "package-name", "", "package name; with --auto-start the file to run")
	f.BoolVar(&autoStart, "auto-start", false, "target files: run --package-name after placing the files")
	f.StringVar(&mode, "mode", "", "target files: permission bits of the files, e.g. 0755")
	f.StringVar(&chainPath, "certificate-chain", "", "PEM code-signing certificate of the key (leaf first) to carry in codesign")
	f.StringVar(&sigFormat, "signature-format", "codesign", "codesign (AWS object), freertos (sig-sha256-ecdsa) or none")
	f.BoolVar(&noAttest, "no-attestation", false, "do not attach the DSSE attestation")
	f.StringVarP(&out, "out", "o", "-", "where to write the document (- = stdout)")
	rel.add(cmd, "release version (required)")
	_ = cmd.MarkFlagRequired("key")
	_ = cmd.MarkFlagRequired("version")
	return cmd
}
