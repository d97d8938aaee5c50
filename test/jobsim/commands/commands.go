// Package commands emulates AWS IoT Device Management Commands: CreateCommand, StartCommandExecution
// (the payload published on `$aws/commands/things/<T>/executions/<id>/request/json`), the device's
// answers on `…/response/json` acknowledged on `…/response/accepted/json` or `…/rejected/json`,
// AWS's status rules (terminal states stay; the cloud's TIMED_OUT is not terminal and the device
// may still finish) and GetCommandExecution.
package commands

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Statuses of an execution.
const (
	Created    = "CREATED"
	InProgress = "IN_PROGRESS"
	Succeeded  = "SUCCEEDED"
	Failed     = "FAILED"
	Rejected   = "REJECTED"
	TimedOut   = "TIMED_OUT"
)

// Limits (API-StatusReason, CS).
const (
	DefaultTimeout = 10 * time.Second
	MaxTimeout     = 12 * time.Hour
	maxDescription = 1024
)

var reasonCodeRE = regexp.MustCompile(`^[A-Z0-9_-]{1,64}$`)

// Error is a control-plane error.
type Error struct{ Code, Message string }

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Message is one MQTT message to publish.
type Message struct {
	Thing   string
	Topic   string
	Payload []byte
}

// StatusReason is AWS's statusReason.
type StatusReason struct {
	ReasonCode        string `json:"reasonCode"`
	ReasonDescription string `json:"reasonDescription,omitempty"`
}

// Execution is one command execution (GetCommandExecution).
type Execution struct {
	ExecutionID  string                     `json:"executionId"`
	CommandArn   string                     `json:"commandArn"`
	TargetArn    string                     `json:"targetArn"`
	Thing        string                     `json:"-"`
	Status       string                     `json:"status"`
	StatusReason *StatusReason              `json:"statusReason,omitempty"`
	Result       map[string]json.RawMessage `json:"result,omitempty"`
	CreatedAt    int64                      `json:"createdAt"`
	CompletedAt  int64                      `json:"completedAt,omitempty"`
	Timeout      int64                      `json:"executionTimeoutSeconds"`

	deadline time.Time
	terminal bool // set by the device: nothing changes it afterwards
}

// Command is a command resource.
type Command struct {
	CommandID   string `json:"commandId"`
	CommandArn  string `json:"commandArn"`
	Payload     []byte `json:"-"`
	ContentType string `json:"contentType,omitempty"`
}

