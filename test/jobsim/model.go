package jobsim

import (
	"errors"
	"sort"
	"sync"
	"time"
)

// Execution statuses (AWS IoT JobExecutionStatus).
const (
	StatusQueued     = "QUEUED"
	StatusInProgress = "IN_PROGRESS"
	StatusSucceeded  = "SUCCEEDED"
	StatusFailed     = "FAILED"
	StatusTimedOut   = "TIMED_OUT"
	StatusRejected   = "REJECTED"
	StatusRemoved    = "REMOVED"
	StatusCanceled   = "CANCELED"
)

// Job statuses (AWS IoT JobStatus). Deletion is immediate here, so DELETION_IN_PROGRESS never shows.
const (
	JobInProgress = "IN_PROGRESS"
	JobCanceled   = "CANCELED"
	JobCompleted  = "COMPLETED"
	JobScheduled  = "SCHEDULED"
)

// Device-plane error codes, as AWS sends them in the "code" field of a /rejected payload.
const (
	CodeInvalidTopic           = "InvalidTopic"
	CodeInvalidJSON            = "InvalidJson"
	CodeInvalidRequest         = "InvalidRequest"
	CodeInvalidStateTransition = "InvalidStateTransition"
	CodeResourceNotFound       = "ResourceNotFound"
	CodeVersionMismatch        = "VersionMismatch"
	CodeInternalError          = "InternalError"
	CodeRequestThrottled       = "RequestThrottled"
	CodeTerminalStateReached   = "TerminalStateReached"
)

// Event kinds passed to Config.OnEvent.
const (
	EventJobCreated    = "job-created"
	EventStatus        = "status"       // an execution changed status (Detail says who changed it)
	EventUpdated       = "updated"      // a device update that kept the status (progress, step timer)
	EventTimedOut      = "timed-out"    // a step or in-progress timer expired
	EventRetryQueued   = "retry-queued" // a FAILED/TIMED_OUT execution was re-queued with a new executionNumber
	EventJobCanceled   = "job-canceled"
	EventJobDeleted    = "job-deleted"
	EventJobCompleted  = "job-completed"
	EventNotify        = "notify"      // JobExecutionsChanged published
	EventNotifyNext    = "notify-next" // NextJobExecutionChanged published
	EventRejected      = "rejected"    // a device request was answered on /rejected (Detail: code and message)
	EventDeviceRequest = "request"     // a device request was accepted (Detail: the operation)
	EventNotified      = "rolled-out"  // the rollout released an execution to its device
	EventJobScheduled  = "job-scheduled"
	EventJobRollout    = "job-rollout" // a scheduled job started (or resumed) rolling out
	EventScheduleEnded = "schedule-ended"
	EventAborted       = "job-aborted" // abortConfig canceled the job
	EventRemoved       = "removed"     // a continuous job's thing left its group
)

func isTerminal(status string) bool {
	switch status {
	case StatusSucceeded, StatusFailed, StatusTimedOut, StatusRejected, StatusRemoved, StatusCanceled:
		return true
	}
	return false
}

// deviceError is a rejection on the device plane; state is sent for InvalidStateTransition and
// VersionMismatch only, as AWS does.
type deviceError struct {
	code, msg string
	state     *execSnap
}

func (e *deviceError) Error() string { return e.code + ": " + e.msg }

func rejectf(code, msg string) *deviceError { return &deviceError{code: code, msg: msg} }

// execution is one attempt of one job on one thing.
type execution struct {
	job                            *job
	thing                          string
	number                         int64
	status                         string
	details                        map[string]string
	queuedAt, startedAt, updated   time.Time
	version                        int64
	queueSeq, startSeq             int64
	stepDeadline, progressDeadline time.Time // zero: no timer
	forceCanceled                  bool
	// notified: the rollout released the execution, so its device sees it (rollout.go).
	notified bool
}

// deadline is when the execution times out; zero when no timer runs.
func (e *execution) deadline() time.Time {
	switch {
	case e.stepDeadline.IsZero():
		return e.progressDeadline
	case e.progressDeadline.IsZero() || e.stepDeadline.Before(e.progressDeadline):
		return e.stepDeadline
	}
	return e.progressDeadline
}

