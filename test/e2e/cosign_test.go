package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// cosignVersion is the sigstore cosign release the interop test uses, built through the Go
// module proxy by scripts/cosign.sh (Debian does not package cosign). v2 prints the bare DSSE
// envelope that job documents carry.
const cosignVersion = "v2.4.3"

var (
	cosignOnce sync.Once
	cosignBin  string
	cosignErr  error
)

// cosign returns a cosign binary: $FIELDOTA_COSIGN, or the one scripts/cosign.sh builds once
// into the user's cache (about four minutes on a fresh machine; .ci/run starts it early, and
// this waits for that build rather than starting a second one).
func cosign(t *testing.T) string {
	t.Helper()
	cosignOnce.Do(func() {
		if p := os.Getenv("FIELDOTA_COSIGN"); p != "" {
			cosignBin = p
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", filepath.Join(repoRoot(), "scripts", "cosign.sh"), cosignVersion)
		out, err := cmd.Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			cosignErr = fmt.Errorf("scripts/cosign.sh: %v\n%s", err, stderr)
			return
		}
		cosignBin = strings.TrimSpace(string(out))
	})
	if cosignErr != nil {
		t.Fatal(cosignErr)
	}
	return cosignBin
}

// repoRoot is the module's root, two levels above this package.
func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Join(wd, "..", "..")
}

// TestCosignAttestBlobStatementIsAcceptedByVerifyAndTheAgent: a release statement made by the
// real `cosign attest-blob --type https://fieldota.dev/release/v2` with the documented predicate
// is accepted by `fieldota verify` and installed by the agent; the same envelope with the
// predicate's working directory changed by hand is refused.
func TestCosignAttestBlobStatementIsAcceptedByVerifyAndTheAgent(t *testing.T) {
	t.Parallel()
	co := cosign(t)
	s := startSimProc(t)
	d := deviceFor(t, s)
	dir := t.TempDir()
	run := func(env []string, name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir, cmd.Env = dir, append(os.Environ(), env...)
		out, err := cmd.Output()
		if err != nil {
			var stderr string
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			t.Fatalf("%s %v: %v\n%s%s", name, args, err, out, stderr)
		}
		return string(out)
	}
	nopass := []string{"COSIGN_PASSWORD="}
	run(nopass, co, "generate-key-pair")
	script := []byte("#!/bin/sh\necho installed by a cosign-attested release\n")
	if err := os.WriteFile(filepath.Join(dir, "install.py"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(d.appRoot, "JobSampleTesting")
	pred := fmt.Sprintf(`{"target":"files","version":"1.0.0","compatible":["board-rev-c"],"workingDirectory":%q,`+
		`"packageName":"install.py","autoStart":true,"files":{"install.py":{"size":%d}}}`, work, len(script))
	if err := os.WriteFile(filepath.Join(dir, "pred.json"), []byte(pred), 0o644); err != nil {
		t.Fatal(err)
	}
	env := strings.TrimSpace(run(nopass, co, "attest-blob", "--key", "cosign.key", "--type", "https://fieldota.dev/release/v2",
		"--predicate", "pred.json", "--tlog-upload=false", "--yes", "install.py"))

	// The seed's document around cosign's envelope, with plain copies, signed by nothing else.
	doc := fmt.Sprintf(`{"operation":"install","version":"1.0.0","target":"files","workingDirectory":%q,"packageName":"install.py","autoStart":"true",
  "files":{"fileName":"install.py","url":"${aws:iot:s3-presigned-url:https://s3.eu-west-1.amazonaws.com/bucket/install.py}"},
  "attestation":%q,"compatible":["board-rev-c"]}`, work, base64.StdEncoding.EncodeToString([]byte(env)))
	docPath := filepath.Join(dir, "job.json")
	if err := os.WriteFile(docPath, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	out := run(nil, filepath.Join(bin, "fieldota"), "verify", "--key", filepath.Join(dir, "cosign.pub"), "--job", docPath,
		"--device-compatible", "board-rev-c", filepath.Join(dir, "install.py"))
	if !strings.Contains(out, "OK release statement signed by key") || !strings.Contains(out, "then runs install.py") {
		t.Fatalf("fieldota verify: %s", out)
	}

	// The agent, trusting only cosign's key.
	pub, err := os.ReadFile(filepath.Join(dir, "cosign.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, "release.pub"), pub, 0o644); err != nil {
		t.Fatal(err)
	}
	s.publish("install.py", script)
	s.createJob("cosign", doc)
	d.startAgent()
	ex := s.waitTerminal("cosign")
	if ex.Status != "SUCCEEDED" || !strings.Contains(ex.StatusDetails.DetailsMap["output"], "cosign-attested") {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	// A plain field that disagrees with cosign's statement is refused.
	s.createJob("relabelled", strings.Replace(doc, `"version":"1.0.0"`, `"version":"9.0.0"`, 1))
	if ex := s.waitTerminal("relabelled"); ex.Status != "REJECTED" || ex.StatusDetails.DetailsMap["reason"] != "DOCUMENT_MISMATCH" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
}
