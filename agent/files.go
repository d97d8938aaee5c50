package agent

import (
	"context"
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
			handlers: map[ota.State]ota.Handler{ota.StateInstall: a.installFiles},
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
	plan := files.Plan{Dir: spec.WorkingDirectory, Timeout: a.cfg.Files.AutoStartTimeout.Duration}
	for i, f := range spec.Files {
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
			if spec.AutoStart && f.FileName == spec.PackageName {
				mode = 0o755 // the seed's install.py must be executable to be started without a shell
			}
		}
		plan.Files = append(plan.Files, files.File{Name: f.FileName, Staged: j.Staged[i].Path, Mode: mode})
	}
	if spec.AutoStart {
		plan.Start = spec.PackageName
	}
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
