package jobs

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

func TestTimestampDecodesSecondsAndMilliseconds(t *testing.T) {
	want := time.Unix(1489096425, 0).UTC()
	for _, tc := range []struct {
		name, in string
		want     time.Time
		bad      bool
	}{
		{"epoch seconds (live AWS device plane)", `1489096425`, want, false},
		{"epoch milliseconds (AWS doc example)", `1489096425069`, want.Add(69 * time.Millisecond), false},
		{"fractional seconds", `1489096425.5`, want.Add(500 * time.Millisecond), false},
		{"numeric string", `"1489096425"`, want, false},
		{"null is absent", `null`, time.Time{}, false},
		{"negative refused", `-5`, time.Time{}, true},
		{"beyond int64 refused", `1e300`, time.Time{}, true},
		{"text refused", `"yesterday"`, time.Time{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ts Timestamp
			err := json.Unmarshal([]byte(tc.in), &ts)
			if tc.bad {
				if err == nil {
					t.Fatalf("decoded %s as %v", tc.in, ts.Time)
				}
				return
			}
			if err != nil || !ts.Time.Equal(tc.want) {
				t.Fatalf("got %v, %v; want %v", ts.Time, err, tc.want)
			}
		})
	}
	// Inside a real payload, absent fields stay zero.
	var e JobExecution
	if err := json.Unmarshal([]byte(`{"jobId":"j","queuedAt":1489096123,"lastUpdatedAt":1489096123000}`), &e); err != nil {
		t.Fatal(err)
	}
	if !e.QueuedAt.Equal(e.LastUpdatedAt.Time) || !e.StartedAt.IsZero() {
		t.Fatalf("queuedAt %v lastUpdatedAt %v startedAt %v", e.QueuedAt, e.LastUpdatedAt, e.StartedAt)
	}
}

func TestClientTokensAreUniqueAndFitAWSLimit(t *testing.T) {
	a, b := newTokens(), newTokens()
	seen := map[string]bool{}
	for i := 0; i < 10000; i++ {
		for _, tk := range []string{a.next(), b.next()} {
			if len(tk) > MaxClientTokenLen {
				t.Fatalf("token %q is %d bytes", tk, len(tk))
			}
			if seen[tk] {
				t.Fatalf("token %q repeated", tk)
			}
			seen[tk] = true
		}
	}
	a.seq.Store(^uint64(0) - 1) // the longest possible counter still fits
	if tk := a.next(); len(tk) > MaxClientTokenLen {
		t.Fatalf("token %q is %d bytes", tk, len(tk))
	}
}

func TestEndpointParsingAndALPNOn443(t *testing.T) {
	for _, tc := range []struct {
		in, url string
		alpn    bool
		bad     bool
	}{
		{"ssl://a-ats.iot.eu-west-1.amazonaws.com:8883", "ssl://a-ats.iot.eu-west-1.amazonaws.com:8883", false, false},
		{"a-ats.iot.eu-west-1.amazonaws.com", "ssl://a-ats.iot.eu-west-1.amazonaws.com:8883", false, false},
		{"a-ats.iot.eu-west-1.amazonaws.com:443", "ssl://a-ats.iot.eu-west-1.amazonaws.com:443", true, false},
		{"mqtts://h:443", "ssl://h:443", true, false},
		{"tcp://127.0.0.1:1883", "tcp://127.0.0.1:1883", false, false},
		{"tcp://127.0.0.1", "tcp://127.0.0.1:1883", false, false},
		{"[::1]:8883", "ssl://[::1]:8883", false, false},
		{"ws://h:80", "", false, true},
		{"ssl://h:99999", "", false, true},
		{"ssl://h:8883/path", "", false, true},
		{"", "", false, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			ep, err := parseEndpoint(tc.in)
			if tc.bad {
				if err == nil {
					t.Fatalf("accepted %q as %+v", tc.in, ep)
				}
				return
			}
			if err != nil || ep.url != tc.url {
				t.Fatalf("got %+v, %v; want %s", ep, err, tc.url)
			}
			if !ep.tls {
				return
			}
			tc2, err := Config{}.tlsConfig(ep)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(tc2.NextProtos) == 1 && tc2.NextProtos[0] == ALPNProtocol; got != tc.alpn {
				t.Fatalf("ALPN %v, want %v", tc2.NextProtos, tc.alpn)
			}
			if tc2.ServerName != ep.host {
				t.Fatalf("SNI %q, want %q (AWS refuses connections without SNI)", tc2.ServerName, ep.host)
			}
		})
	}
}

