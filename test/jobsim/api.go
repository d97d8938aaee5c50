package jobsim

import (
	"fmt"
	"net/http"
	"time"
)

// Fake account and region for ARNs; AWS's own example values.
const (
	Region  = "us-east-1"
	Account = "123456789012"
)

// JobArn and ThingArn build ARNs as AWS prints them.
func JobArn(jobID string) string { return "arn:aws:iot:" + Region + ":" + Account + ":job/" + jobID }
func ThingArn(thing string) string {
	return "arn:aws:iot:" + Region + ":" + Account + ":thing/" + thing
}

// APIError is a control-plane error, shaped like AWS's (HTTP status, exception name, message).
type APIError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"` // e.g. "ResourceNotFoundException"
	Message string `json:"message"`
}

func (e *APIError) Error() string { return fmt.Sprintf("%s (%d): %s", e.Code, e.Status, e.Message) }

// Control-plane exception names.
const (
	ExcResourceNotFound       = "ResourceNotFoundException"
	ExcInvalidRequest         = "InvalidRequestException"
	ExcResourceAlreadyExists  = "ResourceAlreadyExistsException"
	ExcInvalidStateTransition = "InvalidStateTransitionException"
	ExcVersionConflict        = "VersionConflictException"
)

func notFound(format string, a ...any) *APIError {
	return &APIError{Status: http.StatusNotFound, Code: ExcResourceNotFound, Message: fmt.Sprintf(format, a...)}
}

func invalid(format string, a ...any) *APIError {
	return &APIError{Status: http.StatusBadRequest, Code: ExcInvalidRequest, Message: fmt.Sprintf(format, a...)}
}

func conflict(code, format string, a ...any) *APIError {
	return &APIError{Status: http.StatusConflict, Code: code, Message: fmt.Sprintf(format, a...)}
}

// PresignedURLConfig is CreateJob's presignedUrlConfig . The config types
// are aliases of unnamed structs so that callers may write the literals of the shared API contract.
type PresignedURLConfig = struct {
	RoleArn      string `json:"roleArn,omitempty"` // kept and shown; the emulator presigns with its own key
	ExpiresInSec int64  `json:"expiresInSec"`
}

// RolloutConfig is CreateJob's jobExecutionsRolloutConfig.
type RolloutConfig struct {
	MaximumPerMinute int              `json:"maximumPerMinute,omitempty"`
	ExponentialRate  *ExponentialRate `json:"exponentialRate,omitempty"`
}

// ExponentialRate is jobExecutionsRolloutConfig.exponentialRate.
type ExponentialRate struct {
	BaseRatePerMinute    int                `json:"baseRatePerMinute"`
	IncrementFactor      float64            `json:"incrementFactor"`
	RateIncreaseCriteria RateIncreaseCriter `json:"rateIncreaseCriteria"`
}

// RateIncreaseCriter is exponentialRate.rateIncreaseCriteria: exactly one of the two.
type RateIncreaseCriter struct {
	NumberOfNotifiedThings  int `json:"numberOfNotifiedThings,omitempty"`
	NumberOfSucceededThings int `json:"numberOfSucceededThings,omitempty"`
}

// AbortCriteria is one entry of abortConfig.criteriaList.
type AbortCriteria struct {
	FailureType               string  `json:"failureType"` // FAILED, REJECTED, TIMED_OUT or ALL
	Action                    string  `json:"action"`      // CANCEL
	ThresholdPercentage       float64 `json:"thresholdPercentage"`
	MinNumberOfExecutedThings int     `json:"minNumberOfExecutedThings"`
}

// AbortConfig is CreateJob's abortConfig.
type AbortConfig struct {
	CriteriaList []AbortCriteria `json:"criteriaList"`
}

// MaintenanceWindow is one of schedulingConfig.maintenanceWindows: a cron expression
// "cron(min hour day-of-month month day-of-week year)" and a duration.
type MaintenanceWindow struct {
	StartTime         string `json:"startTime"`
	DurationInMinutes int    `json:"durationInMinutes"`
}

// SchedulingConfig is CreateJob's schedulingConfig; times are "YYYY-MM-DDTHH:MM" (UTC).
type SchedulingConfig struct {
	StartTime          string              `json:"startTime,omitempty"`
	EndTime            string              `json:"endTime,omitempty"`
	EndBehavior        string              `json:"endBehavior,omitempty"` // STOP_ROLLOUT, CANCEL, FORCE_CANCEL
	MaintenanceWindows []MaintenanceWindow `json:"maintenanceWindows,omitempty"`
}

