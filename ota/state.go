// Package ota runs one update job as a journaled state machine: named states stored as strings,
// transitions in one table of (state, event) → next state, the next state persisted before it
// runs, a resume rule for every state after a restart, and a loop breaker. The handlers that do
// the work (download, verify, install, report) are supplied by the agent; this package owns only
// the order of things and the journal that makes them survive kill -9 and power cuts.
package ota

import "fmt"

// State names a step of a job. It is persisted as its string: never reorder into an iota.
type State string

// The states of a job, in the order a successful job meets them.
const (
	// StateWaitDownload: the device's update policy (docs/update-policy.md) is asked whether
	// the payload may be downloaded now; while it says not now the execution stays QUEUED
	// (nothing started, nothing to time out) and the journal says what it waits for.
	StateWaitDownload State = "wait-download"
	// StateAccept: the job is ours; tell the service IN_PROGRESS (stage=download, step timer).
	StateAccept State = "accept"
	// StateDownload: fetch the payload into the staging sink, resumable from the checkpoint.
	StateDownload State = "download"
	// StateVerify: signature, digest, size and policy over the staged payload.
	StateVerify State = "verify"
	// StateWaitInstall: the payload is downloaded and verified; the policy is asked whether it
	// may be installed now. Waiting is reported (stage=waiting) with a step timer covering it.
	StateWaitInstall State = "wait-install"
	// StateWaitActivate: the policy is asked whether the new software may be activated now —
	// a reboot into the slot, a restart of the binary, the start of a files release's program —
	// before anything is switched, swapped or placed, so that a power cut while waiting
	// leaves the old software running and booting.
	StateWaitActivate State = "wait-activate"
	// StateInstall: place files, swap a binary, or write/finish an A/B slot.
	StateInstall State = "install"
	// StateReboot: the bootloader is set to try the new slot and a reboot was requested; on
	// start the agent finds out which slot it came up in.
	StateReboot State = "reboot"
	// StateSelftest: the new software is running; health checks decide.
	StateSelftest State = "selftest"
	// StateCommit: make the new software permanent and record the installed version.
	StateCommit State = "commit"
	// StateRollback: put the previous software back (and reboot into it for slots).
	StateRollback State = "rollback"
	// StateReport: the terminal status is decided and persisted; deliver it until the service
	// accepts it or says the execution is terminal or gone.
	StateReport State = "report"
	// StateCleanup: remove staged payloads and checkpoints.
	StateCleanup State = "cleanup"
	// StateDone: nothing left to do; the journal is removed.
	StateDone State = "done"
)

// States lists every state, for tests and for `fieldota-agent status`.
var States = []State{StateWaitDownload, StateAccept, StateDownload, StateVerify, StateWaitInstall,
	StateWaitActivate, StateInstall, StateReboot, StateSelftest, StateCommit, StateRollback, StateReport,
	StateCleanup, StateDone}

// StateFirst is where a new job begins.
const StateFirst = StateWaitDownload

// Waiting tells whether s is one of the policy's waiting states.
func Waiting(s State) bool {
	return s == StateWaitDownload || s == StateWaitInstall || s == StateWaitActivate
}

// Event is what a handler returns to say how its state ended.
type Event string

// The events handlers return.
const (
	EvOK         Event = "ok"         // the state did its work
	EvFail       Event = "fail"       // it failed; the journal's Report says why
	EvCancel     Event = "cancel"     // the execution was canceled, deleted or is terminal elsewhere
	EvReboot     Event = "reboot"     // install finished and needs a reboot into the new slot
	EvRestart    Event = "restart"    // install finished and the new software was (re)started
	EvRolledBack Event = "rolledback" // the device is back on the previous software
)

