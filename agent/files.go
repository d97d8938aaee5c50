package agent

import (
	"context"
	"encoding/hex"
	"errors"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/files"
	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
)

// The files target: place the files in workingDirectory, start packageName if autoStart, and
// report. It needs no reboot and no probation: the started program's exit status decides.
func init() {
	registerFlow(jobdoc.TargetFiles, func(a *Agent) flow {
		return flow{
			handlers: map[ota.State]ota.Handler{ota.StateInstall: a.installFiles, ota.StateRollback: a.rollbackFiles},
			ready: func() error {
				if len(a.cfg.Files.AllowedRoots) == 0 {
					return reason.Errorf(reason.UnsupportedOperation, "files jobs are disabled on this device (files.allowed_roots is empty)")
				}
				return nil
			},
		}
	})
}

func (a *Agent) installFiles(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	if ev, err := a.inProgress(ctx, j, details(j, "install", nil)); ev != "" || err != nil {
		return ev, err
	}
	spec, err := parseJob(j.Document, a.cfg)
	if err != nil {
		return ota.Fail(j, err, map[string]string{"stage": "install"}), nil
	}
	if err := confined(spec.WorkingDirectory, a.cfg.Files.AllowedRoots); err != nil {
		return ota.Fail(j, err, map[string]string{"stage": "install"}), nil
	}
	plan := a.filesPlan(j, spec)
	res, err := files.Install(ctx, plan)
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	if err != nil {
		extra := map[string]string{"stage": "install"}
		var se *files.StartError
		if errors.As(err, &se) && se.Output != "" {
			extra["output"] = se.Output
		}
		return ota.Fail(j, err, extra), nil
	}
	if err := recordInstalled(a.cfg.StateDir, a.targetKey(spec), j.Version); err != nil {
		return ota.Fail(j, reason.Wrap(reason.Internal, err), map[string]string{"stage": "install"}), nil
	}
	d := details(j, "done", nil)
	if res.Output != "" {
		d["output"] = res.Output
	}
	j.Report = &ota.Report{Status: string(jobs.Succeeded), Details: d}
	return ota.EvOK, nil
}

// filesPlan is the install plan of a files job: its staged payloads (with the digests they
// were verified with), their modes, the program to start.
func (a *Agent) filesPlan(j *ota.Journal, spec *jobdoc.Document) files.Plan {
	plan := files.Plan{Dir: spec.WorkingDirectory, Timeout: a.cfg.Files.AutoStartTimeout.Duration}
	for i, f := range spec.Files {
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
			if spec.AutoStart && f.FileName == spec.PackageName {
				mode = 0o755 // the seed's install.py must be executable to be started without a shell
			}
		}
		ff := files.File{Name: f.FileName, Mode: mode}
		if i < len(j.Staged) {
			ff.Staged = j.Staged[i].Path
			ff.SHA256, _ = hex.DecodeString(j.Staged[i].SHA256)
		}
		plan.Files = append(plan.Files, ff)
	}
	if spec.AutoStart {
		plan.Start = spec.PackageName
	}
	return plan
}

// rollbackFiles undoes an install that was cut short (canceled, failed to report, or stopped
// by the loop breaker): every file is put back as it was before the job.
func (a *Agent) rollbackFiles(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	if j.Report == nil {
		ota.Fail(j, reason.Errorf(reason.Canceled, "the execution ended during the install"), nil)
	}
	spec, err := parseJob(j.Document, a.cfg)
	if err != nil {
		j.Report.Details["rollbackError"] = err.Error()
		return ota.EvFail, nil
	}
	if err := files.Restore(a.filesPlan(j, spec)); err != nil {
		j.Report.Details["rollbackError"] = err.Error()
		a.log.Error("files rollback failed", "job", j.JobID, "err", err)
		return ota.EvFail, nil
	}
	j.Report.Details["rolledBack"] = "true"
	return ota.EvRolledBack, nil
}
