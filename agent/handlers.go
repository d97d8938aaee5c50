package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/download"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
)

// handlers maps each state to its work. accept, download, verify, report and cleanup are the
// same for every target; the states in between are the target's flow (flow.go).
func (a *Agent) handlers() map[ota.State]ota.Handler {
	h := map[ota.State]ota.Handler{
		ota.StateAccept:   a.accept,
		ota.StateDownload: a.download,
		ota.StateVerify:   a.verifyStaged,
		ota.StateReport:   a.report,
		ota.StateCleanup:  a.cleanup,
	}
	for _, s := range []ota.State{ota.StateInstall, ota.StateReboot, ota.StateSelftest, ota.StateCommit, ota.StateRollback} {
		h[s] = a.dispatch(s)
	}
	return h
}

// details is the statusDetails map for a stage: always complete, since a map sent with an
// update replaces the stored one.
func details(j *ota.Journal, stage string, extra map[string]string) map[string]string {
	d := map[string]string{"stage": stage}
	if j.Version != "" {
		d["version"] = j.Version
	}
	if j.PreviousVersion != "" {
		d["previousVersion"] = j.PreviousVersion
	}
	for k, v := range extra {
		d[k] = v
	}
	return d
}

// inProgress reports a stage, retrying transient failures until ctx ends. It returns EvCancel
// when the service has ended the execution, EvFail (with the report set) when it refuses the
// update for good, and "" when the stage may go on.
func (a *Agent) inProgress(ctx context.Context, j *ota.Journal, d map[string]string) (ota.Event, error) {
	err := a.retryTransient(ctx, func() error { return a.upd.inProgress(ctx, j, d) })
	switch {
	case err == nil:
		return "", nil
	case errors.Is(err, errCanceled):
		a.log.Info("execution ended by the service; stopping", "job", j.JobID, "err", err)
		if !failed(j) {
			ota.Fail(j, reason.Errorf(reason.Canceled, "the execution was ended by the service during %s", d["stage"]), map[string]string{"stage": d["stage"]})
		}
		return ota.EvCancel, nil
	case ctx.Err() != nil:
		return "", ctx.Err()
	default:
		if !failed(j) {
			ota.Fail(j, reason.Wrap(reason.Internal, err), map[string]string{"stage": d["stage"]})
		}
		return ota.EvFail, nil
	}
}

// failed tells whether a failure is already recorded: the first reason is the one reported.
func failed(j *ota.Journal) bool {
	return j.Report != nil && j.Report.Status != string(jobs.Succeeded)
}

// retryTransient runs f until it succeeds, fails for good, or ctx ends. Timeouts, throttling,
// service errors and a link that is down are transient.
func (a *Agent) retryTransient(ctx context.Context, f func() error) error {
	wait := a.retryWait
	for attempt := 0; ; attempt++ {
		err := f()
		if err == nil || !(jobs.Retryable(err) || errors.Is(err, jobs.ErrTimeout) || errors.Is(err, jobs.ErrPublish)) {
			return err
		}
		a.log.Warn("jobs request failed; retrying", "err", err)
		if err := sleepCtx(ctx, min(wait<<min(attempt, 4), 16*wait)); err != nil {
			return err
		}
	}
}

func (a *Agent) accept(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	if ev, err := a.inProgress(ctx, j, details(j, "download", map[string]string{"progress": "0"})); ev != "" || err != nil {
		return ev, err
	}
	return ota.EvOK, nil
}

// stagingDir holds the payloads of one execution (state_dir is owner-only).
func (a *Agent) stagingDir(j *ota.Journal) string {
	return filepath.Join(a.cfg.StateDir, "staging", fmt.Sprintf("%s-%d", j.JobID, j.ExecutionNumber))
}

