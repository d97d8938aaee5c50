package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"time"

	"github.com/fieldota/fieldota/ota/run"

	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/health"
	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/slot"
	"github.com/fieldota/fieldota/verify"
)

// The slot target (docs/ab-slots.md): the payload streams straight into the inactive slot
// during the download; install re-reads and re-hashes it, then asks the bootloader for one
// trial boot and reboots; the agent, started again, finds out where it runs: in the new slot
// it runs the health checks and commits; otherwise the bootloader gave up (BOOT_FAILED). A
// failed health check marks the new slot bad and reboots into the old one. Every handler
// first looks at what runs and what the bootloader environment says, so re-entering any state
// after a kill or a power cut does the right thing. The installed version is recorded only
// at commit.
func init() {
	registerFlow(jobdoc.TargetSlot, func(a *Agent) flow {
		s := &slotFlow{a: a, cfg: a.cfg.Slot}
		return flow{
			handlers: map[ota.State]ota.Handler{
				ota.StateInstall:  s.install,
				ota.StateReboot:   s.reboot,
				ota.StateSelftest: s.selftest,
				ota.StateCommit:   s.commit,
				ota.StateRollback: s.rollback,
			},
			ready:     s.ready,
			sink:      s.sink,
			delta:     s.prepare,
			key:       func(*verify.Release) (string, error) { return "slot", nil },
			runs:      s.runs,
			discard:   s.discard,
			committed: s.committed,
		}
	})
}

type slotFlow struct {
	a   *Agent
	cfg config.Slot
}

func (s *slotFlow) ready() error {
	if s.cfg.Bootloader == "" || s.cfg.A == "" || s.cfg.B == "" {
		return reason.Errorf(reason.UnsupportedOperation, "slot jobs are disabled on this device (slot.bootloader, slot.a and slot.b are not configured)")
	}
	// A missing environment tool can never work: refuse while the job is still QUEUED rather
	// than fail after the download.
	var tools []string
	switch s.cfg.Bootloader {
	case "uboot":
		tools = []string{"fw_printenv", "fw_setenv"}
	case "grub":
		tools = []string{"grub-editenv"}
	case "command":
		if len(s.cfg.EnvGet) == 0 || len(s.cfg.EnvSet) == 0 {
			return reason.Errorf(reason.UnsupportedOperation, "slot.env_get and slot.env_set are required for bootloader command")
		}
		tools = []string{s.cfg.EnvGet[0], s.cfg.EnvSet[0]}
	}
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			return reason.Errorf(reason.UnsupportedOperation, "slot.bootloader %s needs %s, which is not installed", s.cfg.Bootloader, t)
		}
	}
	return nil
}

// bootloader builds the configured environment backend.
func (s *slotFlow) bootloader() slot.Bootloader {
	switch s.cfg.Bootloader {
	case "grub":
		return slot.Grub{File: s.cfg.Grubenv}
	case "file":
		return slot.File{Path: s.cfg.EnvFile}
	case "command":
		return slot.Command{GetArgv: s.cfg.EnvGet, SetArgv: s.cfg.EnvSet}
	default:
		return slot.UBoot{Config: s.cfg.FwEnvConfig}
	}
}

func (s *slotFlow) pair() slot.Pair { return slot.Pair{A: s.cfg.A, B: s.cfg.B} }

func (s *slotFlow) booted() (string, error) {
	name, err := slot.Detect{Pair: s.pair(), Mode: s.cfg.Detect, Cmdline: s.cfg.Cmdline, Root: s.cfg.RootPath}.Booted()
	if err != nil {
		return "", reason.Wrap(reason.InstallFailed, err)
	}
	return name, nil
}

// prepare picks the inactive slot, proves the bootloader environment readable and writable
// (the canary) and returns the slot's path and the running slot's.
func (s *slotFlow) prepare(j *ota.Journal, i int) (path, active string, err error) {
	ctx := context.Background() // the tools run under their own timeout
	if i != 0 {
		return "", "", reason.Errorf(reason.InvalidDocument, "a slot job carries exactly one file")
	}
	booted, err := s.booted()
	if err != nil {
		return "", "", err
	}
	bl := s.bootloader()
	st, err := slot.ReadStatus(ctx, bl)
	if err != nil {
		return "", "", err
	}
	// The environment must boot what runs, with no trial pending: anything else means it is
	// not the environment the bootloader uses, and a trial set now could boot the wrong slot.
	if err := slot.CheckBooted(st, booted); err != nil {
		return "", "", err
	}
	target := slot.Other(booted)
	if j.Slot != "" && j.Slot != target {
		return "", "", reason.Errorf(reason.InstallFailed, "the journal writes slot %s but the device booted it", j.Slot)
	}
	if err := slot.Canary(ctx, bl, target); err != nil {
		return "", "", err
	}
	j.Slot = target
	if j.Data == nil {
		j.Data = map[string]string{}
	}
	j.Data["bootedSlot"] = booted
	path = s.pair().Path(target)
	// Verification and the read-back find the payload where it was written.
	j.Staged[i].Path = path
	s.a.log.Info("writing the inactive slot", "job", j.JobID, "slot", target, "device", path)
	return path, s.pair().Path(booted), nil
}

