package mosquitto

import (
	"crypto/tls"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldota/fieldota/test/testpki"
)

type client struct {
	c   paho.Client
	got chan string
}

func connect(t *testing.T, url, id string, tc *tls.Config) (*client, error) {
	cl := &client{got: make(chan string, 64)}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetTLSConfig(tc).SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second).SetProtocolVersion(4).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { cl.got <- m.Topic() })
	cl.c = paho.NewClient(opts)
	tok := cl.c.Connect()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		return nil, tok.Error()
	}
	t.Cleanup(func() { cl.c.Disconnect(50) })
	return cl, nil
}

func (cl *client) sub(t *testing.T, filter string) {
	t.Helper()
	if tok := cl.c.Subscribe(filter, 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

func (cl *client) pub(t *testing.T, topic string) {
	t.Helper()
	if tok := cl.c.Publish(topic, 1, false, "{}"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func (cl *client) next(wait time.Duration) (string, bool) {
	select {
	case topic := <-cl.got:
		return topic, true
	case <-time.After(wait):
		return "", false
	}
}

// TestThingConfinedToItsOwnTopics: the ACL lets a thing use $aws/things/<its CN>/ only, the admin
// identity sees every thing, and a client without a certificate is refused; a restart keeps the
// port and the rules.
func TestThingConfinedToItsOwnTopics(t *testing.T) {
	ca, err := testpki.NewCA("mosquitto test CA")
	if err != nil {
		t.Fatal(err)
	}
	b := Start(t, ca, Options{})
	for round := range 2 {
		admin, err := connect(t, b.URL(), b.Admin(), b.AdminTLS())
		if err != nil {
			t.Fatalf("admin: %v\n%s", err, b.Log())
		}
		admin.sub(t, "$aws/things/+/jobs/#")
		dev1, err := connect(t, b.URL(), "dev1", b.ClientTLS("dev1"))
		if err != nil {
			t.Fatalf("dev1: %v", err)
		}
		dev1.sub(t, "$aws/things/dev1/jobs/#")
		dev1.sub(t, "$aws/things/dev2/jobs/#") // granted by mosquitto, but nothing may arrive

		dev1.pub(t, "$aws/things/dev1/jobs/get")
		if topic, ok := admin.next(2 * time.Second); !ok || topic != "$aws/things/dev1/jobs/get" {
			t.Fatalf("round %d: admin did not see dev1's own request: %q", round, topic)
		}
		if topic, ok := dev1.next(2 * time.Second); !ok || topic != "$aws/things/dev1/jobs/get" {
			t.Fatalf("round %d: dev1 did not get its own topic back: %q", round, topic)
		}
		dev1.pub(t, "$aws/things/dev2/jobs/get") // denied: dropped
		if topic, ok := admin.next(300 * time.Millisecond); ok {
			t.Fatalf("round %d: dev1 published for dev2: %s", round, topic)
		}
		admin.pub(t, "$aws/things/dev2/jobs/notify-next")
		if topic, ok := admin.next(2 * time.Second); !ok || topic != "$aws/things/dev2/jobs/notify-next" {
			t.Fatalf("round %d: admin's own publish: %q", round, topic)
		}
		if topic, ok := dev1.next(300 * time.Millisecond); ok {
			t.Fatalf("round %d: dev1 received dev2's %s", round, topic)
		}
		if _, err := connect(t, b.URL(), "anon", &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"}); err == nil {
			t.Fatalf("round %d: a client without a certificate connected", round)
		}
		if round == 0 {
			url := b.URL()
			b.Restart(t)
			if b.URL() != url {
				t.Fatalf("restart moved the broker: %s → %s", url, b.URL())
			}
		}
	}
}
