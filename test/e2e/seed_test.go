package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestProcessesSeedSignedByFieldotaJobSucceedsAsRootAndAsTheFilesUser: the seed's install.py,
// signed by `fieldota job`, installed by the fieldota-agent process — into a root-owned
// directory, and with files.run_as into the user's own home directory, where the files belong to
// the user and the program runs as the user.
func TestProcessesSeedSignedByFieldotaJobSucceedsAsRootAndAsTheFilesUser(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name  string
		runAs bool
	}{{"root-owned directory", false}, {"the user's home directory", true}} {
		t.Run(c.name, func(t *testing.T) {
			s := startSimProc(t)
			d := deviceFor(t, s)
			work := filepath.Join(d.appRoot, "JobSampleTesting")
			wantUID := 0
			if c.runAs {
				// A home the user owns, under a path anyone may traverse (like /home).
				base, err := os.MkdirTemp("", "fieldota-home-")
				if err != nil || os.Chmod(base, 0o755) != nil {
					t.Fatal("setup")
				}
				t.Cleanup(func() { os.RemoveAll(base) })
				home := filepath.Join(base, "ec2-user")
				if err := os.Mkdir(home, 0o755); err != nil || os.Chown(home, 65534, 65534) != nil {
					t.Fatal("setup")
				}
				work, wantUID = filepath.Join(home, "JobSampleTesting"), 65534
				cfg, _ := os.ReadFile(d.cfgPath)
				cfg = []byte(strings.Replace(string(cfg), "allowed_roots = ["+quote(d.appRoot)+"]",
					"allowed_roots = ["+quote(home)+"]\nrun_as = \"nobody\"", 1))
				if err := os.WriteFile(d.cfgPath, cfg, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			script := []byte("#!/bin/sh\necho installed in $(pwd) as uid $(id -u)\n")
			src := filepath.Join(t.TempDir(), "install.py")
			if err := os.WriteFile(src, script, 0o755); err != nil {
				t.Fatal(err)
			}
			doc := filepath.Join(t.TempDir(), "job.json")
			out, err := exec.Command(filepath.Join(bin, "fieldota"), "job", "--key", filepath.Join(d.dir, "release.key"),
				"--file", src, "--presign", "https://s3.eu-west-1.amazonaws.com/bucket/install.py",
				"--version", "1.0", "--compatible", "board-rev-c", "--working-directory", work,
				"--package-name", "install.py", "--auto-start", "--out", doc).CombinedOutput()
			if err != nil {
				t.Fatalf("fieldota job: %v\n%s", err, out)
			}
			b, _ := os.ReadFile(doc)
			s.publish("install.py", script)
			s.createJob("seed", string(b))
			d.startAgent()
			ex := s.waitTerminal("seed")
			want := "installed in " + work + " as uid " + itoa(wantUID)
			if ex.Status != "SUCCEEDED" || !strings.Contains(ex.StatusDetails.DetailsMap["output"], want) {
				t.Fatalf("%s %v, want output %q", ex.Status, ex.StatusDetails.DetailsMap, want)
			}
			fi, err := os.Stat(filepath.Join(work, "install.py"))
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != wantUID {
				t.Fatalf("install.py owned by %d, want %d", st.Uid, wantUID)
			}
		})
	}
}

func quote(s string) string { return `"` + s + `"` }

func itoa(n int) string { return strconv.Itoa(n) }
