package jobs

import (
	"errors"
	"fmt"
)

// Rejection codes of the Jobs device API (the "code" of a /rejected payload).
const (
	CodeInvalidTopic           = "InvalidTopic"
	CodeInvalidJson            = "InvalidJson"
	CodeInvalidRequest         = "InvalidRequest"
	CodeInvalidStateTransition = "InvalidStateTransition"
	CodeResourceNotFound       = "ResourceNotFound"
	CodeVersionMismatch        = "VersionMismatch"
	CodeInternalError          = "InternalError"
	CodeRequestThrottled       = "RequestThrottled"
	CodeTerminalStateReached   = "TerminalStateReached"
)

// Sentinels matched by errors.Is against a *RejectedError of the same code.
var (
	ErrInvalidTopic           = errors.New("jobs: " + CodeInvalidTopic)
	ErrInvalidJson            = errors.New("jobs: " + CodeInvalidJson)
	ErrInvalidRequest         = errors.New("jobs: " + CodeInvalidRequest)
	ErrInvalidStateTransition = errors.New("jobs: " + CodeInvalidStateTransition)
	ErrResourceNotFound       = errors.New("jobs: " + CodeResourceNotFound)
	ErrVersionMismatch        = errors.New("jobs: " + CodeVersionMismatch)
	ErrInternalError          = errors.New("jobs: " + CodeInternalError)
	ErrRequestThrottled       = errors.New("jobs: " + CodeRequestThrottled)
	ErrTerminalStateReached   = errors.New("jobs: " + CodeTerminalStateReached)
)

var codeSentinel = map[string]error{
	CodeInvalidTopic:           ErrInvalidTopic,
	CodeInvalidJson:            ErrInvalidJson,
	CodeInvalidRequest:         ErrInvalidRequest,
	CodeInvalidStateTransition: ErrInvalidStateTransition,
	CodeResourceNotFound:       ErrResourceNotFound,
	CodeVersionMismatch:        ErrVersionMismatch,
	CodeInternalError:          ErrInternalError,
	CodeRequestThrottled:       ErrRequestThrottled,
	CodeTerminalStateReached:   ErrTerminalStateReached,
}

// Errors of the client itself.
var (
	// ErrTimeout: no accepted/rejected answer arrived within Config.RequestTimeout (after the retries).
	ErrTimeout = errors.New("jobs: no answer within the request timeout")
	// ErrPublish: paho could not hand the request to the broker.
	ErrPublish = errors.New("jobs: publish failed")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("jobs: client closed")
	// ErrSubscriptionRefused: the broker granted 0x80 for a Jobs topic (the policy or ACL denies it).
	ErrSubscriptionRefused = errors.New("jobs: subscription refused by the broker")
	// ErrInvalidJobID: a job id that would not name exactly one topic level.
	ErrInvalidJobID = errors.New("jobs: invalid job id")
	// ErrInvalidStatusDetails: statusDetails the service would refuse (see ValidateStatusDetails).
	ErrInvalidStatusDetails = errors.New("jobs: invalid statusDetails")
)

// RejectedError is an answer on a /rejected topic.
type RejectedError struct {
	// Op is the request: "GetPendingJobExecutions", "StartNextPendingJobExecution",
	// "DescribeJobExecution" or "UpdateJobExecution" (or the topic of a raw request).
	Op      string
	JobID   string
	Code    string
	Message string
	// ExecutionState is the current state AWS sends with VersionMismatch and InvalidStateTransition.
	ExecutionState *JobExecutionState
	ClientToken    string
}

func (e *RejectedError) Error() string {
	s := fmt.Sprintf("jobs: %s", e.Op)
	if e.JobID != "" {
		s += " " + e.JobID
	}
	s += " rejected: " + e.Code
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.ExecutionState != nil {
		s += fmt.Sprintf(" (execution %s, version %d)", e.ExecutionState.Status, e.ExecutionState.VersionNumber)
	}
	return s
}

// Is matches the sentinel of the same code.
func (e *RejectedError) Is(target error) bool {
	s, ok := codeSentinel[e.Code]
	return ok && s == target
}

// Retryable reports whether err is worth sending again with a fresh clientToken: the service was
// throttling or failing, or nothing answered.
func Retryable(err error) bool {
	return errors.Is(err, ErrRequestThrottled) || errors.Is(err, ErrInternalError) ||
		errors.Is(err, ErrTimeout) || errors.Is(err, ErrPublish)
}
