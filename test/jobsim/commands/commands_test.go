package commands

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// TestDeviceStatusRulesFollowAWS: IN_PROGRESS may be followed by SUCCEEDED; a terminal status
// stays; a bad reasonCode or status is refused on /rejected; the cloud's timeout is not terminal.
func TestDeviceStatusRulesFollowAWS(t *testing.T) {
	clk := &clock{time.Unix(1700000000, 0)}
	s := &Service{Region: "eu-west-1", Account: "1", Now: clk.now}
	if _, err := s.CreateCommand("rollback", []byte(`{"action":"rollback"}`), "application/json"); err != nil {
		t.Fatal(err)
	}
	ex, msgs, err := s.Start("rollback", "dev1", 5*time.Second)
	if err != nil || len(msgs) != 1 || msgs[0].Topic != RequestTopic("dev1", ex.ExecutionID) || string(msgs[0].Payload) != `{"action":"rollback"}` {
		t.Fatalf("start: %+v %v", msgs, err)
	}
	resp := ResponseTopic("dev1", ex.ExecutionID)
	ack := func(body string) (string, map[string]any) {
		out := s.Handle(resp, []byte(body))
		var m map[string]any
		_ = json.Unmarshal(out[0].Payload, &m)
		return out[0].Topic, m
	}
	for _, bad := range []string{`{"status":"DONE"}`, `{"status":"FAILED","statusReason":{"reasonCode":"lower case"}}`, `{`} {
		if topic, _ := ack(bad); !strings.HasSuffix(topic, "/response/rejected/json") {
			t.Errorf("%s accepted", bad)
		}
	}
	clk.t = clk.t.Add(6 * time.Second)
	if got, _ := s.Get(ex.ExecutionID); got.Status != TimedOut || got.StatusReason.ReasonCode != "$NO_RESPONSE_FROM_DEVICE" {
		t.Fatalf("after the timeout: %+v", got)
	}
	if topic, _ := ack(`{"status":"IN_PROGRESS"}`); !strings.HasSuffix(topic, "/response/accepted/json") {
		t.Fatal("a device may still answer after the cloud's TIMED_OUT")
	}
	if topic, m := ack(`{"status":"SUCCEEDED","result":{"slot":{"s":"a"}}}`); !strings.HasSuffix(topic, "/accepted/json") || m["status"] != Succeeded {
		t.Fatalf("succeeded: %s %v", topic, m)
	}
	if topic, m := ack(`{"status":"FAILED","statusReason":{"reasonCode":"LATE"}}`); !strings.HasSuffix(topic, "/rejected/json") || m["error"] != "TerminalStateReached" {
		t.Fatalf("after a terminal status: %s %v", topic, m)
	}
	if got, _ := s.Get(ex.ExecutionID); got.Status != Succeeded || got.CompletedAt == 0 {
		t.Fatalf("stored: %+v", got)
	}
	if IsResponse(resp+"/accepted/json") || !IsResponse(resp) {
		t.Fatal("IsResponse confuses the service's acknowledgements with a response")
	}
	if out := s.Handle(ResponseTopic("dev2", ex.ExecutionID), []byte(`{"status":"SUCCEEDED"}`)); !strings.HasSuffix(out[0].Topic, "/rejected/json") {
		t.Fatal("another thing answered this thing's execution")
	}
}