// ScheduledJobRollout is one entry of DescribeJob's scheduledJobRollouts.
type ScheduledJobRollout struct {
	StartTime string `json:"startTime"`
}

// TimeoutConfig is CreateJob's timeoutConfig.
type TimeoutConfig = struct {
	InProgressTimeoutInMinutes int64 `json:"inProgressTimeoutInMinutes"`
}

// RetryCriteria is one entry of jobExecutionsRetryConfig.criteriaList.
type RetryCriteria = struct {
	FailureType     string `json:"failureType"` // FAILED, TIMED_OUT or ALL
	NumberOfRetries int    `json:"numberOfRetries"`
}

// RetryConfig is CreateJob's jobExecutionsRetryConfig.
type RetryConfig = struct {
	CriteriaList []RetryCriteria `json:"criteriaList"`
}

// CreateJobInput is CreateJob's request body.
type CreateJobInput struct {
	JobID                    string              `json:"jobId"`
	Targets                  []string            `json:"targets"`  // thing names or thing ARNs
	Document                 string              `json:"document"` // job document JSON, placeholders unexpanded
	Description              string              `json:"description,omitempty"`
	PresignedURLConfig       *PresignedURLConfig `json:"presignedUrlConfig,omitempty"`
	TimeoutConfig            *TimeoutConfig      `json:"timeoutConfig,omitempty"`
	JobExecutionsRetryConfig *RetryConfig        `json:"jobExecutionsRetryConfig,omitempty"`
	// TargetSelection is SNAPSHOT (default) or CONTINUOUS (group targets only).
	TargetSelection            string            `json:"targetSelection,omitempty"`
	JobExecutionsRolloutConfig *RolloutConfig    `json:"jobExecutionsRolloutConfig,omitempty"`
	AbortConfig                *AbortConfig      `json:"abortConfig,omitempty"`
	SchedulingConfig           *SchedulingConfig `json:"schedulingConfig,omitempty"`
	// DestinationPackageVersions are package version ARNs written into $package at SUCCEEDED.
	DestinationPackageVersions []string `json:"destinationPackageVersions,omitempty"`
}

// CreateJobOutput is CreateJob's response.
type CreateJobOutput struct {
	JobArn      string `json:"jobArn"`
	JobID       string `json:"jobId"`
	Description string `json:"description,omitempty"`
}

// CancelJobInput is CancelJob's request (force is a query parameter on the HTTP API).
type CancelJobInput struct {
	Force      bool   `json:"force,omitempty"`
	ReasonCode string `json:"reasonCode,omitempty"`
	Comment    string `json:"comment,omitempty"`
}

// CancelJobExecutionInput is CancelJobExecution's request (force is a query parameter on HTTP).
type CancelJobExecutionInput struct {
	Force           bool              `json:"-"`
	ExpectedVersion int64             `json:"expectedVersion,omitempty"`
	StatusDetails   map[string]string `json:"statusDetails,omitempty"`
}

// JobSummary is one entry of ListJobs.
type JobSummary struct {
	JobArn          string `json:"jobArn"`
	JobID           string `json:"jobId"`
	TargetSelection string `json:"targetSelection"`
	Status          string `json:"status"`
	CreatedAt       int64  `json:"createdAt"`
	LastUpdatedAt   int64  `json:"lastUpdatedAt"`
	CompletedAt     int64  `json:"completedAt,omitempty"`
}

// JobProcessDetails counts the latest execution of each target by status.
type JobProcessDetails struct {
	NumberOfCanceledThings   int `json:"numberOfCanceledThings"`
	NumberOfSucceededThings  int `json:"numberOfSucceededThings"`
	NumberOfFailedThings     int `json:"numberOfFailedThings"`
	NumberOfRejectedThings   int `json:"numberOfRejectedThings"`
	NumberOfQueuedThings     int `json:"numberOfQueuedThings"`
	NumberOfInProgressThings int `json:"numberOfInProgressThings"`
	NumberOfRemovedThings    int `json:"numberOfRemovedThings"`
	NumberOfTimedOutThings   int `json:"numberOfTimedOutThings"`
	// ProcessingTargets are the targets (ARNs) still being rolled out.
	ProcessingTargets []string `json:"processingTargets,omitempty"`
}