func (a *Agent) download(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	spec, err := parseJob(j.Document, a.cfg)
	if err != nil {
		return ota.Fail(j, err, map[string]string{"stage": "download"}), nil
	}
	dir := a.stagingDir(j)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return ota.Fail(j, reason.Wrap(reason.InstallFailed, err), map[string]string{"stage": "download"}), nil
	}
	if len(j.Staged) != len(spec.Files) {
		j.Staged = make([]ota.Staged, len(spec.Files))
		for i, f := range spec.Files {
			j.Staged[i] = ota.Staged{Name: f.FileName, Path: filepath.Join(dir, fmt.Sprintf("%d.payload", i)),
				Checkpoint: filepath.Join(dir, fmt.Sprintf("%d.checkpoint", i)), Size: f.Size}
		}
	}
	var total, before int64
	for _, f := range spec.Files {
		total += f.Size
	}

	// The job's own context ends when the service cancels or deletes the execution.
	jobCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go a.watchCancel(jobCtx, cancel, j)
	// Half the step timer: a download that progresses slowly keeps its execution alive.
	heartbeat := time.Duration(a.cfg.Jobs.StepTimeoutMinutes) * time.Minute / 2
	prog := newProgress(a.cfg.Jobs.ProgressEvery, a.cfg.Jobs.ProgressInterval.Duration, heartbeat, a.now)
	finished, reporterDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(reporterDone)
		a.reportProgress(ctx, jobCtx, cancel, finished, j, prog)
	}()
	// The last report (100 %) must land, answer included, before the next state's update:
	// aborting it in flight leaves the journal's versionNumber stale, and the next update is
	// refused VersionMismatch. The reporter only stops for the job's end or a shutdown.
	defer func() { close(finished); <-reporterDone; cancel(nil) }()

	for i, f := range spec.Files {
		st := &j.Staged[i]
		if st.SHA256 != "" {
			before += f.Size
			continue
		}
		res, err := a.fetch(jobCtx, j, i, f, st, func(done, _ int64) { prog.observe(before+done, total) })
		if cause := context.Cause(jobCtx); errors.Is(cause, errCanceled) {
			return ota.EvCancel, nil
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if err != nil {
			if errors.Is(err, errCanceled) {
				return ota.EvCancel, nil
			}
			return ota.Fail(j, err, map[string]string{"stage": "download"}), nil
		}
		st.SHA256 = hex.EncodeToString(res.SHA256)
		before += f.Size
		a.log.Info("downloaded", "job", j.JobID, "file", f.FileName, "bytes", res.Size, "resumed", res.Resumed, "refreshes", res.Refreshes)
	}
	return ota.EvOK, nil
}

// sinkCloser is a download destination the agent closes afterwards.
type sinkCloser interface {
	download.Sink
	Close() error
}

// openSink opens where file i goes: the target's own sink (an A/B slot) or a staged file.
func (a *Agent) openSink(j *ota.Journal, i int, st *ota.Staged) (sinkCloser, error) {
	fl, err := a.flowOf(j.Target)
	if err != nil {
		return nil, err
	}
	if fl.sink != nil {
		return fl.sink(j, i)
	}
	f, err := os.OpenFile(st.Path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, reason.Wrap(reason.DownloadFailed, err)
	}
	return f, nil
}

func (a *Agent) fetch(ctx context.Context, j *ota.Journal, i int, f jobdoc.File, st *ota.Staged, progress func(done, total int64)) (download.Result, error) {
	sink, err := a.openSink(j, i, st)
	if err != nil {
		return download.Result{}, err
	}
	defer sink.Close()
	if err := a.checkURL(f.URL); err != nil {
		return download.Result{}, err
	}
	// The expected digest is not handed to the downloader: Verify checks the signature first,
	// so that bytes which are not what the owner signed are reported as SIGNATURE_INVALID.
	return download.Download(ctx, download.Request{
		URL:            f.URL,
		Size:           f.Size,
		Sink:           sink,
		CheckpointPath: st.Checkpoint,
		Refresh: func(ctx context.Context) (string, error) {
			return a.freshURL(ctx, j, i)
		},
		MaxRefreshes: a.cfg.Download.MaxRefreshes,
		Stall:        a.cfg.Download.StallTimeout.Duration,
		RateLimit:    a.cfg.Download.RateLimit,
		Progress:     progress,
		Logger:       a.log,
	})
}

// checkURL refuses plain http unless the configuration allows it (the local emulator).
func (a *Agent) checkURL(u string) error {
	if len(u) >= 8 && u[:8] == "https://" {
		return nil
	}
	if len(u) >= 7 && u[:7] == "http://" && a.cfg.Download.AllowInsecureHTTP {
		return nil
	}
	return reason.Errorf(reason.InvalidDocument, "payload URL scheme not allowed (https required; download.allow_insecure_http permits http)")
}

// freshURL describes the execution again: every delivery of the document carries a newly
// presigned URL.
func (a *Agent) freshURL(ctx context.Context, j *ota.Journal, i int) (string, error) {
	var exec *jobs.JobExecution
	err := a.retryTransient(ctx, func() error {
		var err error
		exec, err = a.api.Describe(ctx, jobs.DescribeInput{JobID: j.JobID, ExecutionNumber: j.ExecutionNumber, IncludeJobDocument: true})
		return err
	})
	if endedByService(err) || err == nil && (exec == nil || exec.Status.Terminal()) {
		return "", fmt.Errorf("%w while asking for a fresh URL", errCanceled)
	}
	if err != nil {
		return "", err
	}
	spec, err := parseJob(exec.JobDocument, a.cfg)
	if err != nil {
		return "", err
	}
	if i >= len(spec.Files) {
		return "", reason.Errorf(reason.InvalidDocument, "the document changed: file %d is gone", i)
	}
	return spec.Files[i].URL, nil
}

