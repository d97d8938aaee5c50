package main

// job.go: `fieldota job` writes a complete signed job document for one or more files, ready for
// `aws iot create-job --document file://…` and for the emulator.

import (
	"github.com/spf13/cobra"
)

func init() { register(newJobCmd) }

func newJobCmd() *cobra.Command {
	var (
		spec jobSpec
		out  string
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
			doc, err := buildJobDocument(spec)
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
	f.StringVar(&spec.keyPath, "key", "", "private signing key (PEM)")
	f.StringVar(&spec.alg, "algorithm", "", "signature algorithm (default from the key)")
	f.StringArrayVar(&spec.files, "file", nil, "payload file (repeatable)")
	f.StringArrayVar(&spec.urls, "url", nil, "download URL of the file as written in the document (repeatable)")
	f.StringArrayVar(&spec.presigns, "presign", nil, "S3 URL to wrap in ${aws:iot:s3-presigned-url:…} (repeatable)")
	f.StringVar(&spec.target, "target", "files", "installer: files, slot or binary")
	f.StringVar(&spec.wd, "working-directory", "", "target files: directory on the device (under its allowed roots)")
	f.StringVar(&spec.pkg, "package-name", "", "package name; with --auto-start the file to run")
	f.BoolVar(&spec.autoStart, "auto-start", false, "target files: run --package-name after placing the files")
	f.StringVar(&spec.mode, "mode", "", "target files: permission bits of the files, e.g. 0755")
	f.StringVar(&spec.chainPath, "certificate-chain", "", "PEM code-signing certificate of the key (leaf first) to carry in codesign")
	f.StringVar(&spec.sigFormat, "signature-format", "codesign", "codesign (AWS object), freertos (sig-sha256-ecdsa) or none")
	f.BoolVar(&spec.noAttest, "no-attestation", false, "do not attach the DSSE attestation")
	f.StringVarP(&out, "out", "o", "-", "where to write the document (- = stdout)")
	spec.rel.add(cmd, "release version (required)")
	_ = cmd.MarkFlagRequired("key")
	_ = cmd.MarkFlagRequired("version")
	return cmd
}
