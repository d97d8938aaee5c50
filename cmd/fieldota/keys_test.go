package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify/sign"
)

// run executes the CLI in-process and returns its output and the exit status main would use.
func cliRun(t *testing.T, args ...string) (string, int, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	if err != nil {
		return out.String(), exitCode(err), err
	}
	return out.String(), 0, nil
}

func cliMustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, code, err := cliRun(t, args...)
	if code != 0 {
		t.Fatalf("fieldota %s: exit %d: %v\n%s", strings.Join(args, " "), code, err, out)
	}
	return out
}

func TestKeygenWritesPrivateKey0600AndNeverOverwrites(t *testing.T) {
	dir := t.TempDir()
	for _, kind := range []string{"ecdsa-p256", "ed25519", "ecdsa-p384", "rsa-3072"} {
		prefix := filepath.Join(dir, kind)
		out := cliMustRun(t, "keygen", "--type", kind, "--out", prefix)
		if !strings.Contains(out, "key id:") {
			t.Fatalf("output: %s", out)
		}
		st, err := os.Stat(prefix + ".key")
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s private key mode %v (%v)", kind, st.Mode(), err)
		}
	}
	before, _ := os.ReadFile(filepath.Join(dir, "ecdsa-p256.key"))
	if _, code, _ := cliRun(t, "keygen", "--out", filepath.Join(dir, "ecdsa-p256")); code != 2 {
		t.Fatalf("overwriting keygen: exit %d, want 2", code)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "ecdsa-p256.key"))
	if !bytes.Equal(before, after) {
		t.Fatal("keygen replaced an existing private key")
	}
	if _, code, _ := cliRun(t, "keygen", "--type", "dsa", "--out", filepath.Join(dir, "x")); code != 2 {
		t.Fatalf("unknown type: exit %d, want 2", code)
	}
}