// sink opens the prepared inactive slot for the download to write into directly.
func (s *slotFlow) sink(j *ota.Journal, i int) (sinkCloser, error) {
	path, _, err := s.prepare(j, i)
	if err != nil {
		return nil, err
	}
	f, err := slot.OpenTarget(path, j.Staged[i].Size)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// runs: the booted slot holds the release's image (read back from the device).
func (s *slotFlow) runs(ctx context.Context, r *verify.Release) bool {
	booted, err := s.booted()
	return err == nil && len(r.Files) == 1 && sameBytes(ctx, s.pair().Path(booted), r.Files[0].RawSize(), r.Files[0].RawSHA256())
}

// discard marks a slot written by a job that ends before its switch as bad, and makes sure the
// environment boots the running slot: no fallback of the bootloader ever boots software the
// policy refused or the operator canceled.
func (s *slotFlow) discard(ctx context.Context, j *ota.Journal) error {
	if j.Slot == "" {
		return nil
	}
	booted, err := s.booted()
	if err != nil {
		return err
	}
	if booted == j.Slot {
		return reason.Errorf(reason.Internal, "refusing to mark the running slot %s bad", booted)
	}
	return slot.Revert(ctx, s.bootloader(), booted, j.Slot)
}

func (s *slotFlow) details(j *ota.Journal, stage string, extra map[string]string) map[string]string {
	d := details(j, stage, extra)
	if j.Slot != "" {
		d["slot"] = j.Slot
	}
	if v := j.Data[dataDelta]; v != "" {
		d["delta"] = v // what the delta install saved, or why it downloaded in full
	}
	return d
}

// fail records FAILED for err at stage, with the version, previous version and slot.
func (s *slotFlow) fail(j *ota.Journal, stage string, err error, extra map[string]string) ota.Event {
	return ota.Fail(j, err, s.details(j, stage, extra))
}

func (s *slotFlow) install(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	if ev, err := s.a.inProgress(ctx, j, s.details(j, "install", nil)); ev != "" || err != nil {
		return ev, err
	}
	if j.Slot == "" || len(j.Staged) != 1 {
		return s.fail(j, "install", reason.Errorf(reason.Internal, "no slot was written"), nil), nil
	}
	booted, err := s.booted()
	if err != nil {
		return s.fail(j, "install", err, nil), nil
	}
	bl := s.bootloader()
	st, err := slot.ReadStatus(ctx, bl)
	if err != nil {
		return s.fail(j, "install", err, nil), nil
	}
	switch {
	case st.Slot == j.Slot && st.Try:
		// The trial was set before a kill; whether or not the device rebooted since, the
		// reboot state sorts it out.
		return ota.EvReboot, nil
	case booted != j.Slot && st.Bad[j.Slot]:
		// The canary cleared this mark when the download began: the bootloader has tried
		// the slot during this job (a power cut right after the switch) and given up.
		return s.rolledBack(j, "install", reason.Errorf(reason.BootFailed, "the bootloader gave up on slot %s and booted slot %s again", j.Slot, booted)), nil
	}
	if err := slot.CheckBooted(st, booted); err != nil {
		return s.fail(j, "install", err, nil), nil
	}
	if booted == j.Slot {
		return s.fail(j, "install", reason.Errorf(reason.Internal, "refusing to install into the running slot %s", booted), nil), nil
	}
	// The point of use: the slot's bytes, read back from the device, must be the signed image.
	jb, err := s.a.jobOf(j)
	if err != nil {
		return s.fail(j, "install", err, nil), nil
	}
	img := jb.rel.Files[0] // a compressed image: its signed raw size and digest
	if err := slot.ReadBack(ctx, s.pair().Path(j.Slot), img.RawSize(), hex.EncodeToString(img.RawSHA256())); err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		// The environment is untouched: the device keeps booting the old slot.
		return s.fail(j, "install", err, nil), nil
	}
	if _, err := s.a.verifier().CheckInstalled(jb.rel, 0, img.RawSHA256(), img.RawSize(), s.a.now()); err != nil {
		return s.fail(j, "install", err, nil), nil // a codesign-only image: its signature, again
	}
	if err := slot.TryBoot(ctx, bl, j.Slot, s.cfg.BootAttempts); err != nil {
		return s.fail(j, "install", err, nil), nil
	}
	s.a.log.Info("slot written and verified; trial boot set", "job", j.JobID, "slot", j.Slot)
	return ota.EvReboot, nil
}