// JobDescription is DescribeJob's "job". Times are epoch seconds.
type JobDescription struct {
	JobArn                     string                `json:"jobArn"`
	JobID                      string                `json:"jobId"`
	TargetSelection            string                `json:"targetSelection"`
	Status                     string                `json:"status"`
	ForceCanceled              bool                  `json:"forceCanceled,omitempty"`
	ReasonCode                 string                `json:"reasonCode,omitempty"`
	Comment                    string                `json:"comment,omitempty"`
	Targets                    []string              `json:"targets"`
	Description                string                `json:"description,omitempty"`
	PresignedURLConfig         *PresignedURLConfig   `json:"presignedUrlConfig,omitempty"`
	TimeoutConfig              *TimeoutConfig        `json:"timeoutConfig,omitempty"`
	JobExecutionsRetryConfig   *RetryConfig          `json:"jobExecutionsRetryConfig,omitempty"`
	JobExecutionsRolloutConfig *RolloutConfig        `json:"jobExecutionsRolloutConfig,omitempty"`
	AbortConfig                *AbortConfig          `json:"abortConfig,omitempty"`
	SchedulingConfig           *SchedulingConfig     `json:"schedulingConfig,omitempty"`
	ScheduledJobRollouts       []ScheduledJobRollout `json:"scheduledJobRollouts,omitempty"`
	CreatedAt                  int64                 `json:"createdAt"`
	LastUpdatedAt              int64                 `json:"lastUpdatedAt"`
	CompletedAt                int64                 `json:"completedAt,omitempty"`
	JobProcessDetails          JobProcessDetails     `json:"jobProcessDetails"`
}

// ExecutionStatusDetails is the control plane's statusDetails wrapper.
type ExecutionStatusDetails struct {
	DetailsMap map[string]string `json:"detailsMap,omitempty"`
}

// JobExecution is DescribeJobExecution's "execution" (control-plane shape, plus thingName).
type JobExecution struct {
	JobID                            string                 `json:"jobId"`
	Status                           string                 `json:"status"`
	ForceCanceled                    bool                   `json:"forceCanceled,omitempty"`
	StatusDetails                    ExecutionStatusDetails `json:"statusDetails"`
	ThingArn                         string                 `json:"thingArn"`
	ThingName                        string                 `json:"thingName"`
	QueuedAt                         int64                  `json:"queuedAt"`
	StartedAt                        int64                  `json:"startedAt,omitempty"`
	LastUpdatedAt                    int64                  `json:"lastUpdatedAt"`
	ExecutionNumber                  int64                  `json:"executionNumber"`
	VersionNumber                    int64                  `json:"versionNumber"`
	ApproximateSecondsBeforeTimedOut int64                  `json:"approximateSecondsBeforeTimedOut,omitempty"`
}

// JobExecutionSummary is the summary inside ListJobExecutionsForJob.
type JobExecutionSummary struct {
	Status          string `json:"status"`
	QueuedAt        int64  `json:"queuedAt"`
	StartedAt       int64  `json:"startedAt,omitempty"`
	LastUpdatedAt   int64  `json:"lastUpdatedAt"`
	ExecutionNumber int64  `json:"executionNumber"`
	RetryAttempt    int64  `json:"retryAttempt"`
}

// JobExecutionSummaryForJob is one entry of ListJobExecutionsForJob: the latest execution per thing.
type JobExecutionSummaryForJob struct {
	ThingArn            string              `json:"thingArn"`
	JobExecutionSummary JobExecutionSummary `json:"jobExecutionSummary"`
}

// Event is one thing that happened in the Jobs service, for logs and for `fieldota sim`.
type Event struct {
	Time            time.Time         `json:"time"`
	Kind            string            `json:"kind"` // Event* constants
	JobID           string            `json:"jobId,omitempty"`
	Thing           string            `json:"thing,omitempty"`
	ExecutionNumber int64             `json:"executionNumber,omitempty"`
	Status          string            `json:"status,omitempty"`
	Detail          string            `json:"detail,omitempty"`
	StatusDetails   map[string]string `json:"statusDetails,omitempty"` // the execution's, on status and updated events
}

func (e Event) String() string {
	s := e.Time.UTC().Format("15:04:05.000") + " " + e.Kind
	if e.JobID != "" {
		s += " job=" + e.JobID
	}
	if e.Thing != "" {
		s += " thing=" + e.Thing
	}
	if e.ExecutionNumber != 0 {
		s += fmt.Sprintf(" execution=%d", e.ExecutionNumber)
	}
	if e.Status != "" {
		s += " status=" + e.Status
	}
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s
}

func unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}