type job struct {
	id, document    string
	targets         []string // thing names, in the order they became targets
	targetArns      []string // as given: thing and thing group ARNs
	selection       string   // SNAPSHOT or CONTINUOUS
	groups          []string // thing groups targeted
	ro              *rollout
	abort           []AbortCriteria
	sched           *schedule
	unreleased      []*execution // QUEUED executions not yet notified, in rollout order
	wake            time.Time    // when advance must look at the job again (zero: never)
	expires         time.Duration
	progressTimeout int64 // minutes; 0 = none
	retry           map[string]int
	status          string
	forceCanceled   bool
	reasonCode      string
	comment         string
	created         time.Time
	updated         time.Time
	completed       time.Time
	execs           map[string][]*execution // thing → executions, oldest first
	retries         map[string]map[string]int
	input           CreateJobInput
}

func (j *job) latest(thing string) *execution {
	l := j.execs[thing]
	if len(l) == 0 {
		return nil
	}
	return l[len(l)-1]
}

// execSnap is an immutable copy of an execution, what the front ends render.
type execSnap struct {
	JobID, Thing    string
	Number, Version int64
	Status          string
	Details         map[string]string
	QueuedAt        time.Time
	StartedAt       time.Time
	UpdatedAt       time.Time
	Deadline        time.Time
	Document        string
	Expires         time.Duration
	ForceCanceled   bool
}

func snap(e *execution) execSnap {
	var d map[string]string
	if e.details != nil {
		d = make(map[string]string, len(e.details))
		for k, v := range e.details {
			d[k] = v
		}
	}
	return execSnap{
		JobID: e.job.id, Thing: e.thing, Number: e.number, Version: e.version, Status: e.status, Details: d,
		QueuedAt: e.queuedAt, StartedAt: e.startedAt, UpdatedAt: e.updated, Deadline: e.deadline(),
		Document: e.job.document, Expires: e.job.expires, ForceCanceled: e.forceCanceled,
	}
}

// notice is a notification the front end must publish to one thing.
type notice struct {
	thing   string
	next    bool       // notify-next (else notify)
	head    *execSnap  // notify-next: the new head, nil when nothing is pending
	pending []execSnap // notify: the pending list, IN_PROGRESS first
}

// effects are what a model operation asks of the outside world, applied after the lock is released.
type effects struct {
	notices []notice
	events  []Event
	timers  bool // a deadline may have changed
}

// model is the Jobs service state: pure, lock-protected, no I/O. Every mutating method returns the
// notifications and events it causes; the caller publishes them.
type model struct {
	mu      sync.Mutex
	members func(group string) ([]string, error) // the registry's view of a thing group
	now     func() time.Time
	minute  time.Duration
	jobs    map[string]*job
	seq     int64
	order   []*job // creation order; deleted jobs are removed
}

func newModel(now func() time.Time, minute time.Duration) *model {
	return &model{now: now, minute: minute, jobs: map[string]*job{},
		members: func(g string) ([]string, error) { return nil, errors.New("no thing registry") }}
}

func (m *model) next() int64 { m.seq++; return m.seq }

// pending returns the thing's QUEUED and IN_PROGRESS executions in AWS's order: IN_PROGRESS first
// (by start), then QUEUED by queue time.
func (m *model) pending(thing string) []*execution {
	var l []*execution
	for _, j := range m.order {
		if e := j.latest(thing); e != nil && e.notified && (e.status == StatusQueued || e.status == StatusInProgress) {
			l = append(l, e)
		}
	}
	sort.SliceStable(l, func(a, b int) bool {
		ea, eb := l[a], l[b]
		if (ea.status == StatusInProgress) != (eb.status == StatusInProgress) {
			return ea.status == StatusInProgress
		}
		if ea.status == StatusInProgress {
			return ea.startSeq < eb.startSeq
		}
		return ea.queueSeq < eb.queueSeq
	})
	return l
}

type execKey struct {
	job    string
	number int64
}

type pendingView struct {
	keys []execKey
}

func (m *model) view(thing string) pendingView {
	var v pendingView
	for _, e := range m.pending(thing) {
		v.keys = append(v.keys, execKey{e.job.id, e.number})
	}
	return v
}

