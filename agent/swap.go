package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/confine"
	"github.com/fieldota/fieldota/ota/health"
	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/swap"
	"github.com/fieldota/fieldota/verify"
)

// The binary target: swap the configured binary (ota/swap keeps the old one durably first),
// restart it, hold it on probation (health checks plus a watch on the process for exits and
// restarts), then commit or put the old binary back. When the binary is the agent itself, the
// old agent exits after the swap, the supervisor (systemd Restart=always) starts the new one,
// and the new agent runs probation and reports; `fieldota-agent recover`, run before every start,
// restores the old agent if the new one never gets that far (docs/binary-swap.md).
func init() {
	registerFlow(jobdoc.TargetBinary, func(a *Agent) flow {
		return flow{
			handlers: map[ota.State]ota.Handler{
				ota.StateInstall:  a.installBinary,
				ota.StateSelftest: a.probation,
				ota.StateCommit:   a.commitBinary,
				ota.StateRollback: a.rollbackBinary,
			},
			ready:     func() error { _, _, err := a.swapTarget(); return err },
			key:       a.binaryKey,
			runs:      a.binaryRuns,
			committed: func(j *ota.Journal) bool { return j.Data[dataCommitted] == "true" },
		}
	})
}

// Journal Data keys of the binary target, written before the swap touches anything.
const (
	dataSwapTarget = swap.JournalTarget
	dataSwapSelf   = swap.JournalSelf
	// dataCommitted is persisted once the commit is decided, before anything is recorded: from
	// then on a cancel no longer undoes it, and the loop breaker never rolls it back.
	dataCommitted = "committed"
)

// ownExe is the agent's executable, resolved once: after a swap /proc/self/exe of the old
// process names the replaced file, so asking later gives the wrong answer.
var ownExe = sync.OnceValues(func() (string, error) {
	p, err := os.Executable()
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(p)
})

// handOver makes this (old) agent exit cleanly so that its supervisor starts the binary now at
// the target: SIGTERM cancels the run context like any shutdown, and the journal says where
// the next agent goes on. Tests replace it.
var handOver = func() error { return syscall.Kill(os.Getpid(), syscall.SIGTERM) }

// swapTarget resolves the binary to swap and whether it is the agent itself.
func (a *Agent) swapTarget() (string, bool, error) {
	exe, exeErr := ownExe()
	t := a.cfg.Swap.Target
	if t == "" && a.cfg.Swap.Self {
		if exeErr != nil {
			return "", false, reason.Errorf(reason.UnsupportedOperation, "swap.self: cannot find my own executable: %w", exeErr)
		}
		t = exe
	}
	if t == "" {
		return "", false, reason.Errorf(reason.UnsupportedOperation, "binary jobs are disabled on this device (swap.target is empty)")
	}
	rt, err := filepath.EvalSymlinks(t)
	if err != nil {
		return "", false, reason.Errorf(reason.UnsupportedOperation, "swap.target: %w", err)
	}
	self := exeErr == nil && rt == exe
	if a.cfg.Swap.Self && !self {
		return "", false, reason.Errorf(reason.UnsupportedOperation, "swap.self is set but swap.target %s is not this agent (%s)", rt, exe)
	}
	if !self && len(a.cfg.Swap.Restart) == 0 {
		return "", false, reason.Errorf(reason.UnsupportedOperation, "swap.restart is empty")
	}
	// The new file, the backup link and the rename all happen in the target's directory:
	// refuse before downloading anything if we cannot write there.
	if err := syscall.Access(filepath.Dir(rt), 2 /* W_OK */); err != nil {
		return "", false, reason.Errorf(reason.UnsupportedOperation, "swap.target: cannot write %s: %w", filepath.Dir(rt), err)
	}
	return rt, self, nil
}

// binaryKey checks that the release is for the binary this device manages, in a directory no one
// but root can change, and names it by its resolved path.
func (a *Agent) binaryKey(r *verify.Release) (string, error) {
	target, _, err := a.swapTarget()
	if err != nil {
		return "", err
	}
	name := a.cfg.Swap.Name
	if name == "" {
		name = filepath.Base(target)
	}
	if r.Binary != "" && r.Binary != name {
		return "", reason.Errorf(reason.UnsupportedOperation, "the release is for the binary %q; this device manages %q (swap.name)", r.Binary, name)
	}
	// A user who can write the binary's directory could plant .<name>.new as a symlink and make
	// root overwrite any file: the directory must be root's alone.
	if _, err := confine.Check(filepath.Dir(target), nil); err != nil {
		return "", err
	}
	return "binary:" + target, nil
}

