package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/verify"
)

// TestJobForceIsSigned: `fieldota job --force` signs force into the release statement (a
// device reads it from there, never from the plain document); without the flag it is absent.
func TestJobForceIsSigned(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	cliMustRun(t, "keygen", "--out", key)
	file := filepath.Join(dir, "install.py")
	if err := os.WriteFile(file, []byte("print('fieldota')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ts, err := verify.LoadTrustStore([]string{key + ".pub"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, force := range []bool{false, true} {
		doc := filepath.Join(dir, "job.json")
		args := []string{"job", "--key", key + ".key", "--file", file, "--presign", "https://s3.eu-west-1.amazonaws.com/b/install.py",
			"--version", "1.2.0", "--working-directory", "/opt/app/x", "-o", doc}
		if force {
			args = append(args, "--force")
		}
		cliMustRun(t, args...)
		raw, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		d, err := jobdoc.Parse(raw, jobdoc.Options{AllowPlaceholders: true})
		if err != nil {
			t.Fatal(err)
		}
		rel, err := ts.Release(d.Claims(), verify.Policy{RequireStatement: true})
		if err != nil || rel.Force != force || !rel.Signed {
			t.Fatalf("--force=%v: release %+v, %v", force, rel, err)
		}
	}
}
