package jobsim

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/fieldota/fieldota/test/jobsim/registry"
)

// The thing registry's control-plane operations, on AWS's REST paths (what the AWS SDKs call).

func registryErr(err error) error {
	var re *registry.Error
	if !errors.As(err, &re) {
		return err
	}
	status := http.StatusBadRequest
	switch re.Code {
	case registry.ExcResourceNotFound:
		status = http.StatusNotFound
	case registry.ExcResourceAlreadyExists:
		status = http.StatusConflict
	}
	return &APIError{Status: status, Code: re.Code, Message: re.Message}
}

func (s *Sim) registryRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /things/{thingName}", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			AttributePayload struct {
				Attributes map[string]string `json:"attributes"`
			} `json:"attributePayload"`
		}
		if r.ContentLength != 0 && !readJSON(w, r, &in) {
			return
		}
		t, err := s.registry.CreateThing(r.PathValue("thingName"), in.AttributePayload.Attributes)
		reply(w, map[string]any{"thingName": t.Name, "thingArn": t.Arn, "thingId": t.ID}, registryErr(err))
	})
	mux.HandleFunc("GET /things/{thingName}", func(w http.ResponseWriter, r *http.Request) {
		t, err := s.registry.DescribeThing(r.PathValue("thingName"))
		reply(w, map[string]any{"thingName": t.Name, "thingArn": t.Arn, "thingId": t.ID,
			"attributes": t.Attributes, "version": t.Version, "defaultClientId": t.Name}, registryErr(err))
	})
	mux.HandleFunc("POST /thing-groups/{thingGroupName}", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			ThingGroupProperties struct {
				ThingGroupDescription string `json:"thingGroupDescription"`
			} `json:"thingGroupProperties"`
		}
		if r.ContentLength != 0 && !readJSON(w, r, &in) {
			return
		}
		g, err := s.registry.CreateThingGroup(r.PathValue("thingGroupName"), in.ThingGroupProperties.ThingGroupDescription)
		reply(w, map[string]any{"thingGroupName": g.Name, "thingGroupArn": g.Arn, "thingGroupId": g.ID}, registryErr(err))
	})
	mux.HandleFunc("GET /thing-groups/{thingGroupName}", func(w http.ResponseWriter, r *http.Request) {
		g, err := s.registry.DescribeThingGroup(r.PathValue("thingGroupName"))
		reply(w, map[string]any{"thingGroupName": g.Name, "thingGroupArn": g.Arn, "thingGroupId": g.ID, "version": g.Version,
			"thingGroupProperties": map[string]any{"thingGroupDescription": g.Description}}, registryErr(err))
	})
	membership := func(add bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var in struct {
				ThingGroupName string `json:"thingGroupName"`
				ThingGroupArn  string `json:"thingGroupArn"`
				ThingName      string `json:"thingName"`
				ThingArn       string `json:"thingArn"`
			}
			if !readJSON(w, r, &in) {
				return
			}
			f := s.registry.RemoveThingFromThingGroup
			if add {
				f = s.registry.AddThingToThingGroup
			}
			// Not under opMu: the registry calls back into the Jobs service (onMembership).
			reply(w, map[string]any{}, registryErr(f(in.ThingGroupName, in.ThingGroupArn, in.ThingName, in.ThingArn)))
		}
	}
	mux.HandleFunc("PUT /thing-groups/addThingToThingGroup", membership(true))
	mux.HandleFunc("PUT /thing-groups/removeThingFromThingGroup", membership(false))
	mux.HandleFunc("GET /thing-groups/{thingGroupName}/things", func(w http.ResponseWriter, r *http.Request) {
		n := 0
		if v := r.URL.Query().Get("maxResults"); v != "" {
			var err error
			if n, err = strconv.Atoi(v); err != nil {
				reply(w, nil, invalid("maxResults must be an integer"))
				return
			}
		}
		l, next, err := s.registry.ListThingsInThingGroup(r.PathValue("thingGroupName"), n, r.URL.Query().Get("nextToken"))
		if l == nil {
			l = []string{}
		}
		reply(w, page(map[string]any{"things": l}, next), registryErr(err))
	})
}
