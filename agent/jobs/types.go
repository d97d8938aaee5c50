package jobs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"
)

// Status is a job execution status.
type Status string

// The execution statuses of AWS IoT Jobs. A device may set IN_PROGRESS, SUCCEEDED, FAILED and
// REJECTED; the others are set by the service.
const (
	Queued     Status = "QUEUED"
	InProgress Status = "IN_PROGRESS"
	Succeeded  Status = "SUCCEEDED"
	Failed     Status = "FAILED"
	TimedOut   Status = "TIMED_OUT"
	Rejected   Status = "REJECTED"
	Removed    Status = "REMOVED"
	Canceled   Status = "CANCELED"
)

// Terminal reports whether no device update can follow this status.
func (s Status) Terminal() bool {
	switch s {
	case Succeeded, Failed, TimedOut, Rejected, Removed, Canceled:
		return true
	}
	return false
}

// Timestamp is a point in time that AWS sends as a JSON number of epoch seconds — or, in some
// documents and emulators, milliseconds. Values above 1e12 are taken as milliseconds (1e12 seconds is
// the year 33658). The zero Timestamp means the field was absent.
type Timestamp struct{ time.Time }

const msThreshold = 1e12

// UnmarshalJSON accepts integer or fractional seconds or milliseconds, a numeric string, or null.
func (t *Timestamp) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		t.Time = time.Time{}
		return nil
	}
	if len(b) > 1 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		b = []byte(s)
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f >= math.MaxInt64 {
		return fmt.Errorf("jobs: timestamp %q is not epoch seconds or milliseconds", b)
	}
	if f > msThreshold {
		ms := int64(f)
		t.Time = time.UnixMilli(ms).UTC()
		return nil
	}
	sec, frac := math.Modf(f)
	t.Time = time.Unix(int64(sec), int64(frac*1e9)).UTC()
	return nil
}

// MarshalJSON writes epoch seconds, as the device plane does.
func (t Timestamp) MarshalJSON() ([]byte, error) {
	if t.IsZero() {
		return []byte("null"), nil
	}
	return strconv.AppendInt(nil, t.Unix(), 10), nil
}

// JobExecution is one execution of a job on this thing.
type JobExecution struct {
	JobID           string            `json:"jobId"`
	ThingName       string            `json:"thingName,omitempty"`
	Status          Status            `json:"status,omitempty"`
	StatusDetails   map[string]string `json:"statusDetails,omitempty"`
	QueuedAt        Timestamp         `json:"queuedAt"`
	StartedAt       Timestamp         `json:"startedAt"`
	LastUpdatedAt   Timestamp         `json:"lastUpdatedAt"`
	VersionNumber   int64             `json:"versionNumber"`
	ExecutionNumber int64             `json:"executionNumber"`
	// ApproximateSecondsBeforeTimedOut is present while a timer runs.
	ApproximateSecondsBeforeTimedOut int64 `json:"approximateSecondsBeforeTimedOut,omitempty"`
	// JobDocument is kept as raw JSON: its schema belongs to ota/jobdoc, and the presigned URLs inside
	// change on every delivery.
	JobDocument json.RawMessage `json:"jobDocument,omitempty"`
}

// JobExecutionState is what AWS returns with update/accepted (includeJobExecutionState) and with the
// VersionMismatch and InvalidStateTransition rejections.
type JobExecutionState struct {
	Status        Status            `json:"status"`
	StatusDetails map[string]string `json:"statusDetails,omitempty"`
	VersionNumber int64             `json:"versionNumber"`
}

// JobExecutionSummary is an entry of GetPendingJobExecutions and of the notify event. It carries no
// document and no status.
type JobExecutionSummary struct {
	JobID           string    `json:"jobId"`
	QueuedAt        Timestamp `json:"queuedAt"`
	StartedAt       Timestamp `json:"startedAt"`
	LastUpdatedAt   Timestamp `json:"lastUpdatedAt"`
	VersionNumber   int64     `json:"versionNumber"`
	ExecutionNumber int64     `json:"executionNumber"`
}

// PendingJobs is the answer to GetPendingJobExecutions.
type PendingJobs struct {
	InProgress []JobExecutionSummary `json:"inProgressJobs"`
	Queued     []JobExecutionSummary `json:"queuedJobs"`
	Timestamp  Timestamp             `json:"timestamp"`
}

