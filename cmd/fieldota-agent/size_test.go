package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestStrippedAgentFitsIn10MiB: the agent was 10.18 MiB stripped because sigstore's signature
// package links its algorithm registry (protobuf runtime, genproto) and go-containerregistry.
// Built as `make build` builds it, the agent must stay within 10 MiB and link none of them.
func TestStrippedAgentFitsIn10MiB(t *testing.T) {
	const limit = 10 << 20
	out := filepath.Join(t.TempDir(), "fieldota-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > limit {
		t.Errorf("stripped agent is %d bytes (%.2f MiB), over 10 MiB", fi.Size(), float64(fi.Size())/(1<<20))
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
	t.Logf("stripped agent: %d bytes (%.2f MiB)", fi.Size(), float64(fi.Size())/(1<<20))
}
