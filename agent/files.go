package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/confine"
	"github.com/fieldota/fieldota/ota/files"
	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/run"
	"github.com/fieldota/fieldota/verify"
)

// The files target: place the signed files in the signed working directory, start the signed
// packageName if the release says autoStart, and report. It needs no reboot and no probation:
// the started program's exit status decides. The directory must be one no one but root (or the
// files.run_as user, whose rights alone are then used) can change.
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
			key: func(r *verify.Release) (string, error) {
				c, err := a.filesDir(r)
				return "files:" + c.Path, err
			},
			runs: a.filesRun,
		}
	})
}

// Journal Data key of the files target: "started" once autoStart may have begun (the files are
// placed before it is written; from then on a resumed install never places them again).
const dataAutoStart = "autostart"

// runAs is the files' user (files.run_as), nil for root.
func (a *Agent) runAs() (*confine.User, error) {
	if a.cfg.Files.RunAs == "" {
		return nil, nil
	}
	u, err := confine.LookupUser(a.cfg.Files.RunAs)
	if err != nil {
		return nil, reason.Errorf(reason.UnsupportedOperation, "files.run_as: %w", err)
	}
	return u, nil
}

// filesDir resolves the release's working directory (symlinks resolved, under an allowed root)
// and checks that no one but root or the files' user can change it or any parent.
func (a *Agent) filesDir(r *verify.Release) (confine.Checked, error) {
	u, err := a.runAs()
	if err != nil {
		return confine.Checked{}, err
	}
	dir, err := confine.Resolve(r.WorkingDirectory, a.cfg.Files.AllowedRoots)
	if err != nil {
		return confine.Checked{}, err
	}
	return confine.Check(dir, u)
}

func (a *Agent) installFiles(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	if ev, err := a.inProgress(ctx, j, details(j, "install", nil)); ev != "" || err != nil {
		return ev, err
	}
	fail := func(err error, extra map[string]string) ota.Event {
		d := map[string]string{"stage": "install"}
		for k, v := range extra {
			d[k] = v
		}
		return ota.Fail(j, err, d)
	}
	jb, err := a.jobOf(j)
	if err != nil {
		return fail(err, nil), nil
	}
	plan, closeStaged, err := a.filesPlan(j, jb.rel, true)
	if err != nil {
		return fail(err, nil), nil
	}
	defer closeStaged()
	for i, f := range jb.rel.Files {
		if !jb.rel.Signed && f.Signature != nil {
			// A codesign-only release: its signature, again, over the bytes about to be placed.
			if err := a.recheckStaged(jb, i, j.Staged[i].Path); err != nil {
				return fail(err, nil), nil
			}
		}
	}
	if j.Data[dataAutoStart] == "" {
		// Place (again, after a crash: Place restores first). The staged bytes are re-hashed
		// against the signed digests before anything is placed.
		if err := files.Place(plan); err != nil {
			return fail(err, nil), nil
		}
	}
	var output string
	if jb.rel.AutoStart {
		if j.Data == nil {
			j.Data = map[string]string{}
		}
		if j.Data[dataAutoStart] == "" {
			j.Data[dataAutoStart] = "started"
			if err := a.store.Save(j); err != nil {
				return "", err
			}
		}
		o, err := a.autoStart(ctx, j, jb.rel, plan)
		if ctx.Err() != nil {
			return "", ctx.Err() // shutting down: the program runs on, the next agent inherits it
		}
		output = o.Tail
		if err == nil && !o.OK() {
			err = outcomeError(jb.rel, o)
		}
		if err != nil {
			extra := map[string]string{}
			if output != "" {
				extra["output"] = output
			}
			if rerr := files.Restore(plan); rerr != nil {
				extra["rollbackError"] = rerr.Error()
			} else {
				extra["rolledBack"] = "true"
			}
			return fail(reason.Errorf(reason.AutostartFailed, "%s: %w", jb.rel.PackageName, err), extra), nil
		}
	}
	if err := files.Commit(plan); err != nil {
		return fail(reason.Errorf(reason.InstallFailed, "committing: %w", err), nil), nil
	}
	if err := recordInstalled(a.cfg.StateDir, jb.key, jb.rel); err != nil {
		return fail(reason.Wrap(reason.Internal, err), nil), nil
	}
	d := details(j, "done", nil)
	if output != "" {
		d["output"] = output
	}
	j.Report = &ota.Report{Status: string(jobs.Succeeded), Details: d}
	return ota.EvOK, nil
}

