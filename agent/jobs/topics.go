package jobs

import (
	"fmt"
	"strings"
)

// Topic names below "$aws/things/<thing>/jobs/".
const (
	NextJobID     = "$next"
	topicRoot     = "$aws/things/"
	opGetPending  = "GetPendingJobExecutions"
	opStartNext   = "StartNextPendingJobExecution"
	opDescribe    = "DescribeJobExecution"
	opUpdate      = "UpdateJobExecution"
	suffixNotify  = "notify"
	suffixNext    = "notify-next"
	replyAccepted = "accepted"
	replyRejected = "rejected"
)

// validThingName: 1–128 of [a-zA-Z0-9:_-] (AWS's pattern), which also keeps MQTT wildcards and
// level separators out of topics built from it.
func validThingName(s string) bool {
	if len(s) < 1 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == ':' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// checkJobID accepts AWS's job id pattern [a-zA-Z0-9_-]{1,64}, and "$next" when allowed; anything else
// could inject topic levels or wildcards.
func checkJobID(id string, allowNext bool) error {
	if allowNext && id == NextJobID {
		return nil
	}
	ok := len(id) >= 1 && len(id) <= 64
	for i := 0; ok && i < len(id); i++ {
		c := id[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
	}
	if !ok {
		return fmt.Errorf("%w: %.70q", ErrInvalidJobID, id)
	}
	return nil
}

// ValidJobID refuses a job id outside AWS's pattern [a-zA-Z0-9_-]{1,64}. Only a broker that is
// not AWS can send one; nothing can be reported on it (its topic would not be one level), so a
// caller refuses it on receipt, for good.
func ValidJobID(id string) error { return checkJobID(id, false) }

// topics names the thing's Jobs topics.
type topics struct {
	prefix string // "$aws/things/<thing>/jobs/"
}

func newTopics(thing string) topics { return topics{prefix: topicRoot + thing + "/jobs/"} }

func (t topics) getPending() string         { return t.prefix + "get" }
func (t topics) startNext() string          { return t.prefix + "start-next" }
func (t topics) describe(job string) string { return t.prefix + job + "/get" }
func (t topics) update(job string) string   { return t.prefix + job + "/update" }
func (t topics) raw(suffix string) string   { return t.prefix + suffix }

// subscriptions are the filters subscribed on every connect: the two events and the answers of the
// four requests. "+" matches "$next" below the first level. Six filters: AWS allows 8 per SUBSCRIBE.
// The request topics themselves are never subscribed, so the device does not hear its own requests.
func (t topics) subscriptions() []string {
	return []string{
		t.prefix + suffixNotify,
		t.prefix + suffixNext,
		t.prefix + "get/+",
		t.prefix + "start-next/+",
		t.prefix + "+/get/+",
		t.prefix + "+/update/+",
	}
}

// inbound classifies a received topic. kind is "notify", "notify-next" or "reply"; for a reply,
// request is the request topic it answers and accepted tells which outcome. ok is false for a topic
// that is not this thing's (a broker or ACL bug must not make us act on another device's job).
func (t topics) inbound(topic string) (kind, request string, accepted, ok bool) {
	rest, found := strings.CutPrefix(topic, t.prefix)
	if !found || rest == "" {
		return "", "", false, false
	}
	switch rest {
	case suffixNotify, suffixNext:
		return rest, "", false, true
	}
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 {
		return "", "", false, false
	}
	switch rest[i+1:] {
	case replyAccepted:
		return "reply", t.prefix + rest[:i], true, true
	case replyRejected:
		return "reply", t.prefix + rest[:i], false, true
	}
	return "", "", false, false
}

// covered reports whether a standing subscription matches topic.
func (t topics) covered(topic string) bool {
	for _, f := range t.subscriptions() {
		if matchFilter(f, topic) {
			return true
		}
	}
	return false
}

// matchFilter is MQTT topic matching for filters with "+" (no "#" is used here).
func matchFilter(filter, topic string) bool {
	fs, ts := strings.Split(filter, "/"), strings.Split(topic, "/")
	if len(fs) != len(ts) {
		return false
	}
	for i := range fs {
		if fs[i] != "+" && fs[i] != ts[i] {
			return false
		}
	}
	return true
}
