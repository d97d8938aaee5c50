// Package shadow emulates AWS IoT Device Shadow's MQTT API for named shadows (and the classic,
// unnamed one): get, update and delete with /accepted and /rejected answers, update/documents and
// update/delta, document versions with optimistic locking, AWS's error codes and size limits, and
// the reserved `$package` shadow of the Software Package Catalog, whose reported packages may hold
// only `version` and `attributes`.
//
// The service is a pure, lock-protected model: Handle turns one device publish into the messages
// to send, Update is the control plane's (and the Jobs service's) write; the broker front end
// publishes what they return.
package shadow

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"
)

// PackageShadow is the Software Package Catalog's reserved named shadow.
const PackageShadow = "$package"

// Limits (AWS IoT Device Shadow service quotas).
const (
	MaxStateSize = 8 * 1024   // the desired and reported sections together, metadata excluded
	MaxDepth     = 6          // levels of nesting within desired or reported
	MaxPayload   = 128 * 1024 // an MQTT request
)

// Error codes AWS answers on /rejected.
const (
	CodeBadRequest      = 400
	CodeUnauthorized    = 401
	CodeNotFound        = 404
	CodeConflict        = 409
	CodePayloadTooLarge = 413
	CodeUnsupported     = 415
	CodeInternal        = 500
)

// Error is a rejected request.
type Error struct {
	Code    int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("%d: %s", e.Code, e.Message) }

func errorf(code int, format string, a ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, a...)}
}

// Message is one MQTT message the service publishes.
type Message struct {
	Thing   string
	Topic   string
	Payload []byte
	Reply   bool // an /accepted or /rejected answer to the thing's own request
}

// Document is a stored shadow.
type Document struct {
	Desired  map[string]any
	Reported map[string]any
	Metadata map[string]any // {"desired":…,"reported":…} with {"timestamp":N} leaves
	Version  int64
}