// signedSum is the signed digest of the job's binary.
func (a *Agent) signedSum(j *ota.Journal) ([]byte, *job, error) {
	jb, err := a.jobOf(j)
	if err != nil {
		return nil, nil, err
	}
	if len(jb.rel.Files) != 1 {
		return nil, nil, reason.Errorf(reason.Internal, "binary release with %d files", len(jb.rel.Files))
	}
	return jb.rel.Files[0].RawSHA256(), jb, nil // what is swapped in: the decompressed binary
}

// stagedSum is the digest the journal recorded for the staged binary: used only to undo a swap
// (putting the old binary back is safe whatever the journal says).
func stagedSum(j *ota.Journal) ([]byte, error) {
	if len(j.Staged) != 1 {
		return nil, reason.Errorf(reason.Internal, "binary job with %d staged files", len(j.Staged))
	}
	sum, err := hex.DecodeString(j.Staged[0].SHA256)
	if err != nil || len(sum) == 0 {
		return nil, reason.Errorf(reason.Internal, "journal digest %q", j.Staged[0].SHA256)
	}
	return sum, nil
}

// isMe tells whether this process executes the file now at target.
func isMe(target string) bool {
	me, err1 := os.Stat("/proc/self/exe")
	t, err2 := os.Stat(target)
	return err1 == nil && err2 == nil && os.SameFile(me, t)
}

func (a *Agent) installBinary(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	if ev, err := a.inProgress(ctx, j, details(j, "install", nil)); ev != "" || err != nil {
		return ev, err
	}
	// The signed digest: selfupdate re-checks the staged bytes against it before the swap.
	sum, jb, err := a.signedSum(j)
	if err != nil {
		return ota.Fail(j, err, map[string]string{"stage": "install"}), nil
	}
	if err := a.recheckStaged(jb, 0, j.Staged[0].Path); err != nil {
		return ota.Fail(j, err, map[string]string{"stage": "install"}), nil
	}
	fresh := j.Data[dataSwapTarget] == ""
	if fresh {
		target, self, err := a.swapTarget()
		if err != nil {
			return ota.Fail(j, err, map[string]string{"stage": "install"}), nil
		}
		if j.Data == nil {
			j.Data = map[string]string{}
		}
		j.Data[dataSwapTarget], j.Data[dataSwapSelf] = target, strconv.FormatBool(self)
		if self {
			// Starts counted for an earlier self-update that ended oddly must not count here.
			if err := swap.ResetStarts(a.cfg.StateDir); err != nil {
				return ota.Fail(j, reason.Wrap(reason.InstallFailed, err), map[string]string{"stage": "install"}), nil
			}
		}
		// Persist what is about to be swapped before the swap: a rollback after a crash from
		// here on knows which file to restore, and a resumed install knows it is not the first.
		if err := a.store.Save(j); err != nil {
			return "", err
		}
	}
	target := j.Data[dataSwapTarget]
	err = swap.Install(swap.Update{Target: target, Staged: j.Staged[0].Path, SHA256: sum, MaxSize: a.cfg.Swap.MaxSize, Fresh: fresh})
	if err != nil {
		// Install fails before its rename, or in the fsync after it: either way the old binary
		// must be what stays.
		extra := map[string]string{"stage": "install"}
		if rerr := swap.Restore(target, sum); rerr != nil {
			extra["rollbackError"] = rerr.Error()
		}
		return ota.Fail(j, err, extra), nil
	}
	a.log.Info("binary swapped", "job", j.JobID, "target", target, "version", j.Version, "self", j.Data[dataSwapSelf])
	return ota.EvRestart, nil
}