// transitions is the whole state graph. A pair that is missing is a bug in a handler, and the
// machine turns it into an INTERNAL failure report instead of guessing.
var transitions = map[State]map[Event]State{
	// A refusal here is REJECTED (the execution is still QUEUED); a cancel has nothing to undo.
	StateWaitDownload: {EvOK: StateAccept, EvFail: StateReport, EvCancel: StateCleanup},
	StateAccept:       {EvOK: StateDownload, EvFail: StateReport, EvCancel: StateCleanup},
	StateDownload:     {EvOK: StateVerify, EvFail: StateReport, EvCancel: StateCleanup},
	StateVerify:       {EvOK: StateWaitInstall, EvFail: StateReport, EvCancel: StateCleanup},
	// Nothing new is in place yet while waiting: a refusal or a cancel reports and removes the
	// staged payload (a written, never switched slot is marked bad by the gate first).
	StateWaitInstall:  {EvOK: StateWaitActivate, EvFail: StateReport, EvCancel: StateCleanup},
	StateWaitActivate: {EvOK: StateInstall, EvFail: StateReport, EvCancel: StateCleanup},
	// A files install either succeeds (report) or has already put the old files back (report);
	// a cancel during install still rolls back, since half-new software must not stay.
	StateInstall: {EvOK: StateReport, EvReboot: StateReboot, EvRestart: StateSelftest,
		EvFail: StateReport, EvCancel: StateRollback, EvRolledBack: StateReport},
	// After the reboot the agent either runs the new slot (selftest) or the bootloader gave up
	// and it runs the old one (rolledback → report BOOT_FAILED).
	StateReboot:   {EvOK: StateSelftest, EvRolledBack: StateReport, EvFail: StateRollback, EvCancel: StateRollback},
	StateSelftest: {EvOK: StateCommit, EvFail: StateRollback, EvCancel: StateRollback},
	StateCommit:   {EvOK: StateReport, EvFail: StateRollback, EvCancel: StateRollback},
	// Rollback reports when the old software runs again; EvReboot means it asked for a reboot
	// into the old slot and continues in StateRollback after it.
	StateRollback: {EvRolledBack: StateReport, EvReboot: StateRollback, EvFail: StateReport},
	StateReport:   {EvOK: StateCleanup, EvCancel: StateCleanup},
	StateCleanup:  {EvOK: StateDone},
}

// Next returns the state that follows s on ev.
func Next(s State, ev Event) (State, error) {
	if n, ok := transitions[s][ev]; ok {
		return n, nil
	}
	return "", fmt.Errorf("no transition from %q on %q", s, ev)
}

// resumeRules says what to run when the agent starts and finds the journal in a state. Each
// rule is the state to re-enter; handlers are written so that re-entering is safe.
var resumeRules = map[State]State{
	// A gate is asked again: a decision is never carried across a restart (the window may
	// have closed, the hook may answer otherwise).
	StateWaitDownload: StateWaitDownload,
	StateWaitInstall:  StateWaitInstall,
	StateWaitActivate: StateWaitActivate,
	// The IN_PROGRESS update may or may not have reached the service: send it again.
	StateAccept: StateAccept,
	// The download resumes from its last durable checkpoint, not from zero.
	StateDownload: StateDownload,
	// Verification is pure: redo it over the staged payload (re-hashed from disk).
	StateVerify: StateVerify,
	// An install cut short is finished or undone by the installer itself: it first restores
	// what it backed up, then installs again. The loop breaker stops a payload that kills us.
	StateInstall: StateInstall,
	// We rebooted (or crashed before the reboot): the handler finds out which slot runs.
	StateReboot: StateReboot,
	// Health checks start over: a half-run probation proves nothing.
	StateSelftest: StateSelftest,
	// Commit is idempotent (clear try-boot flags, record the version).
	StateCommit: StateCommit,
	// Rollback is idempotent and checks whether the old software already runs.
	StateRollback: StateRollback,
	// The terminal status may not have reached the service: send it again.
	StateReport: StateReport,
	// Cleanup is idempotent.
	StateCleanup: StateCleanup,
	StateDone:    StateDone,
}

// Resume returns the state to run after a restart found the journal in s.
func Resume(s State) (State, error) {
	if r, ok := resumeRules[s]; ok {
		return r, nil
	}
	return "", fmt.Errorf("journal holds unknown state %q", s)
}
