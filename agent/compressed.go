package agent

import (
	"context"

	"github.com/fieldota/fieldota/download"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/compressed"
	"github.com/fieldota/fieldota/ota/delta"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify"
)

// Compressed payloads (docs/delta-updates.md): a file whose signed release carries a zimage
// manifest is decompressed while it downloads, straight into where it goes — the staged file
// of a files or binary job, the inactive slot — and a slot image with a signed block index is
// installed by block-reuse delta when this device allows it. Every value comes from the verified
// release; the document gives only the URL. The staged (or written) bytes are then checked
// against the signed raw size and digest like any payload (verifyStaged, recheckStaged, the
// slot's read-back).

// dataDelta is the journal Data key holding the delta's statusDetails value (`delta`): what it
// saved, or why the full download was done instead. The slot's reports carry it from then on.
const dataDelta = "delta"

// admitCompressed refuses, while the job is QUEUED, a compressed file this device will not
// decode: one whose decoder window (the signed frame size) exceeds download.max_decoder_window_bytes.
func (a *Agent) admitCompressed(r *verify.Release) error {
	for i, f := range r.Files {
		m := f.Compressed
		if m == nil {
			continue
		}
		if w := decoderWindow(m.FullFrameSize); w > a.cfg.Download.MaxDecoderWindow {
			return reason.Errorf(reason.UnsupportedOperation, "files[%d] %s: its frames of %d bytes need a %d-byte decoder window, this device allows %d (download.max_decoder_window_bytes)",
				i, f.Name, m.FullFrameSize, w, a.cfg.Download.MaxDecoderWindow)
		}
	}
	return nil
}

// decoderWindow is what compressed.Install lets a frame's decoder use: its raw size, to the next
// power of two.
func decoderWindow(frame int64) int64 {
	w := int64(1)
	for w < frame {
		w <<= 1
	}
	return w
}

// ranges is how compressed installs read their object: the document's URL, a fresh one from a
// new describe of the job, and the download policy and watchdogs of every download.
func (a *Agent) ranges(j *ota.Journal, i int, url string) download.RangesConfig {
	dc := a.cfg.Download
	return download.RangesConfig{
		URL:            url,
		Refresh:        func(ctx context.Context) (string, error) { return a.freshURL(ctx, j, i) },
		MaxRefreshes:   dc.MaxRefreshes,
		Stall:          dc.StallTimeout.Duration,
		MinSpeed:       dc.MinSpeed,
		MinSpeedWindow: dc.MinSpeedWindow.Duration,
		MaxSlow:        dc.MaxSlowWindows,
		RateLimit:      dc.RateLimit,
		Policy:         a.urlPolicy(),
		Logger:         a.log,
	}
}

// fetchCompressed installs file i of a compressed release into its sink and returns the raw
// digest, verified against the signed one. Run again after a kill or a reboot, it resumes: the
// compressed install from its checkpoint (a frame boundary), the delta by rescanning the slot
// for what it already wrote. progress sees raw bytes.
func (a *Agent) fetchCompressed(ctx context.Context, j *ota.Journal, i int, f verify.File, url string, st *ota.Staged, progress func(done, total int64)) (download.Result, error) {
	m := *f.Compressed
	fl, err := a.flowOf(j.Target)
	if err != nil {
		return download.Result{}, err
	}
	if m.Delta != nil && fl.delta != nil && a.cfg.Delta.On() {
		return a.fetchDelta(ctx, j, i, f, url, fl, progress)
	}
	sink, err := a.openSink(j, i, st)
	if err != nil {
		return download.Result{}, err
	}
	defer sink.Close()
	res, err := compressed.Install(ctx, compressed.Request{
		Manifest: m, Object: a.ranges(j, i, url), Sink: sink, CheckpointPath: st.Checkpoint,
		Progress: progress, Logger: a.log,
	})
	if err != nil {
		return download.Result{}, err
	}
	return download.Result{SHA256: res.RawSHA256, Size: m.Raw.Size, BytesOnWire: res.BytesOnWire, Resumed: res.Resumed,
		ResumedFrom: res.ResumedFrom, Refreshes: res.Refreshes}, nil
}

// fetchDelta writes a slot image by block reuse: the inactive slot is the target, the running
// slot a source, the staging directory its state; the report goes in statusDetails as `delta`.
func (a *Agent) fetchDelta(ctx context.Context, j *ota.Journal, i int, f verify.File, url string, fl flow, progress func(done, total int64)) (download.Result, error) {
	target, active, err := fl.delta(j, i)
	if err != nil {
		return download.Result{}, err
	}
	m := *f.Compressed
	rep, err := delta.Install(ctx, delta.Request{
		Manifest: m, Object: a.ranges(j, i, url), Target: target, Active: delta.Source{Path: active},
		StateDir: a.stagingDir(j), MinSaving: a.cfg.Delta.MinSaving, MaxRequests: a.cfg.Delta.MaxRequests,
		Progress: progress, Logger: a.log,
	})
	if rep.Mode != "" {
		if j.Data == nil {
			j.Data = map[string]string{}
		}
		j.Data[dataDelta] = rep.Detail()
	}
	if err != nil {
		return download.Result{}, err
	}
	a.log.Info("delta install done", "job", j.JobID, "mode", rep.Mode, "fetched", rep.Fetched, "full", rep.FullBytes,
		"requests", rep.Requests, "reused", rep.Reused, "repairs", rep.Repairs, "resumed", rep.Resumed, "fallback", rep.Fallback)
	return download.Result{SHA256: m.Raw.Sum(), Size: m.Raw.Size, BytesOnWire: rep.Fetched, Resumed: rep.Resumed, Refreshes: rep.Refreshes}, nil
}
