package bootsim

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// snippet returns the fenced block of docs/ab-slots.md that starts with the line first.
func snippet(t *testing.T, first string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "ab-slots.md"))
	if err != nil {
		t.Fatal(err)
	}
	// The fence names a language (test/docs requires one): ```text.
	doc := string(b)
	i := strings.Index(doc, "\n"+first+"\n")
	if i < 0 || !strings.HasPrefix(doc[strings.LastIndex(doc[:i], "\n")+1:], "```") {
		t.Fatalf("docs/ab-slots.md has no block starting %q", first)
	}
	body := doc[i+1:]
	return body[:strings.Index(body, "```\n")]
}

// TestGrubSnippetIsValidGrubScript: the GRUB script users copy from docs/ab-slots.md parses
// with GRUB's own checker, and it saves exactly the protocol's variables.
func TestGrubSnippetIsValidGrubScript(t *testing.T) {
	script := snippet(t, "# grub.cfg — fieldota A/B: try-boot and fallback (docs/ab-slots.md)")
	p := filepath.Join(t.TempDir(), "grub.cfg")
	if err := os.WriteFile(p, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("grub-script-check", p).CombinedOutput(); err != nil {
		t.Fatalf("grub-script-check (grub-common): %v\n%s", err, out)
	}
	if !strings.Contains(script, "\n    save_env fieldota_slot fieldota_try bootcount fieldota_bad_a fieldota_bad_b\n") {
		t.Fatal("the GRUB snippet does not save the protocol's variables")
	}
}

// TestUBootSnippetNamesTheProtocol: the U-Boot script speaks the same variables as bootsim and
// the agent (U-Boot's hush cannot be run here; this guards against drift of names).
func TestUBootSnippetNamesTheProtocol(t *testing.T) {
	script := snippet(t, "# fieldota A/B: try-boot and fallback (docs/ab-slots.md)")
	for _, want := range []string{
		`if test "${fieldota_try}" = "1"; then`,
		"setexpr bootcount ${bootcount} + 1",
		"if test ${bootcount} -gt ${bootlimit}; then",
		"setenv fieldota_bad_a 1; setenv fieldota_slot b",
		"setenv fieldota_bad_b 1; setenv fieldota_slot a",
		"setenv fieldota_try 0",
		"saveenv",
		"fieldota.slot=${fieldota_slot}",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("U-Boot snippet lacks %q", want)
		}
	}
}
