package conformance

import (
	"encoding/json"
	"testing"
)

// environments the whole table runs in.
var environments = []struct {
	name  string
	start func(t *testing.T) *env
}{
	{"embedded-tcp", startEmbeddedTCP},
	{"embedded-mtls", startEmbeddedMTLS},
	{"mosquitto", startMosquitto},
}

func TestConformance(t *testing.T) {
	for _, e := range environments {
		t.Run(e.name, func(t *testing.T) {
			en := e.start(t)
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) { c.run(&fx{env: en, t: t}) })
			}
		})
	}
}

// jsonHas reports whether the JSON object raw has key with the string value want.
func jsonHas(raw json.RawMessage, key, want string) bool {
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return false
	}
	s, _ := m[key].(string)
	return s == want
}
