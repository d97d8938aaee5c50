package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// agentTags returns the build tags `make build` gives the agent: the size measured is the size
// shipped, and a Makefile that stops passing them fails here rather than growing the binary.
func agentTags(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("make", "-s", "-n", "build", "BIN="+t.TempDir())
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("make -n build: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasSuffix(line, "./cmd/fieldota-agent") {
			if m := regexp.MustCompile(`-tags '([^']*)'`).FindStringSubmatch(line); m != nil {
				return m[1]
			}
			return ""
		}
	}
	t.Fatalf("make -n build builds no ./cmd/fieldota-agent:\n%s", out)
	return ""
}

// TestStrippedAgentFitsIn10MiB: the agent was 10.18 MiB stripped because sigstore's signature
// package links its algorithm registry (protobuf runtime, genproto) and go-containerregistry,
// and 10.27 MiB again once zstd, TPM keys and D-Bus came in, until net/http's bundled HTTP/2
// (which no peer of the agent speaks) was left out. Built as `make build` builds it, the agent
// must stay within 10 MiB and link none of them.
func TestStrippedAgentFitsIn10MiB(t *testing.T) {
	const limit = 10 << 20
	tags := agentTags(t)
	if !strings.Contains(tags, "nethttpomithttp2") {
		t.Errorf("make build gives the agent tags %q, without nethttpomithttp2", tags)
	}
	out := filepath.Join(t.TempDir(), "fieldota-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-tags", tags, "-ldflags", "-s -w", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	bin, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(bin) > limit {
		t.Errorf("stripped agent is %d bytes (%.2f MiB), over 10 MiB", len(bin), float64(len(bin))/(1<<20))
	}
	if bytes.Contains(bin, []byte("http2: Transport")) {
		t.Error("the agent links net/http's bundled HTTP/2")
	}
	deps, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, heavy := range []string{"github.com/sigstore/", "google.golang.org/protobuf", "google.golang.org/genproto", "github.com/google/go-containerregistry"} {
		if strings.Contains(string(deps), heavy) {
			t.Errorf("the agent links %s", heavy)
		}
	}
	t.Logf("stripped agent: %d bytes (%.2f MiB)", len(bin), float64(len(bin))/(1<<20))
}
