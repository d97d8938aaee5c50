package main

// verify.go: `fieldota verify` checks files against a job document or a detached signature,
// exactly as a device would (same trust store, same policy code). Exit 0 = accepted,
// 1 = refused (the reason code is printed), 2 = usage or I/O error.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/zimage"
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
		version, installed       string
		pol                      verify.Policy
		codesignOnly             bool
	)
	cmd := &cobra.Command{
		Use:   "verify --key PUB (--job DOC | --signature SIG) FILE...",
		Short: "Verify files against a job document or a detached signature (exit 0 ok, 1 refused)",
		Long: `Verify as a device would. With --job: the release statement (trusted key, the plain fields
only copies of the signed ones), the policy (expiry, --installed-version, --device-compatible),
then each FILE against its signed size and SHA-256 and its codesign object; a compressed FILE
(the object) is checked whole against its signed manifest: frames, raw image, block index and
delta frames. With --signature: a
detached signature (cosign sign-blob style) over FILE, and --attestation if given.

Prints what was checked, or REFUSED <REASON>: <why>; exit status 0 accepted, 1 refused, 2 usage
or I/O error.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (jobPath == "") == (sigPath == "") {
				return usageErr(errors.New("give exactly one of --job and --signature"))
			}
			ts, err := verify.LoadTrustStore(keys, cas)
			if err != nil {
				return usageErr(err)
			}
			pol.RequireStatement = !codesignOnly
			if installed != "" {
				pol.Installed = verify.Installed{Version: installed, Signed: true}
			}
			compatChecked := cmd.Flags().Changed("device-compatible")
			w := cmd.OutOrStdout()
			if jobPath != "" {
				return verifyJob(w, ts, pol, compatChecked, jobPath, fileName, args)
			}
			if len(args) != 1 {
				return usageErr(errors.New("--signature checks one FILE"))
			}
			return verifyDetached(w, ts, pol, compatChecked, args[0], sigPath, alg, attestPath, version)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&keys, "key", nil, "trusted public key PEM (repeatable)")
	f.StringArrayVar(&cas, "ca", nil, "trusted code-signing CA certificate PEM (repeatable)")
	f.StringVar(&jobPath, "job", "", "job document to verify the FILEs against")
	f.StringVar(&fileName, "file", "", "with one FILE: which files[] entry it is (default: its base name, or the only entry)")
	f.StringVar(&sigPath, "signature", "", "detached base64 signature (cosign sign-blob / fieldota sign output)")
	f.StringVar(&alg, "algorithm", "", "algorithm of --signature (default from the key)")
	f.StringVar(&attestPath, "attestation", "", "release statement (DSSE envelope) to check with --signature")
	f.StringVar(&version, "version", "", "plain version claimed with --signature")
	f.BoolVar(&pol.AllowUnsigned, "allow-unsigned", false, "accept an unsigned document (device config allow_unsigned)")
	f.BoolVar(&codesignOnly, "allow-codesign-only", false, "accept a document without a release statement (device config verify.require_release_statement = false)")
	f.StringVar(&installed, "installed-version", "", "refuse older versions than this (anti-rollback against a signed record)")
	f.StringSliceVar(&pol.DeviceCompatible, "device-compatible", nil, "the device's compatibility names")
	return cmd
}

// policyErr runs verify.CheckPolicy; without --device-compatible an INCOMPATIBLE_DEVICE refusal
// only means the operator named no device (compatibility is the last check).
func policyErr(r *verify.Release, pol verify.Policy, compatChecked bool) (string, error) {
	err := verify.CheckPolicy(r, pol)
	if errors.Is(err, reason.IncompatibleDevice) && !compatChecked {
		return "; compatibility not checked (no --device-compatible)", nil
	}
	return "", err
}

func verifyJob(w io.Writer, ts *verify.TrustStore, pol verify.Policy, compatChecked bool, jobPath, fileName string, paths []string) error {
	data, err := os.ReadFile(jobPath)
	if err != nil {
		return ioErr(err)
	}
	// Operator side: placeholders are expected.
	d, err := jobdoc.Parse(data, jobdoc.Options{AllowPlaceholders: true})
	if err != nil {
		return refusedErr(err)
	}
	rel, err := ts.Release(d.Claims(), pol)
	if err != nil {
		return refusedErr(err)
	}
	note, err := policyErr(rel, pol, compatChecked)
	if err != nil {
		return refusedErr(err)
	}
	fmt.Fprintf(w, "OK release %s%s\n", describeRelease(rel), note)
	for _, p := range paths {
		name := filepath.Base(p)
		if fileName != "" && len(paths) == 1 {
			name = fileName
		}
		i := slices.IndexFunc(rel.Files, func(f verify.File) bool { return f.Name == name })
		if i < 0 && len(rel.Files) == 1 && len(paths) == 1 {
			i = 0
		}
		if i < 0 {
			return usageErr(fmt.Errorf("%s has no file %q (files: %s); use --file", jobPath, name, strings.Join(fileNames(rel), ", ")))
		}
		digest, size, err := sign.DigestFile(p)
		if err != nil {
			return ioErr(err)
		}
		if m := rel.Files[i].Compressed; m != nil {
			if err := verifyObject(w, ts, rel, i, p, digest, size, pol); err != nil {
				return err
			}
			continue
		}
		pv, err := ts.CheckPayload(rel, i, digest, size, pol.Now)
		if err != nil {
			return refusedErr(err)
		}
		fmt.Fprintf(w, "OK %s: %d bytes, sha256 %x as %s%s\n", rel.Files[i].Name, size, digest, signedBy(rel), codesignNote(pv))
	}
	return nil
}

func verifyDetached(w io.Writer, ts *verify.TrustStore, pol verify.Policy, compatChecked bool, file, sigPath, alg, attestPath, version string) error {
	sig, err := os.ReadFile(sigPath)
	if err != nil {
		return ioErr(err)
	}
	in := verify.Input{Name: filepath.Base(file), Expected: verify.Expected{Size: -1},
		Signature: &verify.Signature{Algorithm: verify.Algorithm(alg), Value: strings.TrimSpace(string(sig))},
		Plain:     verify.Plain{Version: version}}
	if attestPath != "" {
		if in.Attestation, err = os.ReadFile(attestPath); err != nil {
			return ioErr(err)
		}
	} else {
		pol.RequireStatement = false // a bare detached signature is what is being checked
	}
	// The digest is computed here, streaming, as the downloader does on the device.
	if in.Digest, in.Size, err = sign.DigestFile(file); err != nil {
		return ioErr(err)
	}
	vd, err := ts.Verify(in, pol)
	note := ""
	if errors.Is(err, reason.IncompatibleDevice) && !compatChecked {
		note, err = "; compatibility not checked (no --device-compatible)", nil
		if vd.Release != nil {
			vd.Payload, err = ts.CheckPayload(vd.Release, 0, in.Digest, in.Size, pol.Now)
		}
	}
	if err != nil {
		return refusedErr(err)
	}
	what := "signature " + string(vd.Payload.Algorithm) + " by key " + vd.Payload.KeyID
	if vd.Release.Signed {
		what += "; release " + describeRelease(vd.Release)
	}
	fmt.Fprintf(w, "OK %s: %s%s\n", in.Name, what, note)
	return nil
}

// verifyObject checks a compressed file of the release offline, as a device would read it: the
// object's size, digest and detached signature, then every part against the signed manifest
// (zimage.Verify: the full part's frames and digest, the raw image it decompresses to, the index
// and every delta frame against its block hashes). Given the decompressed image instead, it
// checks that against the signed raw size and digest.
func verifyObject(w io.Writer, ts *verify.TrustStore, rel *verify.Release, i int, path string, digest []byte, size int64, pol verify.Policy) error {
	f := rel.Files[i]
	m := f.Compressed
	if size == m.Raw.Size && bytes.Equal(digest, m.Raw.Sum()) {
		pv, err := ts.CheckInstalled(rel, i, digest, size, pol.Now)
		if err != nil {
			return refusedErr(err)
		}
		fmt.Fprintf(w, "OK %s: the decompressed image, %d bytes, sha256 %x as %s%s (give the object to check its frames and index)\n",
			f.Name, size, digest, signedBy(rel), codesignNote(pv))
		return nil
	}
	pv, err := ts.CheckPayload(rel, i, digest, size, pol.Now)
	if err != nil {
		return refusedErr(err)
	}
	obj, err := os.Open(path)
	if err != nil {
		return ioErr(err)
	}
	defer obj.Close()
	if err := zimage.Verify(context.Background(), obj, *m, os.TempDir()); err != nil {
		return refusedErr(err)
	}
	what := fmt.Sprintf("decompresses to %d bytes, sha256 %s; full part %d bytes in %d frames of %d", m.Raw.Size, m.Raw.SHA256, m.Full.Size, m.Frames(), m.FullFrameSize)
	if d := m.Delta; d != nil {
		what += fmt.Sprintf("; block index and %d delta frames checked (%d-byte blocks)", d.DeltaFrames(m.Raw.Size), d.BlockSize)
	}
	fmt.Fprintf(w, "OK %s: %d-byte %s object, sha256 %x as %s%s; %s\n", f.Name, size, m.Compression, digest, signedBy(rel), codesignNote(pv), what)
	return nil
}

// describeRelease says what a device would do, and on whose word.
func describeRelease(r *verify.Release) string {
	var b strings.Builder
	if r.Signed {
		fmt.Fprintf(&b, "statement signed by key %s: ", r.KeyID)
	} else {
		b.WriteString("WITHOUT a release statement (codesign-only: the install parameters are unsigned): ")
	}
	fmt.Fprintf(&b, "target %s, version %q", r.Target, r.Version)
	if len(r.Compatible) > 0 {
		fmt.Fprintf(&b, ", for %q", r.Compatible)
	}
	if r.AllowDowngrade {
		b.WriteString(", downgrade allowed")
	}
	if !r.Expires.IsZero() {
		fmt.Fprintf(&b, ", expires %s", r.Expires.UTC().Format("2006-01-02T15:04:05Z"))
	}
	switch r.Target {
	case verify.TargetFiles:
		fmt.Fprintf(&b, ", into %s", r.WorkingDirectory)
		if r.AutoStart {
			fmt.Fprintf(&b, ", then runs %s", r.PackageName)
		}
	case verify.TargetBinary:
		if r.Binary != "" {
			fmt.Fprintf(&b, ", binary %s", r.Binary)
		}
	}
	fmt.Fprintf(&b, ", files %s", strings.Join(fileNames(r), ", "))
	return b.String()
}

func signedBy(r *verify.Release) string {
	if r.Signed {
		return "signed in the release statement"
	}
	return "the document says (no release statement)"
}

func codesignNote(pv verify.PayloadVerdict) string {
	if pv.KeyID == "" {
		return "; no detached signature"
	}
	return fmt.Sprintf("; codesign %s by key %s", pv.Algorithm, pv.KeyID)
}

func fileNames(r *verify.Release) []string {
	out := make([]string, len(r.Files))
	for i, f := range r.Files {
		out[i] = f.Name
	}
	return out
}
