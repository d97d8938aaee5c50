package shadow

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func fixed() time.Time { return time.Unix(1700000000, 0) }

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

const pkgTopic = "$aws/things/dev1/shadow/name/$package"

// TestUpdateGetDeleteFollowAWSVersionsAndTopics: the first update creates version 1 and is
// answered on update/accepted and update/documents (previous null); get returns state and
// version; a stale version is refused 409; delete removes it and a second get is 404.
func TestUpdateGetDeleteFollowAWSVersionsAndTopics(t *testing.T) {
	s := &Service{Now: fixed}
	out := s.Handle(pkgTopic+"/update", []byte(`{"state":{"reported":{"app":{"version":"1.0.0","attributes":{"slot":"a"}}}},"clientToken":"t1"}`))
	if len(out) != 2 || out[0].Topic != pkgTopic+"/update/accepted" || out[1].Topic != pkgTopic+"/update/documents" {
		t.Fatalf("answers: %+v", out)
	}
	acc := decode(t, out[0].Payload)
	if acc["version"] != 1.0 || acc["clientToken"] != "t1" {
		t.Fatalf("accepted: %s", out[0].Payload)
	}
	if docs := decode(t, out[1].Payload); docs["previous"] != nil || docs["current"].(map[string]any)["version"] != 1.0 {
		t.Fatalf("documents: %s", out[1].Payload)
	}
	out = s.Handle(pkgTopic+"/get", []byte(`{"clientToken":"t2"}`))
	got := decode(t, out[0].Payload)
	if out[0].Topic != pkgTopic+"/get/accepted" || got["version"] != 1.0 ||
		got["state"].(map[string]any)["reported"].(map[string]any)["app"].(map[string]any)["version"] != "1.0.0" {
		t.Fatalf("get: %s %s", out[0].Topic, out[0].Payload)
	}
	out = s.Handle(pkgTopic+"/update", []byte(`{"state":{"reported":{"app":{"version":"2.0.0"}}},"version":0}`))
	if out[0].Topic != pkgTopic+"/update/rejected" || decode(t, out[0].Payload)["code"] != 409.0 {
		t.Fatalf("stale version: %s %s", out[0].Topic, out[0].Payload)
	}
	out = s.Handle(pkgTopic+"/update", []byte(`{"state":{"reported":{"app":{"version":"2.0.0"}}},"version":1}`))
	if out[0].Topic != pkgTopic+"/update/accepted" {
		t.Fatalf("right version: %s", out[0].Payload)
	}
	// Objects merge: the attributes written before stay.
	d, _ := s.Get("dev1", PackageShadow)
	if app := d.Reported["app"].(map[string]any); app["version"] != "2.0.0" || app["attributes"].(map[string]any)["slot"] != "a" || d.Version != 2 {
		t.Fatalf("merged: %+v", d)
	}
	if out = s.Handle(pkgTopic+"/delete", nil); out[0].Topic != pkgTopic+"/delete/accepted" {
		t.Fatalf("delete: %s", out[0].Payload)
	}
	if out = s.Handle(pkgTopic+"/get", nil); out[0].Topic != pkgTopic+"/get/rejected" || decode(t, out[0].Payload)["code"] != 404.0 {
		t.Fatalf("get after delete: %s", out[0].Payload)
	}
}

// TestPackageShadowRefusesKeywordsOtherThanVersionAndAttributes: AWS rejects `description` and
// any other keyword in a reported package; other named shadows take anything.
func TestPackageShadowRefusesKeywordsOtherThanVersionAndAttributes(t *testing.T) {
	cases := []struct {
		name, topic, body string
		code              float64
	}{
		{"description", pkgTopic, `{"state":{"reported":{"app":{"version":"1","description":"x"}}}}`, 400},
		{"version number", pkgTopic, `{"state":{"reported":{"app":{"version":1}}}}`, 400},
		{"attribute number", pkgTopic, `{"state":{"reported":{"app":{"attributes":{"a":1}}}}}`, 400},
		{"package not object", pkgTopic, `{"state":{"reported":{"app":"1.0"}}}`, 400},
		{"bad package name", pkgTopic, `{"state":{"reported":{"a b":{"version":"1"}}}}`, 400},
		{"no state", pkgTopic, `{"reported":{}}`, 400},
		{"not json", pkgTopic, `{`, 400},
		{"too deep", "$aws/things/dev1/shadow/name/cfg", `{"state":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}}}}`, 400},
		{"too large", "$aws/things/dev1/shadow/name/cfg", `{"state":{"desired":{"a":"` + strings.Repeat("x", MaxStateSize) + `"}}}`, 413},
		{"bad name", "$aws/things/dev1/shadow/name/a$b", `{"state":{"desired":{}}}`, 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := &Service{Now: fixed}
			out := s.Handle(c.topic+"/update", []byte(c.body))
			if len(out) != 1 || !strings.HasSuffix(out[0].Topic, "/update/rejected") || decode(t, out[0].Payload)["code"] != c.code {
				t.Fatalf("got %+v", out)
			}
			if _, ok := s.Get("dev1", PackageShadow); ok {
				t.Fatal("a refused update was stored")
			}
		})
	}
	s := &Service{Now: fixed}
	if out := s.Handle("$aws/things/dev1/shadow/name/cfg/update", []byte(`{"state":{"reported":{"description":"ok"}}}`)); !strings.HasSuffix(out[0].Topic, "/accepted") {
		t.Fatalf("an ordinary named shadow: %s", out[0].Payload)
	}
}

// TestDesiredDifferentFromReportedPublishesDelta: update/delta carries only what differs.
func TestDesiredDifferentFromReportedPublishesDelta(t *testing.T) {
	s := &Service{Now: fixed}
	s.Handle("$aws/things/dev1/shadow/name/cfg/update", []byte(`{"state":{"reported":{"a":1,"b":2}}}`))
	out := s.Handle("$aws/things/dev1/shadow/name/cfg/update", []byte(`{"state":{"desired":{"a":1,"b":3}}}`))
	if len(out) != 3 || out[2].Topic != "$aws/things/dev1/shadow/name/cfg/update/delta" {
		t.Fatalf("answers: %+v", out)
	}
	st := decode(t, out[2].Payload)["state"].(map[string]any)
	if len(st) != 1 || st["b"] != 3.0 {
		t.Fatalf("delta: %s", out[2].Payload)
	}
	// null removes a key; reported null removes the section.
	s.Handle("$aws/things/dev1/shadow/name/cfg/update", []byte(`{"state":{"reported":null,"desired":{"a":null}}}`))
	d, _ := s.Get("dev1", "cfg")
	if d.Reported != nil || len(d.Desired) != 1 {
		t.Fatalf("after nulls: %+v", d)
	}
}

// TestServiceAnswersAreNotRequests: the broker's subscription sees the service's own answers.
func TestServiceAnswersAreNotRequests(t *testing.T) {
	for topic, want := range map[string]bool{
		pkgTopic + "/update":           true,
		pkgTopic + "/get":              true,
		"$aws/things/dev1/shadow/get":  true,
		pkgTopic + "/update/accepted":  false,
		pkgTopic + "/update/documents": false,
		"$aws/things/dev1/jobs/get":    false,
	} {
		if IsRequest(topic) != want {
			t.Errorf("IsRequest(%s) = %v", topic, !want)
		}
	}
}
