package main

// verify.go: `fieldota verify` checks a file against a job document or a detached signature,
// exactly as a device would (same trust store, same policy code). Exit 0 = accepted,
// 1 = refused (the reason code is printed), 2 = usage or I/O error.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
	"github.com/spf13/cobra"
)

func init() { register(newVerifyCmd) }

func newVerifyCmd() *cobra.Command {
	var (
		keys, cas                []string
		jobPath, fileName        string
		sigPath, alg, attestPath string
		version                  string
		pol                      verify.Policy
	)
	cmd := &cobra.Command{
		Use:   "verify --key PUB (--job DOC | --signature SIG) FILE",
		Short: "Verify a file against a job document or a detached signature (exit 0 ok, 1 refused)",
		Long: `Verify FILE as a device would: size, SHA-256, signature (codesign, sig-sha256-ecdsa or a
detached cosign-style signature), attestation, then the policy (unsigned, downgrade,
compatibility). Prints OK or REFUSED <REASON>; exit status 0 accepted, 1 refused, 2 error.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[0]
			if (jobPath == "") == (sigPath == "") {
				return usageErr(errors.New("give exactly one of --job and --signature"))
			}
			ts, err := verify.LoadTrustStore(keys, cas)
			if err != nil {
				return usageErr(err)
			}
			var in verify.Input
			if jobPath != "" {
				if in, err = inputFromJob(jobPath, fileName, file); err != nil {
					return err
				}
			} else {
				sig, err := os.ReadFile(sigPath)
				if err != nil {
					return ioErr(err)
				}
				in = verify.Input{Name: filepath.Base(file), Expected: verify.Expected{Size: -1},
					Signature: &verify.Signature{Algorithm: verify.Algorithm(alg), Value: string(sig)},
					Plain:     verify.Claims{Version: version}}
				if attestPath != "" {
					if in.Attestation, err = os.ReadFile(attestPath); err != nil {
						return ioErr(err)
					}
				}
			}
			// The digest is computed here, streaming, as the downloader does on the device.
			if in.Digest, in.Size, err = sign.DigestFile(file); err != nil {
				return ioErr(err)
			}
			vd, err := ts.Verify(in, pol)
			note := ""
			// Compatibility is Verify's last check, so when the operator named no device, an
			// INCOMPATIBLE_DEVICE refusal means everything else passed.
			if errors.Is(err, reason.IncompatibleDevice) && !cmd.Flags().Changed("device-compatible") {
				err, note = nil, " (compatibility not checked: no --device-compatible)"
			}
			if err != nil {
				return refusedErr(err)
			}
			what := "unsigned (allowed)"
			if vd.KeyID != "" {
				what = fmt.Sprintf("signed %s by key %s", vd.Algorithm, vd.KeyID)
			}
			if vd.Attested {
				what += fmt.Sprintf(", attested by key %s", vd.AttestationKeyID)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "OK %s: %s; version %q%s\n", in.Name, what, vd.Version, note)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&keys, "key", nil, "trusted public key PEM (repeatable)")
	f.StringArrayVar(&cas, "ca", nil, "trusted code-signing CA certificate PEM (repeatable)")
	f.StringVar(&jobPath, "job", "", "job document to verify FILE against")
	f.StringVar(&fileName, "file", "", "which files[] entry (fileName) FILE is (default: FILE's base name, or the only entry)")
	f.StringVar(&sigPath, "signature", "", "detached base64 signature (cosign sign-blob / fieldota sign output)")
	f.StringVar(&alg, "algorithm", "", "algorithm of --signature (default from the key)")
	f.StringVar(&attestPath, "attestation", "", "DSSE attestation to check with --signature")
	f.StringVar(&version, "version", "", "plain version claimed with --signature")
	f.BoolVar(&pol.AllowUnsigned, "allow-unsigned", false, "accept an unsigned document (device config allow_unsigned)")
	f.StringVar(&pol.InstalledVersion, "installed-version", "", "refuse older versions than this (anti-rollback)")
	f.StringSliceVar(&pol.DeviceCompatible, "device-compatible", nil, "the device's compatibility names")
	return cmd
}

func inputFromJob(jobPath, fileName, file string) (verify.Input, error) {
	data, err := os.ReadFile(jobPath)
	if err != nil {
		return verify.Input{}, ioErr(err)
	}
	// Operator side: placeholders are expected, and the device's roots are not known here.
	d, err := jobdoc.Parse(data, jobdoc.Options{AllowedRoots: []string{"/"}, AllowInsecureHTTP: true, AllowPlaceholders: true})
	if err != nil {
		return verify.Input{}, refusedErr(err)
	}
	if fileName == "" {
		fileName = filepath.Base(file)
	}
	for i, f := range d.Files {
		if f.FileName == fileName || len(d.Files) == 1 {
			return d.VerifyInput(i), nil
		}
	}
	names := make([]string, len(d.Files))
	for i, f := range d.Files {
		names[i] = f.FileName
	}
	return verify.Input{}, usageErr(fmt.Errorf("%s has no file %q (files: %s); use --file", jobPath, fileName, strings.Join(names, ", ")))
}
