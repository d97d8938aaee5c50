package main

// job.go: `fieldota job` writes a complete signed job document for one or more files, ready for
// `aws iot create-job --document file://…` and for the emulator.

import (
	"errors"

	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
	"github.com/spf13/cobra"
)

func init() { register(newJobCmd) }

func newJobCmd() *cobra.Command {
	var (
		keyPath, alg, out, sigFormat, chainPath string
		files, urls, presigns                   []string
		noCopies                                bool
		rel                                     releaseFlags
		comp                                    compressFlags
	)
	cmd := &cobra.Command{
		Use:   "job --key KEY --file FILE (--url URL | --presign S3URL) --version V [flags]",
		Short: "Write a signed job document for a release (AWS IoT create-job and the emulator)",
		Long: `Write a job document (docs/job-document.md) for a release of one or more files. Its
release statement — a DSSE-signed in-toto statement — binds every file's name, size and SHA-256
to the release's target, version, compatibility, expiry and install parameters (working
directory, program to start, modes, managed binary): a device acts on nothing else, and refuses a
document whose plain fields disagree with it. Each file also carries a codesign object (or a
FreeRTOS sig-sha256-ecdsa) over its bytes.

--presign s3URL writes the AWS placeholder ${aws:iot:s3-presigned-url:s3URL}, which AWS IoT (or
'fieldota sim') expands into a presigned URL on every delivery; --url writes a URL as given.
Repeat --file with one --url or --presign each, in the same order.

--compress zstd stores each file as one zstd object (FILE.zst; upload it where its URL points):
the statement signs the object's size and digest and the installed (decompressed) ones, and
devices decompress while downloading. --delta (target slot) adds a block index and small frames
to the same object, so that a device fetches only the blocks its slots lack (docs/delta-updates.md).
The reference zstd -19 compresses when installed, the pure-Go encoder otherwise (said on stderr).`,
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
			u := urls
			for _, p := range presigns {
				u = append(u, "${aws:iot:s3-presigned-url:"+p+"}")
			}
			prepared, err := comp.prepare(cmd.Context(), cmd.ErrOrStderr(), files, rel.target, comp.objectsDir)
			if err != nil {
				return err
			}
			doc, _, err := buildJobDocument(jobSpec{Key: key, Algorithm: a, SignatureFormat: sigFormat, CertChain: chainPath,
				Files: files, Prepared: prepared, URLs: u, Release: rel, NoCopies: noCopies})
			if err != nil {
				return err
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
	f.StringVar(&chainPath, "certificate-chain", "", "PEM code-signing certificate of the key (leaf first) to carry in codesign")
	f.StringVar(&sigFormat, "signature-format", "codesign", "detached signature per file: codesign (AWS object), freertos (sig-sha256-ecdsa) or none")
	f.BoolVar(&noCopies, "no-plain-copies", false, "leave out the plain copies of the signed values (version, target, sizes…)")
	f.StringVarP(&out, "out", "o", "-", "where to write the document (- = stdout)")
	rel.add(cmd, "release version (required)")
	comp.add(cmd, "with --compress: write the objects here (default: beside each file, as FILE.zst); upload them where the URLs point")
	_ = cmd.MarkFlagRequired("key")
	_ = cmd.MarkFlagRequired("version")
	return cmd
}
