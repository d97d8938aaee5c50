package jobsim

import (
	"encoding/json"
	"sort"
	"strings"
	"time"
)

// createJob is CreateJob: one QUEUED execution (executionNumber 1, versionNumber 1) per target.
func (m *model) createJob(in CreateJobInput) (CreateJobOutput, effects, *APIError) {
	var eff effects
	if !jobIDPattern.MatchString(in.JobID) {
		return CreateJobOutput{}, eff, invalid("jobId must match [a-zA-Z0-9_-]{1,64}")
	}
	if len(in.Targets) == 0 {
		return CreateJobOutput{}, eff, invalid("targets must name at least one thing")
	}
	var things []string
	seen := map[string]bool{}
	for _, t := range in.Targets {
		thing, ok := thingFromTarget(t)
		if !ok {
			return CreateJobOutput{}, eff, invalid("target %q is not a thing name or thing ARN (thing groups are not emulated)", t)
		}
		if !seen[thing] {
			seen[thing] = true
			things = append(things, thing)
		}
	}
	doc := strings.TrimSpace(in.Document)
	if doc == "" || len(in.Document) > maxDocumentLength || !json.Valid([]byte(doc)) || doc[0] != '{' {
		return CreateJobOutput{}, eff, invalid("document must be a JSON object of at most %d characters", maxDocumentLength)
	}
	expires := 3600 * time.Second
	if c := in.PresignedURLConfig; c != nil {
		if c.ExpiresInSec < 60 || c.ExpiresInSec > 3600 {
			return CreateJobOutput{}, eff, invalid("presignedUrlConfig.expiresInSec must be 60 to 3600")
		}
		expires = time.Duration(c.ExpiresInSec) * time.Second
	}
	var timeout int64
	if c := in.TimeoutConfig; c != nil {
		if c.InProgressTimeoutInMinutes < 1 || c.InProgressTimeoutInMinutes > maxStepTimeout {
			return CreateJobOutput{}, eff, invalid("timeoutConfig.inProgressTimeoutInMinutes must be 1 to 10080")
		}
		timeout = c.InProgressTimeoutInMinutes
	}
	retry := map[string]int{}
	if c := in.JobExecutionsRetryConfig; c != nil {
		for _, cr := range c.CriteriaList {
			switch cr.FailureType {
			case StatusFailed, StatusTimedOut, "ALL":
			default:
				return CreateJobOutput{}, eff, invalid("failureType must be FAILED, TIMED_OUT or ALL")
			}
			if cr.NumberOfRetries < 0 || cr.NumberOfRetries > 10 {
				return CreateJobOutput{}, eff, invalid("numberOfRetries must be 0 to 10")
			}
			if _, dup := retry[cr.FailureType]; dup {
				return CreateJobOutput{}, eff, invalid("failureType %s given twice", cr.FailureType)
			}
			retry[cr.FailureType] = cr.NumberOfRetries
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.jobs[in.JobID] != nil {
		return CreateJobOutput{}, eff, conflict(ExcResourceAlreadyExists, "Job %s already exists", in.JobID)
	}
	now := m.now()
	j := &job{id: in.JobID, document: in.Document, targets: things, expires: expires, progressTimeout: timeout,
		retry: retry, status: JobInProgress, created: now, updated: now, execs: map[string][]*execution{},
		retries: map[string]map[string]int{}, input: in}
	w := m.watch(things...)
	m.jobs[j.id] = j
	m.order = append(m.order, j)
	eff.events = append(eff.events, Event{Time: now, Kind: EventJobCreated, JobID: j.id, Status: JobInProgress,
		Detail: "targets " + strings.Join(things, ",")})
	for _, t := range things {
		e := &execution{job: j, thing: t, number: 1, status: StatusQueued, queuedAt: now, updated: now,
			version: 1, queueSeq: m.next()}
		j.execs[t] = []*execution{e}
		m.event(&eff, EventStatus, e, "queued")
	}
	w.done(&eff)
	return CreateJobOutput{JobArn: JobArn(j.id), JobID: j.id, Description: in.Description}, eff, nil
}

// cancelJob is CancelJob: QUEUED executions become CANCELED, IN_PROGRESS ones only with force.
func (m *model) cancelJob(jobID string, in CancelJobInput) (effects, *APIError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var eff effects
	j := m.jobs[jobID]
	if j == nil {
		return eff, notFound("Job %s not found", jobID)
	}
	if j.status == JobCompleted {
		return eff, conflict(ExcInvalidStateTransition, "Job %s is COMPLETED and cannot be canceled", jobID)
	}
	if j.status == JobCanceled && !in.Force {
		return eff, nil // already canceled: nothing more to do without force
	}
	w := m.watch(j.targets...)
	now := m.now()
	j.status, j.updated = JobCanceled, now
	j.forceCanceled = j.forceCanceled || in.Force
	if in.ReasonCode != "" {
		j.reasonCode = in.ReasonCode
	}
	if in.Comment != "" {
		j.comment = in.Comment
	}
	detail := "cancel"
	if in.Force {
		detail = "force cancel"
	}
	eff.events = append(eff.events, Event{Time: now, Kind: EventJobCanceled, JobID: jobID, Status: JobCanceled, Detail: detail})
	for _, t := range j.targets {
		e := j.latest(t)
		if e.status == StatusQueued || (in.Force && e.status == StatusInProgress) {
			old := e.status
			e.status, e.updated, e.forceCanceled = StatusCanceled, now, in.Force
			e.stepDeadline, e.progressDeadline = time.Time{}, time.Time{}
			m.event(&eff, EventStatus, e, old+" → CANCELED by "+detail)
		}
	}
	w.done(&eff)
	eff.timers = true
	return eff, nil
}

// deleteJob is DeleteJob: without force only a COMPLETED or CANCELED job may go; with force the
// executions vanish too, and a device asking after them gets ResourceNotFound.
func (m *model) deleteJob(jobID string, force bool) (effects, *APIError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var eff effects
	j := m.jobs[jobID]
	if j == nil {
		return eff, notFound("Job %s not found", jobID)
	}
	if !force {
		for _, t := range j.targets {
			if j.latest(t).status == StatusInProgress {
				return eff, conflict(ExcInvalidStateTransition,
					"Job %s has IN_PROGRESS executions; use force to delete it", jobID)
			}
		}
	}
	w := m.watch(j.targets...)
	delete(m.jobs, jobID)
	for i, o := range m.order {
		if o == j {
			m.order = append(m.order[:i:i], m.order[i+1:]...)
			break
		}
	}
	detail := "delete"
	if force {
		detail = "force delete"
	}
	eff.events = append(eff.events, Event{Time: m.now(), Kind: EventJobDeleted, JobID: jobID, Detail: detail})
	w.done(&eff)
	eff.timers = true
	return eff, nil
}

func (m *model) describeJob(jobID string) (JobDescription, *APIError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.jobs[jobID]
	if j == nil {
		return JobDescription{}, notFound("Job %s not found", jobID)
	}
	d := JobDescription{
		JobArn: JobArn(j.id), JobID: j.id, TargetSelection: "SNAPSHOT", Status: j.status,
		ForceCanceled: j.forceCanceled, ReasonCode: j.reasonCode, Comment: j.comment,
		Description: j.input.Description, PresignedURLConfig: &PresignedURLConfig{ExpiresInSec: int64(j.expires / time.Second)},
		TimeoutConfig: j.input.TimeoutConfig, JobExecutionsRetryConfig: j.input.JobExecutionsRetryConfig,
		CreatedAt: unix(j.created), LastUpdatedAt: unix(j.updated), CompletedAt: unix(j.completed),
	}
	for _, t := range j.targets {
		d.Targets = append(d.Targets, ThingArn(t))
		p := &d.JobProcessDetails
		switch j.latest(t).status {
		case StatusQueued:
			p.NumberOfQueuedThings++
		case StatusInProgress:
			p.NumberOfInProgressThings++
		case StatusSucceeded:
			p.NumberOfSucceededThings++
		case StatusFailed:
			p.NumberOfFailedThings++
		case StatusTimedOut:
			p.NumberOfTimedOutThings++
		case StatusRejected:
			p.NumberOfRejectedThings++
		case StatusRemoved:
			p.NumberOfRemovedThings++
		case StatusCanceled:
			p.NumberOfCanceledThings++
		}
	}
	return d, nil
}

func (m *model) jobDocument(jobID string) (string, *APIError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.jobs[jobID]
	if j == nil {
		return "", notFound("Job %s not found", jobID)
	}
	return j.document, nil
}

func (m *model) describeExecution(jobID, thing string, number int64) (JobExecution, *APIError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, derr := m.find(thing, jobID, number)
	if derr != nil {
		return JobExecution{}, notFound("Job execution of %s on %s not found", jobID, thing)
	}
	x := JobExecution{
		JobID: jobID, Status: e.status, ForceCanceled: e.forceCanceled, ThingArn: ThingArn(thing), ThingName: thing,
		QueuedAt: unix(e.queuedAt), StartedAt: unix(e.startedAt), LastUpdatedAt: unix(e.updated),
		ExecutionNumber: e.number, VersionNumber: e.version, ApproximateSecondsBeforeTimedOut: m.secondsLeft(e.deadline()),
	}
	x.StatusDetails.DetailsMap = snap(e).Details
	return x, nil
}

func (m *model) secondsLeft(d time.Time) int64 {
	if d.IsZero() {
		return 0
	}
	left := d.Sub(m.now())
	if left <= 0 {
		return 0
	}
	return int64((left + time.Second - 1) / time.Second)
}

func (m *model) listExecutions(jobID string) ([]JobExecutionSummaryForJob, *APIError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.jobs[jobID]
	if j == nil {
		return nil, notFound("Job %s not found", jobID)
	}
	things := append([]string(nil), j.targets...)
	sort.Strings(things)
	out := []JobExecutionSummaryForJob{}
	for _, t := range things {
		e := j.latest(t)
		out = append(out, JobExecutionSummaryForJob{ThingArn: ThingArn(t), JobExecutionSummary: JobExecutionSummary{
			Status: e.status, QueuedAt: unix(e.queuedAt), StartedAt: unix(e.startedAt), LastUpdatedAt: unix(e.updated),
			ExecutionNumber: e.number, RetryAttempt: e.number - 1,
		}})
	}
	return out, nil
}
