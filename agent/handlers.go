package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/download"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/reason"
)

// handlers maps each state to its work. The waiting states (wait.go), accept, download, verify,
// report and cleanup are the same for every target; the states in between are the target's flow
// (flow.go).
func (a *Agent) handlers() map[ota.State]ota.Handler {
	h := map[ota.State]ota.Handler{
		ota.StateWaitDownload: a.waitState(ota.StateWaitDownload),
		ota.StateWaitInstall:  a.waitState(ota.StateWaitInstall),
		ota.StateWaitActivate: a.waitState(ota.StateWaitActivate),
		ota.StateAccept:       a.accept,
		ota.StateDownload:     a.download,
		ota.StateVerify:       a.verifyStaged,
		ota.StateReport:       a.report,
		ota.StateCleanup:      a.cleanup,
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
	return a.inProgressStep(ctx, j, d, a.upd.stepTimeout)
}

// inProgressStep is inProgress with a step timer of its own.
func (a *Agent) inProgressStep(ctx context.Context, j *ota.Journal, d map[string]string, stepMinutes int64) (ota.Event, error) {
	err := a.retryTransient(ctx, func() error { return a.upd.inProgressStep(ctx, j, d, stepMinutes) })
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
	jb, err := a.jobOf(j)
	if err != nil {
		return ota.Fail(j, err, map[string]string{"stage": "download"}), nil
	}
	dir := a.stagingDir(j)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return ota.Fail(j, reason.Wrap(reason.InstallFailed, err), map[string]string{"stage": "download"}), nil
	}
	if len(j.Staged) != len(jb.rel.Files) {
		// Sizes come from the signed release: no byte past them is ever downloaded.
		j.Staged = make([]ota.Staged, len(jb.rel.Files))
		for i, f := range jb.rel.Files {
			j.Staged[i] = ota.Staged{Name: f.Name, Path: filepath.Join(dir, fmt.Sprintf("%d.payload", i)),
				Checkpoint: filepath.Join(dir, fmt.Sprintf("%d.checkpoint", i)), Size: f.RawSize()}
		}
	}
	// Progress counts installed bytes: a compressed install reports the raw bytes it settled.
	var total, before int64
	for _, f := range jb.rel.Files {
		total += f.RawSize()
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

	for i, f := range jb.rel.Files {
		st := &j.Staged[i]
		if st.SHA256 != "" {
			before += f.RawSize()
			continue
		}
		observe := func(done, _ int64) { prog.observe(before+done, total) }
		var res download.Result
		if f.Compressed != nil {
			res, err = a.fetchCompressed(jobCtx, j, i, f, jb.doc.Files[i].URL, st, observe)
		} else {
			res, err = a.fetch(jobCtx, j, i, jb.doc.Files[i].URL, st, observe)
		}
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
			extra := map[string]string{"stage": "download"}
			if v := j.Data[dataDelta]; v != "" {
				extra["delta"] = v
			}
			return ota.Fail(j, err, extra), nil
		}
		st.SHA256 = hex.EncodeToString(res.SHA256)
		before += f.RawSize()
		a.log.Info("downloaded", "job", j.JobID, "file", f.Name, "bytes", res.Size, "wire", res.BytesOnWire, "resumed", res.Resumed, "refreshes", res.Refreshes)
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

func (a *Agent) fetch(ctx context.Context, j *ota.Journal, i int, url string, st *ota.Staged, progress func(done, total int64)) (download.Result, error) {
	sink, err := a.openSink(j, i, st)
	if err != nil {
		return download.Result{}, err
	}
	defer sink.Close()
	dc := a.cfg.Download
	// The expected digest is checked in verify, after any detached signature: bytes that are
	// not what a codesign object signed read SIGNATURE_INVALID.
	return download.Download(ctx, download.Request{
		URL:            url,
		Size:           st.Size,
		Sink:           sink,
		CheckpointPath: st.Checkpoint,
		Refresh: func(ctx context.Context) (string, error) {
			return a.freshURL(ctx, j, i)
		},
		MaxRefreshes:   dc.MaxRefreshes,
		Stall:          dc.StallTimeout.Duration,
		RateLimit:      dc.RateLimit,
		MinSpeed:       dc.MinSpeed,
		MinSpeedWindow: dc.MinSpeedWindow.Duration,
		MaxSlow:        dc.MaxSlowWindows,
		Policy:         a.urlPolicy(),
		Progress:       progress,
		Logger:         a.log,
	})
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
	doc, err := parseDoc(exec.JobDocument)
	if err != nil {
		return "", err
	}
	if i >= len(doc.Files) || i >= len(j.Staged) || doc.Files[i].FileName != j.Staged[i].Name {
		return "", reason.Errorf(reason.InvalidDocument, "the document changed: file %d is not the one being downloaded any more", i)
	}
	return doc.Files[i].URL, nil
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

// verifyStaged checks what the download brought against the release verified on arrival: size,
// detached signature if any, and the signed digest. The bytes are checked again right before
// they are installed (each target's install re-hashes them).
func (a *Agent) verifyStaged(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	if ev, err := a.inProgress(ctx, j, details(j, "verify", nil)); ev != "" || err != nil {
		return ev, err
	}
	jb, err := a.jobOf(j)
	if err != nil {
		return ota.Fail(j, err, map[string]string{"stage": "verify"}), nil
	}
	for i, f := range jb.rel.Files {
		st := j.Staged[i]
		digest, err := hex.DecodeString(st.SHA256)
		if err != nil {
			return ota.Fail(j, reason.Errorf(reason.Internal, "journal digest of %s: %w", f.Name, err), map[string]string{"stage": "verify"}), nil
		}
		fi, err := os.Stat(st.Path)
		if err != nil {
			return ota.Fail(j, reason.Errorf(reason.Internal, "staged %s: %w", f.Name, err), map[string]string{"stage": "verify"}), nil
		}
		size := fi.Size()
		if !fi.Mode().IsRegular() {
			// An A/B slot device: its size is the partition's, and the download wrote exactly
			// st.Size bytes into it (more is refused by the downloader).
			size = st.Size
		}
		pv, err := a.verifier().CheckInstalled(jb.rel, i, digest, size, a.now())
		if err != nil {
			return ota.Fail(j, err, map[string]string{"stage": "verify"}), nil
		}
		a.log.Info("verified", "job", j.JobID, "file", f.Name, "signed", jb.rel.Signed, "statementKey", jb.rel.KeyID, "codesignKey", pv.KeyID, "version", jb.rel.Version)
	}
	return ota.EvOK, nil
}

func (a *Agent) report(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	if j.Report == nil {
		// Cannot happen through the table; report INTERNAL rather than leave the job hanging.
		ota.Fail(j, reason.Errorf(reason.Internal, "no report recorded"), nil)
	}
	if isCommand(j) {
		return a.finishCommand(ctx, j)
	}
	if err := a.upd.terminal(ctx, j); err != nil {
		return "", err
	}
	return ota.EvOK, nil
}

func (a *Agent) cleanup(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	a.uploadLogs(ctx, j)
	if err := os.RemoveAll(a.stagingDir(j)); err != nil {
		a.log.Warn("cleanup", "job", j.JobID, "err", err)
	}
	return ota.EvOK, nil
}

// recheckStaged re-hashes a staged payload from disk right before it is installed and checks it
// against the release (the signed digest, and a detached signature if any): it may have sat
// staged for a while, and the journal that names it is untrusted.
func (a *Agent) recheckStaged(jb *job, i int, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return reason.Errorf(reason.Internal, "staged %s: %w", jb.rel.Files[i].Name, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return reason.Errorf(reason.Internal, "staged %s: %w", jb.rel.Files[i].Name, err)
	}
	_, err = a.verifier().CheckInstalled(jb.rel, i, h.Sum(nil), n, a.now())
	return err
}
