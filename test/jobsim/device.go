package jobsim

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"time"
)

// The device plane: topic routing, request decoding and reply rendering, shared by the embedded
// broker and the external-broker attachment. Nothing here blocks.

const topicPrefix = "$aws/things/"

// outMsg is one MQTT message the service sends.
type outMsg struct {
	thing   string
	topic   string
	payload []byte
	reply   bool // an /accepted or /rejected answer to the thing's own request
}

// splitJobsTopic returns the thing and the part after "jobs/" of $aws/things/<thing>/jobs/<rest>.
func splitJobsTopic(topic string) (thing, rest string, ok bool) {
	if !strings.HasPrefix(topic, topicPrefix) {
		return "", "", false
	}
	thing, rest, ok = strings.Cut(topic[len(topicPrefix):], "/")
	if !ok || thing == "" {
		return "", "", false
	}
	rest, ok = strings.CutPrefix(rest, "jobs/")
	return thing, rest, ok
}

// isServiceTopic reports topics the service itself publishes (answers and notifications): the
// request subscriptions see them too and must not treat them as requests.
func isServiceTopic(rest string) bool {
	return rest == "notify" || rest == "notify-next" ||
		strings.HasSuffix(rest, "/accepted") || strings.HasSuffix(rest, "/rejected")
}

// request is a decoded device request body.
type request struct {
	raw         map[string]json.RawMessage
	clientToken *string
}

// handle answers one device publish; it returns the messages to send (reply first, then any
// notifications) and the events to report.
func (s *Sim) handle(topic string, payload []byte) ([]outMsg, []Event) {
	thing, rest, ok := splitJobsTopic(topic)
	if !ok || isServiceTopic(rest) {
		return nil, nil
	}
	h := &exchange{s: s, thing: thing, topic: topic}
	h.dispatch(rest, payload)
	return h.out, h.events
}

type exchange struct {
	s      *Sim
	thing  string
	topic  string
	token  *string
	op     string
	out    []outMsg
	events []Event
}

func (h *exchange) dispatch(rest string, payload []byte) {
	req, reqErr := decodeRequest(payload)
	h.token = req.clientToken // echoed on every answer, rejections included
	parts := strings.Split(rest, "/")
	switch {
	case rest == "get":
		h.op = "GetPendingJobExecutions"
	case rest == "start-next":
		h.op = "StartNextPendingJobExecution"
	case len(parts) == 2 && parts[1] == "get":
		h.op = "DescribeJobExecution " + parts[0]
	case len(parts) == 2 && parts[1] == "update":
		h.op = "UpdateJobExecution " + parts[0]
	default:
		h.reject(rejectf(CodeInvalidTopic, "Topic "+h.topic+" does not map to a Jobs API"))
		return
	}
	if code, n := h.s.injected(h.thing); code != "" {
		h.reject(rejectf(code, "injected fault ("+strconv.Itoa(n)+" left)"))
		return
	}
	if reqErr != nil {
		h.reject(reqErr)
		return
	}
	if req.clientToken != nil && len(*req.clientToken) > maxClientToken {
		h.reject(rejectf(CodeInvalidRequest, "clientToken must be at most 64 bytes"))
		return
	}
	switch {
	case rest == "get":
		h.getPending()
	case rest == "start-next":
		h.startNext(req)
	case parts[1] == "get":
		h.describe(parts[0], req)
	default:
		h.update(parts[0], req)
	}
}

func decodeRequest(payload []byte) (request, *deviceError) {
	var r request
	if !json.Valid(payload) {
		return r, rejectf(CodeInvalidJSON, "Payload is not valid JSON")
	}
	if err := json.Unmarshal(payload, &r.raw); err != nil {
		return r, rejectf(CodeInvalidRequest, "Payload must be a JSON object")
	}
	if v, ok := r.raw["clientToken"]; ok {
		var t string
		if err := json.Unmarshal(v, &t); err != nil {
			return r, rejectf(CodeInvalidRequest, "clientToken must be a string")
		}
		r.clientToken = &t
	}
	return r, nil
}

// long reads an integer field; AWS SDKs send expectedVersion as a number or as a decimal string.
func (r request) long(name string) (int64, bool, *deviceError) {
	v, ok := r.raw[name]
	if !ok || string(v) == "null" {
		return 0, false, nil
	}
	var n json.Number
	if err := json.Unmarshal(v, &n); err == nil {
		if i, err := n.Int64(); err == nil {
			return i, true, nil
		}
	} else {
		var s string
		if json.Unmarshal(v, &s) == nil {
			if i, err := strconv.ParseInt(s, 10, 64); err == nil {
				return i, true, nil
			}
		}
	}
	return 0, false, rejectf(CodeInvalidRequest, name+" must be an integer")
}

func (r request) boolean(name string, def bool) (bool, *deviceError) {
	v, ok := r.raw[name]
	if !ok || string(v) == "null" {
		return def, nil
	}
	var b bool
	if err := json.Unmarshal(v, &b); err != nil {
		return false, rejectf(CodeInvalidRequest, name+" must be a boolean")
	}
	return b, nil
}

