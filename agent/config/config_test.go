package config

import (
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
	if c.ThingName == "" || c.MQTT.ClientID != c.ThingName || c.Health.Timeout.Duration != 5*time.Minute {
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
