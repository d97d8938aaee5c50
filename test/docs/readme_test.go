package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func readme(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReadmeHasARowForEveryTestFolder: README's layout listed some folders of test/ and not
// others. The rule is one row per folder directly under test/, "| `test/NAME` | … |".
func TestReadmeHasARowForEveryTestFolder(t *testing.T) {
	r := readme(t)
	entries, err := os.ReadDir(filepath.Join(repo, "test"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() && !strings.Contains(r, "| `test/"+e.Name()+"` |") {
			t.Errorf("README.md has no row \"| `test/%s` | … |\" in its table of test/ folders", e.Name())
		}
	}
}

// TestReadmeNamesEveryDevicePackageAndScenario: README's device-deps list was incomplete. Every
// package scripts/device-deps.sh installs or fetches, and every device test, must be named.
func TestReadmeNamesEveryDevicePackageAndScenario(t *testing.T) {
	r := readme(t)
	b, err := os.ReadFile(filepath.Join(repo, "scripts/device-deps.sh"))
	if err != nil {
		t.Fatal(err)
	}
	script := string(b)
	var pkgs []string
	for _, m := range regexp.MustCompile(`(?m)^\s*\[[^\]]+\]=([a-z0-9.+-]+)`).FindAllStringSubmatch(script, -1) {
		pkgs = append(pkgs, m[1])
	}
	for _, m := range regexp.MustCompile(`missing\+=\(([a-z0-9.+-]+)\)`).FindAllStringSubmatch(script, -1) {
		pkgs = append(pkgs, m[1])
	}
	if m := regexp.MustCompile(`ARM_PKGS=\(([^)]*)\)`).FindStringSubmatch(script); m != nil {
		pkgs = append(pkgs, strings.Fields(m[1])...)
	}
	if len(pkgs) < 5 {
		t.Fatalf("found only %v in scripts/device-deps.sh: the test no longer reads it", pkgs)
	}
	for _, p := range pkgs {
		if !strings.Contains(r, "`"+p+"`") {
			t.Errorf("README.md does not name the device package `%s` (scripts/device-deps.sh)", p)
		}
	}
	files, _ := filepath.Glob(filepath.Join(repo, "test/device/*_test.go"))
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`(?m)^func (Test[A-Z]\w*)\(t \*testing\.T\)`).FindAllStringSubmatch(string(src), -1) {
			if !strings.Contains(r, "`"+m[1]) {
				t.Errorf("README.md does not name the device test %s (%s)", m[1], filepath.Base(f))
			}
		}
	}
}
