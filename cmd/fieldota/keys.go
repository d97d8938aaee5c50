package main

// keys.go: `fieldota keygen`, and the helpers shared by sign, verify and job.

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify/sign"
	"github.com/spf13/cobra"
)

func init() { register(newKeygenCmd) }

func newKeygenCmd() *cobra.Command {
	var kind, out string
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Generate a release-signing key pair (ECDSA P-256 by default)",
		Long: `Generate a signing key pair: NAME.key (PKCS#8 PEM, mode 0600) and NAME.pub (PEM).
Put NAME.pub on devices ([verify] keys); keep NAME.key offline. Existing files are never overwritten.
Types: ` + strings.Join(sign.KeyTypes, ", ") + `. ECDSA P-256 is what cosign, AWS Signer and
FreeRTOS use; Ed25519 signatures follow fieldota's digest convention (docs/signing.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := sign.GenerateKey(kind)
			if err != nil {
				return usageErr(err)
			}
			priv, pub := out+".key", out+".pub"
			if dir := filepath.Dir(out); dir != "." {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					return ioErr(err)
				}
			}
			id, err := sign.WriteKeyPair(key, priv, pub)
			if err != nil {
				return ioErr(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "private key: %s (keep secret)\npublic key:  %s\nkey id:      %s\n", priv, pub, id)
			return nil
		},
	}
	cmd.Flags().StringVar(&kind, "type", sign.KeyTypes[0], "key type: "+strings.Join(sign.KeyTypes, ", "))
	cmd.Flags().StringVarP(&out, "out", "o", "fieldota-signing", "path prefix of NAME.key and NAME.pub")
	return cmd
}

// cliError carries the exit status main uses: 1 = refused (verify), 2 = usage or I/O error.
type cliError struct {
	code int
	err  error
}

func (e *cliError) Error() string { return e.err.Error() }
func (e *cliError) Unwrap() error { return e.err }
func (e *cliError) ExitCode() int { return e.code }

func usageErr(err error) error { return &cliError{2, err} }
func ioErr(err error) error    { return &cliError{2, err} }

// refusedErr reports a verification refusal with its reason code first, exit status 1.
// The reason stays reachable with errors.Is through Unwrap.
func refusedErr(err error) error {
	code := reason.Of(err)
	msg := strings.TrimPrefix(err.Error(), string(code)+": ")
	return &cliError{1, &refusal{code, msg, err}}
}

type refusal struct {
	code reason.Code
	msg  string
	err  error
}

func (r *refusal) Error() string { return fmt.Sprintf("REFUSED %s: %s", r.code, r.msg) }
func (r *refusal) Unwrap() error { return r.err }

// writeCLIFile writes a CLI output file (not device state, so no durable helper needed).
func writeCLIFile(path string, data []byte, perm os.FileMode) error {
	if path == "-" {
		_, err := os.Stdout.Write(data)
		return err
	}
	return os.WriteFile(path, data, perm)
}

func b64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
