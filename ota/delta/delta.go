// Package delta installs a slot image by block reuse (docs/delta-updates.md): it hashes what
// the device already has — the active slot and the target slot's current contents — finds every
// block of the new image there by content (anywhere, not at the same offset), and fetches only
// the delta frames it lacks, with coalesced single-range GETs on the release's one object and
// presigned URL. Every block written is checked against the signed block index, the whole image
// against the signed raw digest.
//
// It survives a kill or a power cut by construction: blocks are written in ascending order and
// a restart scans the target again, finding what it already wrote in place; its durable progress
// (ota/durable) only carries the decision (delta or full) and the counters. When the delta does
// not fit — an unreadable slot, a block size this agent does not take, too few matches to be
// worth it, a server that ignores Range — it falls back to the full download of the same object
// and says why in Report.
package delta

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"

	"github.com/fieldota/fieldota/download"
	"github.com/fieldota/fieldota/ota/compressed"
	"github.com/fieldota/fieldota/ota/durable"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/slot"
	"github.com/fieldota/fieldota/ota/zimage"
)

// Request describes one slot install. Manifest comes from the verified release statement.
type Request struct {
	Manifest zimage.Manifest
	Object   download.RangesConfig // URL, Refresh, retries; Size and ETag are set here
	Target   string                // the inactive slot: a block device or a file, written in place
	Active   Source                // the running slot, read only
	StateDir string                // root-only: the index, the progress, a fallback's checkpoint

	MinSaving   float64 // fall back when the delta saves less than this share of the full part (default 0.2)
	MaxRequests int     // GETs for the frames (default 200)
	MergeGap    int64   // frames closer than this are fetched together (default 64 KiB)
	MaxBlocks   int64   // the largest index this agent holds (default 1<<23 blocks: 32 GiB at 4 KiB)

	Progress func(done, total int64) // raw bytes of the new image settled
	Logger   *slog.Logger
}

// Source is an image the device has. Size 0 means the whole file or device.
type Source struct {
	Path string
	Size int64
}

// Report is what the install cost: the agent reports Detail() as statusDetails `delta`.
type Report struct {
	Mode      string // "delta" or "full"
	Fallback  string // why a full install was done instead ("" for a delta)
	FullBytes int64  // what a full install downloads: the object's full part
	Fetched   int64  // body bytes received (index included; over every attempt of this process)
	Requests  int    // GETs sent
	Refreshes int
	Reused    int64 // raw bytes copied from the slots or already in place
	ReadOld   int64 // bytes read from the slots (scans and copies)
	Written   int64 // bytes written to the target
	Repairs   int   // blocks whose local copy failed its hash and were fetched instead
	Resumed   bool  // continued an install a previous process started
}

// Saved is the share of the full download not fetched.
func (r Report) Saved() float64 {
	if r.FullBytes <= 0 {
		return 0
	}
	return 1 - float64(r.Fetched)/float64(r.FullBytes)
}

// Detail is the statusDetails value: one line, no control characters, ≤ 1024 characters.
func (r Report) Detail() string {
	var s string
	if r.Mode == "delta" {
		s = fmt.Sprintf("saved %.0f%%: fetched %d of %d bytes in %d requests, reused %d bytes", 100*r.Saved(), r.Fetched, r.FullBytes, r.Requests, r.Reused)
	} else {
		s = fmt.Sprintf("full download (%d bytes, %d requests fetched): %s", r.FullBytes, r.Requests, r.Fallback)
	}
	out := []rune{}
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			c = ' '
		}
		out = append(out, c)
	}
	if len(out) > 1000 {
		out = append(out[:999], '…')
	}
	return string(out)
}

// ErrNoDelta marks a fallback decision; Report.Fallback carries the sentence.
var ErrNoDelta = errors.New("the delta does not fit")

type progress struct {
	Version  int    `json:"version"`
	Stored   string `json:"storedSha256"`
	Raw      string `json:"rawSha256"`
	Mode     string `json:"mode"` // "delta" or "full"
	Fallback string `json:"fallback,omitempty"`
	Fetched  int64  `json:"fetched"`
	Requests int    `json:"requests"`
	Done     bool   `json:"done,omitempty"`
}

const progressVersion = 1

