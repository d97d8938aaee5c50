package jobsim

import (
	"testing"
	"time"

	"github.com/fieldota/fieldota/test/mosquitto"
	"github.com/fieldota/fieldota/test/testpki"
)

// TestAttachedToMosquitto runs the device API through Debian's mosquitto with TLS client
// certificates and a per-thing ACL, the emulator attached as the privileged client: the same
// answers, notifications and confinement as the embedded broker (a denied publish is dropped
// rather than disconnecting, as mosquitto does), and it survives a broker restart.
func TestAttachedToMosquitto(t *testing.T) {
	ca, err := testpki.NewCA("mosquitto test CA")
	if err != nil {
		t.Fatal(err)
	}
	b := mosquitto.Start(t, ca, mosquitto.Options{})
	s := startSim(t, Config{External: &ExternalBroker{URL: b.URL(), ClientID: b.Admin(), TLS: b.AdminTLS()}})
	if s.MQTTURL() != "" || s.TLSURL() != "" {
		t.Fatalf("attached emulator listens itself: %q %q", s.MQTTURL(), s.TLSURL())
	}
	d := connectDevice(t, b.URL(), "dev1", devOpts{tls: b.ClientTLS("dev1"), subscribe: true})
	other := connectDevice(t, b.URL(), "dev2", devOpts{tls: b.ClientTLS("dev2"), subscribe: true})
	// mosquitto's acl_file never refuses a SUBSCRIBE (its maintainer: "subscriptions are never
	// forbidden", the ACL filters deliveries), so the spy's subscriptions are granted; what the
	// ACL must guarantee is that nothing of another thing's ever reaches it.
	spy := connectDevice(t, b.URL(), "spy", devOpts{tls: b.ClientTLS("spy")})
	for _, f := range []string{"$aws/things/dev2/jobs/notify-next", "$aws/things/+/jobs/notify-next", "$aws/things/dev1/#", "#"} {
		if got := spy.subscribe(f); got != 1 && got != 0x80 {
			t.Fatalf("spy subscribing %s: %#x", f, got)
		}
	}
	mustCreate(t, s, CreateJobInput{JobID: "j", Targets: []string{"dev1", "dev2"}})
	if nn := d.expect(d.jobs("notify-next")); field(nn.body, "execution", "jobId") != "j" {
		t.Fatalf("notify-next: %s", nn.raw)
	}
	d.expect(d.jobs("notify"))
	x := d.accepted("$next/get", map[string]any{"clientToken": "tok"})
	if field(x, "execution", "thingName") != "dev1" || x["clientToken"] != "tok" {
		t.Fatalf("$next: %v", x)
	}
	d.accepted("start-next", map[string]any{"statusDetails": map[string]string{"stage": "download"}})
	b2 := d.rejected("j/update", map[string]any{"status": "IN_PROGRESS", "expectedVersion": 1}, CodeVersionMismatch)
	if num(field(b2, "executionState", "versionNumber")) != 2 {
		t.Fatalf("VersionMismatch: %v", b2)
	}
	d.rejected("j/bogus", map[string]any{}, CodeInvalidTopic)

	// Confinement by mosquitto's ACL: dev1 cannot act for dev2, the spy heard nothing.
	d.publish("$aws/things/dev2/jobs/j/update", map[string]any{"status": "SUCCEEDED"})
	d.publish("$aws/things/dev2/jobs/start-next", map[string]any{})
	d.quiet("$aws/things/dev2/jobs/j/update/accepted", 300*time.Millisecond)
	if e, _ := s.DescribeJobExecution("j", "dev2", 0); e.Status != StatusQueued || e.VersionNumber != 1 {
		t.Fatalf("dev1 changed dev2's execution through mosquitto: %+v", e)
	}
	other.accepted("j/update", map[string]any{"status": "IN_PROGRESS", "expectedVersion": 1})
	if l := spy.topics(); len(l) != 0 {
		t.Fatalf("the spy received other things' messages: %v", l)
	}

	d.accepted("j/update", map[string]any{"status": "SUCCEEDED", "expectedVersion": 2})
	if nn := d.expect(d.jobs("notify-next")); nn.body["execution"] != nil {
		t.Fatalf("notify-next after SUCCEEDED: %s", nn.raw)
	}

	// After a broker restart the emulator reattaches and resubscribes by itself.
	b.Restart(t)
	mustCreate(t, s, CreateJobInput{JobID: "k", Targets: []string{"dev1"}})
	var again *device
	deadline := time.Now().Add(10 * time.Second)
	for {
		d2, err := tryConnect(t, b.URL(), "dev1", devOpts{tls: b.ClientTLS("dev1"), subscribe: true})
		if err == nil {
			again = d2
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("device cannot reconnect after restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for {
		again.publish(again.jobs("$next/get"), map[string]any{})
		if m, ok := again.await(again.jobs("$next/get/accepted"), 300*time.Millisecond); ok {
			if field(m.body, "execution", "jobId") != "k" {
				t.Fatalf("$next after restart: %s", m.raw)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("emulator did not reattach after the broker restart; log:\n%s", b.Log())
		}
	}
}
