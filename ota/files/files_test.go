package files

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota/reason"
)

func stage(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "staged")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		return "<missing>"
	}
	return string(b)
}

func assertNoMarkers(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".fieldota-") {
			t.Fatalf("marker left: %s", e.Name())
		}
	}
}

const okScript = "#!/bin/sh\necho started $(pwd)\n"

func TestPlacesFilesWithModesAndStartsPackage(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app.conf"), []byte("old conf"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := Plan{Dir: dir, Start: "install.sh", Files: []File{
		{Name: "install.sh", Staged: stage(t, okScript), Mode: 0o750},
		{Name: "app.conf", Staged: stage(t, "new conf"), Mode: 0o640},
	}}
	res, err := Install(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(res.Output, "started "+dir) {
		t.Fatalf("output %q", res.Output)
	}
	if read(t, filepath.Join(dir, "app.conf")) != "new conf" {
		t.Fatal("conf not replaced")
	}
	fi, _ := os.Stat(filepath.Join(dir, "install.sh"))
	if fi.Mode().Perm() != 0o750 {
		t.Fatalf("mode %v", fi.Mode())
	}
	assertNoMarkers(t, dir)
}

func TestFailedStartPutsPreviousFilesBack(t *testing.T) {
	cases := []struct {
		name    string
		script  string
		timeout time.Duration
		output  string
	}{
		{"exit status 3", "#!/bin/sh\necho about to fail\nexit 3\n", 0, "about to fail"},
		{"hangs past its timeout", "#!/bin/sh\necho hanging\nexec sleep 60\n", 300 * time.Millisecond, "hanging"},
		{"not executable format", "this is not a program", 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "run.sh"), []byte("previous run.sh"), 0o755); err != nil {
				t.Fatal(err)
			}
			p := Plan{Dir: dir, Start: "run.sh", Timeout: tc.timeout, Files: []File{
				{Name: "run.sh", Staged: stage(t, tc.script), Mode: 0o755},
				{Name: "brand-new.txt", Staged: stage(t, "new"), Mode: 0o644},
			}}
			start := time.Now()
			_, err := Install(context.Background(), p)
			if !errors.Is(err, reason.AutostartFailed) {
				t.Fatalf("want AUTOSTART_FAILED, got %v", err)
			}
			var se *StartError
			if !errors.As(err, &se) || !strings.Contains(se.Output, tc.output) {
				t.Fatalf("output not carried: %+v", se)
			}
			if time.Since(start) > 20*time.Second {
				t.Fatal("timeout not enforced")
			}
			if got := read(t, filepath.Join(dir, "run.sh")); got != "previous run.sh" {
				t.Fatalf("previous file not restored: %q", got)
			}
			if _, err := os.Stat(filepath.Join(dir, "brand-new.txt")); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("file that did not exist before is still there")
			}
			assertNoMarkers(t, dir)
		})
	}
}

func TestStartIsNeverInterpretedByAShell(t *testing.T) {
	dir := t.TempDir()
	name := "pkg;touch pwned"
	p := Plan{Dir: dir, Start: name, Files: []File{{Name: name, Staged: stage(t, okScript), Mode: 0o755}}}
	if _, err := Install(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pwned")); err == nil {
		t.Fatal("the package name was run through a shell")
	}
}