// watch records the pending lists of things before a mutation; done compares them afterwards and
// emits notify when an execution joined or left the list and notify-next when the head changed
// (AWS: "sent only when which execution $next would return changes").
type watch struct {
	m      *model
	before map[string]pendingView
}

func (m *model) watch(things ...string) *watch {
	w := &watch{m: m, before: map[string]pendingView{}}
	for _, t := range things {
		w.before[t] = m.view(t)
	}
	return w
}

func (w *watch) done(eff *effects) {
	things := make([]string, 0, len(w.before))
	for t := range w.before {
		things = append(things, t)
	}
	sort.Strings(things)
	for _, t := range things {
		before, after := w.before[t], w.m.view(t)
		if !sameSet(before.keys, after.keys) {
			n := notice{thing: t}
			for i, e := range w.m.pending(t) {
				if i == maxListed {
					break
				}
				n.pending = append(n.pending, snap(e))
			}
			eff.notices = append(eff.notices, n)
		}
		var hb, ha *execKey
		if len(before.keys) > 0 {
			hb = &before.keys[0]
		}
		if len(after.keys) > 0 {
			ha = &after.keys[0]
		}
		if (hb == nil) != (ha == nil) || (hb != nil && *hb != *ha) {
			n := notice{thing: t, next: true}
			if l := w.m.pending(t); len(l) > 0 {
				s := snap(l[0])
				n.head = &s
			}
			eff.notices = append(eff.notices, n)
		}
	}
}

func sameSet(a, b []execKey) bool {
	if len(a) != len(b) {
		return false
	}
	in := map[execKey]bool{}
	for _, k := range a {
		in[k] = true
	}
	for _, k := range b {
		if !in[k] {
			return false
		}
	}
	return true
}

func (m *model) event(eff *effects, kind string, e *execution, detail string) {
	m.eventAt(eff, m.now(), kind, e, detail)
}

// eventAt records an event at a time the caller already decided by: a rollout's releases carry
// the instant their minute's budget was counted at, so the log shows the rate that was kept (a
// stamp read later, after a pause, put the next minute's batch less than a minute after it).
func (m *model) eventAt(eff *effects, at time.Time, kind string, e *execution, detail string) {
	ev := Event{Time: at, Kind: kind, Detail: detail}
	if e != nil {
		ev.JobID, ev.Thing, ev.ExecutionNumber, ev.Status = e.job.id, e.thing, e.number, e.status
		if (kind == EventStatus || kind == EventUpdated) && len(e.details) > 0 {
			ev.StatusDetails = snap(e).Details // a copy: the event outlives the lock
		}
	}
	eff.events = append(eff.events, ev)
}

// --- device plane ---

// maxListed is how many pending executions AWS lists in GetPendingJobExecutions and notify.
const maxListed = 10

// getPending is GetPendingJobExecutions: at most ten, IN_PROGRESS first.
func (m *model) getPending(thing string) (inProgress, queued []execSnap) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.pending(thing)
	if len(l) > maxListed {
		l = l[:maxListed]
	}
	for _, e := range l {
		if e.status == StatusInProgress {
			inProgress = append(inProgress, snap(e))
		} else {
			queued = append(queued, snap(e))
		}
	}
	return inProgress, queued
}

// startNext is StartNextPendingJobExecution: the head of the pending list, moved to IN_PROGRESS if
// it was QUEUED. An execution already IN_PROGRESS is returned unchanged (details and timers too).
func (m *model) startNext(thing string, details map[string]string, stepTimeout int64) (*execSnap, effects) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var eff effects
	l := m.pending(thing)
	if len(l) == 0 {
		return nil, eff
	}
	e := l[0]
	if e.status == StatusQueued {
		w := m.watch(thing)
		m.start(e, details, stepTimeout)
		m.event(&eff, EventStatus, e, "QUEUED → IN_PROGRESS by start-next")
		w.done(&eff)
		eff.timers = true
	}
	s := snap(e)
	return &s, eff
}

// start moves a QUEUED execution to IN_PROGRESS: a device update, so the version increments.
func (m *model) start(e *execution, details map[string]string, stepTimeout int64) {
	now := m.now()
	e.status = StatusInProgress
	e.startedAt, e.updated = now, now
	e.startSeq = m.next()
	e.version++
	if details != nil {
		e.details = details
	}
	if e.job.progressTimeout > 0 {
		e.progressDeadline = now.Add(time.Duration(e.job.progressTimeout) * m.minute)
	}
	m.setStep(e, stepTimeout)
}