// reboot runs before and after the reboot: in the new slot the probation begins; in the old
// one with the trial still pending the reboot has not happened yet; otherwise the bootloader
// fell back.
func (s *slotFlow) reboot(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	booted, err := s.booted()
	if err != nil {
		return s.fail(j, "reboot", err, nil), nil
	}
	if booted == j.Slot {
		s.a.log.Info("running the new slot", "job", j.JobID, "slot", booted)
		return ota.EvOK, nil
	}
	st, err := slot.ReadStatus(ctx, s.bootloader())
	if err != nil {
		return s.fail(j, "reboot", err, nil), nil
	}
	if st.Slot == j.Slot && st.Try {
		if ev, err := s.a.inProgress(ctx, j, s.details(j, "reboot", nil)); ev != "" || err != nil {
			return ev, err
		}
		return "", s.requestReboot(ctx, j)
	}
	return s.rolledBack(j, "reboot", reason.Errorf(reason.BootFailed, "slot %s did not boot: the bootloader gave up and booted slot %s", j.Slot, booted)), nil
}

// requestReboot runs the configured reboot argv and waits to be stopped by it. It returns only
// when the agent is shutting down (the reboot) or, after reboot_timeout, with an error, so that
// the state runs again at the next start.
func (s *slotFlow) requestReboot(ctx context.Context, j *ota.Journal) error {
	s.a.log.Info("rebooting", "job", j.JobID, "argv", s.cfg.Reboot)
	if _, err := run.Run(ctx, run.Spec{Argv: s.cfg.Reboot, Timeout: time.Minute}); err != nil && ctx.Err() == nil {
		s.a.log.Error("reboot command failed", "argv", s.cfg.Reboot, "err", err)
	}
	t := time.NewTimer(s.cfg.RebootTimeout.Duration)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("asked for a reboot %s ago and still running", s.cfg.RebootTimeout.Duration)
	}
}

// probationGone handles a restart that found the device out of the new slot after it had
// booted it: the bootloader counted the restart as a failed trial and fell back.
func (s *slotFlow) probationGone(j *ota.Journal, stage, booted string) ota.Event {
	return s.fail(j, stage, reason.Errorf(reason.BootFailed, "the device restarted into slot %s before slot %s was committed: the bootloader fell back", booted, j.Slot), nil)
}

func (s *slotFlow) selftest(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	booted, err := s.booted()
	if err != nil {
		return s.fail(j, "selftest", err, nil), nil
	}
	if booted != j.Slot {
		return s.probationGone(j, "selftest", booted), nil
	}
	h := s.a.cfg.Health
	// Reaching the service again is part of being healthy: a new slot that cannot get back to
	// the broker is rolled back like Mender's, not left waiting.
	rctx, cancel := context.WithTimeout(ctx, h.Timeout.Duration)
	ev, err := s.a.inProgress(rctx, j, s.details(j, "selftest", nil))
	cancel()
	if err != nil && ctx.Err() == nil {
		return s.fail(j, "selftest", reason.Errorf(reason.HealthCheckFailed, "the Jobs service was not reachable within %s from the new slot", h.Timeout.Duration), nil), nil
	}
	if err != nil || ev != "" {
		return ev, err
	}
	err = health.Wait(ctx, health.Checks{
		Commands: h.Commands, URL: h.URL, Units: h.Units,
		Timeout: h.Timeout.Duration, Interval: h.Interval.Duration,
		Probes: []health.Probe{{Name: "broker", Check: func(ctx context.Context) error {
			_, err := s.a.api.Describe(ctx, jobs.DescribeInput{JobID: j.JobID, ExecutionNumber: j.ExecutionNumber})
			return err
		}}},
	})
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	if err != nil {
		s.a.log.Warn("health check failed; rolling back", "job", j.JobID, "slot", j.Slot, "err", err)
		return s.fail(j, "selftest", err, nil), nil
	}
	return ota.EvOK, nil
}