type installer struct {
	req   Request
	m     zimage.Manifest
	log   *slog.Logger
	rep   Report
	prog  progress
	paths struct{ progress, indexZ, indexRaw, fullCkpt string }
}

// Install writes the manifest's image into req.Target, by delta when it fits and by the full
// download otherwise. The caller then reads the slot back (ota/slot.ReadBack) as for any install.
func Install(ctx context.Context, req Request) (Report, error) {
	m := req.Manifest
	if err := m.Validate(); err != nil {
		return Report{}, err
	}
	if req.StateDir == "" || req.Target == "" {
		return Report{}, reason.Errorf(reason.Internal, "delta install needs a state directory and a target")
	}
	in := &installer{req: req, m: m, log: req.Logger}
	if in.log == nil {
		in.log = slog.New(slog.DiscardHandler)
	}
	if in.req.MinSaving == 0 {
		in.req.MinSaving = 0.2
	}
	in.req.MaxRequests = max(in.req.MaxRequests, 0)
	if in.req.MaxRequests == 0 {
		in.req.MaxRequests = 200
	}
	if in.req.MergeGap == 0 {
		in.req.MergeGap = 64 << 10
	}
	if in.req.MaxBlocks == 0 {
		in.req.MaxBlocks = 1 << 23
	}
	id := m.Raw.SHA256[:16]
	in.paths.progress = filepath.Join(req.StateDir, "delta-"+id+".json")
	in.paths.indexZ = filepath.Join(req.StateDir, "delta-"+id+".index.zst")
	in.paths.indexRaw = filepath.Join(req.StateDir, "delta-"+id+".index")
	in.paths.fullCkpt = filepath.Join(req.StateDir, "delta-"+id+".full.ckpt")
	in.rep.FullBytes = m.Full.Size

	in.prog = progress{Version: progressVersion, Stored: m.Stored.SHA256, Raw: m.Raw.SHA256}
	if p, ok := in.loadProgress(); ok {
		in.prog, in.rep.Resumed = p, true
		in.rep.Fetched, in.rep.Requests = p.Fetched, p.Requests
	}
	if in.prog.Mode == "full" {
		return in.full(ctx, in.prog.Fallback)
	}
	if m.Delta == nil {
		return in.full(ctx, "the release has no block index")
	}
	err := in.delta(ctx)
	var nd *noDelta
	if errors.As(err, &nd) {
		in.log.Warn("delta: falling back to the full download", "why", nd.why)
		return in.full(ctx, nd.why)
	}
	return in.rep, err
}

type noDelta struct{ why string }

func (e *noDelta) Error() string { return "delta does not fit: " + e.why }
func (e *noDelta) Unwrap() error { return ErrNoDelta }

func fallback(format string, args ...any) error { return &noDelta{why: fmt.Sprintf(format, args...)} }

// RemoveState deletes an install's files in dir once the slot is committed or abandoned.
func RemoveState(dir string, m zimage.Manifest) error {
	id := m.Raw.SHA256[:16]
	var errs []error
	for _, n := range []string{".json", ".index.zst", ".index", ".full.ckpt"} {
		errs = append(errs, durable.Remove(filepath.Join(dir, "delta-"+id+n)))
	}
	return errors.Join(errs...)
}

func (in *installer) full(ctx context.Context, why string) (Report, error) {
	in.rep.Mode, in.rep.Fallback = "full", why
	if in.prog.Mode != "full" {
		in.prog.Mode, in.prog.Fallback = "full", why
		if err := in.saveProgress(); err != nil {
			return in.rep, err
		}
	}
	f, err := slot.OpenTarget(in.req.Target, in.m.Raw.Size)
	if err != nil {
		return in.rep, err
	}
	defer f.Close()
	res, err := compressed.Install(ctx, compressed.Request{
		Manifest: in.m, Object: in.req.Object, Sink: f, CheckpointPath: in.paths.fullCkpt,
		Progress: in.req.Progress, Logger: in.log,
	})
	in.rep.Fetched += res.BytesOnWire
	in.rep.Requests += res.Requests
	in.rep.Refreshes += res.Refreshes
	in.rep.Written = in.m.Raw.Size
	if err == nil {
		in.prog.Done = true
		in.prog.Fetched, in.prog.Requests = in.rep.Fetched, in.rep.Requests
		err = in.saveProgress()
	}
	return in.rep, err
}

