package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestShippedExampleLoads(t *testing.T) {
	c, err := Load("../../scripts/agent.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.ThingName == "" || c.MQTT.ClientID != c.ThingName || c.Health.Timeout.Duration != 5*time.Minute ||
		!c.Delta.On() || c.Delta.MinSaving != 0.2 || c.Delta.MaxRequests != 200 || c.Download.MaxDecoderWindow != 64<<20 {
		t.Fatalf("%+v", c)
	}
}

func TestConfigRefusals(t *testing.T) {
	base := "thing_name = \"dev1\"\nstate_dir = \"/var/lib/fieldota\"\n[mqtt]\nendpoint = \"tcp://127.0.0.1:1883\"\n[verify]\nkeys = [\"/k.pub\"]\n"
	cases := []struct{ name, body, want string }{
		{"misspelt key is not ignored", base + "allow_unsigend = true\n", "unknown keys"},
		{"no trust anchors fails closed", strings.Replace(base, "keys = [\"/k.pub\"]", "", 1), "verify.keys"},
		{"bad thing name", strings.Replace(base, "dev1", "dev 1", 1), "thing_name"},
		{"relative state dir", strings.Replace(base, "/var/lib/fieldota", "state", 1), "state_dir"},
		{"tls endpoint without cert", strings.Replace(base, "tcp://127.0.0.1:1883", "x-ats.iot.eu-west-1.amazonaws.com:8883", 1), "cert_file"},
		{"root as allowed root", base + "[files]\nallowed_roots = [\"/\"]\n", "allowed_roots"},
		{"bad duration", base + "[health]\ntimeout = \"soon\"\n", "soon"},
		{"step timeout too long", base + "[jobs]\nstep_timeout_minutes = 20000\n", "step_timeout"},
		{"rate limit below the minimum speed", base + "[download]\nrate_limit_bytes_per_sec = 500\n", "below download.min_speed"},
		{"host with a scheme", base + "[download]\nallowed_hosts = [\"https://s3.amazonaws.com\"]\n", "allowed_hosts"},
		{"host with a port", base + "[download]\nallowed_hosts = [\"127.0.0.1:9000\"]\n", "allowed_hosts"},
		{"host wildcard in the middle", base + "[download]\nallowed_hosts = [\"s3.*.amazonaws.com\"]\n", "allowed_hosts"},
		{"run_as without roots", base + "[files]\nrun_as = \"ec2-user\"\n", "run_as"},
		{"swap.name a path", base + "[swap]\nname = \"../sudo\"\n", "swap.name"},
		{"decoder window too small", base + "[download]\nmax_decoder_window_bytes = 4096\n", "max_decoder_window_bytes"},
		{"delta saving of a whole", base + "[delta]\nmin_saving = 1.5\n", "delta.min_saving"},
		{"delta without requests", base + "[delta]\nmax_requests = -1\n", "delta.max_requests"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(write(t, tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error containing %q, got %v", tc.want, err)
			}
		})
	}
	if _, err := Load(write(t, base)); err != nil {
		t.Fatalf("base config refused: %v", err)
	}
}

// TestAllowedRootsOverlappingTheAgentsOwnFilesAreRefused is attack 9: a files job must never be
// able to overwrite installed.json, the journal, a trusted key, the config or the agent itself.
func TestAllowedRootsOverlappingTheAgentsOwnFilesAreRefused(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "etc", "fieldota")
	if err := os.MkdirAll(keys, 0o755); err != nil {
		t.Fatal(err)
	}
	base := "thing_name = \"dev1\"\nstate_dir = %q\n[mqtt]\nendpoint = \"tcp://127.0.0.1:1883\"\n[verify]\nkeys = [%q]\n[files]\nallowed_roots = [%q]\n"
	state := filepath.Join(dir, "var", "lib", "fieldota")
	cases := []struct{ name, root, want string }{
		{"the state directory itself", state, "state_dir"},
		{"a parent of the state directory", filepath.Join(dir, "var"), "state_dir"},
		{"inside the state directory", filepath.Join(state, "staging"), "state_dir"},
		{"the trust keys' directory", keys, "verify.keys[0]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := fmt.Sprintf(base, state, filepath.Join(keys, "release.pub"), c.root)
			_, err := Load(write(t, body))
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.root) {
				t.Fatalf("got %v, want a refusal naming %s and %s", err, c.root, c.want)
			}
		})
	}
	// The configuration file itself, and the agent's binary.
	cfgDir := t.TempDir()
	cfgPath := filepath.Join(cfgDir, "agent.toml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(base, state, filepath.Join(keys, "k.pub"), cfgDir)), 0o600)
	if _, err := Load(cfgPath); err == nil || !strings.Contains(err.Error(), "configuration file") {
		t.Fatalf("config inside an allowed root: %v", err)
	}
	c := &Config{StateDir: state, Files: Files{AllowedRoots: []string{"/usr/bin"}}}
	if err := c.CheckOverlaps("", "/usr/bin/fieldota-agent"); err == nil || !strings.Contains(err.Error(), "agent's binary") {
		t.Fatalf("agent binary inside an allowed root: %v", err)
	}
	// A root beside them is fine.
	if err := (&Config{StateDir: state, Files: Files{AllowedRoots: []string{filepath.Join(dir, "opt", "app")}}}).CheckOverlaps(cfgPath, "/usr/bin/fieldota-agent"); err != nil {
		t.Fatal(err)
	}
}

func TestPolicyConfig(t *testing.T) {
	base := "thing_name = \"dev1\"\nstate_dir = \"/var/lib/fieldota\"\n[mqtt]\nendpoint = \"tcp://127.0.0.1:1883\"\n[verify]\nkeys = [\"/k.pub\"]\n"
	refused := []struct{ name, body, want string }{
		{"unknown time zone", "[policy]\ntime_zone = \"Mars/Olympus\"\n", "policy.time_zone"},
		{"cron that never fires", "[policy.install]\nwindows = [{ cron = \"0 0 30 2 *\", duration = \"1h\" }]\n", "policy.install.windows[0]"},
		{"window without a duration", "[policy.reboot]\nwindows = [{ cron = \"0 2 * * *\" }]\n", "policy.reboot.windows[0]"},
		{"hook through PATH", "[policy.install]\nhooks = [[\"may-install\"]]\n", "policy.install.hooks[0]"},
		{"empty hook", "[policy.restart]\nhooks = [[]]\n", "policy.restart.hooks[0]"},
		{"metered check on install", "[policy.install]\nwait_while_metered = true\n", "wait_while_metered"},
		{"recheck too often", "[policy]\nrecheck = \"1s\"\n", "policy.recheck"},
		{"misspelt phase", "[policy.instal]\nhooks = [[\"/x\"]]\n", "unknown keys"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(write(t, base+tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error containing %q, got %v", tc.want, err)
			}
		})
	}
	c, err := Load(write(t, base+`[policy]
time_zone = "Europe/Berlin"
[policy.download]
wait_while_metered = true
[policy.install]
windows = [{ cron = "0 2 * * 6", duration = "3h" }, { cron = "@daily", duration = "30m" }]
hooks = [["/usr/local/libexec/may-install", "--quiet"]]
`))
	if err != nil {
		t.Fatal(err)
	}
	ws, err := c.Policy.Windows("install")
	if err != nil || len(ws) != 2 || ws[0].Location.String() != "Europe/Berlin" || c.Policy.Recheck.Duration != 5*time.Minute {
		t.Fatalf("%v %v %+v", ws, err, c.Policy)
	}
}