// Service is the Commands service.
type Service struct {
	Region, Account string
	Now             func() time.Time

	mu       sync.Mutex
	commands map[string]*Command
	execs    map[string]*Execution
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// CreateCommand creates a command whose payload (JSON) every execution carries.
func (s *Service) CreateCommand(id string, payload []byte, contentType string) (Command, error) {
	if !regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`).MatchString(id) {
		return Command{}, &Error{"ValidationException", fmt.Sprintf("commandId %q is not valid", id)}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.commands == nil {
		s.commands, s.execs = map[string]*Command{}, map[string]*Execution{}
	}
	if _, ok := s.commands[id]; ok {
		return Command{}, &Error{"ConflictException", "command " + id + " already exists"}
	}
	c := &Command{CommandID: id, CommandArn: "arn:aws:iot:" + s.Region + ":" + s.Account + ":command/" + id, Payload: bytes.Clone(payload), ContentType: contentType}
	s.commands[id] = c
	return *c, nil
}

// Start starts an execution of command on thing and returns it with the request to publish.
func (s *Service) Start(commandID, thing string, timeout time.Duration) (Execution, []Message, error) {
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	if timeout < time.Second || timeout > MaxTimeout {
		return Execution{}, nil, &Error{"ValidationException", "executionTimeoutSeconds out of range (1 s to 12 h)"}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.commands[commandID]
	if !ok {
		return Execution{}, nil, &Error{"ResourceNotFoundException", "command " + commandID + " does not exist"}
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	now := s.now()
	e := &Execution{ExecutionID: id, CommandArn: c.CommandArn, Thing: thing,
		TargetArn: "arn:aws:iot:" + s.Region + ":" + s.Account + ":thing/" + thing,
		Status:    Created, CreatedAt: now.Unix(), Timeout: int64(timeout / time.Second), deadline: now.Add(timeout)}
	s.execs[id] = e
	return *e, []Message{{Thing: thing, Topic: RequestTopic(thing, id), Payload: bytes.Clone(c.Payload)}}, nil
}

// RequestTopic is where the device hears an execution.
func RequestTopic(thing, id string) string {
	return "$aws/commands/things/" + thing + "/executions/" + id + "/request/json"
}

// ResponseTopic is where the device answers it.
func ResponseTopic(thing, id string) string {
	return "$aws/commands/things/" + thing + "/executions/" + id + "/response/json"
}

// IsResponse reports a device's response topic (and not the service's own acknowledgements).
func IsResponse(topic string) bool {
	_, _, ok := splitResponse(topic)
	return ok
}

func splitResponse(topic string) (thing, id string, ok bool) {
	rest, found := strings.CutPrefix(topic, "$aws/commands/things/")
	if !found {
		return "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "executions" || parts[3] != "response" || parts[4] != "json" || parts[0] == "" || parts[2] == "" {
		return "", "", false
	}
	return parts[0], parts[2], true
}

// Handle takes a device's response and returns the acknowledgement.
func (s *Service) Handle(topic string, payload []byte) []Message {
	thing, id, ok := splitResponse(topic)
	if !ok {
		return nil
	}
	base := strings.TrimSuffix(topic, "/json")
	reject := func(code, msg string) []Message {
		b, _ := json.Marshal(map[string]any{"error": code, "errorMessage": msg, "executionId": id})
		return []Message{{Thing: thing, Topic: base + "/rejected/json", Payload: b}}
	}
	var in struct {
		Status       string                     `json:"status"`
		StatusReason *StatusReason              `json:"statusReason"`
		Result       map[string]json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(payload, &in); err != nil {
		return reject("InvalidRequest", "the response is not JSON")
	}
	switch in.Status {
	case InProgress, Succeeded, Failed, Rejected, TimedOut:
	default:
		return reject("InvalidRequest", fmt.Sprintf("status %q is not one of IN_PROGRESS, SUCCEEDED, FAILED, REJECTED, TIMED_OUT", in.Status))
	}
	if r := in.StatusReason; r != nil {
		if !reasonCodeRE.MatchString(r.ReasonCode) {
			return reject("InvalidRequest", "statusReason.reasonCode must match [A-Z0-9_-]{1,64}")
		}
		if len(r.ReasonDescription) > maxDescription {
			return reject("InvalidRequest", "statusReason.reasonDescription exceeds 1024 characters")
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.execs[id]
	if !ok || e.Thing != thing {
		return reject("ResourceNotFound", "no execution "+id+" for "+thing)
	}
	if e.terminal {
		return reject("TerminalStateReached", "execution "+id+" is already "+e.Status)
	}
	e.Status, e.StatusReason, e.Result = in.Status, in.StatusReason, in.Result
	if in.Status != InProgress {
		e.terminal, e.CompletedAt = true, s.now().Unix()
	}
	b, _ := json.Marshal(map[string]any{"executionId": id, "status": e.Status})
	return []Message{{Thing: thing, Topic: base + "/accepted/json", Payload: b}}
}

// Get is GetCommandExecution: an execution the device has not finished by its timeout reads
// TIMED_OUT with $NO_RESPONSE_FROM_DEVICE, which the device may still overwrite.
func (s *Service) Get(id string) (Execution, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.execs[id]
	if !ok {
		return Execution{}, &Error{"ResourceNotFoundException", "no execution " + id}
	}
	out := *e
	if !e.terminal && !s.now().Before(e.deadline) {
		out.Status = TimedOut
		out.StatusReason = &StatusReason{ReasonCode: "$NO_RESPONSE_FROM_DEVICE"}
	}
	return out, nil
}