// Service holds every thing's shadows.
type Service struct {
	Now func() time.Time // nil = time.Now

	mu     sync.Mutex
	things map[string]map[string]*Document // thing → shadow name ("" classic) → document
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,64}$`)

// ValidName reports whether name may name a shadow: AWS's pattern, or a reserved name.
func ValidName(name string) bool { return name == PackageShadow || nameRE.MatchString(name) }

// Topic returns the request topic prefix of a shadow ("" name: the classic shadow).
func Topic(thing, name string) string {
	if name == "" {
		return "$aws/things/" + thing + "/shadow"
	}
	return "$aws/things/" + thing + "/shadow/name/" + name
}

// split parses $aws/things/<T>/shadow[/name/<N>]/<op>[/<suffix>].
func split(topic string) (thing, name, op string, ok bool) {
	rest, found := strings.CutPrefix(topic, "$aws/things/")
	if !found {
		return "", "", "", false
	}
	thing, rest, found = strings.Cut(rest, "/shadow/")
	if !found || thing == "" {
		return "", "", "", false
	}
	if r, named := strings.CutPrefix(rest, "name/"); named {
		name, rest, found = strings.Cut(r, "/")
		if !found || name == "" {
			return "", "", "", false
		}
	}
	return thing, name, rest, true
}

// IsRequest reports whether topic is a device's shadow request (not one of the service's own
// answers, which a broker subscription sees too).
func IsRequest(topic string) bool {
	_, _, op, ok := split(topic)
	return ok && (op == "get" || op == "update" || op == "delete")
}

// Handle answers one device publish on a shadow request topic.
func (s *Service) Handle(topic string, payload []byte) []Message {
	thing, name, op, ok := split(topic)
	if !ok || !(op == "get" || op == "update" || op == "delete") {
		return nil
	}
	var token *string
	var body map[string]json.RawMessage
	reject := func(e *Error) []Message {
		m := map[string]any{"code": e.Code, "message": e.Message, "timestamp": s.now().Unix()}
		if token != nil {
			m["clientToken"] = *token
		}
		return []Message{{Thing: thing, Topic: topic + "/rejected", Payload: marshal(m), Reply: true}}
	}
	if !ValidName(name) {
		return reject(errorf(CodeBadRequest, "Invalid shadow name"))
	}
	if len(payload) > MaxPayload {
		return reject(errorf(CodePayloadTooLarge, "The payload exceeds the maximum size allowed"))
	}
	if len(bytes.TrimSpace(payload)) > 0 || op == "update" {
		if err := json.Unmarshal(payload, &body); err != nil {
			return reject(errorf(CodeBadRequest, "Invalid JSON"))
		}
		if raw, ok := body["clientToken"]; ok {
			var t string
			if json.Unmarshal(raw, &t) != nil || len(t) > 64 {
				return reject(errorf(CodeBadRequest, "Invalid clientToken"))
			}
			token = &t
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch op {
	case "get":
		d := s.things[thing][name]
		if d == nil {
			return reject(errorf(CodeNotFound, "No shadow exists with name: '%s'", shadowLabel(thing, name)))
		}
		m := d.render(true)
		m["timestamp"] = s.now().Unix()
		if token != nil {
			m["clientToken"] = *token
		}
		return []Message{{Thing: thing, Topic: topic + "/accepted", Payload: marshal(m), Reply: true}}
	case "delete":
		d := s.things[thing][name]
		if d == nil {
			return reject(errorf(CodeNotFound, "No shadow exists with name: '%s'", shadowLabel(thing, name)))
		}
		if raw, ok := body["version"]; ok {
			var v int64
			if json.Unmarshal(raw, &v) != nil {
				return reject(errorf(CodeBadRequest, "Invalid version"))
			}
			if v != d.Version {
				return reject(errorf(CodeConflict, "Version conflict"))
			}
		}
		delete(s.things[thing], name)
		m := map[string]any{"version": d.Version, "timestamp": s.now().Unix()}
		if token != nil {
			m["clientToken"] = *token
		}
		return []Message{{Thing: thing, Topic: topic + "/accepted", Payload: marshal(m), Reply: true}}
	}
	out, err := s.update(thing, name, body, token)
	if err != nil {
		return reject(err)
	}
	return out
}

// Update writes a shadow as the control plane does (UpdateThingShadow, or the Jobs service writing
// `$package` at SUCCEEDED) and returns what subscribers hear.
func (s *Service) Update(thing, name string, payload []byte) ([]Message, error) {
	var body map[string]json.RawMessage
	if err := json.Unmarshal(payload, &body); err != nil {
		return nil, errorf(CodeBadRequest, "Invalid JSON")
	}
	if !ValidName(name) {
		return nil, errorf(CodeBadRequest, "Invalid shadow name")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out, err := s.update(thing, name, body, nil)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Get returns a copy of a shadow, false if there is none.
func (s *Service) Get(thing, name string) (Document, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.things[thing][name]
	if d == nil {
		return Document{}, false
	}
	return Document{Desired: clone(d.Desired), Reported: clone(d.Reported), Metadata: clone(d.Metadata), Version: d.Version}, true
}

func shadowLabel(thing, name string) string {
	if name == "" {
		return thing
	}
	return name
}

func (s *Service) update(thing, name string, body map[string]json.RawMessage, token *string) ([]Message, *Error) {
	rawState, ok := body["state"]
	if !ok {
		return nil, errorf(CodeBadRequest, "Missing required node: state")
	}
	var state map[string]json.RawMessage
	if err := json.Unmarshal(rawState, &state); err != nil || state == nil {
		return nil, errorf(CodeBadRequest, "State node must be an object")
	}
	for k := range state {
		if k != "desired" && k != "reported" {
			return nil, errorf(CodeBadRequest, "Invalid JSON: unexpected key in state: %s", k)
		}
	}
	sections := map[string]any{}
	for _, k := range []string{"desired", "reported"} {
		raw, ok := state[k]
		if !ok {
			continue
		}
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, errorf(CodeBadRequest, "Invalid JSON")
		}
		if _, isObj := v.(map[string]any); !isObj && v != nil {
			return nil, errorf(CodeBadRequest, "%s node must be an object", strings.ToUpper(k[:1])+k[1:])
		}
		if depth(v) > MaxDepth {
			return nil, errorf(CodeBadRequest, "JSON contains too many levels of nesting; maximum is %d", MaxDepth)
		}
		sections[k] = v
	}
	if name == PackageShadow {
		if err := checkPackages(sections); err != nil {
			return nil, err
		}
	}
	if s.things == nil {
		s.things = map[string]map[string]*Document{}
	}
	if s.things[thing] == nil {
		s.things[thing] = map[string]*Document{}
	}
	cur := s.things[thing][name]
	if raw, ok := body["version"]; ok {
		var v int64
		if json.Unmarshal(raw, &v) != nil {
			return nil, errorf(CodeBadRequest, "Invalid version")
		}
		have := int64(0)
		if cur != nil {
			have = cur.Version
		}
		if v != have {
			return nil, errorf(CodeConflict, "Version conflict")
		}
	}
	prev := &Document{}
	if cur != nil {
		prev = cur
	}
	next := &Document{Desired: clone(prev.Desired), Reported: clone(prev.Reported), Metadata: clone(prev.Metadata), Version: prev.Version + 1}
	if next.Metadata == nil {
		next.Metadata = map[string]any{}
	}
	ts := s.now().Unix()
	acceptedMeta := map[string]any{}
	for k, v := range sections {
		target := &next.Desired
		if k == "reported" {
			target = &next.Reported
		}
		if v == nil {
			*target = nil
			delete(next.Metadata, k)
			continue
		}
		*target = merge(*target, v.(map[string]any))
		md, _ := next.Metadata[k].(map[string]any)
		next.Metadata[k] = mergeMeta(md, v.(map[string]any), ts)
		acceptedMeta[k] = stamp(v, ts)
	}
	if size := len(marshal(map[string]any{"desired": next.Desired, "reported": next.Reported})); size > MaxStateSize {
		return nil, errorf(CodePayloadTooLarge, "The payload exceeds the maximum size allowed")
	}
	s.things[thing][name] = next

	base := Topic(thing, name) + "/update"
	acc := map[string]any{"state": sections, "metadata": acceptedMeta, "version": next.Version, "timestamp": ts}
	if token != nil {
		acc["clientToken"] = *token
	}
	docs := map[string]any{"previous": prev.render(false), "current": next.render(false), "timestamp": ts}
	if cur == nil {
		docs["previous"] = nil
	}
	if token != nil {
		docs["clientToken"] = *token
	}
	out := []Message{
		{Thing: thing, Topic: base + "/accepted", Payload: marshal(acc), Reply: true},
		{Thing: thing, Topic: base + "/documents", Payload: marshal(docs)},
	}
	// update/delta goes out when the update touched desired and desired now differs.
	if _, touched := sections["desired"]; touched {
		if d := delta(next.Desired, next.Reported); len(d) > 0 {
			dm := map[string]any{"version": next.Version, "timestamp": ts, "state": d}
			if md, ok := next.Metadata["desired"].(map[string]any); ok {
				dm["metadata"] = pick(md, d)
			}
			if token != nil {
				dm["clientToken"] = *token
			}
			out = append(out, Message{Thing: thing, Topic: base + "/delta", Payload: marshal(dm)})
		}
	}
	return out, nil
}

// checkPackages applies the `$package` rules: each reported package is an object with only
// `version` (a string) and `attributes` (an object of strings); null removes a package.
func checkPackages(sections map[string]any) *Error {
	rep, _ := sections["reported"].(map[string]any)
	for pkg, v := range rep {
		if !packageName.MatchString(pkg) {
			return errorf(CodeBadRequest, "Invalid package name: %s", pkg)
		}
		if v == nil {
			continue
		}
		m, ok := v.(map[string]any)
		if !ok {
			return errorf(CodeBadRequest, "Package %s must be an object", pkg)
		}
		for k, x := range m {
			switch k {
			case "version":
				if _, ok := x.(string); !ok && x != nil {
					return errorf(CodeBadRequest, "Package %s: version must be a string", pkg)
				}
			case "attributes":
				attrs, ok := x.(map[string]any)
				if !ok && x != nil {
					return errorf(CodeBadRequest, "Package %s: attributes must be an object", pkg)
				}
				for ak, av := range attrs {
					if _, ok := av.(string); !ok && av != nil {
						return errorf(CodeBadRequest, "Package %s: attribute %s must be a string", pkg, ak)
					}
				}
			default:
				return errorf(CodeBadRequest, "Package %s: keyword %s is not allowed in the $package shadow (only version and attributes)", pkg, k)
			}
		}
	}
	return nil
}

var packageName = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,128}$`)

