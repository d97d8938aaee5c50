package cli_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// build compiles both binaries once for the contract test.
func build(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, p := range []string{"fieldota", "fieldota-agent"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, p), "github.com/fieldota/fieldota/cmd/"+p)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", p, err, out)
		}
	}
	return dir
}

// exitOf runs a binary and returns its exit status and combined output.
func exitOf(t *testing.T, dir, work string, argv ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(dir, argv[0]), argv[1:]...)
	cmd.Dir = work
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String()
	}
	t.Fatalf("%v: %v", argv, err)
	return -1, ""
}

// TestBothBinariesShareOneExitStatusContract: `verify --help` and docs/signing.md promised 0
// accepted, 1 refused, 2 usage error, but cobra's own usage errors (an unknown flag, a wrong
// argument count) exited 1 like a refusal. Both binaries: 0 done, 1 refused or failed, 2 usage.
func TestBothBinariesShareOneExitStatusContract(t *testing.T) {
	bin := build(t)
	work := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(work, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("install.py", "#!/usr/bin/env python3\nprint('hello')\n")
	write("tampered.py", "#!/usr/bin/env python3\nprint('owned')\n")
	state := filepath.Join(work, "state")
	good := write("agent.toml", fmt.Sprintf("thing_name = \"dev1\"\nstate_dir = %q\n[mqtt]\nendpoint = \"tcp://127.0.0.1:1\"\n[verify]\nkeys = [%q]\n", state, filepath.Join(work, "release.pub")))
	badKey := write("badkey.toml", fmt.Sprintf("thing_name = \"dev1\"\nstate_dir = %q\n[mqtt]\nendpoint = \"tcp://127.0.0.1:1\"\n[verify]\nkeys = [%q]\n", state, filepath.Join(work, "missing.pub")))
	invalid := write("invalid.toml", "thing_name = \"dev1\"\nno_such_key = 1\n")

	steps := []struct {
		argv []string
		want int
	}{
		// fieldota
		{[]string{"fieldota", "--version"}, OK},
		{[]string{"fieldota", "--help"}, OK},
		{[]string{"fieldota"}, OK},
		{[]string{"fieldota", "keygen", "--out", "release"}, OK},
		{[]string{"fieldota", "job", "--key", "release.key", "--file", "install.py", "--url", "https://example.com/install.py",
			"--version", "1.0", "--working-directory", "/opt/app/x", "--out", "job.json"}, OK},
		{[]string{"fieldota", "verify", "--key", "release.pub", "--job", "job.json", "install.py"}, OK},
		{[]string{"fieldota", "verify", "--key", "release.pub", "--job", "job.json", "--file", "install.py", "tampered.py"}, Failed},
		{[]string{"fieldota", "verify", "--key", "release.pub", "--job", "job.json", "missing.py"}, Usage},
		{[]string{"fieldota", "verify", "--key", "release.pub", "--document", "job.json", "install.py"}, Usage}, // unknown flag
		{[]string{"fieldota", "verify", "--key", "release.pub", "--job", "job.json"}, Usage},                    // no FILE
		{[]string{"fieldota", "verify", "--key", "release.pub", "--job", "job.json", "a", "b"}, Usage},          // two FILEs
		{[]string{"fieldota", "keygen", "extra"}, Usage},
		{[]string{"fieldota", "job", "--file", "install.py"}, Usage}, // required --key, --version
		{[]string{"fieldota", "veryfy"}, Usage},                      // unknown command
		{[]string{"fieldota", "--bogus"}, Usage},
		{[]string{"fieldota", "sim", "describe", "a", "b"}, Usage},
		// fieldota-agent
		{[]string{"fieldota-agent", "--version"}, OK},
		{[]string{"fieldota-agent", "--help"}, OK},
		{[]string{"fieldota-agent", "run", "--help"}, OK},
		{[]string{"fieldota-agent", "status", "--config", good}, OK},
		{[]string{"fieldota-agent", "run", "--config", badKey}, Failed},
		{[]string{"fieldota-agent", "run", "extra"}, Usage},
		{[]string{"fieldota-agent", "run", "--bogus"}, Usage},
		{[]string{"fieldota-agent", "stats"}, Usage},
		{[]string{"fieldota-agent", "completion", "bash"}, Usage}, // a daemon ships no completion command
		{[]string{"fieldota-agent", "status", "--config", filepath.Join(work, "none.toml")}, Usage},
		{[]string{"fieldota-agent", "status", "--config", invalid}, Usage},
	}
	for _, s := range steps {
		got, out := exitOf(t, bin, work, s.argv...)
		if got != s.want {
			t.Errorf("%s: exit %d, want %d\n%s", strings.Join(s.argv, " "), got, s.want, out)
		}
	}
}

const (
	OK     = 0
	Failed = 1
	Usage  = 2
)
