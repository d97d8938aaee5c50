package agent

import (
	"context"
	"fmt"

	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify"
)

// flow is what one target (files, slot, binary) contributes: handlers for the states between
// verify and report, a check that this device is configured for it, and optionally its own
// download sink (an A/B slot takes the payload straight into the inactive partition).
type flow struct {
	handlers map[ota.State]ota.Handler
	// ready returns an UNSUPPORTED_OPERATION error when the device is not set up for the target.
	ready func() error
	// sink, when set, opens where file i of the job is downloaded to; nil means a staged file.
	sink func(j *ota.Journal, i int) (sinkCloser, error)
	// key resolves where a release installs, refusing a location that is not safe (UNSAFE_PATH)
	// or not configured; the result is what installed.json records the release under.
	key func(r *verify.Release) (string, error)
	// runs, when set, tells whether the bytes of r are what runs at its place now (read back
	// from the disk): with the installed record it makes "already installed".
	runs func(ctx context.Context, r *verify.Release) bool
	// delta, when set, says the target can take a block-reuse delta (ota/delta): it prepares
	// file i's destination as sink does and returns its path and that of the running image,
	// the delta's read-only source.
	delta func(j *ota.Journal, i int) (target, active string, err error)
	// discard, when set, undoes what the download wrote outside the staging directory, for a
	// job that ends before its install (an A/B slot written in place is marked bad).
	discard func(ctx context.Context, j *ota.Journal) error
	// committed, when set, tells whether the job's new software is committed for good (the
	// loop breaker never rolls that back); nil means the target has no commit step.
	committed func(j *ota.Journal) bool
}

// committed is the machine's Committed hook: the flow of the job's target decides.
func (a *Agent) committed(j *ota.Journal) bool {
	fl, err := a.flowOf(j.Target)
	return err == nil && fl.committed != nil && fl.committed(j)
}

// flows holds each target's flow constructor; every target registers itself from its own file
// (files.go, slot.go, swap.go) so that a target is read in one place.
var flows = map[jobdoc.Target]func(*Agent) flow{}

func registerFlow(t jobdoc.Target, f func(*Agent) flow) { flows[t] = f }

// flowFor returns the flow of a target, or UNSUPPORTED_OPERATION.
func (a *Agent) flowFor(target string) (flow, error) {
	mk, ok := flows[jobdoc.Target(target)]
	if !ok {
		return flow{}, reason.Errorf(reason.UnsupportedOperation, "target %q is not supported by this agent", target)
	}
	fl := mk(a)
	if fl.ready != nil {
		if err := fl.ready(); err != nil {
			return flow{}, err
		}
	}
	return fl, nil
}

// flowOf returns the flow of a job under way, without the readiness check.
func (a *Agent) flowOf(target string) (flow, error) {
	mk, ok := flows[jobdoc.Target(target)]
	if !ok {
		return flow{}, reason.Errorf(reason.Internal, "journal names unknown target %q", target)
	}
	return mk(a), nil
}

// dispatch runs state s with the handler of the job's target. A target without a handler for
// s is a bug in the state table or the flow: reported as INTERNAL, never guessed around.
// Readiness is not checked again here: it decided whether the job could start, and a job
// under way (a rollback above all) must finish even if the configuration changed meanwhile.
func (a *Agent) dispatch(s ota.State) ota.Handler {
	return func(ctx context.Context, j *ota.Journal) (ota.Event, error) {
		fl, err := a.flowOf(j.Target)
		if err != nil {
			return ota.Fail(j, err, map[string]string{"stage": string(s)}), nil
		}
		h, ok := fl.handlers[s]
		if !ok {
			return ota.Fail(j, reason.Errorf(reason.Internal, "%s", fmt.Sprintf("target %s has no %s step", j.Target, s)), nil), nil
		}
		return h(ctx, j)
	}
}
