package jobs

import (
	"context"
	"strings"
	"testing"
)

// FuzzInbound feeds arbitrary topics and payloads to the router, as a hostile or buggy broker
// could: it must never panic, never hand another thing's message to a request or to the event
// callbacks, and never answer a request with a message from another topic.
func FuzzInbound(f *testing.F) {
	for _, s := range []struct{ topic, payload string }{
		{"$aws/things/dev1/jobs/j1/update/accepted", `{"clientToken":"tok","executionState":{"status":"IN_PROGRESS","versionNumber":2}}`},
		{"$aws/things/dev1/jobs/j1/update/rejected", `{"clientToken":"tok","code":"VersionMismatch","executionState":{"versionNumber":"x"}}`},
		{"$aws/things/dev1/jobs/notify-next", `{"timestamp":1e300,"execution":{"jobId":"j","jobDocument":[1,2]}}`},
		{"$aws/things/dev1/jobs/notify", `{"timestamp":-1,"jobs":{"QUEUED":[{"jobId":7}]}}`},
		{"$aws/things/dev2/jobs/j1/update/accepted", `{"clientToken":"tok"}`},
		{"$aws/things/dev1/jobs//accepted", `{"clientToken":"tok"}`},
		{"$aws/things/dev1/jobs/notify-next", "\xff\xfe"},
	} {
		f.Add(s.topic, []byte(s.payload))
	}
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		c := &Client{cfg: Config{}, log: testLogger(), t: newTopics("dev1"), waiters: map[string]*waiter{},
			rawWaiters: map[string]*waiter{}, evSig: make(chan struct{}, 1)}
		c.ctx, c.cancel = context.WithCancel(context.Background())
		defer c.cancel()
		const req = "$aws/things/dev1/jobs/j1/update"
		w := &waiter{request: req, ch: make(chan reply, 1)}
		c.waiters["tok"] = w
		raw := &waiter{request: req, ch: make(chan reply, 1)}
		c.rawWaiters[req] = raw

		c.route(inMsg{topic: topic, payload: payload})

		for _, ch := range []chan reply{w.ch, raw.ch} {
			select {
			case r := <-ch:
				if r.topic != req+"/accepted" && r.topic != req+"/rejected" {
					t.Fatalf("request %s answered by %q", req, r.topic)
				}
			default:
			}
		}
		if c.evNext != nil || c.evNotify != nil {
			if !strings.HasPrefix(topic, "$aws/things/dev1/jobs/") {
				t.Fatalf("event from foreign topic %q accepted", topic)
			}
		}
	})
}
