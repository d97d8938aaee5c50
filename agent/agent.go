// Package agent is the device daemon's loop: it hears jobs from AWS IoT Jobs, validates each
// document before starting it, runs it through the journaled state machine of package ota
// (download, verify, install, report), notices cancellation, and picks up the next job at once.
// One job runs at a time; a job found in the journal at start is resumed before anything else.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/download"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/durable"
	"github.com/fieldota/fieldota/verify"
)

// Agent is the daemon. Create it with New, feed it connection and notify-next events from the
// Jobs client (Wake, NotifyNext), and Run it.
type Agent struct {
	cfg       *config.Config
	api       jobsAPI // set by Run
	retryWait time.Duration
	trust     *verify.TrustStore
	log       *slog.Logger
	now       func() time.Time
	clock     Clock
	store     *ota.Store
	machine   *ota.Machine
	upd       *updater

	wake chan struct{} // a (re)connect or notify-next: look at $next again

	jobLog *jobLog        // what is logged while a job runs, for uploadLogs (uploads.go)
	inv    *inventory     // the $package reporter (inventory.go)
	cmds   *commander     // AWS IoT Commands (commands.go)
	jobMu  sync.Mutex     // one job or command journal runs at a time
	bg     sync.WaitGroup // the reporter's and the commands' goroutines
	runCtx context.Context

	mu      sync.Mutex
	ranHere map[execKey]bool // journals this process already ran: running one again is a retry
	running string           // job id of the job in progress, "" when idle
	recheck chan struct{}    // notify-next while a job runs: is it still ours?
	done    map[execKey]bool // executions finished here (dedupe on jobId+executionNumber)
	order   []execKey        // to bound done
}

type execKey struct {
	job string
	n   int64
}

// Options are the agent's dependencies.
type Options struct {
	Config *config.Config
	Trust  *verify.TrustStore // nil only with verify.allow_unsigned
	Logger *slog.Logger
	Now    func() time.Time
	// Clock, when set, is the agent's time (Now included); nil is the wall clock.
	Clock Clock
	// OnTransition is called after each persisted transition (tests kill the agent there).
	OnTransition func(*ota.Journal)
}

// New builds an agent.
func New(o Options) *Agent {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	jl := &jobLog{}
	log = slog.New(teeHandler{main: log.Handler(), log: slog.NewTextHandler(jl, nil)})
	now := o.Now
	if now == nil {
		now = time.Now
	}
	clock := o.Clock
	if clock == nil {
		clock = wallClock{now}
	}
	now = clock.Now
	a := &Agent{
		cfg: o.Config, trust: o.Trust, log: log, jobLog: jl, now: now, clock: clock, retryWait: time.Second,
		store:   &ota.Store{Dir: o.Config.StateDir, Now: now},
		wake:    make(chan struct{}, 1),
		recheck: make(chan struct{}, 1),
		done:    map[execKey]bool{},
		ranHere: map[execKey]bool{},
	}
	a.upd = &updater{stepTimeout: int64(o.Config.Jobs.StepTimeoutMinutes), log: log}
	a.machine = &ota.Machine{Store: a.store, Logger: log, Now: now, OnTransition: o.OnTransition,
		Progress: downloadProgress, Committed: a.committed}
	a.machine.Handlers = a.handlers()
	a.inv, a.cmds = newInventory(a), newCommander(a)
	return a
}

// Wake asks the agent to describe $next again (call it after every (re)connect).
func (a *Agent) Wake() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
	a.inv.Kick()
}

// NotifyNext handles a notify-next event: a hint to look again, and while a job runs, a sign
// that it may have been canceled (the head of the queue moved away from it).
func (a *Agent) NotifyNext(ev jobs.NextJobExecutionChanged) {
	a.mu.Lock()
	running := a.running
	a.mu.Unlock()
	if running != "" && (ev.Execution == nil || ev.Execution.JobID != running) {
		select {
		case a.recheck <- struct{}{}:
		default:
		}
	}
	if running == "" && ev.Execution == nil {
		return // idle, and the service says nothing is next: there is nothing to look at
	}
	a.Wake()
}

// pollInterval is a safety net: describe $next this often even without events, because a
// notification lost to a reconnect must not leave a job waiting forever.
const pollInterval = 15 * time.Minute

// Run resumes a journaled job, then serves jobs through api until ctx ends.
func (a *Agent) Run(ctx context.Context, api jobsAPI) error {
	a.api, a.upd.api = api, api
	if err := a.cfg.EnsureStateDir(); err != nil {
		return err
	}
	defer a.startDeviceManagement(ctx, api)()
	// A kill inside a durable write leaves its temp file behind; nothing else can own it.
	if _, err := durable.RemoveTemps(a.cfg.StateDir); err != nil {
		return err
	}
	// A journal we cannot read is an update we cannot account for: stop loudly rather than
	// forget it (an operator must look at it).
	if _, err := a.store.Load(); err != nil && !errors.Is(err, ota.ErrNoJournal) {
		return fmt.Errorf("cannot resume: %w", err)
	}
	// serveNext resumes a journaled job before it looks for new ones.
	if err := a.serveNext(ctx); err != nil && ctx.Err() == nil {
		a.log.Warn("first look for work failed; will retry", "err", err)
		a.Wake()
	}
	poll := time.NewTicker(pollInterval)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.wake:
		case <-poll.C:
		}
		if ctx.Err() != nil {
			// select picks at random among ready cases: a pending wake must not start work
			// after shutdown began (a self-updating agent hands over this way).
			return ctx.Err()
		}
		if err := a.serveNext(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			a.log.Warn("looking for the next job failed; will retry on the next event", "err", err)
		}
	}
}

