package jobsim

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/fieldota/fieldota/test/jobsim/commands"
	"github.com/fieldota/fieldota/test/jobsim/packages"
	"github.com/fieldota/fieldota/test/jobsim/shadow"
	"github.com/fieldota/fieldota/test/jobsim/uploads"
)

// The rest of AWS IoT Device Management, each service its own package: named shadows (shadow),
// the Software Package Catalog (packages), Commands (commands) and per-device upload URLs
// (uploads). This file wires them to the broker, the Jobs model and the control API.

// Filters the emulator subscribes to besides the Jobs requests.
const (
	shadowFilter   = "$aws/things/+/shadow/#"
	commandsFilter = "$aws/commands/things/+/executions/+/response/json"
)

// EventShadow is a shadow written (Detail: "<name> <reported state as JSON>").
const EventShadow = "shadow-updated"

func (s *Sim) shadowEvent(thing, name string) Event {
	d, _ := s.dm.shadows.Get(thing, name)
	return Event{Time: s.now(), Kind: EventShadow, Thing: thing, Detail: name + " " + string(marshal(d.Reported))}
}

type deviceManagement struct {
	shadows  *shadow.Service
	catalog  *packages.Catalog
	commands *commands.Service
	uploads  *uploads.Service

	mu           sync.Mutex
	destinations map[string][]packages.Destination // by job id
}

func (s *Sim) initDeviceManagement(secret []byte) {
	s.dm = &deviceManagement{
		shadows:      &shadow.Service{Now: s.now},
		catalog:      &packages.Catalog{Region: Region, Account: Account, Now: s.now},
		commands:     &commands.Service{Region: Region, Account: Account, Now: s.now},
		uploads:      &uploads.Service{Base: s.presigner.Base, Dir: s.cfg.ArtifactDir, Secret: append([]byte("upload:"), secret...), Now: s.cfg.Now},
		destinations: map[string][]packages.Destination{},
	}
}

// Shadows is the Device Shadow service.
func (s *Sim) Shadows() *shadow.Service { return s.dm.shadows }

// Catalog is the Software Package Catalog.
func (s *Sim) Catalog() *packages.Catalog { return s.dm.catalog }

// Commands is the Commands service.
func (s *Sim) Commands() *commands.Service { return s.dm.commands }

// s3Handler serves presigned uploads and hands everything else to the artifact server.
func (s *Sim) s3Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if uploads.Handles(r) {
			s.dm.uploads.ServeHTTP(w, r)
			return
		}
		s.artifacts.ServeHTTP(w, r)
	})
}

