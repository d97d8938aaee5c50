package main

import (
	"strings"
	"testing"
	"unicode"
)

// TestHelpAndConfigErrorsPointTheWay: `run --help` was one line with no pointer to the example
// configuration or the docs, a missing configuration printed its path twice with no hint, the
// daemon shipped cobra's completion command, and its help texts were lowercase where fieldota's
// are capitalised.
func TestHelpAndConfigErrorsPointTheWay(t *testing.T) {
	root := newRoot()
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range append(root.Commands(), root) {
		if c.Name() == "completion" {
			t.Error("the daemon ships a completion command")
		}
		if r := []rune(c.Short); len(r) == 0 || !unicode.IsUpper(r[0]) {
			t.Errorf("%s: help %q is not capitalised", c.CommandPath(), c.Short)
		}
	}
	run, _, err := root.Find([]string{"run"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"scripts/agent.example.toml", "docs/configuration.md", defaultConfig} {
		if !strings.Contains(run.Long, want) {
			t.Errorf("run --help does not mention %s:\n%s", want, run.Long)
		}
	}
	const missing = "/nonexistent/fieldota/agent.toml"
	_, err = loadConfig(missing)
	if err == nil || strings.Count(err.Error(), missing) != 1 || !strings.Contains(err.Error(), "scripts/agent.example.toml") {
		t.Fatalf("missing configuration: %v", err)
	}
}
