package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var stageLine = regexp.MustCompile(`^\[\s*[0-9.]+s\] (job\s+.*)$`)

// stageLines are the demo's job lines without their timestamps.
func stageLines(out string) []string {
	var l []string
	for _, line := range strings.Split(out, "\n") {
		if m := stageLine.FindStringSubmatch(line); m != nil {
			l = append(l, m[1])
		}
	}
	return l
}

// TestDemoPrintsTheSameStageLinesEveryRun runs `make demo`'s binaries twice in a row: the job
// lines come from the emulator's event stream, so both runs print every transition in the same
// order (polling used to drop some, e.g. stage=rollback, or print stage=reboot after the reboot),
// no raw execution JSON without --verbose, and no empty "()" after the health check's detail.
func TestDemoPrintsTheSameStageLinesEveryRun(t *testing.T) {
	bin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+"/", "./", "../fieldota-agent")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	run := func() string {
		out, err := exec.CommandContext(ctx, filepath.Join(bin, "fieldota"), "demo").CombinedOutput()
		if err != nil {
			t.Fatalf("demo: %v\n%s", err, out)
		}
		return string(out)
	}
	first, second := run(), run()
	a, b := stageLines(first), stageLines(second)
	if strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Fatalf("the two runs differ:\n--- first\n%s\n--- second\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
	for _, want := range []string{
		"job       demo-install  IN_PROGRESS stage=download",
		"job       demo-install  SUCCEEDED stage=done",
		"job       demo-tampered  FAILED stage=verify reason=SIGNATURE_INVALID",
		"job       ab-good  IN_PROGRESS stage=reboot",
		"job       ab-good  SUCCEEDED stage=done",
		"job       ab-unhealthy  IN_PROGRESS stage=rollback",
		"job       ab-unhealthy  FAILED stage=selftest reason=HEALTH_CHECK_FAILED",
		"job       ab-no-boot  FAILED stage=reboot reason=BOOT_FAILED",
	} {
		if !strings.Contains(strings.Join(a, "\n"), want) {
			t.Errorf("no line %q in:\n%s", want, strings.Join(a, "\n"))
		}
	}
	for _, bad := range []string{`"jobId"`, "()\n", "eu-west-1"} {
		if strings.Contains(first, bad) {
			t.Errorf("the demo prints %q:\n%s", bad, first)
		}
	}
	for _, want := range []string{"Chapter 3 — A/B slots", "--keep"} {
		if !strings.Contains(first, want) {
			t.Errorf("the demo does not print %q", want)
		}
	}
}
