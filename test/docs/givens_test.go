package docs

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/fieldota/fieldota/test/testpki"
	"github.com/fieldota/fieldota/verify/sign"
)

// given prepares one input file a block names in given=, in dir. Every entry is what a reader
// has at hand when the docs say so: a payload, a key pair, certificates, a job document.
func given(t *testing.T, bin, dir, name string) {
	t.Helper()
	write := func(rel string, b []byte, mode os.FileMode) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, mode); err != nil {
			t.Fatal(err)
		}
	}
	keyPair := func(prefix, kind string) {
		if _, err := os.Stat(filepath.Join(dir, prefix+".key")); err == nil {
			return
		}
		k, err := sign.GenerateKey(kind)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sign.WriteKeyPair(k, filepath.Join(dir, prefix+".key"), filepath.Join(dir, prefix+".pub")); err != nil {
			t.Fatal(err)
		}
	}
	pki := func() *testpki.CA {
		ca, err := testpki.NewCA("fieldota docs CA")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ca.WriteCA(dir); err != nil {
			t.Fatal(err)
		}
		return ca
	}
	switch name {
	case "install.py":
		b, err := os.ReadFile(filepath.Join(repo, "test/fixtures/artifacts/install.py"))
		if err != nil {
			t.Fatal(err)
		}
		write("install.py", b, 0o755)
	case "payload.bin":
		b := make([]byte, 64<<10)
		_, _ = rand.NewChaCha8([32]byte{'d', 'o', 'c', 's'}).Read(b)
		write("payload.bin", b, 0o644)
	case "release.key", "release.pub":
		keyPair("release", "ecdsa-p256")
	case "dist/myapp", "app":
		write(name, []byte("#!/bin/sh\necho myapp 2.0\n"), 0o755)
	case "ed25519.key":
		keyPair("ed25519", "ed25519")
	case "pred.json":
		write("pred.json", []byte(`{"version": "1.2.0", "compatible": ["board-rev-c"], "allowDowngrade": false}`+"\n"), 0o644)
	case "artifacts":
		given(t, bin, dir, "install.py")
		b, _ := os.ReadFile(filepath.Join(dir, "install.py"))
		write("artifacts/my-bucket/install.py", b, 0o644)
	case "job.json":
		// A signed document whose placeholder names artifacts/my-bucket/install.py.
		given(t, bin, dir, "release.key")
		given(t, bin, dir, "artifacts")
		cmd := exec.Command(filepath.Join(bin, "fieldota"), "job", "--key", "release.key", "--file", "install.py",
			"--presign", "https://s3.eu-west-1.amazonaws.com/my-bucket/install.py", "--version", "1.0",
			"--working-directory", "/opt/app/x", "--package-name", "install.py", "--auto-start", "--out", "job.json")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("given job.json: %v\n%s", err, out)
		}
	case "server.crt", "server.key", "ca.crt", "jobsim.crt", "jobsim.key":
		if _, err := os.Stat(filepath.Join(dir, "ca.crt")); err == nil {
			return
		}
		ca := pki()
		srv, err := ca.Server("localhost", "localhost")
		if err != nil {
			t.Fatal(err)
		}
		cl, err := ca.Client("jobsim")
		if err != nil {
			t.Fatal(err)
		}
		for n, p := range map[string]testpki.Pair{"server": srv, "jobsim": cl} {
			if _, _, err := p.WriteFiles(dir, n); err != nil {
				t.Fatal(err)
			}
		}
	case "agent.toml":
		given(t, bin, dir, "release.pub")
		write("agent.toml", []byte(fmt.Sprintf(`thing_name = "dev1"
state_dir = %q
[mqtt]
endpoint = "tcp://127.0.0.1:1883"
[verify]
keys = [%q]
[download]
allow_insecure_http = true
[files]
allowed_roots = [%q]
`, filepath.Join(dir, "state"), filepath.Join(dir, "release.pub"), filepath.Join(dir, "app"))), 0o600)
	default:
		t.Fatalf("given=%s: not in the catalog of test/docs/givens_test.go (add it there)", name)
	}
}
