package registry

import (
	"errors"
	"strings"
	"testing"
)

func TestGroupMembershipPagesAndNotifies(t *testing.T) {
	r := New()
	var seen []string
	r.OnMembership = func(g, th string, added bool) {
		op := "-"
		if added {
			op = "+"
		}
		seen = append(seen, op+g+"/"+th)
	}
	if _, err := r.CreateThingGroup("fleet", "all devices"); err != nil {
		t.Fatal(err)
	}
	for _, th := range []string{"d3", "d1", "d2"} {
		if _, err := r.CreateThing(th, nil); err != nil {
			t.Fatal(err)
		}
		if err := r.AddThingToThingGroup("", GroupArn("fleet"), th, ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.AddThingToThingGroup("fleet", "", "", ThingArn("d1")); err != nil { // again: no-op
		t.Fatal(err)
	}
	p1, next, err := r.ListThingsInThingGroup("fleet", 2, "")
	if err != nil || strings.Join(p1, ",") != "d1,d2" || next == "" {
		t.Fatalf("page 1: %v %q %v", p1, next, err)
	}
	p2, next, err := r.ListThingsInThingGroup("fleet", 2, next)
	if err != nil || strings.Join(p2, ",") != "d3" || next != "" {
		t.Fatalf("page 2: %v %q %v", p2, next, err)
	}
	if err := r.RemoveThingFromThingGroup("fleet", "", "d2", ""); err != nil {
		t.Fatal(err)
	}
	if strings.Join(seen, " ") != "+fleet/d3 +fleet/d1 +fleet/d2 -fleet/d2" {
		t.Fatalf("membership events: %v", seen)
	}
}

func TestRegistryRefusalsNameTheResource(t *testing.T) {
	r := New()
	_, _ = r.CreateThing("d1", map[string]string{"rev": "c"})
	_, _ = r.CreateThingGroup("g", "")
	for name, c := range map[string]struct {
		err  error
		code string
	}{
		"unknown group":             {r.AddThingToThingGroup("nope", "", "d1", ""), ExcResourceNotFound},
		"unknown thing":             {r.AddThingToThingGroup("g", "", "ghost", ""), ExcResourceNotFound},
		"no group given":            {r.AddThingToThingGroup("", "", "d1", ""), ExcInvalidRequest},
		"thing with other attrs":    {second(r.CreateThing("d1", map[string]string{"rev": "d"})), ExcResourceAlreadyExists},
		"bad thing name":            {second(r.CreateThing("a b", nil)), ExcInvalidRequest},
		"group with other property": {second(r.CreateThingGroup("g", "other")), ExcResourceAlreadyExists},
	} {
		var e *Error
		if !errors.As(c.err, &e) || e.Code != c.code {
			t.Errorf("%s: %v, want %s", name, c.err, c.code)
		}
	}
	if th, err := r.CreateThing("d1", map[string]string{"rev": "c"}); err != nil || th.Arn != ThingArn("d1") {
		t.Fatalf("idempotent CreateThing: %+v %v", th, err)
	}
}

func second[T any](_ T, err error) error { return err }