func TestConfigRefusesKeepAliveThatPahoWouldTurnOff(t *testing.T) {
	_, err := Config{Endpoint: "tcp://h", ThingName: "t", KeepAlive: 500 * time.Millisecond}.withDefaults()
	if err == nil {
		t.Fatal("a sub-second keep-alive (stored as 0 s = disabled by paho) was accepted")
	}
	cfg, err := Config{Endpoint: "tcp://h", ThingName: "t"}.withDefaults()
	if err != nil || cfg.KeepAlive != 60*time.Second || cfg.ClientID != "t" {
		t.Fatalf("defaults: %+v %v", cfg, err)
	}
	for _, bad := range []string{"", "a/b", "a+", "#", strings.Repeat("x", 129)} {
		if _, err := (Config{Endpoint: "tcp://h", ThingName: bad}).withDefaults(); err == nil {
			t.Errorf("thing name %q accepted: it would inject topic levels", bad)
		}
	}
}

func TestStatusDetailsLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		d    map[string]string
		ok   bool
	}{
		{"agent's usual map", map[string]string{"stage": "download", "progress": "42", "rolled:back_x-1": "true"}, true},
		{"key of 128", map[string]string{strings.Repeat("k", 128): "v"}, true},
		{"key of 129", map[string]string{strings.Repeat("k", 129): "v"}, false},
		{"empty key", map[string]string{"": "v"}, false},
		{"key with space", map[string]string{"a b": "v"}, false},
		{"key with slash", map[string]string{"a/b": "v"}, false},
		{"value of 1024 characters (multi-byte)", map[string]string{"k": strings.Repeat("é", 1024)}, true},
		{"value of 1025", map[string]string{"k": strings.Repeat("v", 1025)}, false},
		{"empty value", map[string]string{"k": ""}, false},
		{"newline in value", map[string]string{"k": "a\nb"}, false},
		{"NUL in value", map[string]string{"k": "a\x00b"}, false},
		{"format char (ZWJ) in value", map[string]string{"k": "a\u200db"}, false},
		{"unassigned code point", map[string]string{"k": "a\U000E0080b"}, false},
		{"invalid UTF-8", map[string]string{"k": "a\xffb"}, false},
		{"spaces and punctuation", map[string]string{"detail": "signature invalid: key 'release' (sha256 ab…)"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateStatusDetails(tc.d)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidStatusDetails) {
				t.Fatalf("error %v does not match ErrInvalidStatusDetails", err)
			}
		})
	}
}

func TestRejectedErrorMatchesItsCodeOnly(t *testing.T) {
	codes := []string{CodeInvalidTopic, CodeInvalidJson, CodeInvalidRequest, CodeInvalidStateTransition,
		CodeResourceNotFound, CodeVersionMismatch, CodeInternalError, CodeRequestThrottled, CodeTerminalStateReached}
	for _, code := range codes {
		err := fmt.Errorf("wrapped: %w", rejected(opUpdate, "j1", []byte(`{"code":"`+code+`","message":"m","clientToken":"x",
			"executionState":{"status":"CANCELED","versionNumber":7}}`)))
		for _, other := range codes {
			if got := errors.Is(err, codeSentinel[other]); got != (other == code) {
				t.Errorf("%s: errors.Is(%s) = %v", code, other, got)
			}
		}
		var re *RejectedError
		if !errors.As(err, &re) || re.ExecutionState == nil || re.ExecutionState.Status != Canceled || re.ExecutionState.VersionNumber != 7 {
			t.Errorf("%s: executionState lost: %+v", code, re)
		}
		if want := code == CodeInternalError || code == CodeRequestThrottled; Retryable(err) != want {
			t.Errorf("%s: Retryable = %v", code, !want)
		}
	}
	garbage := rejected(opUpdate, "j1", []byte("<html>"))
	var re *RejectedError
	if !errors.As(garbage, &re) || Retryable(garbage) {
		t.Fatalf("undecodable rejection: %v", garbage)
	}
}

