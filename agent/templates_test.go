package agent

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/test/jobsim/s3"
)

// templateDoc is a managed template's document as AWS writes it after substituting
// documentParameters (TM): one runHandler step, or runCommand.
func templateDoc(handler string, args ...string) string {
	step := map[string]any{"action": map[string]any{"name": handler, "type": "runHandler",
		"input": map[string]any{"handler": handler, "args": args, "path": "default"}, "runAsUser": "root"}}
	if handler == "" {
		step = map[string]any{"action": map[string]any{"name": "Run-Command", "type": "runCommand",
			"input": map[string]any{"command": strings.Join(args, ",")}, "runAsUser": "root"}}
	}
	b, _ := json.Marshal(map[string]any{"version": "1.0", "steps": []any{step}})
	return string(b)
}

// TestEachManagedTemplateRunsWhenAllowedAndIsRefusedNamingItOtherwise: with templates.* set,
// every template runs its work without a shell; with nothing set (the default), each is
// REJECTED UNSUPPORTED_OPERATION while QUEUED with the template's name in the detail.
func TestEachManagedTemplateRunsWhenAllowedAndIsRefusedNamingItOtherwise(t *testing.T) {
	type tc struct {
		name, doc string
		ran       func(h *harness, out string) bool
	}
	cases := func(h *harness, out string) []tc {
		touched := func(names ...string) func(*harness, string) bool {
			return func(_ *harness, out string) bool {
				for _, n := range names {
					if _, err := os.Stat(filepath.Join(out, n)); err != nil {
						return false
					}
				}
				return true
			}
		}
		return []tc{
			{"AWS-Reboot", templateDoc("reboot.sh"), touched("rebooted")},
			{"AWS-Restart-Application", templateDoc("restart-services.sh", "myapp"), touched("restart", "myapp")},
			{"AWS-Start-Application", templateDoc("start-services.sh", "myapp other"), touched("start", "myapp", "other")},
			{"AWS-Stop-Application", templateDoc("stop-services.sh", "myapp"), touched("stop")},
			{"AWS-Install-Application", templateDoc("install-packages.sh", "pkg-a pkg-b"), touched("pkg-a", "pkg-b")},
			{"AWS-Remove-Application", templateDoc("remove-packages.sh", "pkg-c"), touched("pkg-c")},
			{"AWS-Run-Command", templateDoc("", "touch", filepath.Join(out, "ran")), touched("ran")},
			{"AWS-Download-File", "", func(h *harness, _ string) bool {
				b, _ := os.ReadFile(filepath.Join(h.appRoot, "dl", "data.bin"))
				return string(b) == "payload"
			}},
		}
	}
	allow := func(h *harness, out string) {
		h.cfg.Templates = config.Templates{
			Reboot: true, RebootCommand: []string{"touch", filepath.Join(out, "rebooted")},
			Services: []string{"myapp", "other"}, ServiceCommand: []string{"env", "-C", out, "touch"},
			InstallCommand: []string{"env", "-C", out, "touch"}, RemoveCommand: []string{"env", "-C", out, "touch"},
			RunCommand: true, DownloadFile: true, DownloadRoots: []string{h.appRoot},
			MaxDownloadSize: 1 << 20, Timeout: h.cfg.Templates.Timeout,
		}
	}
	for _, allowed := range []bool{true, false} {
		h := newHarness(t)
		out := t.TempDir()
		if allowed {
			allow(h, out)
		}
		if err := os.MkdirAll(filepath.Join(h.appRoot, "dl"), 0o755); err != nil {
			t.Fatal(err)
		}
		h.publish("data.bin", []byte("payload"))
		h.run()
		for i, c := range cases(h, out) {
			doc := c.doc
			if c.name == "AWS-Download-File" {
				doc = templateDoc("download-file.sh", "${aws:iot:s3-presigned-url:https://s3.eu-west-1.amazonaws.com/bucket/data.bin}", filepath.Join(h.appRoot, "dl", "data.bin"))
			}
			id := "tpl" + string(rune('a'+i))
			h.createJob(id, doc)
			ex := h.waitTerminal(id)
			d := ex.StatusDetails.DetailsMap
			if allowed && ex.Status == "SUCCEEDED" {
				// AWS-Reboot reports first and reboots after: its command may run a moment later.
				h.waitFor(c.name+" to have run", func() bool { return c.ran(h, out) })
			}
			switch {
			case allowed && (ex.Status != "SUCCEEDED" || !c.ran(h, out)):
				t.Errorf("%s allowed: %s %v (ran %v)", c.name, ex.Status, d, c.ran(h, out))
			case !allowed && (ex.Status != "REJECTED" || d["reason"] != "UNSUPPORTED_OPERATION" || !strings.Contains(d["detail"], c.name) || c.ran(h, out)):
				t.Errorf("%s not allowed: %s %v", c.name, ex.Status, d)
			}
		}
	}
}

// TestAWSDownloadFileResumesACutDownloadAndStaysInsideTheAllowedRoots: the connection drops
// half-way; the download resumes with a Range from its checkpoint and the file lands whole. A
// filePath outside templates.download_roots, or climbing out with "..", is REJECTED UNSAFE_PATH
// while QUEUED, and a service not on the allowlist is refused too.
func TestAWSDownloadFileResumesACutDownloadAndStaysInsideTheAllowedRoots(t *testing.T) {
	h := newHarness(t)
	h.cfg.Templates.DownloadFile, h.cfg.Templates.DownloadRoots = true, []string{h.appRoot}
	h.cfg.Templates.Services = []string{"myapp"}
	content := bytes.Repeat([]byte("0123456789abcdef"), 8<<10) // 128 KiB
	h.publish("big.bin", content)
	h.sim.Artifacts().SetFaults("bucket/big.bin", s3.Faults{CutAtOffsets: []int64{50 << 10}})
	url := "${aws:iot:s3-presigned-url:https://s3.eu-west-1.amazonaws.com/bucket/big.bin}"
	h.createJob("dl", templateDoc("download-file.sh", url, filepath.Join(h.appRoot, "big.bin")))
	h.run()
	if ex := h.waitTerminal("dl"); ex.Status != "SUCCEEDED" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if got, _ := os.ReadFile(filepath.Join(h.appRoot, "big.bin")); !bytes.Equal(got, content) {
		t.Fatalf("placed %d bytes, want %d", len(got), len(content))
	}
	var ranged bool
	for _, r := range h.sim.Artifacts().Requests() {
		ranged = ranged || r.Object == "bucket/big.bin" && strings.HasPrefix(r.Range, "bytes=") && r.Range != "bytes=0-0" && !strings.HasPrefix(r.Range, "bytes=0-")
	}
	if !ranged {
		t.Fatalf("no resumed range request: %+v", h.sim.Artifacts().Requests())
	}
	outside := t.TempDir()
	for id, doc := range map[string]string{
		"outside": templateDoc("download-file.sh", url, filepath.Join(outside, "x.bin")),
		"climb":   templateDoc("download-file.sh", url, h.appRoot+"/../x.bin"),
	} {
		h.createJob(id, doc)
		h.expect(id, "REJECTED", "UNSAFE_PATH")
	}
	h.createJob("svc", templateDoc("restart-services.sh", "sshd"))
	if d := h.expect("svc", "REJECTED", "UNSUPPORTED_OPERATION"); !strings.Contains(d["detail"], "sshd") {
		t.Fatalf("detail %q", d["detail"])
	}
	if _, err := os.Stat(filepath.Join(outside, "x.bin")); err == nil {
		t.Fatal("a file was written outside the allowed roots")
	}
}