// onDeviceManagement answers a device publish on a shadow or Commands topic.
func (s *Sim) onDeviceManagement(topic string, payload []byte) {
	var out []outMsg
	var events []Event
	switch {
	case shadow.IsRequest(topic):
		for _, m := range s.dm.shadows.Handle(topic, payload) {
			out = append(out, outMsg{thing: m.Thing, topic: m.Topic, payload: m.Payload, reply: m.Reply})
			if thing, name, ok := strings.Cut(strings.TrimPrefix(m.Topic, "$aws/things/"), "/shadow/"); ok && strings.HasSuffix(m.Topic, "/update/accepted") {
				name = strings.TrimSuffix(strings.TrimPrefix(name, "name/"), "/update/accepted")
				if name == "update/accepted" {
					name = ""
				}
				events = append(events, s.shadowEvent(thing, name))
			}
		}
	case commands.IsResponse(topic):
		for _, m := range s.dm.commands.Handle(topic, payload) {
			out = append(out, outMsg{thing: m.Thing, topic: m.Topic, payload: m.Payload, reply: true})
		}
	default:
		return
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.deliver(out, events)
}

// prepareDocument resolves a new job's destinationPackageVersions and package placeholders.
func (s *Sim) prepareDocument(in *CreateJobInput) ([]packages.Destination, error) {
	var dest []packages.Destination
	if len(in.DestinationPackageVersions) > 0 {
		var err error
		if dest, err = s.dm.catalog.Resolve(in.DestinationPackageVersions); err != nil {
			return nil, invalid("destinationPackageVersions: %v", err)
		}
	}
	if strings.Contains(in.Document, "${aws:iot:package:") {
		doc, err := s.dm.catalog.Substitute(in.Document, dest)
		if err != nil {
			return nil, invalid("document: %v", err)
		}
		in.Document = doc
	}
	return dest, nil
}

func (s *Sim) rememberDestinations(jobID string, dest []packages.Destination) {
	if len(dest) == 0 {
		return
	}
	s.dm.mu.Lock()
	s.dm.destinations[jobID] = dest
	s.dm.mu.Unlock()
}

// packageShadowWrites is what Jobs writes into `$package` for the executions that reached
// SUCCEEDED among events, when versionUpdateByJobsConfig is enabled.
func (s *Sim) packageShadowWrites(events []Event) ([]outMsg, []Event) {
	var out []outMsg
	var written []Event
	for _, ev := range events {
		if ev.Kind != EventStatus || ev.Status != StatusSucceeded {
			continue
		}
		s.dm.mu.Lock()
		dest := s.dm.destinations[ev.JobID]
		s.dm.mu.Unlock()
		if len(dest) == 0 || !s.dm.catalog.PackageConfiguration().Enabled {
			continue
		}
		msgs, err := s.dm.shadows.Update(ev.Thing, shadow.PackageShadow, packages.ShadowUpdate(dest))
		if err != nil {
			s.log.Warn("$package not written at SUCCEEDED", "thing", ev.Thing, "job", ev.JobID, "err", err)
			continue
		}
		for _, m := range msgs {
			if !m.Reply { // the service wrote it: no device asked, only documents and delta go out
				out = append(out, outMsg{thing: m.Thing, topic: m.Topic, payload: m.Payload})
			}
		}
		written = append(written, s.shadowEvent(ev.Thing, shadow.PackageShadow))
	}
	return out, written
}

// expandUploads turns the upload placeholders of a delivered document into this execution's URLs.
func (s *Sim) expandUploads(doc string, e execSnap) (string, error) {
	if !strings.Contains(doc, "${aws:iot:s3-presigned-url-upload:") {
		return doc, nil
	}
	return s.dm.uploads.Expand(doc, e.Thing, e.JobID, e.Number, e.Expires)
}

// UpdateThingShadow writes a shadow as the control plane does.
func (s *Sim) UpdateThingShadow(thing, name string, payload []byte) error {
	msgs, err := s.dm.shadows.Update(thing, name, payload)
	if err != nil {
		return err
	}
	var out []outMsg
	for _, m := range msgs {
		if !m.Reply {
			out = append(out, outMsg{thing: m.Thing, topic: m.Topic, payload: m.Payload})
		}
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.deliver(out, []Event{s.shadowEvent(thing, name)})
	return nil
}

// StartCommandExecution starts a command on a thing and publishes its request.
func (s *Sim) StartCommandExecution(commandID, thing string, timeout time.Duration) (commands.Execution, error) {
	ex, msgs, err := s.dm.commands.Start(commandID, thing, timeout)
	if err != nil {
		return ex, err
	}
	var out []outMsg
	for _, m := range msgs {
		out = append(out, outMsg{thing: m.Thing, topic: m.Topic, payload: m.Payload})
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.deliver(out, nil)
	return ex, nil
}

// deviceManagementRoutes are the control-plane routes, with AWS's REST paths.
func (s *Sim) deviceManagementRoutes(mux *http.ServeMux) {
	c := s.dm.catalog
	mux.HandleFunc("PUT /packages/{packageName}", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Description string `json:"description"`
		}
		if r.ContentLength != 0 && !readJSON(w, r, &in) {
			return
		}
		p, err := c.CreatePackage(r.PathValue("packageName"), in.Description)
		dmReply(w, p, err)
	})
	mux.HandleFunc("PUT /packages/{packageName}/versions/{versionName}", func(w http.ResponseWriter, r *http.Request) {
		var in packages.CreateVersionInput
		if r.ContentLength != 0 && !readJSON(w, r, &in) {
			return
		}
		v, err := c.CreatePackageVersion(r.PathValue("packageName"), r.PathValue("versionName"), in)
		dmReply(w, v, err)
	})
	mux.HandleFunc("PATCH /packages/{packageName}/versions/{versionName}", func(w http.ResponseWriter, r *http.Request) {
		var in packages.UpdateVersionInput
		if !readJSON(w, r, &in) {
			return
		}
		v, err := c.UpdatePackageVersion(r.PathValue("packageName"), r.PathValue("versionName"), in)
		dmReply(w, v, err)
	})
	mux.HandleFunc("GET /packages/{packageName}/versions/{versionName}", func(w http.ResponseWriter, r *http.Request) {
		v, err := c.GetPackageVersion(r.PathValue("packageName"), r.PathValue("versionName"))
		dmReply(w, v, err)
	})
	mux.HandleFunc("PATCH /package-configuration", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			VersionUpdateByJobsConfig packages.VersionUpdateByJobsConfig `json:"versionUpdateByJobsConfig"`
		}
		if !readJSON(w, r, &in) {
			return
		}
		dmReply(w, map[string]any{}, c.UpdatePackageConfiguration(in.VersionUpdateByJobsConfig))
	})
	mux.HandleFunc("GET /package-configuration", func(w http.ResponseWriter, r *http.Request) {
		dmReply(w, map[string]any{"versionUpdateByJobsConfig": c.PackageConfiguration()}, nil)
	})
	mux.HandleFunc("GET /things/{thingName}/shadow", func(w http.ResponseWriter, r *http.Request) {
		d, ok := s.dm.shadows.Get(r.PathValue("thingName"), r.URL.Query().Get("name"))
		if !ok {
			dmReply(w, nil, &packages.Error{Code: "ResourceNotFoundException", Message: "No shadow exists with name: '" + r.URL.Query().Get("name") + "'"})
			return
		}
		dmReply(w, map[string]any{"state": map[string]any{"desired": d.Desired, "reported": d.Reported}, "metadata": d.Metadata, "version": d.Version}, nil)
	})
	mux.HandleFunc("POST /things/{thingName}/shadow", func(w http.ResponseWriter, r *http.Request) {
		var raw json.RawMessage
		if !readJSON(w, r, &raw) {
			return
		}
		err := s.UpdateThingShadow(r.PathValue("thingName"), r.URL.Query().Get("name"), raw)
		dmReply(w, map[string]any{}, err)
	})
	mux.HandleFunc("PUT /commands/{commandId}", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Payload struct {
				Content     []byte `json:"content"` // base64, as AWS's blob
				ContentType string `json:"contentType"`
			} `json:"payload"`
		}
		if !readJSON(w, r, &in) {
			return
		}
		cmd, err := s.dm.commands.CreateCommand(r.PathValue("commandId"), in.Payload.Content, in.Payload.ContentType)
		dmReply(w, cmd, err)
	})
	mux.HandleFunc("POST /command-executions", func(w http.ResponseWriter, r *http.Request) {
		var in StartCommandExecutionInput
		if !readJSON(w, r, &in) {
			return
		}
		id := in.CommandArn[strings.LastIndexByte(in.CommandArn, '/')+1:]
		thing, ok := thingFromTarget(in.TargetArn)
		if !ok {
			dmReply(w, nil, invalid("targetArn %q is not a thing", in.TargetArn))
			return
		}
		ex, err := s.StartCommandExecution(id, thing, time.Duration(in.ExecutionTimeoutSeconds)*time.Second)
		dmReply(w, map[string]any{"executionId": ex.ExecutionID}, err)
	})
	mux.HandleFunc("GET /command-executions/{executionId}", func(w http.ResponseWriter, r *http.Request) {
		ex, err := s.dm.commands.Get(r.PathValue("executionId"))
		dmReply(w, ex, err)
	})
}

