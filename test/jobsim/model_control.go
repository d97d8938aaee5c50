package jobsim

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fieldota/fieldota/test/jobsim/registry"
)

// createJob is CreateJob: one QUEUED execution (executionNumber 1, versionNumber 1) per target.
func (m *model) createJob(in CreateJobInput) (CreateJobOutput, effects, *APIError) {
	var eff effects
	if !jobIDPattern.MatchString(in.JobID) {
		return CreateJobOutput{}, eff, invalid("jobId must match [a-zA-Z0-9_-]{1,64}")
	}
	if len(in.Targets) == 0 {
		return CreateJobOutput{}, eff, invalid("targets must name at least one thing or thing group")
	}
	selection := in.TargetSelection
	switch selection {
	case "":
		selection = "SNAPSHOT"
	case "SNAPSHOT", "CONTINUOUS":
	default:
		return CreateJobOutput{}, eff, invalid("targetSelection must be SNAPSHOT or CONTINUOUS")
	}
	var things, groups, arns []string
	seen := map[string]bool{}
	add := func(thing string) {
		if !seen[thing] {
			seen[thing] = true
			things = append(things, thing)
		}
	}
	for _, t := range in.Targets {
		if g, ok := registry.GroupFromArn(t); ok {
			members, err := m.members(g)
			if err != nil {
				return CreateJobOutput{}, eff, notFound("target %s: thing group %s does not exist", t, g)
			}
			groups = append(groups, g)
			arns = append(arns, registry.GroupArn(g))
			for _, th := range members {
				add(th)
			}
			continue
		}
		thing, ok := thingFromTarget(t)
		if !ok {
			return CreateJobOutput{}, eff, invalid("target %q is not a thing name, thing ARN or thing group ARN", t)
		}
		arns = append(arns, ThingArn(thing))
		add(thing)
	}
	if selection == "CONTINUOUS" && len(groups) == 0 {
		return CreateJobOutput{}, eff, invalid("a CONTINUOUS job must target at least one thing group")
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
	ro, abort, sc, aerr := m.plan(in, now)
	if aerr != nil {
		return CreateJobOutput{}, eff, aerr
	}
	status := JobInProgress
	if sc != nil {
		status = JobScheduled // advance opens it when its schedule allows
	}
	j := &job{id: in.JobID, document: in.Document, expires: expires, progressTimeout: timeout,
		retry: retry, status: status, created: now, updated: now, execs: map[string][]*execution{},
		retries: map[string]map[string]int{}, input: in, targetArns: arns, selection: selection, groups: groups,
		ro: ro, abort: abort, sched: sc}
	m.jobs[j.id] = j
	m.order = append(m.order, j)
	detail := "targets " + strings.Join(arns, ",")
	if len(groups) > 0 {
		detail += fmt.Sprintf(" (%d things)", len(things))
	}
	eff.events = append(eff.events, Event{Time: now, Kind: EventJobCreated, JobID: j.id, Status: status, Detail: detail})
	for _, t := range things {
		m.queue(j, t, 1, &eff)
	}
	m.advance(j, &eff)
	m.refreshJob(j, &eff)
	return CreateJobOutput{JobArn: JobArn(j.id), JobID: j.id, Description: in.Description}, eff, nil
}

// queue makes thing a target of j with a new QUEUED execution, to be released by the rollout.
func (m *model) queue(j *job, thing string, number int64, eff *effects) {
	now := m.now()
	e := &execution{job: j, thing: thing, number: number, status: StatusQueued, queuedAt: now, updated: now,
		version: 1, queueSeq: m.next()}
	if _, known := j.execs[thing]; !known {
		j.targets = append(j.targets, thing)
	}
	j.execs[thing] = append(j.execs[thing], e)
	j.unreleased = append(j.unreleased, e)
	m.event(eff, EventStatus, e, "queued")
}

// membership follows a thing group change into the CONTINUOUS jobs that target the group: a new
// member gets an execution (rolled out like the others); a member that left has its QUEUED
// execution REMOVED (one already IN_PROGRESS runs on).
func (m *model) membership(group, thing string, added bool) effects {
	m.mu.Lock()
	defer m.mu.Unlock()
	var eff effects
	for _, j := range m.order {
		if j.selection != "CONTINUOUS" || (j.status != JobInProgress && j.status != JobScheduled) || !slices.Contains(j.groups, group) {
			continue
		}
		e := j.latest(thing)
		switch {
		case added && (e == nil || e.status == StatusRemoved):
			var n int64 = 1
			if e != nil {
				n = e.number + 1
			}
			delete(j.retries, thing) // AWS: retries start over when membership changes
			m.queue(j, thing, n, &eff)
			m.advance(j, &eff)
		case !added && e != nil && e.status == StatusQueued && !m.stillTargeted(j, thing, group):
			w := m.watch(thing)
			e.status, e.updated = StatusRemoved, m.now()
			m.event(&eff, EventRemoved, e, "left thing group "+group)
			w.done(&eff)
		}
	}
	return eff
}

// stillTargeted: the thing is a direct target of j or a member of another of its groups.
func (m *model) stillTargeted(j *job, thing, left string) bool {
	if slices.Contains(j.targetArns, ThingArn(thing)) {
		return true
	}
	for _, g := range j.groups {
		if g == left {
			continue
		}
		if l, err := m.members(g); err == nil && slices.Contains(l, thing) {
			return true
		}
	}
	return false
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
	m.cancel(j, in.Force, in.ReasonCode, in.Comment, &eff)
	return eff, nil
}

// cancel ends a job: QUEUED executions (released or not) become CANCELED, IN_PROGRESS ones too with
// force. reasonCode "AbortConfig" marks an abort.
func (m *model) cancel(j *job, force bool, reasonCode, comment string, eff *effects) {
	w := m.watch(j.targets...)
	now := m.now()
	j.status, j.updated = JobCanceled, now
	j.forceCanceled = j.forceCanceled || force
	j.wake, j.unreleased = time.Time{}, nil
	if reasonCode != "" {
		j.reasonCode = reasonCode
	}
	if comment != "" {
		j.comment = comment
	}
	detail := "cancel"
	kind := EventJobCanceled
	switch {
	case reasonCode == "AbortConfig":
		detail, kind = "abort: "+comment, EventAborted
	case force:
		detail = "force cancel"
	}
	eff.events = append(eff.events, Event{Time: now, Kind: kind, JobID: j.id, Status: JobCanceled, Detail: detail})
	for _, t := range j.targets {
		e := j.latest(t)
		if e.status == StatusQueued || (force && e.status == StatusInProgress) {
			old := e.status
			e.status, e.updated, e.forceCanceled = StatusCanceled, now, force
			e.stepDeadline, e.progressDeadline = time.Time{}, time.Time{}
			how := "cancel"
			if force {
				how = "force cancel"
			}
			if reasonCode == "AbortConfig" {
				how = "abortConfig"
			}
			m.event(eff, EventStatus, e, old+" → CANCELED by "+how)
		}
	}
	w.done(eff)
	eff.timers = true
}

// cancelExecution is CancelJobExecution: a QUEUED execution becomes CANCELED, an IN_PROGRESS one
// only with force; expectedVersion, when given, must match.
func (m *model) cancelExecution(jobID, thing string, in CancelJobExecutionInput) (effects, *APIError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var eff effects
	e, derr := m.find(thing, jobID, 0)
	if derr != nil {
		return eff, notFound("Job execution of %s on %s not found", jobID, thing)
	}
	switch {
	case isTerminal(e.status):
		return eff, conflict(ExcInvalidStateTransition, "Job execution of %s on %s is %s", jobID, thing, e.status)
	case e.status == StatusInProgress && !in.Force:
		return eff, conflict(ExcInvalidStateTransition, "Job execution of %s on %s is IN_PROGRESS; use force to cancel it", jobID, thing)
	case in.ExpectedVersion != 0 && in.ExpectedVersion != e.version:
		return eff, conflict(ExcVersionConflict, "expectedVersion %d does not match versionNumber %d", in.ExpectedVersion, e.version)
	}
	if in.StatusDetails != nil {
		if msg, ok := validDetails(in.StatusDetails); !ok {
			return eff, invalid("%s", msg)
		}
		e.details = in.StatusDetails
	}
	w := m.watch(thing)
	old := e.status
	e.status, e.updated, e.forceCanceled = StatusCanceled, m.now(), in.Force
	e.stepDeadline, e.progressDeadline = time.Time{}, time.Time{}
	m.event(&eff, EventStatus, e, old+" → CANCELED by CancelJobExecution")
	m.refreshJob(e.job, &eff)
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
	pc := &PresignedURLConfig{ExpiresInSec: int64(j.expires / time.Second)}
	if c := j.input.PresignedURLConfig; c != nil {
		pc.RoleArn = c.RoleArn
	}
	d := JobDescription{
		JobArn: JobArn(j.id), JobID: j.id, TargetSelection: j.selection, Status: j.status,
		ForceCanceled: j.forceCanceled, ReasonCode: j.reasonCode, Comment: j.comment,
		Description: j.input.Description, PresignedURLConfig: pc, Targets: j.targetArns,
		TimeoutConfig: j.input.TimeoutConfig, JobExecutionsRetryConfig: j.input.JobExecutionsRetryConfig,
		JobExecutionsRolloutConfig: j.input.JobExecutionsRolloutConfig, AbortConfig: j.input.AbortConfig,
		SchedulingConfig: j.input.SchedulingConfig, ScheduledJobRollouts: j.sched.nextWindows(m.now(), 7),
		CreatedAt: unix(j.created), LastUpdatedAt: unix(j.updated), CompletedAt: unix(j.completed),
	}
	if j.status == JobInProgress || j.status == JobScheduled {
		d.JobProcessDetails.ProcessingTargets = j.targetArns
	}
	for _, t := range j.targets {
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

func (m *model) listExecutions(jobID string, in ListInput) ([]JobExecutionSummaryForJob, string, *APIError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.jobs[jobID]
	if j == nil {
		return nil, "", notFound("Job %s not found", jobID)
	}
	things := append([]string(nil), j.targets...)
	sort.Strings(things)
	out := []JobExecutionSummaryForJob{}
	for _, t := range things {
		e := j.latest(t)
		if in.Status != "" && e.status != in.Status {
			continue
		}
		out = append(out, JobExecutionSummaryForJob{ThingArn: ThingArn(t), JobExecutionSummary: JobExecutionSummary{
			Status: e.status, QueuedAt: unix(e.queuedAt), StartedAt: unix(e.startedAt), LastUpdatedAt: unix(e.updated),
			ExecutionNumber: e.number, RetryAttempt: e.number - 1,
		}})
	}
	page, next, aerr := paginate(out, in)
	return page, next, aerr
}

// ListInput is the paging and filter part of the List… calls.
type ListInput struct {
	Status          string
	TargetSelection string
	ThingGroupName  string
	MaxResults      int    // 0 = the default
	NextToken       string // from the previous page
}

// paginate cuts one page; the token is the index of the next entry (opaque to clients).
func paginate[T any](all []T, in ListInput) ([]T, string, *APIError) {
	start := 0
	if in.NextToken != "" {
		n, err := strconv.Atoi(in.NextToken)
		if err != nil || n < 0 || n > len(all) {
			return nil, "", invalid("nextToken is not valid")
		}
		start = n
	}
	size := in.MaxResults
	if size == 0 {
		size = 100
	}
	if size < 1 || size > 250 {
		return nil, "", invalid("maxResults must be 1 to 250")
	}
	end := min(len(all), start+size)
	next := ""
	if end < len(all) {
		next = strconv.Itoa(end)
	}
	return all[start:end], next, nil
}

// listJobs is ListJobs, oldest first.
func (m *model) listJobs(in ListInput) ([]JobSummary, string, *APIError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []JobSummary{}
	for _, j := range m.order {
		if in.Status != "" && j.status != in.Status || in.TargetSelection != "" && j.selection != in.TargetSelection ||
			in.ThingGroupName != "" && !slices.Contains(j.groups, in.ThingGroupName) {
			continue
		}
		out = append(out, JobSummary{JobArn: JobArn(j.id), JobID: j.id, TargetSelection: j.selection, Status: j.status,
			CreatedAt: unix(j.created), LastUpdatedAt: unix(j.updated), CompletedAt: unix(j.completed)})
	}
	return paginate(out, in)
}