// UpdateResult is the answer to UpdateJobExecution. ExecutionState and JobDocument are set only when
// the request asked for them.
type UpdateResult struct {
	ExecutionState *JobExecutionState `json:"executionState,omitempty"`
	JobDocument    json.RawMessage    `json:"jobDocument,omitempty"`
	Timestamp      Timestamp          `json:"timestamp"`
}

// NextJobExecutionChanged is the notify-next event: the execution that `$next` now designates.
// Execution is nil when nothing is pending any more.
type NextJobExecutionChanged struct {
	Execution *JobExecution `json:"execution,omitempty"`
	Timestamp Timestamp     `json:"timestamp"`
}

// JobExecutionsChanged is the notify event: the pending list, keyed by status (IN_PROGRESS, QUEUED).
// An empty map means nothing is pending.
type JobExecutionsChanged struct {
	Jobs      map[Status][]JobExecutionSummary `json:"jobs"`
	Timestamp Timestamp                        `json:"timestamp"`
}

// StartNextInput is the request of StartNextPendingJobExecution.
type StartNextInput struct {
	// StatusDetails are stored only if the next execution was QUEUED; nil leaves them unchanged.
	StatusDetails map[string]string
	// StepTimeoutInMinutes arms the step timer (1–10080); 0 sends none.
	StepTimeoutInMinutes int64
}

// DescribeInput is the request of DescribeJobExecution.
type DescribeInput struct {
	// JobID is a job id or "$next".
	JobID string
	// ExecutionNumber selects an execution; 0 means the latest.
	ExecutionNumber int64
	// IncludeJobDocument is always sent explicitly: AWS's default differs between documents.
	IncludeJobDocument bool
}

// UpdateInput is the request of UpdateJobExecution.
type UpdateInput struct {
	// Status is required: IN_PROGRESS, SUCCEEDED, FAILED or REJECTED.
	Status Status
	// StatusDetails replaces the stored map (send the complete map); nil or empty leaves it unchanged.
	// Check it first with ValidateStatusDetails: the service refuses bad keys and values.
	StatusDetails map[string]string
	// ExpectedVersion, when not nil, makes the update conditional on the stored versionNumber
	// (VersionMismatch otherwise). Use Version(n).
	ExpectedVersion *int64
	// ExecutionNumber selects an execution; 0 means the latest.
	ExecutionNumber int64
	// IncludeJobExecutionState asks for the new state (and versionNumber) in the answer.
	IncludeJobExecutionState bool
	// IncludeJobDocument asks for the job document in the answer.
	IncludeJobDocument bool
	// StepTimeoutInMinutes replaces the step timer (1–10080); 0 sends none.
	StepTimeoutInMinutes int64
}

// Version returns a pointer to v, for UpdateInput.ExpectedVersion.
func Version(v int64) *int64 { return &v }

// Wire shapes of the requests. clientToken is always set; zero values of optional fields are omitted.
type startNextRequest struct {
	StatusDetails        map[string]string `json:"statusDetails,omitempty"`
	StepTimeoutInMinutes int64             `json:"stepTimeoutInMinutes,omitempty"`
	ClientToken          string            `json:"clientToken"`
}

type describeRequest struct {
	ExecutionNumber    int64  `json:"executionNumber,omitempty"`
	IncludeJobDocument bool   `json:"includeJobDocument"`
	ClientToken        string `json:"clientToken"`
}

type updateRequest struct {
	Status                   Status            `json:"status"`
	StatusDetails            map[string]string `json:"statusDetails,omitempty"`
	ExpectedVersion          *int64            `json:"expectedVersion,omitempty"`
	ExecutionNumber          int64             `json:"executionNumber,omitempty"`
	IncludeJobExecutionState bool              `json:"includeJobExecutionState,omitempty"`
	IncludeJobDocument       bool              `json:"includeJobDocument,omitempty"`
	StepTimeoutInMinutes     int64             `json:"stepTimeoutInMinutes,omitempty"`
	ClientToken              string            `json:"clientToken"`
}

type tokenOnly struct {
	ClientToken string `json:"clientToken"`
}

// executionReply is the accepted answer of start-next and describe; a missing "execution" key means
// nothing is pending.
type executionReply struct {
	Execution *JobExecution `json:"execution"`
	Timestamp Timestamp     `json:"timestamp"`
}

// rejection is the payload of every /rejected topic.
type rejection struct {
	Code           string             `json:"code"`
	Message        string             `json:"message"`
	ClientToken    string             `json:"clientToken"`
	Timestamp      Timestamp          `json:"timestamp"`
	ExecutionState *JobExecutionState `json:"executionState"`
}