// details reads and validates statusDetails; nil when absent.
func (r request) details() (map[string]string, *deviceError) {
	v, ok := r.raw["statusDetails"]
	if !ok || string(v) == "null" {
		return nil, nil
	}
	d := map[string]string{}
	if err := json.Unmarshal(v, &d); err != nil {
		return nil, rejectf(CodeInvalidRequest, "statusDetails must be a map of strings to strings")
	}
	if msg, ok := validDetails(d); !ok {
		return nil, rejectf(CodeInvalidRequest, msg)
	}
	return d, nil
}

func (r request) stepTimeout() (int64, *deviceError) {
	n, ok, derr := r.long("stepTimeoutInMinutes")
	if derr != nil {
		return 0, derr
	}
	if ok && (n < 1 || n > maxStepTimeout) {
		return 0, rejectf(CodeInvalidRequest, "stepTimeoutInMinutes must be 1 to 10080")
	}
	return n, nil
}

func (h *exchange) getPending() {
	ip, q := h.s.model.getPending(h.thing)
	body := map[string]any{"inProgressJobs": h.summaries(ip), "queuedJobs": h.summaries(q)}
	h.accept(body)
}

func (h *exchange) summaries(l []execSnap) []map[string]any {
	out := []map[string]any{}
	for _, e := range l {
		out = append(out, summary(e))
	}
	return out
}

func summary(e execSnap) map[string]any {
	m := map[string]any{"jobId": e.JobID, "queuedAt": unix(e.QueuedAt), "lastUpdatedAt": unix(e.UpdatedAt),
		"versionNumber": e.Version, "executionNumber": e.Number}
	if !e.StartedAt.IsZero() {
		m["startedAt"] = unix(e.StartedAt)
	}
	return m
}

func (h *exchange) startNext(req request) {
	d, derr := req.details()
	if derr != nil {
		h.reject(derr)
		return
	}
	st, derr := req.stepTimeout()
	if derr != nil {
		h.reject(derr)
		return
	}
	e, eff := h.s.model.startNext(h.thing, d, st)
	defer h.s.collect(eff, &h.out, &h.events) // notifications follow the answer
	body := map[string]any{}
	if e != nil {
		x, derr := h.s.execution(*e, true, true)
		if derr != nil {
			h.reject(derr)
			return
		}
		body["execution"] = x
	}
	h.accept(body)
}

func (h *exchange) describe(jobID string, req request) {
	if jobID != "$next" && !jobIDPattern.MatchString(jobID) {
		h.reject(rejectf(CodeInvalidRequest, "jobId must match [a-zA-Z0-9_-]{1,64} or be $next"))
		return
	}
	num, _, derr := req.long("executionNumber")
	if derr != nil {
		h.reject(derr)
		return
	}
	withDoc, derr := req.boolean("includeJobDocument", true)
	if derr != nil {
		h.reject(derr)
		return
	}
	e, derr := h.s.model.describe(h.thing, jobID, num)
	if derr != nil {
		h.reject(derr)
		return
	}
	body := map[string]any{}
	if e != nil {
		x, derr := h.s.execution(*e, withDoc, true)
		if derr != nil {
			h.reject(derr)
			return
		}
		body["execution"] = x
	}
	h.accept(body)
}

func (h *exchange) update(jobID string, req request) {
	if !jobIDPattern.MatchString(jobID) {
		h.reject(rejectf(CodeInvalidRequest, "jobId must match [a-zA-Z0-9_-]{1,64}"))
		return
	}
	var r updateReq
	v, ok := req.raw["status"]
	if !ok || json.Unmarshal(v, &r.status) != nil {
		h.reject(rejectf(CodeInvalidRequest, "status is required"))
		return
	}
	switch r.status {
	case StatusInProgress, StatusSucceeded, StatusFailed, StatusRejected:
	default:
		h.reject(rejectf(CodeInvalidRequest, "status must be IN_PROGRESS, SUCCEEDED, FAILED or REJECTED"))
		return
	}
	var derr *deviceError
	if r.details, derr = req.details(); derr != nil {
		h.reject(derr)
		return
	}
	if r.expectedVersion, _, derr = req.long("expectedVersion"); derr != nil {
		h.reject(derr)
		return
	}
	if r.executionNumber, _, derr = req.long("executionNumber"); derr != nil {
		h.reject(derr)
		return
	}
	if r.stepTimeout, derr = req.stepTimeout(); derr != nil {
		h.reject(derr)
		return
	}
	withState, derr := req.boolean("includeJobExecutionState", false)
	if derr != nil {
		h.reject(derr)
		return
	}
	withDoc, derr := req.boolean("includeJobDocument", false)
	if derr != nil {
		h.reject(derr)
		return
	}
	e, eff, derr := h.s.model.update(h.thing, jobID, r)
	if derr != nil {
		h.reject(derr)
		return
	}
	body := map[string]any{}
	if withState {
		body["executionState"] = state(e)
	}
	if withDoc {
		doc, derr := h.s.expand(e)
		if derr != nil {
			h.reject(derr)
			h.s.collect(eff, &h.out, &h.events)
			return
		}
		body["jobDocument"] = doc
	}
	h.accept(body)
	h.s.collect(eff, &h.out, &h.events)
}