func TestStartedPackageGetsOnlyAMinimalEnvironment(t *testing.T) {
	t.Setenv("FIELDOTA_SECRET", "hunter2")
	dir := t.TempDir()
	p := Plan{Dir: dir, Start: "env.sh", Files: []File{{Name: "env.sh", Staged: stage(t, "#!/bin/sh\nenv\n"), Mode: 0o755}}}
	res, err := Install(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(res.Output, "hunter2") || !strings.Contains(res.Output, "PATH=") {
		t.Fatalf("environment leaked or missing: %q", res.Output)
	}
}

func TestOutputKeepsOnlyTheLast1024Characters(t *testing.T) {
	dir := t.TempDir()
	script := "#!/bin/sh\ni=0\nwhile [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done\necho THE-END\n"
	p := Plan{Dir: dir, Start: "chatty.sh", Files: []File{{Name: "chatty.sh", Staged: stage(t, script), Mode: 0o755}}}
	res, err := Install(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if len([]rune(res.Output)) != OutputTail || !strings.HasSuffix(strings.TrimSpace(res.Output), "THE-END") {
		t.Fatalf("len %d, tail %q", len([]rune(res.Output)), res.Output[len(res.Output)-20:])
	}
}

// TestCrashMidInstallIsUndoneThenRedone simulates each point a kill -9 can leave a files install
// in, then runs Install again as the resumed agent does.
func TestCrashMidInstallIsUndoneThenRedone(t *testing.T) {
	type setup func(t *testing.T, dir string)
	cases := map[string]setup{
		"killed after keeping the previous copy": func(t *testing.T, dir string) {
			if err := os.Link(filepath.Join(dir, "a.txt"), filepath.Join(dir, prevPrefix+"a.txt")); err != nil {
				t.Fatal(err)
			}
		},
		"killed after replacing one of two files": func(t *testing.T, dir string) {
			if err := os.Link(filepath.Join(dir, "a.txt"), filepath.Join(dir, prevPrefix+"a.txt")); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(filepath.Join(dir, "a.txt")); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "a.txt"), []byte("new a"), 0o644); err != nil {
				t.Fatal(err)
			}
		},
		"killed after marking a new file": func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, newPrefix+"b.txt"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "b.txt"), []byte("half"), 0o644); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, crash := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "a.txt"), []byte("old a"), 0o644); err != nil {
				t.Fatal(err)
			}
			crash(t, dir)
			p := Plan{Dir: dir, Files: []File{
				{Name: "a.txt", Staged: stage(t, "new a"), Mode: 0o644},
				{Name: "b.txt", Staged: stage(t, "new b"), Mode: 0o644},
			}}
			// Restoring alone must give back exactly the old state.
			if err := Restore(p); err != nil {
				t.Fatal(err)
			}
			if read(t, filepath.Join(dir, "a.txt")) != "old a" || read(t, filepath.Join(dir, "b.txt")) != "<missing>" {
				t.Fatalf("restore gave a=%q b=%q", read(t, filepath.Join(dir, "a.txt")), read(t, filepath.Join(dir, "b.txt")))
			}
			crash(t, dir) // the crash again, then the resumed install
			if _, err := Install(context.Background(), p); err != nil {
				t.Fatal(err)
			}
			if read(t, filepath.Join(dir, "a.txt")) != "new a" || read(t, filepath.Join(dir, "b.txt")) != "new b" {
				t.Fatal("resumed install incomplete")
			}
			assertNoMarkers(t, dir)
		})
	}
}

func TestPlanRefusesPathTricks(t *testing.T) {
	for _, name := range []string{"../etc/passwd", "a/b", "..", ".fieldota-prev-x", ""} {
		_, err := Install(context.Background(), Plan{Dir: t.TempDir(), Files: []File{{Name: name, Staged: "/dev/null"}}})
		if !errors.Is(err, reason.InstallFailed) {
			t.Fatalf("%q: got %v", name, err)
		}
	}
	_, err := Install(context.Background(), Plan{Dir: t.TempDir(), Start: "other", Files: []File{{Name: "a", Staged: "/dev/null"}}})
	if !errors.Is(err, reason.InstallFailed) {
		t.Fatalf("start not among files: %v", err)
	}
}

func TestSymlinkAtTargetIsNotFollowed(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, "a.txt")); err != nil {
		t.Fatal(err)
	}
	_, err := Install(context.Background(), Plan{Dir: dir, Files: []File{{Name: "a.txt", Staged: stage(t, "evil"), Mode: 0o644}}})
	if !errors.Is(err, reason.InstallFailed) || read(t, victim) != "keep" {
		t.Fatalf("symlink followed: %v %q", err, read(t, victim))
	}
}

func TestStagedPayloadChangedAfterVerificationIsNotPlaced(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app.conf"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	verified := sha256.Sum256([]byte("verified bytes"))
	staged := stage(t, "bytes swapped on disk after verify")
	_, err := Install(context.Background(), Plan{Dir: dir, Files: []File{{Name: "app.conf", Staged: staged, Mode: 0o644, SHA256: verified[:]}}})
	if !errors.Is(err, reason.DigestMismatch) || !errors.Is(err, reason.InstallFailed) {
		t.Fatalf("want INSTALL_FAILED with DIGEST_MISMATCH, got %v", err)
	}
	if read(t, filepath.Join(dir, "app.conf")) != "old" {
		t.Fatal("changed bytes were placed")
	}
	assertNoMarkers(t, dir)
}