// watchCancel re-describes the running execution whenever notify-next says the queue's head
// moved away from it; a canceled, deleted or timed-out execution cancels the job's context.
func (a *Agent) watchCancel(ctx context.Context, cancel context.CancelCauseFunc, j *ota.Journal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.recheck:
		}
		exec, err := a.api.Describe(ctx, jobs.DescribeInput{JobID: j.JobID, ExecutionNumber: j.ExecutionNumber, IncludeJobDocument: false})
		if endedByService(err) || err == nil && (exec == nil || exec.Status.Terminal()) {
			a.log.Info("execution ended by the service during the download", "job", j.JobID)
			cancel(errCanceled)
			return
		}
	}
}

// reportProgress sends the download progress handed over by prog, one report at a time. Each
// report runs under ctx (the agent's), not under jobCtx, so that the end of the download does
// not abort one in flight; a canceled job (jobCtx) stops it between reports. Once finished is
// closed it sends what is still pending and returns.
func (a *Agent) reportProgress(ctx, jobCtx context.Context, cancel context.CancelCauseFunc, finished <-chan struct{}, j *ota.Journal, prog *progress) {
	send := func(pct int) bool {
		err := a.upd.inProgress(ctx, j, details(j, "download", map[string]string{"progress": strconv.Itoa(pct)}))
		if errors.Is(err, errCanceled) {
			cancel(errCanceled)
			return false
		}
		if err != nil && ctx.Err() == nil {
			// Progress is best effort: the next report or the stage change carries on.
			a.log.Warn("progress report failed", "job", j.JobID, "err", err)
		}
		return ctx.Err() == nil
	}
	for {
		select {
		case <-jobCtx.Done():
			return
		case <-finished:
			select {
			case pct := <-prog.mailbox:
				if jobCtx.Err() == nil {
					send(pct)
				}
			default:
			}
			return
		case pct := <-prog.mailbox:
			if !send(pct) {
				return
			}
		}
	}
}

func (a *Agent) verifyStaged(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	if ev, err := a.inProgress(ctx, j, details(j, "verify", nil)); ev != "" || err != nil {
		return ev, err
	}
	spec, err := parseJob(j.Document, a.cfg)
	if err != nil {
		return ota.Fail(j, err, map[string]string{"stage": "verify"}), nil
	}
	pol, err := a.policy(spec)
	if err != nil {
		return ota.Fail(j, err, map[string]string{"stage": "verify"}), nil
	}
	for i, f := range spec.Files {
		st := j.Staged[i]
		digest, err := hex.DecodeString(st.SHA256)
		if err != nil {
			return ota.Fail(j, reason.Errorf(reason.Internal, "journal digest of %s: %w", f.FileName, err), map[string]string{"stage": "verify"}), nil
		}
		fi, err := os.Stat(st.Path)
		if err != nil {
			return ota.Fail(j, reason.Errorf(reason.Internal, "staged %s: %w", f.FileName, err), map[string]string{"stage": "verify"}), nil
		}
		in := spec.VerifyInput(i)
		size := fi.Size()
		if !fi.Mode().IsRegular() {
			// An A/B slot device: its size is the partition's, and the download wrote exactly
			// st.Size bytes into it (more is refused by the downloader).
			size = st.Size
		}
		in.Digest, in.Size = digest, size
		vd, err := a.verifier().Verify(in, pol)
		if err != nil {
			return ota.Fail(j, err, map[string]string{"stage": "verify"}), nil
		}
		if vd.Version != "" {
			j.Version = vd.Version
		}
		a.log.Info("verified", "job", j.JobID, "file", f.FileName, "key", vd.KeyID, "attested", vd.Attested, "version", vd.Version)
	}
	return ota.EvOK, nil
}

func (a *Agent) report(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	if j.Report == nil {
		// Cannot happen through the table; report INTERNAL rather than leave the job hanging.
		ota.Fail(j, reason.Errorf(reason.Internal, "no report recorded"), nil)
	}
	if err := a.upd.terminal(ctx, j); err != nil {
		return "", err
	}
	return ota.EvOK, nil
}

func (a *Agent) cleanup(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	if err := os.RemoveAll(a.stagingDir(j)); err != nil {
		a.log.Warn("cleanup", "job", j.JobID, "err", err)
	}
	return ota.EvOK, nil
}