// probation restarts the new binary and holds it on probation; for the agent itself, the old
// process hands over to the new one first.
func (a *Agent) probation(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	target, self := j.Data[dataSwapTarget], j.Data[dataSwapSelf] == "true"
	sum, _, err := a.signedSum(j)
	if err != nil {
		return ota.Fail(j, err, map[string]string{"stage": "selftest"}), nil
	}
	if self && !isMe(target) {
		if ok, err := swap.HasDigest(target, sum); err != nil || !ok {
			return ota.Fail(j, reason.Errorf(reason.HealthCheckFailed, "the new agent is not at %s", target), map[string]string{"stage": "selftest"}), nil
		}
		return a.handOver(ctx, j, "the new agent runs probation")
	}
	// A new agent must reach the Jobs service within health.timeout: its broker link is part of
	// what it proves. A managed binary is not judged by the agent's network, so it waits.
	timeout := a.cfg.Health.Timeout.Duration
	rctx, cancel := ctx, context.CancelFunc(func() {})
	if self {
		rctx, cancel = context.WithTimeout(ctx, timeout)
	}
	ev, err := a.inProgress(rctx, j, details(j, "selftest", nil))
	cancel()
	if ev != "" {
		return ev, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return ota.Fail(j, reason.Errorf(reason.HealthCheckFailed, "the Jobs service was not reachable within %s", timeout), map[string]string{"stage": "selftest"}), nil
	}
	if !self {
		if err := swap.Restart(ctx, a.cfg.Swap.Restart, a.cfg.Swap.RestartTimeout.Duration); err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			return ota.Fail(j, reason.Errorf(reason.HealthCheckFailed, "restart: %w", err), map[string]string{"stage": "selftest"}), nil
		}
	}
	if err := a.watch(ctx, j, target, self); err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		a.log.Warn("probation failed", "job", j.JobID, "err", err)
		return ota.Fail(j, err, map[string]string{"stage": "selftest"}), nil
	}
	return ota.EvOK, nil
}

// watch is the probation: every check healthy at once within health.timeout, then the watched
// process neither exits nor is restarted for swap.probation, then every check healthy again.
func (a *Agent) watch(ctx context.Context, j *ota.Journal, target string, self bool) error {
	sc := a.cfg.Swap
	checks := health.Checks{
		Commands: a.cfg.Health.Commands, URL: a.cfg.Health.URL, Units: a.cfg.Health.Units,
		Timeout: a.cfg.Health.Timeout.Duration, Interval: sc.ProbeInterval.Duration,
	}
	watchPID := !self && (sc.PIDFile != "" || len(sc.PIDCommand) > 0)
	pid := 0
	if watchPID {
		checks.Probes = append(checks.Probes, health.Probe{Name: "process", Check: func(ctx context.Context) error {
			p, err := swap.PID(ctx, sc.PIDFile, sc.PIDCommand)
			if err != nil {
				return err
			}
			if err := swap.Runs(p, target); err != nil {
				return err
			}
			pid = p
			return nil
		}})
	}
	if self {
		// The new agent must have its broker link back: a round trip to the Jobs service.
		checks.Probes = append(checks.Probes, health.Probe{Name: "jobs service", Check: func(ctx context.Context) error {
			_, err := a.api.Describe(ctx, jobs.DescribeInput{JobID: j.JobID, ExecutionNumber: j.ExecutionNumber})
			return err
		}})
	}
	if err := health.Wait(ctx, checks); err != nil {
		return err
	}
	window := time.NewTimer(sc.Probation.Duration)
	defer window.Stop()
	tick := time.NewTicker(sc.ProbeInterval.Duration)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-window.C:
			return health.Wait(ctx, checks)
		case <-tick.C:
		}
		if !watchPID {
			continue
		}
		// Crash-loop detection: the process seen healthy must still be the one running.
		p, err := swap.PID(ctx, sc.PIDFile, sc.PIDCommand)
		if err == nil && p != pid {
			return reason.Errorf(reason.HealthCheckFailed, "the new binary was restarted during probation (pid %d, then %d)", pid, p)
		}
		if err := swap.Runs(pid, target); err != nil {
			return reason.Errorf(reason.HealthCheckFailed, "the new binary exited during probation: %w", err)
		}
	}
}

