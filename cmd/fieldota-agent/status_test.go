package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldota/fieldota/ota"
)

// TestStatusShowsJournalInstalledVersionsAndSlots: an operator on the device sees the job in
// progress, what is installed and which slot runs, without the agent touching anything.
func TestStatusShowsJournalInstalledVersionsAndSlots(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	cmdline := filepath.Join(dir, "cmdline")
	env := filepath.Join(dir, "bootenv")
	for p, body := range map[string]string{
		cmdline:                                "console=ttyAMA0 root=/dev/vda3 fieldota.slot=b\n",
		env:                                    "fieldota_slot=b\nfieldota_try=0\nbootcount=0\nbootlimit=1\n",
		filepath.Join(state, "installed.json"): `{"slot":"2.0.0"}`,
	} {
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := (&ota.Store{Dir: state}).Save(&ota.Journal{JobID: "fw-3", ExecutionNumber: 2, State: ota.StateDownload}); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "agent.toml")
	body := fmt.Sprintf(`thing_name = "dev1"
state_dir = %q
[mqtt]
endpoint = "tcp://127.0.0.1:1"
[verify]
allow_unsigned = true
[slot]
bootloader = "file"
env_file = %q
a = "/dev/vda2"
b = "/dev/vda3"
detect = "cmdline"
reboot = ["/sbin/reboot"]
cmdline = %q
`, state, env, cmdline)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := status(context.Background(), &out, cfg); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Job       *ota.Journal      `json:"job"`
		Installed map[string]string `json:"installed"`
		Slots     struct {
			Booted string                `json:"booted"`
			Env    struct{ Slot string } `json:"env"`
		} `json:"slots"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if got.Job == nil || got.Job.JobID != "fw-3" || got.Job.State != ota.StateDownload ||
		got.Installed["slot"] != "2.0.0" || got.Slots.Booted != "b" || got.Slots.Env.Slot != "b" {
		t.Fatalf("status:\n%s", out.String())
	}
}

// TestStatusRedactsPresignedURLs: `fieldota-agent status` printed the journal's job document
// with its presigned URL, signature included — a bearer credential for up to an hour. Every URL
// it prints must be redacted the way log lines are.
func TestStatusRedactsPresignedURLs(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	const secret = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
	presigned := "https://s3.eu-west-1.amazonaws.com/bucket/install.py?X-Amz-Algorithm=AWS4-HMAC-SHA256" +
		"&X-Amz-Credential=AKIAEXAMPLE%2F20261201%2Feu-west-1%2Fs3%2Faws4_request&X-Amz-Security-Token=tok" + secret +
		"&X-Amz-Signature=" + secret
	doc := fmt.Sprintf(`{"operation":"install","version":"1.0","files":{"fileName":"install.py","url":%q,"size":3}}`, presigned)
	j := &ota.Journal{JobID: "fw-4", ExecutionNumber: 1, State: ota.StateDownload, Document: []byte(doc),
		Report: &ota.Report{Status: "FAILED", Details: map[string]string{"detail": "GET " + presigned + " failed"}}}
	if err := (&ota.Store{Dir: state}).Save(j); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("thing_name = \"dev1\"\nstate_dir = %q\n[mqtt]\nendpoint = \"tcp://127.0.0.1:1\"\n[verify]\nallow_unsigned = true\n", state)), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := status(context.Background(), &out, cfg); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), secret) || strings.Contains(out.String(), "X-Amz-") {
		t.Fatalf("status prints presigned URL material:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "https://s3.eu-west-1.amazonaws.com/bucket/install.py") {
		t.Fatalf("status lost the object the job downloads:\n%s", out.String())
	}
}