func TestJobSignVerifyExitCodes(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	cliMustRun(t, "keygen", "--out", key)
	other := filepath.Join(dir, "other")
	cliMustRun(t, "keygen", "--out", other)
	file := filepath.Join(dir, "install.py")
	if err := os.WriteFile(file, []byte("print('fieldota')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	doc := filepath.Join(dir, "job.json")
	cliMustRun(t, "job", "--key", key+".key", "--file", file, "--presign", "https://s3.eu-west-1.amazonaws.com/b/install.py",
		"--version", "1.2.0", "--compatible", "board-rev-c", "--working-directory", "/opt/app/x",
		"--package-name", "install.py", "--auto-start", "-o", doc)
	cliMustRun(t, "sign", "--key", key+".key", "--version", "1.2.0", "--working-directory", "/opt/app/x", file)

	ok := [][]string{
		{"verify", "--key", key + ".pub", "--job", doc, "--device-compatible", "board-rev-c", "--installed-version", "1.1.0", file},
		{"verify", "--key", key + ".pub", "--job", doc, file},
		{"verify", "--key", key + ".pub", "--signature", file + ".sig", file},
		{"verify", "--key", key + ".pub", "--signature", file + ".sig", "--attestation", file + ".intoto.json", file},
	}
	for _, args := range ok {
		if out := cliMustRun(t, args...); !strings.HasPrefix(out, "OK ") {
			t.Fatalf("%v: %s", args, out)
		}
	}
	refused := []struct {
		name string
		args []string
		want reason.Code
	}{
		{"downgrade", []string{"verify", "--key", key + ".pub", "--job", doc, "--installed-version", "2.0", file}, reason.DowngradeRefused},
		{"incompatible device", []string{"verify", "--key", key + ".pub", "--job", doc, "--device-compatible", "board-rev-a", file}, reason.IncompatibleDevice},
		{"untrusted key", []string{"verify", "--key", other + ".pub", "--job", doc, file}, reason.UntrustedKey},
		{"wrong key, detached", []string{"verify", "--key", other + ".pub", "--signature", file + ".sig", file}, reason.SignatureInvalid},
	}
	for _, c := range refused {
		out, code, err := cliRun(t, c.args...)
		if code != 1 || !errors.Is(err, c.want) || !strings.Contains(err.Error(), "REFUSED "+string(c.want)) {
			t.Fatalf("%s: exit %d, err %v, want 1 and %s\n%s", c.name, code, err, c.want, out)
		}
	}
	// The payload changed after signing.
	if err := os.WriteFile(file, []byte("print('evil')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, code, err := cliRun(t, "verify", "--key", key+".pub", "--job", doc, file); code != 1 || !errors.Is(err, reason.SizeMismatch) {
		t.Fatalf("tampered payload: exit %d, %v", code, err)
	}
	if _, code, err := cliRun(t, "verify", "--key", key+".pub", "--signature", file+".sig", file); code != 1 || !errors.Is(err, reason.SignatureInvalid) {
		t.Fatalf("tampered payload, detached: exit %d, %v", code, err)
	}
	// Usage and I/O errors are 2, never 0 or 1.
	for _, args := range [][]string{
		{"verify", "--key", key + ".pub", file},
		{"verify", "--job", doc, file},
		{"verify", "--key", key + ".pub", "--job", filepath.Join(dir, "missing.json"), file},
	} {
		if _, code, _ := cliRun(t, args...); code != 2 {
			t.Fatalf("%v: exit %d, want 2", args, code)
		}
	}
}

func cliOpenssl(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is required (scripts/deps.sh installs it): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, bin, args...).CombinedOutput()
}

// TestOpensslInteropThroughCLI: `fieldota sign` output verifies with `openssl dgst -sha256
// -verify`, and an `openssl dgst -sha256 -sign` signature passes `fieldota verify`.
func TestOpensslInteropThroughCLI(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "image.bin")
	if err := os.WriteFile(file, bytes.Repeat([]byte("fieldota\x00"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "k")
	cliMustRun(t, "keygen", "--out", key)
	cliMustRun(t, "sign", "--key", key+".key", file)
	b64sig, _ := os.ReadFile(file + ".sig")
	der, err := base64.StdEncoding.DecodeString(string(b64sig))
	if err != nil {
		t.Fatal(err)
	}
	derPath := filepath.Join(dir, "sig.der")
	_ = os.WriteFile(derPath, der, 0o644)
	if out, err := cliOpenssl(t, "dgst", "-sha256", "-verify", key+".pub", "-signature", derPath, file); err != nil || !strings.Contains(string(out), "Verified OK") {
		t.Fatalf("openssl refused fieldota's signature: %v\n%s", err, out)
	}

	okey, opub, osig := filepath.Join(dir, "o.pem"), filepath.Join(dir, "o.pub"), filepath.Join(dir, "o.der")
	for _, args := range [][]string{
		{"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", okey},
		{"pkey", "-in", okey, "-pubout", "-out", opub},
		{"dgst", "-sha256", "-sign", okey, "-out", osig, file},
	} {
		if out, err := cliOpenssl(t, args...); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	raw, _ := os.ReadFile(osig)
	sigFile := filepath.Join(dir, "o.sig")
	_ = os.WriteFile(sigFile, []byte(base64.StdEncoding.EncodeToString(raw)), 0o644)
	cliMustRun(t, "verify", "--key", opub, "--signature", sigFile, file)
	// openssl's key signing, fieldota's key verifying: refused.
	if _, code, err := cliRun(t, "verify", "--key", key+".pub", "--signature", sigFile, file); code != 1 || !errors.Is(err, reason.SignatureInvalid) {
		t.Fatalf("foreign openssl signature: exit %d, %v", code, err)
	}
}

// TestCertificateChainThroughCLI: a job signed by a key certified under a CA verifies on a
// device that pins only the CA; a device pinning another CA refuses it.
func TestCertificateChainThroughCLI(t *testing.T) {
	dir := t.TempDir()
	keyPrefix := filepath.Join(dir, "signer")
	cliMustRun(t, "keygen", "--out", keyPrefix)
	signer, err := sign.LoadPrivateKey(keyPrefix + ".key")
	if err != nil {
		t.Fatal(err)
	}
	newCA := func(name string) (*x509.Certificate, *ecdsa.PrivateKey, string) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		p := filepath.Join(dir, name+".pem")
		_ = os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
		return c, k, p
	}
	ca, caKey, caFile := newCA("release-ca")
	_, _, otherCAFile := newCA("other-ca")
	issue := func(pub any, path string) {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "release signer"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
		if err != nil {
			t.Fatal(err)
		}
		_ = os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	}
	chain := filepath.Join(dir, "signer-chain.pem")
	issue(signer.Public(), chain)
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	wrongChain := filepath.Join(dir, "stranger-chain.pem")
	issue(stranger.Public(), wrongChain)

	file := filepath.Join(dir, "rootfs.img")
	_ = os.WriteFile(file, bytes.Repeat([]byte{0xa5}, 4096), 0o644)
	doc := filepath.Join(dir, "job.json")
	jobArgs := []string{"job", "--key", keyPrefix + ".key", "--file", file, "--url", "https://example.com/rootfs.img",
		"--target", "slot", "--version", "3.0.0", "-o", doc}
	if _, code, _ := cliRun(t, append(jobArgs, "--certificate-chain", wrongChain)...); code != 2 {
		t.Fatalf("a chain for another key was accepted when signing (exit %d)", code)
	}
	cliMustRun(t, append(jobArgs, "--certificate-chain", chain)...)
	if out := cliMustRun(t, "verify", "--ca", caFile, "--job", doc, file); !strings.HasPrefix(out, "OK ") {
		t.Fatalf("verify: %s", out)
	}
	if _, code, err := cliRun(t, "verify", "--ca", otherCAFile, "--job", doc, file); code != 1 || !errors.Is(err, reason.UntrustedKey) {
		t.Fatalf("foreign CA: exit %d, %v", code, err)
	}
}

// TestVerifySaysWhatWasChecked (issue 12, item 15): a release signed only by its statement is
// not reported "unsigned (allowed)"; the output names the statement's key, what the release
// does, and that no detached signature was there.
func TestVerifySaysWhatWasChecked(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	cliMustRun(t, "keygen", "--out", key)
	file := filepath.Join(dir, "install.py")
	if err := os.WriteFile(file, []byte("print('fieldota')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	doc := filepath.Join(dir, "job.json")
	cliMustRun(t, "job", "--key", key+".key", "--file", file, "--presign", "https://s3.eu-west-1.amazonaws.com/b/install.py",
		"--version", "1.2.0", "--working-directory", "/opt/app/x", "--package-name", "install.py", "--auto-start",
		"--signature-format", "none", "-o", doc)
	out := cliMustRun(t, "verify", "--key", key+".pub", "--job", doc, file)
	for _, want := range []string{"statement signed by key", "into /opt/app/x, then runs install.py", "as signed in the release statement", "no detached signature"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "unsigned") {
		t.Errorf("a signed release reported as unsigned:\n%s", out)
	}
}