func (s *slotFlow) commit(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	booted, err := s.booted()
	if err != nil {
		return s.fail(j, "commit", err, nil), nil
	}
	if booted != j.Slot {
		return s.probationGone(j, "commit", booted), nil
	}
	bl := s.bootloader()
	if st, err := slot.ReadStatus(ctx, bl); err == nil && st.Slot == j.Slot && !st.Try {
		// Committed before a kill: a commit is not undone by a cancel that came after it;
		// finish recording it.
		s.a.log.Info("slot already committed; finishing", "job", j.JobID, "slot", j.Slot)
	} else {
		switch ev, err := s.a.inProgress(ctx, j, s.details(j, "commit", nil)); {
		case err != nil:
			return "", err
		case ev == ota.EvCancel:
			// Canceled during probation: the old software goes back, as for any failure.
			return s.fail(j, "commit", reason.Errorf(reason.Canceled, "the execution was canceled before the commit"), nil), nil
		case ev != "":
			return ev, nil
		}
	}
	if err := slot.Commit(ctx, bl, j.Slot); err != nil {
		return s.fail(j, "commit", err, nil), nil
	}
	jb, err := s.a.jobOf(j)
	if err != nil {
		return s.fail(j, "commit", err, nil), nil
	}
	if err := recordInstalled(s.a.cfg.StateDir, jb.key, jb.rel); err != nil {
		if errors.Is(err, errInstalledCorrupt) {
			return committedUnrecorded(j, s.details(j, "commit", nil), fmt.Sprintf("slot %s", j.Slot), err), nil
		}
		// The bootloader boots the new slot for good already; only the record is missing,
		// and a retry of this idempotent state writes it (not counted as a loop: committed).
		return "", fmt.Errorf("recording the installed version: %w", err)
	}
	s.a.log.Info("slot committed", "job", j.JobID, "slot", j.Slot, "version", j.Version)
	j.Report = &ota.Report{Status: string(jobs.Succeeded), Details: s.details(j, "done", nil)}
	return ota.EvOK, nil
}

// rollback puts the old slot back: from the new slot it marks the new one bad, switches the
// bootloader back and reboots; from the old slot it makes sure the environment boots it and
// reports.
func (s *slotFlow) rollback(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	// Best effort and short: rolling back must not wait for a broker the new slot cannot reach.
	if !isCommand(j) { // a rollback command has no job execution to tell
		rctx, cancel := context.WithTimeout(ctx, s.a.cfg.Jobs.RequestTimeout.Duration)
		_ = s.a.upd.inProgress(rctx, j, s.details(j, "rollback", nil)) // never replaces the reason
		cancel()
	}
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	if j.Report == nil {
		s.fail(j, "rollback", reason.Errorf(reason.Canceled, "the execution ended before slot %s was committed", j.Slot), nil)
	}
	booted, err := s.booted()
	if err != nil {
		return s.giveUp(j, err), nil
	}
	old := slot.Other(j.Slot)
	bl := s.bootloader()
	if booted == j.Slot {
		if err := slot.Revert(ctx, bl, old, j.Slot); err != nil {
			// The trial is still pending: the bootloader falls back by itself after a reboot.
			s.a.log.Error("could not switch the bootloader back; relying on its fallback", "err", err)
		}
		return "", s.requestReboot(ctx, j)
	}
	st, err := slot.ReadStatus(ctx, bl)
	if err == nil && (st.Slot != old || st.Try || !st.Bad[j.Slot]) {
		err = slot.Revert(ctx, bl, old, j.Slot)
	}
	if err != nil {
		return s.giveUp(j, err), nil
	}
	j.Report.Details["rolledBack"] = "true"
	j.Report.Details["runningSlot"] = old
	s.a.log.Info("rolled back", "job", j.JobID, "slot", old)
	return ota.EvRolledBack, nil
}

// committedUnrecorded ends a job whose new software is committed for good but whose installed
// version cannot be recorded: FAILED INTERNAL, so that an operator looks, with committed=true
// and nothing rolled back (undoing a healthy update over bookkeeping would be worse). EvOK: the
// commit itself is done, and the report follows.
func committedUnrecorded(j *ota.Journal, d map[string]string, what string, err error) ota.Event {
	d["committed"] = "true"
	ota.Fail(j, reason.Errorf(reason.Internal, "%s is committed and runs version %s, but the installed version could not be recorded: %v", what, j.Version, err), d)
	return ota.EvOK
}

// giveUp reports a rollback that could not be verified; the first failure stays the reason.
func (s *slotFlow) giveUp(j *ota.Journal, err error) ota.Event {
	j.Report.Details["detail"] += "; rollback: " + err.Error()
	return ota.EvFail
}

// rolledBack reports a failure after which the device already runs the old slot.
func (s *slotFlow) rolledBack(j *ota.Journal, stage string, err error) ota.Event {
	s.fail(j, stage, err, map[string]string{"rolledBack": "true", "runningSlot": slot.Other(j.Slot)})
	return ota.EvRolledBack
}