// StartCommandExecutionInput is StartCommandExecution's body.
type StartCommandExecutionInput struct {
	TargetArn               string `json:"targetArn"`
	CommandArn              string `json:"commandArn"`
	ExecutionTimeoutSeconds int64  `json:"executionTimeoutSeconds,omitempty"`
}

// dmReply answers like reply, mapping the services' own error types to AWS's statuses.
func dmReply(w http.ResponseWriter, body any, err error) {
	status := map[string]int{"ValidationException": 400, "ResourceNotFoundException": 404, "ConflictException": 409}
	var code, msg string
	switch e := err.(type) {
	case nil:
	case *packages.Error:
		code, msg = e.Code, e.Message
	case *commands.Error:
		code, msg = e.Code, e.Message
	case *shadow.Error:
		code, msg = map[int]string{400: "InvalidRequestException", 404: "ResourceNotFoundException", 409: "ConflictException", 413: "RequestEntityTooLargeException"}[e.Code], e.Message
		status[code] = e.Code
	default:
		reply(w, body, err)
		return
	}
	if code != "" {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Amzn-ErrorType", code)
		st := status[code]
		if st == 0 {
			st = 400
		}
		w.WriteHeader(st)
		_ = json.NewEncoder(w).Encode(map[string]string{"message": msg, "__type": code})
		return
	}
	reply(w, body, nil)
}

