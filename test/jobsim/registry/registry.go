// Package registry is the emulator's AWS IoT thing registry: things and static thing groups, with
// AWS's names, ARNs and errors. The Jobs service asks it who is in a group and hears about
// membership changes (continuous jobs).
package registry

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
)

// Account and region of the ARNs (AWS's own example values, as the rest of the emulator uses).
const (
	Region  = "us-east-1"
	Account = "123456789012"
)

// ThingArn and GroupArn build ARNs as AWS prints them.
func ThingArn(thing string) string {
	return "arn:aws:iot:" + Region + ":" + Account + ":thing/" + thing
}
func GroupArn(group string) string {
	return "arn:aws:iot:" + Region + ":" + Account + ":thinggroup/" + group
}

// Names: thing names and thing group names share AWS's pattern.
var namePattern = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)

// ValidName reports whether s is a valid thing or thing group name.
func ValidName(s string) bool { return namePattern.MatchString(s) }

// Error kinds, named after the control plane's exceptions.
const (
	ExcResourceNotFound      = "ResourceNotFoundException"
	ExcInvalidRequest        = "InvalidRequestException"
	ExcResourceAlreadyExists = "ResourceAlreadyExistsException"
)

// Error is a refused registry call.
type Error struct {
	Code, Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func errorf(code, format string, a ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, a...)}
}

// Thing is DescribeThing's answer (the parts the emulator keeps).
type Thing struct {
	Name, Arn, ID string
	Attributes    map[string]string
	Version       int64
}

// Group is DescribeThingGroup's answer.
type Group struct {
	Name, Arn, ID, Description string
	Version                    int64
}

// Registry holds things and groups. OnMembership (set before use) is called, outside the lock,
// after a thing joins or leaves a group.
type Registry struct {
	OnMembership func(group, thing string, added bool)

	mu      sync.Mutex
	things  map[string]*Thing
	groups  map[string]*Group
	members map[string]map[string]bool // group → things
}