// committed tells whether the bootloader boots the job's slot for good: it runs, and the
// environment names it with no trial pending.
func (s *slotFlow) committed(j *ota.Journal) bool {
	if j.Slot == "" {
		return false
	}
	booted, err := s.booted()
	if err != nil || booted != j.Slot {
		return false
	}
	st, err := slot.ReadStatus(context.Background(), s.bootloader())
	return err == nil && st.Slot == j.Slot && !st.Try
}

// ProbationDeadline is how long the agent may take to reach the Jobs service at start before
// the slot it runs counts as unhealthy: health.timeout while a slot job waits for its verdict
// in the slot being tried (journal in reboot or selftest), 0 otherwise. cmd/fieldota-agent
// bounds its first connection by it, because a new slot that cannot reach the broker would
// otherwise wait for it forever, never judged, with its one trial boot already spent.
func (a *Agent) ProbationDeadline() time.Duration {
	if _, _, ok := a.slotProbation(); !ok {
		return 0
	}
	return a.cfg.Health.Timeout.Duration
}

// slotProbation returns the journal of a slot job on probation in the slot being tried.
func (a *Agent) slotProbation() (*ota.Journal, *slotFlow, bool) {
	j, err := a.store.Load()
	if err != nil || j.Target != string(jobdoc.TargetSlot) || (j.State != ota.StateReboot && j.State != ota.StateSelftest) {
		return nil, nil, false
	}
	s := &slotFlow{a: a, cfg: a.cfg.Slot}
	if s.ready() != nil {
		return nil, nil, false
	}
	if booted, err := s.booted(); err != nil || booted != j.Slot {
		return nil, nil, false
	}
	return j, s, true
}

// FailProbationOffline fails the probation of the slot being tried when the Jobs service could
// not be reached within ProbationDeadline: it records FAILED HEALTH_CHECK_FAILED, moves the
// journal to rollback, switches the bootloader back to the old slot (marking the new one bad)
// and reboots. It returns when the agent is stopped by the reboot (or after reboot_timeout);
// the agent started in the old slot then reports the rollback once it is connected. Without a
// slot on probation it does nothing.
func (a *Agent) FailProbationOffline(ctx context.Context) error {
	j, s, ok := a.slotProbation()
	if !ok {
		return nil
	}
	a.log.Warn("the Jobs service was not reachable from the new slot; rolling back", "job", j.JobID, "slot", j.Slot, "timeout", a.cfg.Health.Timeout.Duration)
	s.fail(j, "selftest", reason.Errorf(reason.HealthCheckFailed, "the Jobs service was not reachable within %s from slot %s", a.cfg.Health.Timeout.Duration, j.Slot), nil)
	// The same step the machine takes on selftest's EvFail, persisted before it runs.
	j.State = ota.StateRollback
	j.Transitions++
	if err := a.store.Save(j); err != nil {
		return err
	}
	if err := slot.Revert(ctx, s.bootloader(), slot.Other(j.Slot), j.Slot); err != nil {
		// The trial is spent: the bootloader falls back on the next boot by itself.
		a.log.Error("could not switch the bootloader back; relying on its fallback", "err", err)
	}
	return s.requestReboot(ctx, j)
}

// SlotsStatus is what `fieldota-agent status` shows of the A/B slots.
type SlotsStatus struct {
	Booted     string            `json:"booted,omitempty"`
	BootedErr  string            `json:"bootedError,omitempty"`
	Paths      map[string]string `json:"paths"`
	Bootloader string            `json:"bootloader"`
	Env        *slot.Status      `json:"env,omitempty"`
	EnvErr     string            `json:"envError,omitempty"`
}

// Slots reports the configured slots, the one running and the bootloader's view, without
// changing anything; nil when the device has no A/B slots configured.
func (a *Agent) Slots(ctx context.Context) *SlotsStatus {
	if a.cfg.Slot.A == "" && a.cfg.Slot.B == "" {
		return nil
	}
	s := &slotFlow{a: a, cfg: a.cfg.Slot}
	out := &SlotsStatus{Paths: map[string]string{"a": a.cfg.Slot.A, "b": a.cfg.Slot.B}, Bootloader: a.cfg.Slot.Bootloader}
	if b, err := s.booted(); err != nil {
		out.BootedErr = err.Error()
	} else {
		out.Booted = b
	}
	if st, err := slot.ReadStatus(ctx, s.bootloader()); err != nil {
		out.EnvErr = err.Error()
	} else {
		out.Env = &st
	}
	return out
}
