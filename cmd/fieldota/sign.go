package main

// sign.go: `fieldota sign` writes the cosign-style detached signature, the AWS codesign
// object and (with --version) the release statement of a one-file release.

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
	"github.com/spf13/cobra"
)

func init() { register(newSignCmd) }

func newSignCmd() *cobra.Command {
	var (
		keyPath, alg                   string
		sigOut, codesignOut, attestOut string
		predOut, chainPath             string
		rel                            releaseFlags
	)
	cmd := &cobra.Command{
		Use:   "sign --key KEY [--version V] FILE",
		Short: "Sign a file: detached signature, AWS codesign object, optional release statement",
		Long: `Sign FILE with a private key, streaming it through SHA-256 once.

Writes FILE.sig (base64 DER over SHA-256(FILE): what 'cosign sign-blob --key' writes) and
FILE.codesign.json (the AWS code-signing object for a job document). With --version it also
writes FILE.intoto.json, the release statement of FILE as a one-file release — what
  cosign attest-blob --key KEY --type https://fieldota.dev/release/v2 --predicate PRED FILE
writes — and (with --predicate-out) that predicate file (docs/signing.md).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[0]
			key, err := sign.LoadPrivateKey(keyPath)
			if err != nil {
				return usageErr(err)
			}
			a, err := verify.ParseAlgorithm(alg)
			if err != nil {
				return usageErr(err)
			}
			digest, size, err := sign.DigestFile(file)
			if err != nil {
				return ioErr(err)
			}
			cs, err := sign.MakeCodesign(key, a, digest, size)
			if err != nil {
				return usageErr(err)
			}
			if chainPath != "" {
				if cs.CertificateChain, err = sign.LoadCertificateChain(chainPath, key); err != nil {
					return usageErr(err)
				}
			}
			if sigOut == "" {
				sigOut = file + ".sig"
			}
			if codesignOut == "" {
				codesignOut = file + ".codesign.json"
			}
			if err := writeCLIFile(sigOut, []byte(cs.Signature), 0o644); err != nil {
				return ioErr(err)
			}
			cj, _ := json.MarshalIndent(cs, "", "  ")
			if err := writeCLIFile(codesignOut, append(cj, '\n'), 0o644); err != nil {
				return ioErr(err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "signature: %s\ncodesign:  %s\n", sigOut, codesignOut)
			if rel.version == "" {
				return nil
			}
			files := []releaseFile{{path: file, name: filepath.Base(file), size: size, digest: digest}}
			p, err := rel.predicate(files, time.Now())
			if err != nil {
				return usageErr(err)
			}
			env, _, err := attest(key, files, p)
			if err != nil {
				return usageErr(err)
			}
			if attestOut == "" {
				attestOut = file + ".intoto.json"
			}
			if err := writeCLIFile(attestOut, append(env, '\n'), 0o644); err != nil {
				return ioErr(err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "attestation: %s\n", attestOut)
			if predOut != "" {
				pj, _ := sign.PredicateJSON(p)
				if err := writeCLIFile(predOut, append(pj, '\n'), 0o644); err != nil {
					return ioErr(err)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&keyPath, "key", "", "private key (PEM; encrypted keys read "+sign.PasswordEnv+")")
	cmd.Flags().StringVar(&alg, "algorithm", "", "signature algorithm (default from the key: SHA256withECDSA, SHA256withRSA, SHA256withEd25519; or SHA256withRSA/PSS)")
	cmd.Flags().StringVar(&sigOut, "output-signature", "", "detached signature path (default FILE.sig, - for stdout)")
	cmd.Flags().StringVar(&codesignOut, "codesign", "", "codesign object path (default FILE.codesign.json)")
	cmd.Flags().StringVar(&attestOut, "attestation", "", "release statement path (default FILE.intoto.json)")
	cmd.Flags().StringVar(&chainPath, "certificate-chain", "", "PEM code-signing certificate of the key (leaf first) to carry in the codesign object")
	cmd.Flags().StringVar(&predOut, "predicate-out", "", "also write the predicate file given to cosign attest-blob")
	rel.add(cmd, "release version (writes the release statement)")
	_ = cmd.MarkFlagRequired("key")
	return cmd
}
