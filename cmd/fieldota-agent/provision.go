package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/agent/identity"
	"github.com/fieldota/fieldota/ota/durable"
)

// newProvisionCmd is `fieldota-agent provision`: the device side of AWS IoT's
// CreateCertificateFromCsr (docs/device-identity.md). `csr` creates the key inside the TPM or
// token (unless it is there) and writes a CSR; `install` checks the certificate AWS returned
// against that key and writes it to mqtt.cert_file. The private key is never exported.
func newProvisionCmd(cfgPath *string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "provision",
		Short: "Create the identity key inside the TPM or token, write a CSR, install the certificate",
	}
	var keySpec, out, cn string
	csr := &cobra.Command{
		Use:   "csr",
		Short: "Create the key in the TPM/token unless it exists, and write a certificate signing request",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, ref, err := provisionRef(*cfgPath, keySpec)
			if err != nil {
				return err
			}
			k, created, err := identity.Create(ref)
			if err != nil {
				return fmt.Errorf("key %s: %w", ref, err)
			}
			defer k.Close()
			if cn == "" {
				cn = cfg.ThingName
			}
			pemCSR, err := identity.CSR(k, cn)
			if err != nil {
				return err
			}
			verb := "using the existing key"
			if created {
				verb = "created a new key"
			}
			fmt.Fprintf(c.ErrOrStderr(), "provision: %s at %s; CSR for CN=%s\n", verb, ref, cn)
			return writeOut(c.OutOrStdout(), out, pemCSR, 0o644)
		},
	}
	csr.Flags().StringVar(&keySpec, "key", "", "key reference (default: mqtt.key of the config); a new reference for a rotation")
	csr.Flags().StringVarP(&out, "out", "o", "", "write the CSR here (default: stdout)")
	csr.Flags().StringVar(&cn, "cn", "", "subject CN (default: thing_name)")

	var installKey, certOut string
	install := &cobra.Command{
		Use:   "install CERTIFICATE",
		Short: "Check the certificate (PEM, or the JSON of aws iot create-certificate-from-csr) against the key and install it",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cfg, ref, err := provisionRef(*cfgPath, installKey)
			if err != nil {
				return err
			}
			if certOut == "" {
				certOut = cfg.MQTT.CertFile
			}
			if certOut == "" {
				return fmt.Errorf("no mqtt.cert_file in %s and no --cert-out", *cfgPath)
			}
			raw, err := readIn(c.InOrStdin(), args[0])
			if err != nil {
				return err
			}
			chain, err := identity.CertificatePEM(raw)
			if err != nil {
				return err
			}
			leaf, _, err := identity.Leaf(chain)
			if err != nil {
				return err
			}
			k, err := identity.Open(ref)
			if err != nil {
				return fmt.Errorf("key %s: %w", ref, err)
			}
			defer k.Close()
			if err := identity.MatchCertificate(leaf, k.Public(), time.Now()); err != nil {
				return err
			}
			if err := durable.WriteFile(certOut, chain, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(c.ErrOrStderr(), "provision: installed %s (subject %s, until %s) for key %s\n",
				certOut, leaf.Subject, leaf.NotAfter.UTC().Format(time.RFC3339), ref)
			return nil
		},
	}
	install.Flags().StringVar(&installKey, "key", "", "key reference (default: mqtt.key of the config)")
	install.Flags().StringVar(&certOut, "cert-out", "", "where to write the certificate (default: mqtt.cert_file)")
	cmd.AddCommand(csr, install)
	return cmd
}

func provisionRef(cfgPath, spec string) (*config.Config, identity.Ref, error) {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return nil, identity.Ref{}, err
	}
	if spec == "" {
		spec = cfg.MQTT.KeyRef()
	}
	if spec == "" {
		return nil, identity.Ref{}, fmt.Errorf("no mqtt.key in %s and no --key", cfgPath)
	}
	ref, err := identity.Parse(spec, cfg.MQTT.TPMDevice)
	if err != nil {
		return nil, identity.Ref{}, err
	}
	return cfg, ref, nil
}

func writeOut(stdout io.Writer, path string, b []byte, perm os.FileMode) error {
	if path == "" || path == "-" {
		_, err := stdout.Write(b)
		return err
	}
	return durable.WriteFile(path, b, perm)
}

func readIn(stdin io.Reader, path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(io.LimitReader(stdin, 1<<20))
	}
	return os.ReadFile(path)
}
