package jobsim

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

var knownCodes = map[string]bool{
	CodeInvalidTopic: true, CodeInvalidJSON: true, CodeInvalidRequest: true, CodeInvalidStateTransition: true,
	CodeResourceNotFound: true, CodeVersionMismatch: true, CodeInternalError: true, CodeRequestThrottled: true,
	CodeTerminalStateReached: true,
}

// FuzzDeviceRequest throws arbitrary topics and payloads at the device plane: it must never panic,
// must answer every request exactly once on <topic>/accepted or /rejected with JSON, reject only
// with AWS's codes, and leave service topics unanswered.
func FuzzDeviceRequest(f *testing.F) {
	for _, seed := range []struct{ rest, payload string }{
		{"get", `{}`},
		{"start-next", `{"statusDetails":{"stage":"download"},"stepTimeoutInMinutes":5,"clientToken":"a"}`},
		{"$next/get", `{"executionNumber":1,"includeJobDocument":false}`},
		{"j/get", `{"executionNumber":"1"}`},
		{"j/update", `{"status":"IN_PROGRESS","expectedVersion":"2","includeJobExecutionState":true}`},
		{"j/update", `{"status":"SUCCEEDED","statusDetails":{"k":"\u0000"}}`},
		{"j/update/accepted", `{}`},
		{"notify-next", `{}`},
		{"x/y/z", "\xff\xfe"},
		{"j/update", `{"status":1,"clientToken":{"a":1}}`},
	} {
		f.Add(seed.rest, []byte(seed.payload))
	}
	s, err := Start(context.Background(), Config{})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	if _, err := s.CreateJob(CreateJobInput{JobID: "j", Targets: []string{"dev1"},
		Document:                 `{"u":"${aws:iot:s3-presigned-url:https://s3.us-east-1.amazonaws.com/b/k}"}`,
		JobExecutionsRetryConfig: &RetryConfig{CriteriaList: []RetryCriteria{{FailureType: "ALL", NumberOfRetries: 10}}}}); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, rest string, payload []byte) {
		topic := "$aws/things/dev1/jobs/" + rest
		s.opMu.Lock()
		out, _ := s.handle(topic, payload)
		s.opMu.Unlock()
		if isServiceTopic(rest) {
			if len(out) != 0 {
				t.Fatalf("answered a service topic %q", topic)
			}
			return
		}
		var replies int
		for _, m := range out {
			var body map[string]any
			if err := json.Unmarshal(m.payload, &body); err != nil {
				t.Fatalf("%s: not JSON: %q", m.topic, m.payload)
			}
			switch {
			case m.reply && m.topic == topic+"/accepted":
				replies++
			case m.reply && m.topic == topic+"/rejected":
				replies++
				if c, _ := body["code"].(string); !knownCodes[c] {
					t.Fatalf("unknown code in %s", m.payload)
				}
			case !m.reply && strings.HasPrefix(m.topic, "$aws/things/dev1/jobs/notify"):
			default:
				t.Fatalf("unexpected message on %s", m.topic)
			}
		}
		if replies != 1 {
			t.Fatalf("%d answers to %q", replies, topic)
		}
	})
}
