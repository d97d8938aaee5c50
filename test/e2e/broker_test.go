package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/fieldota/fieldota/test/jobsim/s3"
	"github.com/fieldota/fieldota/test/mosquitto"
	"github.com/fieldota/fieldota/test/testpki"
)

// TestBrokerRestartedMidJobTheJobCompletes runs the agent over mTLS against Debian's mosquitto
// (the emulator attached to it as a privileged client), restarts the broker while the payload
// is downloading, and expects the agent to reconnect, resubscribe, keep its download and report.
func TestBrokerRestartedMidJobTheJobCompletes(t *testing.T) {
	ca, err := testpki.NewCA("fieldota e2e CA")
	if err != nil {
		t.Fatal(err)
	}
	b := mosquitto.Start(t, ca, mosquitto.Options{})
	certDir := t.TempDir()
	caPath, err := ca.WriteCA(certDir)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Client(thing)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath, err := pair.WriteFiles(certDir, thing)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOpts{
		external: &jobsim.ExternalBroker{URL: b.URL(), ClientID: b.Admin(), TLS: b.AdminTLS()},
		endpoint: b.URL(), mqttCA: caPath, mqttCert: certPath, mqttKey: keyPath,
	})
	payload := make([]byte, 2<<20)
	for i := range payload {
		payload[i] = byte(i >> 3)
	}
	e.publish("fw.bin", payload)
	e.sim.Artifacts().SetFaults("bucket/fw.bin", s3.Faults{RateBytesPerSec: 512 << 10})
	work := filepath.Join(e.appRoot, "fw")
	e.createJob("through-restart", e.seedDoc("fw.bin", payload, "8.0", work, false))
	e.startAgent()
	e.waitFor("the download to start", func() bool {
		ex, err := e.sim.DescribeJobExecution("through-restart", thing, 0)
		return err == nil && ex.StatusDetails.DetailsMap["stage"] == "download"
	})
	b.Restart(t)
	ex := e.waitTerminal("through-restart", 60*time.Second)
	if ex.Status != "SUCCEEDED" {
		t.Fatalf("%s %v\nbroker log:\n%s", ex.Status, ex.StatusDetails.DetailsMap, b.Log())
	}
	if got, err := os.ReadFile(filepath.Join(work, "fw.bin")); err != nil || len(got) != len(payload) {
		t.Fatalf("placed %d bytes, %v", len(got), err)
	}
	if n := e.terminalReports("through-restart"); n != 1 {
		t.Fatalf("terminal status sent %d times", n)
	}
}