func (a *Agent) commitBinary(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	target, self := j.Data[dataSwapTarget], j.Data[dataSwapSelf] == "true"
	jb, err := a.jobOf(j)
	if err != nil {
		return ota.Fail(j, err, map[string]string{"stage": "commit"}), nil
	}
	// A job canceled during probation is rolled back like a failed one, never committed. Only
	// the journal says whether this job already committed (a resume after a kill): installed.json
	// naming the version proves nothing, since a reinstall of the same version finds it there.
	if j.Data[dataCommitted] != "true" {
		if ev, err := a.inProgress(ctx, j, details(j, "commit", nil)); ev != "" || err != nil {
			return ev, err
		}
		if j.Data == nil {
			j.Data = map[string]string{}
		}
		j.Data[dataCommitted] = "true"
		if err := a.store.Save(j); err != nil {
			return "", err
		}
	}
	if err := recordInstalled(a.cfg.StateDir, jb.key, jb.rel); err != nil {
		if errors.Is(err, errInstalledCorrupt) {
			return committedUnrecorded(j, details(j, "commit", nil), target, err), nil
		}
		// Committed (journaled above): a retry records it; the breaker never rolls it back.
		return "", fmt.Errorf("recording the installed version: %w", err)
	}
	if !a.cfg.Swap.KeepOld {
		if err := swap.Discard(target); err != nil {
			// The new binary is committed; a backup that could not be removed costs space only.
			a.log.Warn("could not remove the previous binary", "err", err)
		}
	}
	if self {
		if err := swap.ResetStarts(a.cfg.StateDir); err != nil {
			a.log.Warn("could not reset the start counter", "err", err)
		}
	}
	j.Report = &ota.Report{Status: string(jobs.Succeeded), Details: details(j, "done", nil)}
	return ota.EvOK, nil
}

// rollbackBinary puts the old binary back and restarts it; for the agent itself the new one
// hands over to the restored old one, which then reports.
func (a *Agent) rollbackBinary(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	target, self := j.Data[dataSwapTarget], j.Data[dataSwapSelf] == "true"
	if j.Report == nil {
		ota.Fail(j, reason.Errorf(reason.Canceled, "the execution ended during the swap"), nil)
	}
	if target != "" {
		sum, err := stagedSum(j)
		if err == nil {
			err = swap.Restore(target, sum)
		}
		if err != nil {
			j.Report.Details["rollbackError"] = err.Error()
			j.Report.Details["stage"] = "rollback"
			a.log.Error("rollback failed: the new binary stays", "job", j.JobID, "err", err)
			return ota.EvFail, nil
		}
		if self && !isMe(target) {
			return a.handOver(ctx, j, "the previous agent reports the rollback")
		}
		if self {
			if err := swap.ResetStarts(a.cfg.StateDir); err != nil {
				a.log.Warn("could not reset the start counter", "err", err)
			}
		} else if err := a.restartOld(ctx, target); err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			j.Report.Details["rollbackError"] = err.Error()
		}
	}
	j.Report.Details["stage"] = "rollback"
	j.Report.Details["rolledBack"] = "true"
	a.log.Info("rolled back", "job", j.JobID, "target", target)
	return ota.EvRolledBack, nil
}

// restartOld restarts the restored binary and, when the process is watched, waits until the
// old binary is the one running.
func (a *Agent) restartOld(ctx context.Context, target string) error {
	sc := a.cfg.Swap
	if err := swap.Restart(ctx, sc.Restart, sc.RestartTimeout.Duration); err != nil {
		return fmt.Errorf("restart of the previous binary: %w", err)
	}
	if sc.PIDFile == "" && len(sc.PIDCommand) == 0 {
		return nil
	}
	return health.Wait(ctx, health.Checks{Timeout: a.cfg.Health.Timeout.Duration, Interval: sc.ProbeInterval.Duration,
		Probes: []health.Probe{{Name: "previous binary", Check: func(ctx context.Context) error {
			p, err := swap.PID(ctx, sc.PIDFile, sc.PIDCommand)
			if err != nil {
				return err
			}
			return swap.Runs(p, target)
		}}}})
}

// handOver ends this agent so that its supervisor starts the binary at the target, which
// resumes the journal in the same state.
func (a *Agent) handOver(ctx context.Context, j *ota.Journal, why string) (ota.Event, error) {
	if ctx.Err() != nil {
		return "", ctx.Err() // already shutting down: the next agent takes over anyway
	}
	a.log.Info("exiting so that the agent now installed starts", "job", j.JobID, "why", why)
	if err := handOver(); err != nil {
		return "", errors.Join(errors.New("hand over to the swapped agent"), err)
	}
	<-ctx.Done()
	return "", ctx.Err()
}