func (in *installer) delta(ctx context.Context) error {
	m, d := in.m, in.m.Delta
	if blocks := d.Blocks(m.Raw.Size); blocks > in.req.MaxBlocks {
		return fallback("the index has %d blocks of %d bytes, this agent holds at most %d", blocks, d.BlockSize, in.req.MaxBlocks)
	}
	target, err := slot.OpenTarget(in.req.Target, m.Raw.Size)
	if err != nil {
		return err
	}
	defer target.Close()
	active, activeSize, err := openSource(in.req.Active)
	if err != nil {
		return fallback("the active slot cannot be read: %v", err)
	}
	defer active.Close()

	cfg := in.req.Object
	cfg.Size = m.Stored.Size
	ranges, err := download.NewRanges(cfg)
	if err != nil {
		return err
	}
	defer ranges.Close()
	defer func() {
		st := ranges.Stats()
		in.rep.Fetched += st.BytesOnWire
		in.rep.Requests += st.Requests
		in.rep.Refreshes += st.Refreshes
	}()

	ix, closeIx, err := in.index(ctx, ranges)
	if err != nil {
		if errors.Is(err, download.ErrRangeIgnored) {
			return fallback("the server ignores Range requests")
		}
		return err
	}
	defer closeIx()

	p, err := newPlan(ix)
	if err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	targetSize, err := sizeOf(target)
	if err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	var re *readError
	var targetErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		targetErr = p.scanTarget(ctx, target, min(targetSize, max(m.Raw.Size, activeSize)))
	}()
	activeErr := p.scanActive(ctx, active, activeSize)
	<-done
	in.rep.ReadOld += p.readTarget + p.readActive
	if activeErr != nil {
		if errors.As(activeErr, &re) {
			return fallback("the active slot cannot be read: %v", activeErr)
		}
		return activeErr
	}
	if targetErr != nil {
		if !errors.As(targetErr, &re) {
			return targetErr
		}
		// the target will be written whole: reading it was only an optimisation
		in.log.Warn("delta: the target slot cannot be read, not reusing it", "err", targetErr)
		p.inPlace = make([]uint64, len(p.inPlace))
		for i := range p.groups {
			p.groups[i].target = none
		}
	}
	need := p.neededFrames()
	spans := coalesce(ix, need, in.req.MaxRequests, in.req.MergeGap)
	var fetch int64
	for _, s := range spans {
		_, n := ix.WrappedRange(s.first, s.end)
		fetch += n
	}
	in.log.Info("delta: plan", "frames", ix.Frames, "needed", len(need), "requests", len(spans), "bytes", fetch, "full", m.Full.Size)
	if float64(fetch+d.Index.Size) > (1-in.req.MinSaving)*float64(m.Full.Size) {
		return fallback("too few matches: the delta needs %d of the %d bytes of a full download", fetch+d.Index.Size, m.Full.Size)
	}
	in.prog.Mode = "delta"
	if err := in.saveProgress(); err != nil {
		return err
	}
	a := &applier{in: in, ix: ix, p: p, target: target, active: active, ranges: ranges}
	if err := a.run(ctx, spans); err != nil {
		var rerr *readError
		if errors.As(err, &rerr) {
			return reason.Errorf(reason.InstallFailed, "delta install: %v", err)
		}
		return err
	}
	in.rep.Mode = "delta"
	in.prog.Done = true
	return in.saveProgress()
}