// serveNext runs pending jobs one after the other until none is left. A journal left by a job
// that stopped on an error (a full disk, say) is resumed first, never overwritten by a new start.
func (a *Agent) serveNext(ctx context.Context) error {
	a.jobMu.Lock()
	defer a.jobMu.Unlock()
	for {
		switch j, err := a.store.Load(); {
		case err == nil:
			if err := a.runJournal(ctx, j, true); err != nil {
				return err
			}
			continue
		case !errors.Is(err, ota.ErrNoJournal):
			return err
		}
		// This look answers every wake that came before it (a connect, a notify-next during
		// the job just finished): drop them, so each costs no second request.
		select {
		case <-a.wake:
		default:
		}
		exec, err := a.api.Describe(ctx, jobs.DescribeInput{JobID: "$next", IncludeJobDocument: true})
		if err != nil {
			return err
		}
		if exec != nil && jobs.ValidJobID(exec.JobID) != nil {
			// Refused on receipt, for good: it could never be reported. Jobs queued behind it
			// still run (only a broker that is not AWS can send such an id).
			a.log.Error("pending job refused: its id is outside AWS's pattern; looking past it", "job", fmt.Sprintf("%.70q", exec.JobID))
			if exec, err = a.nextAddressable(ctx); err != nil {
				return err
			}
		}
		if exec == nil {
			a.log.Debug("no pending job")
			return nil
		}
		key := execKey{exec.JobID, exec.ExecutionNumber}
		a.mu.Lock()
		seen := a.done[key]
		a.mu.Unlock()
		if seen {
			// Our terminal report is still on its way, or was refused as already terminal:
			// don't run the same execution twice.
			a.log.Debug("execution already handled", "job", exec.JobID, "execution", exec.ExecutionNumber)
			return nil
		}
		if err := a.startJob(ctx, exec); err != nil {
			return err
		}
	}
}

// nextAddressable returns the first pending execution, in progress before queued, that has a
// valid job id and was not handled here yet; nil when there is none.
func (a *Agent) nextAddressable(ctx context.Context) (*jobs.JobExecution, error) {
	p, err := a.api.GetPending(ctx)
	if err != nil || p == nil {
		return nil, err
	}
	for _, s := range append(append([]jobs.JobExecutionSummary(nil), p.InProgress...), p.Queued...) {
		a.mu.Lock()
		seen := a.done[execKey{s.JobID, s.ExecutionNumber}]
		a.mu.Unlock()
		if seen || jobs.ValidJobID(s.JobID) != nil {
			continue
		}
		return a.api.Describe(ctx, jobs.DescribeInput{JobID: s.JobID, ExecutionNumber: s.ExecutionNumber, IncludeJobDocument: true})
	}
	return nil, nil
}

func (a *Agent) markDone(job string, n int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := execKey{job, n}
	if !a.done[k] {
		a.done[k] = true
		a.order = append(a.order, k)
		if len(a.order) > 64 {
			delete(a.done, a.order[0])
			a.order = a.order[1:]
		}
	}
}

// runJournal runs (or resumes) a job's journal to its end.
func (a *Agent) runJournal(ctx context.Context, j *ota.Journal, resume bool) error {
	a.mu.Lock()
	a.running = j.JobID
	a.mu.Unlock()
	a.jobLog.reset(true)
	defer func() {
		a.mu.Lock()
		a.running = ""
		a.mu.Unlock()
	}()
	// Drain a stale recheck from an earlier job.
	select {
	case <-a.recheck:
	default:
	}
	key := execKey{j.JobID, j.ExecutionNumber}
	a.mu.Lock()
	again := a.ranHere[key]
	a.ranHere[key] = true
	a.mu.Unlock()
	var err error
	switch {
	case !resume:
		err = a.machine.Begin(ctx, j)
	case again:
		// A state that returned an error earlier in this process (a wake runs it again): not a
		// restart, so the loop breaker does not count it.
		err = a.machine.Retry(ctx, j)
	default:
		err = a.machine.ResumeJournal(ctx, j)
	}
	if err == nil {
		a.markDone(j.JobID, j.ExecutionNumber)
		a.inv.Kick() // a commit, a rollback or a fallback: $package tells it
		a.mu.Lock()
		delete(a.ranHere, key)
		a.mu.Unlock()
	}
	return err
}

// downloadProgress is the machine's Progress hook: the bytes of the job's payloads that are
// durable (complete files and checkpoints), while it downloads.
func downloadProgress(j *ota.Journal) int64 {
	if j.State != ota.StateDownload {
		return 0
	}
	var n int64
	for _, st := range j.Staged {
		if st.SHA256 != "" {
			n += st.Size
		} else if st.Checkpoint != "" {
			n += download.CheckpointOffset(st.Checkpoint)
		}
	}
	return n
}