func state(e execSnap) map[string]any {
	m := map[string]any{"status": e.Status, "versionNumber": e.Version}
	if e.Details != nil {
		m["statusDetails"] = e.Details
	}
	return m
}

// execution renders a JobExecution for the device plane; the document is expanded afresh.
func (s *Sim) execution(e execSnap, withDoc, withThing bool) (map[string]any, *deviceError) {
	m := map[string]any{"jobId": e.JobID, "status": e.Status, "queuedAt": unix(e.QueuedAt),
		"lastUpdatedAt": unix(e.UpdatedAt), "versionNumber": e.Version, "executionNumber": e.Number}
	if withThing {
		m["thingName"] = e.Thing
	}
	if e.Details != nil {
		m["statusDetails"] = e.Details
	}
	if !e.StartedAt.IsZero() {
		m["startedAt"] = unix(e.StartedAt)
	}
	if left := s.model.secondsLeftAt(e.Deadline); left > 0 {
		m["approximateSecondsBeforeTimedOut"] = left
	}
	if withDoc {
		doc, derr := s.expand(e)
		if derr != nil {
			return nil, derr
		}
		m["jobDocument"] = doc
	}
	return m, nil
}

// expand returns the job document with every presigned placeholder replaced by a fresh URL.
func (s *Sim) expand(e execSnap) (json.RawMessage, *deviceError) {
	doc, err := s.expandUploads(e.Document, e)
	if err == nil {
		doc, err = s.presigner.ExpandPlaceholders(doc, e.Expires)
	}
	if err != nil || !json.Valid([]byte(doc)) {
		return nil, rejectf(CodeInternalError, "cannot presign the job document's URLs")
	}
	return json.RawMessage(doc), nil
}

func (h *exchange) accept(body map[string]any) {
	if h.token != nil {
		body["clientToken"] = *h.token
	}
	body["timestamp"] = h.s.now().Unix()
	h.out = append([]outMsg{{thing: h.thing, topic: h.topic + "/accepted", payload: marshal(body), reply: true}}, h.out...)
	h.events = append(h.events, Event{Time: h.s.now(), Kind: EventDeviceRequest, Thing: h.thing, Detail: h.op})
}

func (h *exchange) reject(e *deviceError) {
	body := map[string]any{"code": e.code, "message": e.msg, "timestamp": h.s.now().Unix()}
	if h.token != nil {
		body["clientToken"] = *h.token
	}
	if e.state != nil {
		body["executionState"] = state(*e.state)
	}
	h.out = append([]outMsg{{thing: h.thing, topic: h.topic + "/rejected", payload: marshal(body), reply: true}}, h.out...)
	ev := Event{Time: h.s.now(), Kind: EventRejected, Thing: h.thing, Detail: strings.TrimSpace(h.op + " " + e.code + ": " + e.msg)}
	if e.state != nil {
		ev.Status = e.state.Status
		ev.JobID, ev.ExecutionNumber = e.state.JobID, e.state.Number
	}
	h.events = append(h.events, ev)
}

// collect turns model effects into messages (notifications after the reply) and events.
func (s *Sim) collect(eff effects, out *[]outMsg, events *[]Event) {
	*events = append(*events, eff.events...)
	for _, n := range eff.notices {
		body := map[string]any{"timestamp": s.now().Unix()}
		if n.next {
			kind := EventNotifyNext
			ev := Event{Time: s.now(), Kind: kind, Thing: n.thing, Detail: "nothing pending"}
			if n.head != nil {
				x, derr := s.execution(*n.head, true, false)
				if derr != nil {
					s.log.Error("notify-next not sent", "thing", n.thing, "err", derr)
					continue
				}
				body["execution"] = x
				ev.JobID, ev.ExecutionNumber, ev.Status, ev.Detail = n.head.JobID, n.head.Number, n.head.Status, "next job"
			}
			*out = append(*out, outMsg{thing: n.thing, topic: topicPrefix + n.thing + "/jobs/notify-next", payload: marshal(body)})
			*events = append(*events, ev)
			continue
		}
		jobs := map[string][]map[string]any{}
		for _, e := range n.pending {
			jobs[e.Status] = append(jobs[e.Status], summary(e))
		}
		body["jobs"] = jobs
		*out = append(*out, outMsg{thing: n.thing, topic: topicPrefix + n.thing + "/jobs/notify", payload: marshal(body)})
		*events = append(*events, Event{Time: s.now(), Kind: EventNotify, Thing: n.thing,
			Detail: strconv.Itoa(len(n.pending)) + " pending"})
	}
	if eff.timers {
		s.kick()
	}
}

// marshal encodes without HTML escaping, so presigned URLs keep their '&' as AWS sends them.
func marshal(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic("jobsim: cannot encode reply: " + err.Error()) // only maps of strings and numbers reach here
	}
	return bytes.TrimRight(b.Bytes(), "\n")
}

func (m *model) secondsLeftAt(d time.Time) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.secondsLeft(d)
}