func (d *Document) render(withDelta bool) map[string]any {
	state := map[string]any{}
	if d.Desired != nil {
		state["desired"] = d.Desired
	}
	if d.Reported != nil {
		state["reported"] = d.Reported
	}
	if withDelta {
		if dl := delta(d.Desired, d.Reported); len(dl) > 0 {
			state["delta"] = dl
		}
	}
	m := map[string]any{"state": state, "version": d.Version}
	if len(d.Metadata) > 0 {
		m["metadata"] = d.Metadata
	}
	return m
}

// merge applies an update section: objects merge key by key, null deletes, anything else replaces.
func merge(dst map[string]any, src map[string]any) map[string]any {
	if dst == nil {
		dst = map[string]any{}
	}
	for k, v := range src {
		switch x := v.(type) {
		case nil:
			delete(dst, k)
		case map[string]any:
			sub, _ := dst[k].(map[string]any)
			dst[k] = merge(clone(sub), x)
		default:
			dst[k] = v
		}
	}
	return dst
}

func mergeMeta(dst map[string]any, src map[string]any, ts int64) map[string]any {
	if dst == nil {
		dst = map[string]any{}
	}
	for k, v := range src {
		switch x := v.(type) {
		case nil:
			delete(dst, k)
		case map[string]any:
			sub, _ := dst[k].(map[string]any)
			dst[k] = mergeMeta(clone(sub), x, ts)
		default:
			dst[k] = map[string]any{"timestamp": ts}
		}
	}
	return dst
}