func TestForeignAndMalformedTopicsAreNotRouted(t *testing.T) {
	tp := newTopics("dev1")
	for _, tc := range []struct {
		topic, kind, request string
		accepted, ok         bool
	}{
		{"$aws/things/dev1/jobs/notify-next", "notify-next", "", false, true},
		{"$aws/things/dev1/jobs/notify", "notify", "", false, true},
		{"$aws/things/dev1/jobs/get/accepted", "reply", "$aws/things/dev1/jobs/get", true, true},
		{"$aws/things/dev1/jobs/$next/get/rejected", "reply", "$aws/things/dev1/jobs/$next/get", false, true},
		{"$aws/things/dev1/jobs/j1/update/accepted", "reply", "$aws/things/dev1/jobs/j1/update", true, true},
		{"$aws/things/dev2/jobs/notify-next", "", "", false, false},
		{"$aws/things/dev10/jobs/j1/update/accepted", "", "", false, false},
		{"$aws/things/dev1/jobs/j1/update", "", "", false, false},
		{"$aws/things/dev1/shadow/update/accepted", "", "", false, false},
		{"$aws/things/dev1/jobs/", "", "", false, false},
	} {
		kind, req, acc, ok := tp.inbound(tc.topic)
		if kind != tc.kind || req != tc.request || acc != tc.accepted || ok != tc.ok {
			t.Errorf("%s: got %q %q %v %v", tc.topic, kind, req, acc, ok)
		}
	}
}

func TestJitteredBackoffGrowsAndStaysInBounds(t *testing.T) {
	b := JitteredBackoff(100*time.Millisecond, time.Second)
	for attempt, max := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 30: time.Second} {
		distinct := map[time.Duration]bool{}
		for i := 0; i < 200; i++ {
			d := b(attempt)
			if d < max/2 || d > max {
				t.Fatalf("attempt %d: %s outside [%s, %s]", attempt, d, max/2, max)
			}
			distinct[d] = true
		}
		if len(distinct) < 10 {
			t.Fatalf("attempt %d: only %d distinct waits: no jitter", attempt, len(distinct))
		}
	}
}

func TestStandingSubscriptionsCoverEveryAnswerTopic(t *testing.T) {
	tp := newTopics("dev1")
	for topic, want := range map[string]bool{
		"$aws/things/dev1/jobs/get/accepted":             true,
		"$aws/things/dev1/jobs/start-next/rejected":      true,
		"$aws/things/dev1/jobs/$next/get/accepted":       true,
		"$aws/things/dev1/jobs/j1/update/rejected":       true,
		"$aws/things/dev1/jobs/notify-next":              true,
		"$aws/things/dev1/jobs/j1/frob/rejected":         false,
		"$aws/things/dev1/jobs/get":                      false, // never hear our own requests
		"$aws/things/dev1/jobs/j1/update":                false,
		"$aws/things/dev2/jobs/j1/update/accepted":       false,
		"$aws/things/dev1/jobs/a/b/get/accepted":         false,
		"$aws/things/dev1/jobs/j1/update/accepted/extra": false,
	} {
		if got := tp.covered(topic); got != want {
			t.Errorf("covered(%s) = %v", topic, got)
		}
	}
	if n := len(tp.subscriptions()); n > 8 {
		t.Fatalf("%d filters: AWS allows 8 per SUBSCRIBE", n)
	}
}

func TestStoreHandsOutCopiesOfPublishPackets(t *testing.T) {
	s := newCopyingStore()
	s.Open()
	defer s.Close()
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.Qos, p.MessageID, p.TopicName = 1, 7, "t"
	s.Put("o.7", p)
	p.Dup = true // the writer's packet changes; the stored one must not
	got := s.Get("o.7").(*packets.PublishPacket)
	if got == p || got.Dup || got.MessageID != 7 {
		t.Fatalf("stored packet shared or changed: %+v", got)
	}
	got.Dup = true // resume() marks its copy; the next Get is unaffected
	if again := s.Get("o.7").(*packets.PublishPacket); again == got || again.Dup {
		t.Fatal("Get returned a shared packet")
	}
	if _, ok := clonePublish(nil).(*packets.PublishPacket); ok {
		t.Fatal("nil became a packet")
	}
}