// index fetches (or finds, already fetched) the block index, checks it against its signed
// digest and decompresses it into the state directory.
func (in *installer) index(ctx context.Context, ranges *download.Ranges) (*zimage.Index, func(), error) {
	d := in.m.Delta
	ok, err := fileHasDigest(in.paths.indexZ, d.Index.Size, d.Index.Sum())
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		err := durable.Write(in.paths.indexZ, 0o600, func(w io.Writer) error {
			h := sha256.New()
			n, err := io.Copy(io.MultiWriter(w, h), ranges.Open(ctx, d.Index.Offset, d.Index.Size))
			if err != nil {
				return err
			}
			if n != d.Index.Size || subtle.ConstantTimeCompare(h.Sum(nil), d.Index.Sum()) != 1 {
				return reason.Errorf(reason.DigestMismatch, "block index: sha256 %x, signed %s", h.Sum(nil), d.Index.SHA256)
			}
			return nil
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			if reason.Of(err) == reason.Internal {
				err = reason.Wrap(reason.InstallFailed, err)
			}
			return nil, nil, err
		}
	}
	zf, err := os.Open(in.paths.indexZ)
	if err != nil {
		return nil, nil, reason.Wrap(reason.InstallFailed, err)
	}
	defer zf.Close()
	// checked once more now that it is open: the state directory is not trusted between runs
	h := sha256.New()
	hdr := make([]byte, zimage.WrapperSize)
	if _, err := io.ReadFull(io.TeeReader(zf, h), hdr); err != nil {
		return nil, nil, reason.Wrap(reason.InstallFailed, err)
	}
	if err := zimage.IndexWrapperCheck(hdr, d.Index.Size-zimage.WrapperSize); err != nil {
		return nil, nil, reason.Wrap(reason.DigestMismatch, err)
	}
	body := io.TeeReader(bufio.NewReader(zf), h)
	dec, err := zstd.NewReader(body, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(zimage.IndexWindow))
	if err != nil {
		return nil, nil, reason.Wrap(reason.Internal, err)
	}
	defer dec.Close()
	raw, err := os.OpenFile(in.paths.indexRaw, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, nil, reason.Wrap(reason.InstallFailed, err)
	}
	want := in.m.IndexRawSize()
	n, err := io.Copy(raw, io.LimitReader(dec, want+1))
	if err == nil {
		_, err = io.Copy(io.Discard, body) // the rest of the wrapped bytes, for the digest
	}
	switch {
	case err != nil:
		raw.Close()
		return nil, nil, reason.Errorf(reason.DigestMismatch, "block index does not decode: %w", err)
	case n > want:
		raw.Close()
		return nil, nil, reason.Errorf(reason.DecompressionBomb, "block index decompresses past its %d bytes", want)
	case n != want:
		raw.Close()
		return nil, nil, reason.Errorf(reason.SizeMismatch, "block index is %d bytes, want %d", n, want)
	case subtle.ConstantTimeCompare(h.Sum(nil), d.Index.Sum()) != 1:
		raw.Close()
		return nil, nil, reason.Errorf(reason.DigestMismatch, "block index file changed since it was fetched")
	}
	ix, err := zimage.OpenIndex(raw, in.m)
	if err != nil {
		raw.Close()
		return nil, nil, err
	}
	return ix, func() { raw.Close() }, nil
}

func fileHasDigest(path string, size int64, sum []byte) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, reason.Wrap(reason.InstallFailed, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, size+1))
	return err == nil && n == size && bytes.Equal(h.Sum(nil), sum), nil
}

func (in *installer) loadProgress() (progress, bool) {
	b, err := os.ReadFile(in.paths.progress)
	if err != nil {
		return progress{}, false
	}
	var p progress
	if err := json.Unmarshal(b, &p); err != nil || p.Version != progressVersion || p.Stored != in.m.Stored.SHA256 ||
		p.Raw != in.m.Raw.SHA256 || (p.Mode != "delta" && p.Mode != "full") || p.Fetched < 0 || p.Requests < 0 {
		in.log.Warn("delta: progress file not usable, ignored", "path", in.paths.progress)
		return progress{}, false
	}
	p.Done = false // whatever it says, the image is verified again
	return p, true
}

func (in *installer) saveProgress() error {
	in.prog.Fetched, in.prog.Requests = in.rep.Fetched, in.rep.Requests
	b, err := json.Marshal(in.prog)
	if err != nil {
		return reason.Wrap(reason.Internal, err)
	}
	if err := durable.WriteFile(in.paths.progress, b, 0o600); err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	return nil
}

func openSource(s Source) (*os.File, int64, error) {
	f, err := os.Open(s.Path)
	if err != nil {
		return nil, 0, err
	}
	size, err := sizeOf(f)
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if s.Size > 0 {
		size = min(size, s.Size)
	}
	return f, size, nil
}

func sizeOf(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Mode().IsRegular() {
		return fi.Size(), nil
	}
	return f.Seek(0, io.SeekEnd)
}