func stamp(v any, ts int64) any {
	m, ok := v.(map[string]any)
	if !ok {
		return map[string]any{"timestamp": ts}
	}
	out := map[string]any{}
	for k, x := range m {
		out[k] = stamp(x, ts)
	}
	return out
}

// delta is what desired holds that reported does not (AWS compares leaf by leaf).
func delta(desired, reported map[string]any) map[string]any {
	out := map[string]any{}
	for k, dv := range desired {
		rv, has := reported[k]
		dm, dIsObj := dv.(map[string]any)
		rm, rIsObj := rv.(map[string]any)
		switch {
		case dIsObj && rIsObj:
			if sub := delta(dm, rm); len(sub) > 0 {
				out[k] = sub
			}
		case !has || !equal(dv, rv):
			out[k] = dv
		}
	}
	return out
}

func pick(meta map[string]any, keys map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range keys {
		if sub, ok := v.(map[string]any); ok {
			if m, ok := meta[k].(map[string]any); ok {
				out[k] = pick(m, sub)
				continue
			}
		}
		out[k] = meta[k]
	}
	return out
}

func equal(a, b any) bool { return bytes.Equal(marshal(a), marshal(b)) }

func depth(v any) int {
	switch x := v.(type) {
	case map[string]any:
		d := 0
		for _, c := range x {
			d = max(d, depth(c))
		}
		return d + 1
	case []any:
		d := 0
		for _, c := range x {
			d = max(d, depth(c))
		}
		return d + 1
	}
	return 0
}

func clone(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	var out map[string]any
	_ = json.Unmarshal(marshal(m), &out)
	return out
}

func marshal(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic("shadow: cannot encode: " + err.Error())
	}
	return bytes.TrimRight(b.Bytes(), "\n")
}