// Client side of the routes above.

// CreatePackage is PUT /packages/{packageName}.
func (c *Client) CreatePackage(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPut, "/packages/"+esc(name), nil, map[string]any{}, nil)
}

// CreatePackageVersion is PUT /packages/{packageName}/versions/{versionName}.
func (c *Client) CreatePackageVersion(ctx context.Context, pkg, version string, in packages.CreateVersionInput) (packages.Version, error) {
	var out packages.Version
	err := c.do(ctx, http.MethodPut, "/packages/"+esc(pkg)+"/versions/"+esc(version), nil, in, &out)
	return out, err
}

// UpdatePackageVersion is PATCH /packages/{packageName}/versions/{versionName}.
func (c *Client) UpdatePackageVersion(ctx context.Context, pkg, version string, in packages.UpdateVersionInput) (packages.Version, error) {
	var out packages.Version
	err := c.do(ctx, http.MethodPatch, "/packages/"+esc(pkg)+"/versions/"+esc(version), nil, in, &out)
	return out, err
}

// UpdatePackageConfiguration is PATCH /package-configuration.
func (c *Client) UpdatePackageConfiguration(ctx context.Context, cfg packages.VersionUpdateByJobsConfig) error {
	return c.do(ctx, http.MethodPatch, "/package-configuration", nil, map[string]any{"versionUpdateByJobsConfig": cfg}, nil)
}

// CreateCommand is PUT /commands/{commandId} with a JSON payload.
func (c *Client) CreateCommand(ctx context.Context, id string, payload []byte) error {
	body := map[string]any{"payload": map[string]any{"content": payload, "contentType": "application/json"}, "namespace": "AWS-IoT"}
	return c.do(ctx, http.MethodPut, "/commands/"+esc(id), nil, body, nil)
}

// StartCommandExecution is POST /command-executions; it returns the execution id.
func (c *Client) StartCommandExecution(ctx context.Context, commandID, thing string, timeout time.Duration) (string, error) {
	var out struct {
		ExecutionID string `json:"executionId"`
	}
	in := StartCommandExecutionInput{TargetArn: ThingArn(thing), CommandArn: "arn:aws:iot:" + Region + ":" + Account + ":command/" + commandID,
		ExecutionTimeoutSeconds: int64(timeout / time.Second)}
	err := c.do(ctx, http.MethodPost, "/command-executions", nil, in, &out)
	return out.ExecutionID, err
}

// GetCommandExecution is GET /command-executions/{executionId}.
func (c *Client) GetCommandExecution(ctx context.Context, id string) (commands.Execution, error) {
	var out commands.Execution
	err := c.do(ctx, http.MethodGet, "/command-executions/"+esc(id), nil, nil, &out)
	return out, err
}

// GetThingShadow is GET /things/{thingName}/shadow?name=.
func (c *Client) GetThingShadow(ctx context.Context, thing, name string) (json.RawMessage, error) {
	var out json.RawMessage
	err := c.do(ctx, http.MethodGet, "/things/"+esc(thing)+"/shadow", map[string][]string{"name": {name}}, nil, &out)
	return bytes.TrimSpace(out), err
}

// RegisterPackageVersion registers a release in the Software Package Catalog as `fieldota
// release --package NAME` does: the package if it is new, the version with its artifact and
// attributes, published; it returns the version's ARN for CreateJob's destinationPackageVersions.
// A version that exists already is left as it is (a re-run of the same release).
func (c *Client) RegisterPackageVersion(ctx context.Context, pkg, version string, in packages.CreateVersionInput) (string, error) {
	if err := c.CreatePackage(ctx, pkg); err != nil && !isConflict(err) {
		return "", err
	}
	if _, err := c.CreatePackageVersion(ctx, pkg, version, in); err != nil && !isConflict(err) {
		return "", err
	}
	v, err := c.UpdatePackageVersion(ctx, pkg, version, packages.UpdateVersionInput{Action: "PUBLISH"})
	if err != nil {
		return "", err
	}
	return v.Arn, nil
}

func isConflict(err error) bool {
	ae, ok := err.(*APIError)
	return ok && ae.Code == "ConflictException"
}