// New returns an empty registry.
func New() *Registry {
	return &Registry{things: map[string]*Thing{}, groups: map[string]*Group{}, members: map[string]map[string]bool{}}
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func sameAttrs(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// CreateThing creates a thing. As on AWS, creating an existing thing with the same attributes
// answers the existing thing; with other attributes it is ResourceAlreadyExists.
func (r *Registry) CreateThing(name string, attrs map[string]string) (Thing, error) {
	if !ValidName(name) {
		return Thing{}, errorf(ExcInvalidRequest, "thingName must match [a-zA-Z0-9:_-]{1,128}")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if t := r.things[name]; t != nil {
		if !sameAttrs(t.Attributes, attrs) {
			return Thing{}, errorf(ExcResourceAlreadyExists, "Thing %s already exists with different attributes", name)
		}
		return *t, nil
	}
	t := &Thing{Name: name, Arn: ThingArn(name), ID: newID(), Attributes: attrs, Version: 1}
	r.things[name] = t
	return *t, nil
}

// DescribeThing returns a thing.
func (r *Registry) DescribeThing(name string) (Thing, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.things[name]
	if t == nil {
		return Thing{}, errorf(ExcResourceNotFound, "Thing %s cannot be found.", name)
	}
	return *t, nil
}

// CreateThingGroup creates a static thing group (idempotent like CreateThing).
func (r *Registry) CreateThingGroup(name, description string) (Group, error) {
	if !ValidName(name) {
		return Group{}, errorf(ExcInvalidRequest, "thingGroupName must match [a-zA-Z0-9:_-]{1,128}")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if g := r.groups[name]; g != nil {
		if g.Description != description {
			return Group{}, errorf(ExcResourceAlreadyExists, "Thing group %s already exists with different properties", name)
		}
		return *g, nil
	}
	g := &Group{Name: name, Arn: GroupArn(name), ID: newID(), Description: description, Version: 1}
	r.groups[name] = g
	r.members[name] = map[string]bool{}
	return *g, nil
}

// DescribeThingGroup returns a group.
func (r *Registry) DescribeThingGroup(name string) (Group, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	g := r.groups[name]
	if g == nil {
		return Group{}, errorf(ExcResourceNotFound, "Thing group %s cannot be found.", name)
	}
	return *g, nil
}

// GroupFromArn returns the group name of a thing group ARN, or ok=false.
func GroupFromArn(arn string) (string, bool) {
	i := strings.Index(arn, ":thinggroup/")
	if !strings.HasPrefix(arn, "arn:") || i < 0 {
		return "", false
	}
	return arn[i+len(":thinggroup/"):], true
}

// ThingFromArn returns the thing name of a thing ARN, or ok=false.
func ThingFromArn(arn string) (string, bool) {
	i := strings.Index(arn, ":thing/")
	if !strings.HasPrefix(arn, "arn:") || i < 0 {
		return "", false
	}
	return arn[i+len(":thing/"):], true
}

// resolve takes a name or an ARN of either kind.
func pick(name, arn string, fromArn func(string) (string, bool)) (string, bool) {
	if name != "" {
		return name, true
	}
	return fromArn(arn)
}

// AddThingToThingGroup adds a thing (by name or ARN) to a group (by name or ARN). Adding a member
// again is a no-op, as on AWS.
func (r *Registry) AddThingToThingGroup(group, groupArn, thing, thingArn string) error {
	return r.membership(group, groupArn, thing, thingArn, true)
}

// RemoveThingFromThingGroup removes a thing from a group (a no-op when it is not a member).
func (r *Registry) RemoveThingFromThingGroup(group, groupArn, thing, thingArn string) error {
	return r.membership(group, groupArn, thing, thingArn, false)
}

func (r *Registry) membership(group, groupArn, thing, thingArn string, add bool) error {
	g, ok := pick(group, groupArn, GroupFromArn)
	if !ok {
		return errorf(ExcInvalidRequest, "thingGroupName or thingGroupArn is required")
	}
	t, ok := pick(thing, thingArn, ThingFromArn)
	if !ok {
		return errorf(ExcInvalidRequest, "thingName or thingArn is required")
	}
	r.mu.Lock()
	if r.groups[g] == nil {
		r.mu.Unlock()
		return errorf(ExcResourceNotFound, "Thing group %s cannot be found.", g)
	}
	if r.things[t] == nil {
		r.mu.Unlock()
		return errorf(ExcResourceNotFound, "Thing %s cannot be found.", t)
	}
	changed := r.members[g][t] != add
	if add {
		r.members[g][t] = true
	} else {
		delete(r.members[g], t)
	}
	cb := r.OnMembership
	r.mu.Unlock()
	if changed && cb != nil {
		cb(g, t, add)
	}
	return nil
}

// Members lists the things of a group in name order.
func (r *Registry) Members(group string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, ok := r.members[group]
	if !ok {
		return nil, errorf(ExcResourceNotFound, "Thing group %s cannot be found.", group)
	}
	out := make([]string, 0, len(m))
	for t := range m {
		out = append(out, t)
	}
	sort.Strings(out)
	return out, nil
}

// ListThingsInThingGroup pages through a group's things in name order; the token is the last name
// of the previous page (opaque to callers, as AWS's is).
func (r *Registry) ListThingsInThingGroup(group string, maxResults int, nextToken string) (things []string, next string, err error) {
	all, err := r.Members(group)
	if err != nil {
		return nil, "", err
	}
	if maxResults <= 0 || maxResults > 250 {
		maxResults = 250
	}
	i := sort.SearchStrings(all, nextToken)
	if nextToken != "" && i < len(all) && all[i] == nextToken {
		i++
	}
	end := min(len(all), i+maxResults)
	if end < len(all) {
		next = all[end-1]
	}
	return all[i:end], next, nil
}