func (m *model) setStep(e *execution, stepTimeout int64) {
	if stepTimeout > 0 {
		e.stepDeadline = m.now().Add(time.Duration(stepTimeout) * m.minute)
	}
}

// describe is DescribeJobExecution; jobID "$next" peeks at the head without changing it and
// returns nil when nothing is pending.
func (m *model) describe(thing, jobID string, number int64) (*execSnap, *deviceError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if jobID == "$next" {
		l := m.pending(thing)
		if len(l) == 0 {
			return nil, nil
		}
		s := snap(l[0])
		return &s, nil
	}
	e, derr := m.find(thing, jobID, number)
	if derr != nil {
		return nil, derr
	}
	if isTerminal(e.status) {
		return nil, rejectf(CodeTerminalStateReached, "Job execution "+jobID+" for "+thing+" is in terminal state "+e.status)
	}
	s := snap(e)
	return &s, nil
}

func (m *model) find(thing, jobID string, number int64) (*execution, *deviceError) {
	j := m.jobs[jobID]
	if j == nil || len(j.execs[thing]) == 0 {
		return nil, rejectf(CodeResourceNotFound, "Job execution not found: jobId "+jobID+", thing "+thing)
	}
	if number == 0 {
		return j.latest(thing), nil
	}
	for _, e := range j.execs[thing] {
		if e.number == number {
			return e, nil
		}
	}
	return nil, rejectf(CodeResourceNotFound, "Job execution not found: jobId "+jobID+", thing "+thing+", executionNumber")
}

// updateReq is a parsed UpdateJobExecution request.
type updateReq struct {
	status          string
	details         map[string]string // nil: leave the stored map alone
	expectedVersion int64             // 0: not sent
	executionNumber int64
	stepTimeout     int64
}

// deviceTransitions is the state graph a device may drive. QUEUED → SUCCEEDED/FAILED is allowed
// (AWS does not forbid it); IN_PROGRESS → REJECTED is refused (DESIGN.md's safe reading).
var deviceTransitions = map[string]map[string]bool{
	StatusQueued:     {StatusInProgress: true, StatusSucceeded: true, StatusFailed: true, StatusRejected: true},
	StatusInProgress: {StatusInProgress: true, StatusSucceeded: true, StatusFailed: true},
}

// update is UpdateJobExecution.
func (m *model) update(thing, jobID string, r updateReq) (execSnap, effects, *deviceError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var eff effects
	e, derr := m.find(thing, jobID, r.executionNumber)
	if derr != nil {
		return execSnap{}, eff, derr
	}
	if isTerminal(e.status) {
		s := snap(e)
		return execSnap{}, eff, &deviceError{code: CodeInvalidStateTransition, state: &s,
			msg: "You cannot update the status of a job execution that is already in a terminal state (" + e.status + ")"}
	}
	if e != e.job.latest(thing) { // an older attempt is always terminal; kept for safety
		s := snap(e)
		return execSnap{}, eff, &deviceError{code: CodeInvalidStateTransition, state: &s, msg: "not the latest execution"}
	}
	if r.expectedVersion != 0 && r.expectedVersion != e.version {
		s := snap(e)
		return execSnap{}, eff, &deviceError{code: CodeVersionMismatch, state: &s,
			msg: "Job execution versionNumber does not match expectedVersion"}
	}
	if !deviceTransitions[e.status][r.status] {
		s := snap(e)
		return execSnap{}, eff, &deviceError{code: CodeInvalidStateTransition, state: &s,
			msg: "Cannot transition job execution from " + e.status + " to " + r.status}
	}
	w := m.watch(thing)
	old := e.status
	now := m.now()
	switch {
	case old == StatusQueued && r.status == StatusInProgress:
		m.start(e, r.details, r.stepTimeout)
	default:
		e.version++
		e.updated = now
		if r.details != nil {
			e.details = r.details
		}
		e.status = r.status
		if r.status == StatusInProgress {
			m.setStep(e, r.stepTimeout)
		}
	}
	if old != e.status {
		m.event(&eff, EventStatus, e, old+" → "+e.status+" by device")
	} else {
		m.event(&eff, EventUpdated, e, "device update")
	}
	if isTerminal(e.status) {
		m.finish(e, &eff)
	}
	w.done(&eff)
	eff.timers = true
	return snap(e), eff, nil
}