// autoStart runs the release's program once: the shim of package run records its outcome, so a
// kill -9 or a restart of the agent while it runs never starts a second copy. Where that
// outcome was lost (a power cut, the service's whole control group killed), the program runs
// again only if the signed release says it may (autoStartRerunnable).
func (a *Agent) autoStart(ctx context.Context, j *ota.Journal, r *verify.Release, p files.Plan) (run.Outcome, error) {
	d := a.autoStartRun(j, r, p)
	o, err := d.Run(ctx)
	if err != nil || o.State != run.Lost || !r.AutoStartRerunnable {
		return o, err
	}
	a.log.Warn("autoStart outcome lost; running it again (the release says it is rerunnable)", "job", j.JobID)
	if err := os.Remove(d.Status); err != nil {
		return o, err
	}
	return d.Run(ctx)
}

func (a *Agent) autoStartRun(j *ota.Journal, r *verify.Release, p files.Plan) run.Durable {
	dir := a.stagingDir(j)
	return run.Durable{
		Spec: run.Spec{
			Argv: []string{filepath.Join(p.Dir.Path, r.PackageName)}, Dir: p.Dir.Path,
			Env: p.User.Env(run.MinimalEnv), Cred: p.User.Credential(), Timeout: a.cfg.Files.AutoStartTimeout.Duration,
		},
		Status: filepath.Join(dir, "autostart.status"), Output: filepath.Join(dir, "autostart.out"),
	}
}

func outcomeError(r *verify.Release, o run.Outcome) error {
	switch {
	case o.State == run.Lost:
		return errors.New("the agent restarted while the program ran and its outcome is lost; the release does not say it may run twice (autoStartRerunnable)")
	case o.Signal != "":
		return errors.New("killed by " + o.Signal)
	}
	return &run.ExitError{Argv: []string{r.PackageName}, Code: o.Code}
}

// filesPlan is the install plan of a files job: the signed names, modes and digests, the
// checked directory, and (withStaged) the staged payloads opened here, as root, from the
// root-only staging directory.
func (a *Agent) filesPlan(j *ota.Journal, r *verify.Release, withStaged bool) (files.Plan, func(), error) {
	dir, err := a.filesDir(r)
	if err != nil {
		return files.Plan{}, func() {}, err
	}
	u, err := a.runAs()
	if err != nil {
		return files.Plan{}, func() {}, err
	}
	plan := files.Plan{Dir: dir, User: u}
	var opened []*os.File
	closeAll := func() {
		for _, f := range opened {
			f.Close()
		}
	}
	for i, f := range r.Files {
		ff := files.File{Name: f.Name, Mode: f.Mode, SHA256: f.RawSHA256()} // placed as decompressed
		if withStaged {
			if i >= len(j.Staged) {
				closeAll()
				return files.Plan{}, func() {}, reason.Errorf(reason.Internal, "%s was never downloaded", f.Name)
			}
			sf, err := os.Open(j.Staged[i].Path)
			if err != nil {
				closeAll()
				return files.Plan{}, func() {}, reason.Errorf(reason.Internal, "staged %s: %w", f.Name, err)
			}
			opened = append(opened, sf)
			ff.Staged = sf
		}
		plan.Files = append(plan.Files, ff)
	}
	return plan, closeAll, nil
}

// rollbackFiles undoes an install that was cut short (canceled, failed to report, or stopped
// by the loop breaker): a program autoStart left running is stopped, and every file is put back
// as it was before the job.
func (a *Agent) rollbackFiles(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	if j.Report == nil {
		ota.Fail(j, reason.Errorf(reason.Canceled, "the execution ended during the install"), nil)
	}
	jb, err := a.jobOf(j)
	if err != nil {
		j.Report.Details["rollbackError"] = err.Error()
		return ota.EvFail, nil
	}
	plan, _, err := a.filesPlan(j, jb.rel, false)
	if err == nil && j.Data[dataAutoStart] != "" {
		err = a.autoStartRun(j, jb.rel, plan).Stop(ctx)
	}
	if err == nil {
		err = files.Restore(plan)
	}
	if err != nil {
		j.Report.Details["rollbackError"] = err.Error()
		a.log.Error("files rollback failed", "job", j.JobID, "err", err)
		return ota.EvFail, nil
	}
	j.Report.Details["rolledBack"] = "true"
	return ota.EvRolledBack, nil
}