// finish runs after an execution reached a terminal status: timers stop, a retry may be queued,
// and the job may complete.
func (m *model) finish(e *execution, eff *effects) {
	e.stepDeadline, e.progressDeadline = time.Time{}, time.Time{}
	j := e.job
	if m.checkAbort(j, eff) {
		return
	}
	if (e.status == StatusFailed || e.status == StatusTimedOut) && (j.status == JobInProgress || j.status == JobScheduled) && m.retryAllowed(j, e.thing, e.status) {
		now := m.now()
		r := &execution{job: j, thing: e.thing, number: e.number + 1, status: StatusQueued, queuedAt: now,
			updated: now, version: 1, queueSeq: m.next(), notified: true}
		j.execs[e.thing] = append(j.execs[e.thing], r)
		m.event(eff, EventRetryQueued, r, "retry after "+e.status)
	}
	m.advance(j, eff) // a success or a notification may raise an exponential rate
	m.refreshJob(j, eff)
}

// retryAllowed consumes one retry of the job's jobExecutionsRetryConfig if one is left: a criterion
// for this failure type or for ALL, and never more than AWS's 10 per thing.
func (m *model) retryAllowed(j *job, thing, status string) bool {
	if len(j.retry) == 0 {
		return false
	}
	used := j.retries[thing]
	if used == nil {
		used = map[string]int{}
		j.retries[thing] = used
	}
	total := used[StatusFailed] + used[StatusTimedOut]
	if total >= 10 {
		return false
	}
	if n, ok := j.retry[status]; ok && used[status] < n {
		used[status]++
		return true
	}
	if n, ok := j.retry["ALL"]; ok && total < n {
		used[status]++
		return true
	}
	return false
}

func (m *model) refreshJob(j *job, eff *effects) {
	if j.status != JobInProgress || j.selection == "CONTINUOUS" { // a continuous job never completes
		return
	}
	for _, l := range j.execs {
		if !isTerminal(l[len(l)-1].status) {
			return
		}
	}
	now := m.now()
	j.status, j.completed, j.updated = JobCompleted, now, now
	eff.events = append(eff.events, Event{Time: now, Kind: EventJobCompleted, JobID: j.id, Status: JobCompleted})
}

// nextDeadline is the earliest timer of any IN_PROGRESS execution (zero: none).
func (m *model) nextDeadline() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	var d time.Time
	for _, j := range m.order {
		if !j.wake.IsZero() && (d.IsZero() || j.wake.Before(d)) {
			d = j.wake
		}
		for _, l := range j.execs {
			e := l[len(l)-1]
			if e.status != StatusInProgress {
				continue
			}
			if t := e.deadline(); !t.IsZero() && (d.IsZero() || t.Before(d)) {
				d = t
			}
		}
	}
	return d
}

// tick times out every IN_PROGRESS execution whose timer has expired.
func (m *model) tick() effects {
	m.mu.Lock()
	defer m.mu.Unlock()
	var eff effects
	now := m.now()
	for _, j := range m.order {
		if !j.wake.IsZero() && !now.Before(j.wake) {
			m.advance(j, &eff)
		}
	}
	for _, j := range m.order {
		things := make([]string, 0, len(j.execs))
		for t := range j.execs {
			things = append(things, t)
		}
		sort.Strings(things)
		for _, t := range things {
			e := j.latest(t)
			if e.status != StatusInProgress {
				continue
			}
			d := e.deadline()
			if d.IsZero() || now.Before(d) {
				continue
			}
			which := "step timer"
			if d.Equal(e.progressDeadline) {
				which = "in-progress timer"
			}
			w := m.watch(t)
			e.status, e.updated = StatusTimedOut, now
			m.event(&eff, EventTimedOut, e, which+" expired")
			m.finish(e, &eff)
			w.done(&eff)
			eff.timers = true
		}
	}
	return eff
}
