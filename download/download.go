// Package download fetches one artifact over HTTP(S) into a sink the caller gives (a temp file, an
// A/B slot device), hashing SHA-256 as the bytes arrive and never holding the payload in memory.
//
// It survives what a fielded device meets: connection drops (resume with Range from the offset
// reached), process kills and power cuts (resume from a durable checkpoint written after the sink
// is synced), presigned URL expiry (ask Refresh for a fresh URL and continue from the same offset),
// servers that ignore Range or replace the object (start again from zero: a resume needs 206, the
// expected Content-Range and the same ETag, so a file is never stitched from two objects), stalls,
// 5xx and 429 (backoff with jitter, Retry-After). Failures carry reason codes: DOWNLOAD_FAILED,
// URL_EXPIRED, SIZE_MISMATCH, DIGEST_MISMATCH, INSUFFICIENT_SPACE.
//
// Presigned URLs are credentials: every URL in a log line or an error goes through Redact.
package download

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/fieldota/fieldota/ota/reason"
)

// Sink receives the payload. *os.File satisfies it; so does an opened block device. A sink that
// also has Truncate(int64) error is truncated when a download starts again from zero and to the
// final size; one with ReadAt has its bytes re-hashed before a resume from a checkpoint is trusted.
type Sink interface {
	io.WriterAt
	Sync() error
}

type truncater interface{ Truncate(size int64) error }

// Request describes one download. URL, Size and Sink are required.
type Request struct {
	URL    string // presigned; never logged with its query
	Size   int64  // expected size in bytes: more is refused, less is SIZE_MISMATCH
	SHA256 []byte // expected digest, checked at the end (nil = report the digest only)
	Sink   Sink

	// CheckpointPath, if set, makes the download survive a kill or a reboot: every
	// CheckpointEvery bytes (default 1 MiB) or CheckpointInterval (default 1 s), whichever comes
	// first, the sink is synced and {ETag, size, offset, hash state} written there atomically, so
	// a kill costs at most about 1 MiB at any link speed. A completed download leaves a complete
	// checkpoint behind so that a crash before the caller moves on does not cost a second
	// download; RemoveCheckpoint drops it.
	CheckpointPath     string
	CheckpointEvery    int64
	CheckpointInterval time.Duration

	// Refresh returns a fresh URL for the same object after a 400/403/404 (the agent describes the
	// job again). At most MaxRefreshes (default 3) refreshes in a row without a byte gained.
	Refresh      func(ctx context.Context) (string, error)
	MaxRefreshes int

	Retries      int           // attempts without progress, for response headers and for bodies (default 8)
	RetryWaitMin time.Duration // backoff floor (default 1 s)
	RetryWaitMax time.Duration // backoff ceiling (default 30 s); Retry-After is honoured up to 10 min
	Stall        time.Duration // no byte for this long → reconnect (default 30 s)
	RateLimit    int64         // bytes per second, 0 = unlimited

	// MinSpeed (bytes per second, 0 = off) is the slow-retrieval watchdog: a connection that
	// brings fewer than MinSpeed·MinSpeedWindow bytes in any MinSpeedWindow (default 60 s) is
	// dropped and the download resumed on a new one; MaxSlow (default 3) such windows in a row
	// end it DOWNLOAD_TOO_SLOW. A trickling server never trips the stall watchdog, which waits
	// for no byte at all.
	MinSpeed       int64
	MinSpeedWindow time.Duration
	MaxSlow        int

	// Policy, if set, is applied to the URL, every fresh URL, every redirect and every address
	// connected to: HOST_NOT_ALLOWED otherwise.
	Policy *Policy

	Progress func(done, total int64) // called from the downloading goroutine after each chunk; keep it quick
	Logger   *slog.Logger            // nil = silent

	// HTTPClient replaces the default client (no compression, ResponseHeaderTimeout = Stall, TLSConfig).
	// If you pass one, give its transport a ResponseHeaderTimeout and DisableCompression.
	HTTPClient *http.Client
	TLSConfig  *tls.Config

	// FreeSpace reports the bytes available to an unprivileged writer in dir (default: statfs).
	FreeSpace func(dir string) (int64, error)
	Clock     Clock // nil = real time
}

// Result describes a completed download.
type Result struct {
	SHA256      []byte // digest of the Size bytes in the sink
	Size        int64
	BytesOnWire int64 // body bytes received over all attempts (restarts included)
	Resumed     bool  // started from a checkpoint rather than from zero
	ResumedFrom int64 // the checkpoint's offset
	Restarts    int   // times the download started again from zero (object changed, Range ignored)
	Refreshes   int   // fresh URLs asked for
}

const (
	defaultCheckpointEvery = 1 << 20
	defaultRetries         = 8
	defaultMaxRefreshes    = 3
	defaultStall           = 30 * time.Second
	maxRetryAfter          = 10 * time.Minute
	maxRestarts            = 4 // an object that keeps changing under us is a failure, not a loop
	bufSize                = 256 << 10
)

var (
	errStalled  = errors.New("stalled: no bytes received")
	errTooSlow  = errors.New("too slow: below the minimum speed for a whole window")
	errTooLong  = errors.New("server sent more bytes than expected")
	errTooShort = errors.New("server ended the body before the expected size")
)

// sinkError marks a failure to write, sync or checkpoint locally (not a network problem).
type sinkError struct{ err error }

func (e *sinkError) Error() string { return e.err.Error() }
func (e *sinkError) Unwrap() error { return e.err }

type state struct {
	offset int64
	etag   string
	h      hash.Hash
	lastCP int64 // offset of the last durable checkpoint
	lastAt time.Time
}

type downloader struct {
	req    Request
	log    *slog.Logger
	clock  Clock
	rc     *retryablehttp.Client
	closer func()
	obj    string // the URL without its query: the object's identity in checkpoints and logs
	res    Result
	buf    []byte
	trunc  truncater // nil for sinks that cannot or must not be truncated (block devices)
}

// Download fetches req.URL into req.Sink and returns the digest once all req.Size bytes are
// durable in the sink (synced) and, if req.SHA256 is set, match it. Failures carry a reason code
// (errors.Is(err, reason.URLExpired), …). When ctx ends, the progress is checkpointed and the error
// wraps ctx.Err() without a reason code: the caller knows why it stopped.
func Download(ctx context.Context, req Request) (Result, error) {
	if req.Sink == nil || req.Size < 0 || req.URL == "" {
		return Result{}, reason.Errorf(reason.DownloadFailed, "download request needs a URL, a size and a sink")
	}
	if req.SHA256 != nil && len(req.SHA256) != sha256.Size {
		return Result{}, reason.Errorf(reason.DownloadFailed, "expected SHA-256 has %d bytes", len(req.SHA256))
	}
	d := newDownloader(req)
	defer d.closer()
	return d.run(ctx)
}

func newDownloader(req Request) *downloader {
	if req.CheckpointEvery <= 0 {
		req.CheckpointEvery = defaultCheckpointEvery
	}
	if req.CheckpointInterval <= 0 {
		req.CheckpointInterval = defaultCheckpointInterval
	}
	if req.Retries <= 0 {
		req.Retries = defaultRetries
	}
	if req.MaxRefreshes <= 0 {
		req.MaxRefreshes = defaultMaxRefreshes
	}
	if req.RetryWaitMin <= 0 {
		req.RetryWaitMin = time.Second
	}
	if req.RetryWaitMax < req.RetryWaitMin {
		req.RetryWaitMax = max(req.RetryWaitMin, 30*time.Second)
	}
	if req.Stall <= 0 {
		req.Stall = defaultStall
	}
	if req.MinSpeedWindow <= 0 {
		req.MinSpeedWindow = time.Minute
	}
	if req.MaxSlow <= 0 {
		req.MaxSlow = 3
	}
	if req.FreeSpace == nil {
		req.FreeSpace = statfsFree
	}
	d := &downloader{req: req, log: req.Logger, clock: req.Clock, obj: Redact(req.URL), closer: func() {}}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if t, ok := req.Sink.(truncater); ok {
		d.trunc = t
		// *os.File has Truncate even when it is an A/B slot device, where it fails.
		if s, ok := req.Sink.(interface{ Stat() (os.FileInfo, error) }); ok {
			if fi, err := s.Stat(); err != nil || !fi.Mode().IsRegular() {
				d.trunc = nil
			}
		}
	}
	if d.clock == nil {
		d.clock = realClock{}
	}
	hc := req.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.DisableCompression = true // gzip of a 200 and raw bytes of a 206 must never mix
		tr.ResponseHeaderTimeout = req.Stall
		if req.TLSConfig != nil {
			tr.TLSClientConfig = req.TLSConfig.Clone()
		}
		tr.DialContext = req.Policy.dialContext()
		hc = &http.Client{Transport: tr, CheckRedirect: req.Policy.checkRedirect}
		d.closer = tr.CloseIdleConnections
	}
	d.rc = &retryablehttp.Client{
		HTTPClient:   hc,
		Logger:       nil, // it logs full URLs, signature included; we log through RequestLogHook
		RetryWaitMin: req.RetryWaitMin,
		RetryWaitMax: req.RetryWaitMax,
		RetryMax:     req.Retries,
		CheckRetry:   checkRetry, // transport errors, 429, 5xx (not 501); never other 4xx nor a refused host
		Backoff:      d.backoff,
		ErrorHandler: retryablehttp.PassthroughErrorHandler, // we want the last status, not "giving up"
		RequestLogHook: func(_ retryablehttp.Logger, r *http.Request, attempt int) {
			if attempt > 0 {
				d.log.Info("download: retrying request", "url", d.obj, "attempt", attempt, "range", r.Header.Get("Range"))
			}
		},
	}
	return d
}

// checkRetry is retryablehttp's default policy, except that a host or address the policy refused
// is final: asking again cannot change the answer.
func checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if err != nil && refusedByPolicy(err) {
		return false, err
	}
	return retryablehttp.DefaultRetryPolicy(ctx, resp, err)
}

// noDowngrade refuses a redirect from https to http: it would send a presigned URL in clear text.
func noDowngrade(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
		return errors.New("refusing a redirect from https to http")
	}
	return nil
}

func (d *downloader) run(ctx context.Context) (Result, error) {
	req := d.req
	st := &state{h: sha256.New()}
	if cp, ok := d.loadCheckpoint(); ok {
		if err := d.adopt(cp, st); err != nil {
			d.log.Warn("download: checkpoint not usable, starting from zero", "url", d.obj, "err", err)
			st = &state{h: sha256.New()}
			if err := d.dropCheckpoint(); err != nil {
				return d.res, err
			}
		} else {
			d.res.Resumed, d.res.ResumedFrom = st.offset > 0, st.offset
			d.log.Info("download: resuming from checkpoint", "url", d.obj, "offset", st.offset, "size", req.Size)
		}
	}
	if st.offset < req.Size {
		if err := d.checkSpace(st.offset); err != nil {
			return d.res, err
		}
	}
	d.log.Info("download: start", "url", d.obj, "size", req.Size, "offset", st.offset)

	url := req.URL
	if req.Policy != nil {
		if err := req.Policy.Check(url); err != nil {
			return d.res, err
		}
	}
	noProgress, refreshes, slow := 0, 0, 0
	var lastStatus int
	fail := func(code reason.Code, format string, args ...any) (Result, error) {
		err := reason.Errorf(code, "%s: "+format, append([]any{d.obj}, args...)...)
		d.log.Error("download: failed", "url", d.obj, "err", err)
		return d.res, err
	}
	for st.offset < req.Size {
		if err := ctx.Err(); err != nil {
			return d.res, d.stop(st, err)
		}
		if noProgress > req.Retries {
			return fail(reason.DownloadFailed, "giving up after %d attempts without progress (last status %d)", noProgress, lastStatus)
		}
		if d.res.Restarts > maxRestarts {
			return fail(reason.DownloadFailed, "object changed %d times during the download", d.res.Restarts)
		}
		o := d.attempt(ctx, url, st)
		if o.getErr != nil {
			if ctx.Err() != nil {
				return d.res, d.stop(st, ctx.Err())
			}
			if refusedByPolicy(o.getErr) {
				return fail(reason.HostNotAllowed, "%w", o.getErr)
			}
			// retryablehttp already spent its retries on this one
			return fail(reason.DownloadFailed, "%w", o.getErr)
		}
		lastStatus = o.status
		switch o.verdict {
		case fatal:
			if errors.Is(o.verr, reason.SizeMismatch) {
				_ = d.distrust()
			}
			d.log.Error("download: failed", "url", d.obj, "err", o.verr)
			return d.res, o.verr
		case mismatch:
			d.log.Warn("download: cannot resume, starting again from zero", "url", d.obj, "status", o.status, "why", o.verr)
			if err := d.restart(st); err != nil {
				return d.res, err
			}
			noProgress++
			continue
		case refresh:
			if req.Refresh == nil || refreshes >= req.MaxRefreshes {
				code := reason.DownloadFailed
				if o.status == http.StatusForbidden {
					code = reason.URLExpired
				}
				return fail(code, "status %d and no fresh URL after %d refreshes", o.status, refreshes)
			}
			refreshes++
			d.res.Refreshes++
			d.log.Info("download: asking for a fresh URL", "url", d.obj, "status", o.status, "offset", st.offset, "refresh", refreshes)
			fresh, err := req.Refresh(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return d.res, d.stop(st, ctx.Err())
				}
				if reason.Of(err) != reason.Internal {
					return d.res, fmt.Errorf("download %s: refresh: %w", d.obj, scrub(err))
				}
				return fail(reason.DownloadFailed, "refresh: %w", scrub(err))
			}
			if req.Policy != nil {
				if err := req.Policy.Check(fresh); err != nil {
					return d.res, err
				}
			}
			if Redact(fresh) != d.obj {
				d.log.Warn("download: fresh URL names another object", "url", d.obj, "fresh", Redact(fresh))
			}
			url = fresh
			continue
		}
		gained, err := o.gained, o.bodyErr
		if gained > 0 {
			noProgress, refreshes = 0, 0
		}
		if err == nil {
			break
		}
		if errors.Is(err, errTooSlow) {
			slow++
			if slow >= req.MaxSlow {
				return fail(reason.DownloadTooSlow, "below %d bytes/s for %d windows of %s in a row (at %d of %d bytes)", req.MinSpeed, slow, req.MinSpeedWindow, st.offset, req.Size)
			}
		} else {
			slow = 0
		}
		var se *sinkError
		switch {
		case errors.As(err, &se):
			if errors.Is(err, syscall.ENOSPC) {
				return fail(reason.InsufficientSpace, "writing the sink: %w", err)
			}
			return fail(reason.DownloadFailed, "writing the sink: %w", err)
		case errors.Is(err, errTooLong), errors.Is(err, errTooShort):
			_ = d.distrust()
			return fail(reason.SizeMismatch, "%w (expected %d bytes)", err, req.Size)
		case ctx.Err() != nil:
			return d.res, d.stop(st, ctx.Err())
		}
		d.log.Warn("download: connection lost, resuming", "url", d.obj, "offset", st.offset, "err", scrub(err))
		if err := d.checkpoint(st); err != nil {
			return fail(reason.DownloadFailed, "checkpoint: %w", err)
		}
		if gained == 0 {
			noProgress++
			if err := d.wait(ctx, d.backoff(req.RetryWaitMin, req.RetryWaitMax, noProgress, nil)); err != nil {
				return d.res, d.stop(st, err)
			}
		}
	}
	return d.finish(st)
}

// outcome is what one request brought.
type outcome struct {
	getErr  error // no response at all
	status  int
	header  http.Header
	verdict verdict
	verr    error
	gained  int64
	bodyErr error
}

// attempt sends one request and, if the response continues the download, streams its body.
func (d *downloader) attempt(ctx context.Context, url string, st *state) (o outcome) {
	attemptCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := d.get(attemptCtx, url, st)
	if err != nil {
		o.getErr = err
		return o
	}
	o.status, o.header = resp.StatusCode, resp.Header
	o.verdict, o.verr = d.accept(resp, st)
	if o.verdict != bodyOK {
		drain(resp)
		return o
	}
	o.gained, o.bodyErr = d.copyBody(attemptCtx, cancel, resp, st)
	return o
}

type verdict int

const (
	bodyOK   verdict = iota
	mismatch         // cannot resume: start again from zero
	refresh          // URL refused: ask for a fresh one
	fatal
)

// accept decides what a response means for the download.
func (d *downloader) accept(resp *http.Response, st *state) (verdict, error) {
	size := d.req.Size
	etag := strongETag(resp.Header.Get("ETag"))
	switch resp.StatusCode {
	case http.StatusOK:
		if resp.ContentLength >= 0 && resp.ContentLength != size {
			return fatal, reason.Errorf(reason.SizeMismatch, "%s: server announces %d bytes, expected %d", d.obj, resp.ContentLength, size)
		}
		if st.offset > 0 {
			// Range ignored, or If-Range saw another object: this body is the whole (maybe new) object.
			d.log.Warn("download: server sent the whole object, starting again from zero", "url", d.obj, "offset", st.offset)
			if err := d.restart(st); err != nil {
				return fatal, err
			}
		}
		st.etag = etag
		return bodyOK, nil
	case http.StatusPartialContent:
		first, last, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		switch {
		case !ok:
			return mismatch, fmt.Errorf("bad Content-Range %q", resp.Header.Get("Content-Range"))
		case st.offset == 0 || st.etag == "":
			return mismatch, errors.New("206 to a request without a resumable Range")
		case first != st.offset || last != size-1 || total != size:
			return mismatch, fmt.Errorf("Content-Range %d-%d/%d, wanted %d-%d/%d", first, last, total, st.offset, size-1, size)
		case etag != st.etag:
			return mismatch, fmt.Errorf("ETag changed from %s to %s", st.etag, etag)
		}
		return bodyOK, nil
	case http.StatusRequestedRangeNotSatisfiable:
		return mismatch, errors.New("416: the object is shorter than our offset")
	case http.StatusBadRequest, http.StatusForbidden, http.StatusNotFound:
		return refresh, nil
	case http.StatusTooManyRequests:
		return fatal, reason.Errorf(reason.DownloadFailed, "%s: status %d after %d retries", d.obj, resp.StatusCode, d.req.Retries)
	}
	if resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented {
		return fatal, reason.Errorf(reason.DownloadFailed, "%s: status %d after %d retries", d.obj, resp.StatusCode, d.req.Retries)
	}
	return fatal, reason.Errorf(reason.DownloadFailed, "%s: unexpected status %d", d.obj, resp.StatusCode)
}

// get sends one GET (retryablehttp retries connection errors, 5xx and 429 with our backoff).
// From a non-zero offset it asks for the rest with If-Range, so a changed object comes back whole.
func (d *downloader) get(ctx context.Context, url string, st *state) (*http.Response, error) {
	r, err := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, scrub(err)
	}
	if st.offset > 0 {
		if st.etag == "" {
			// Without a strong ETag nothing proves the rest belongs to the same object.
			if err := d.restart(st); err != nil {
				return nil, err
			}
		} else {
			r.Header.Set("Range", "bytes="+strconv.FormatInt(st.offset, 10)+"-")
			r.Header.Set("If-Range", st.etag)
		}
	}
	resp, err := d.rc.Do(r)
	if err != nil {
		if resp != nil {
			drain(resp)
		}
		return nil, scrub(err)
	}
	return resp, nil
}

// copyBody streams the body into the sink from st.offset, hashing and checkpointing as it goes.
func (d *downloader) copyBody(attemptCtx context.Context, cancel context.CancelCauseFunc, resp *http.Response, st *state) (gained int64, err error) {
	defer resp.Body.Close()
	wd := newWatchdog(d.clock, d.req.Stall, cancel)
	defer wd.stop()
	if d.req.MinSpeed > 0 {
		wd.watchSpeed(d.req.MinSpeed, d.req.MinSpeedWindow)
	}
	if d.buf == nil {
		d.buf = make([]byte, bufSize)
	}
	t0 := d.clock.Now()
	size := d.req.Size
	for {
		want := min(int64(len(d.buf)), size-st.offset+1) // one extra byte detects an overlong body
		if d.req.RateLimit > 0 {
			want = min(want, max(d.req.RateLimit/10, 1)) // pace in tenths of a second, well under any stall timeout
		}
		n, rerr := resp.Body.Read(d.buf[:want])
		if n > 0 {
			wd.kick()
			wd.bytes.Add(int64(n))
			d.res.BytesOnWire += int64(n)
			if st.offset+int64(n) > size {
				return gained, errTooLong
			}
			if _, err := d.req.Sink.WriteAt(d.buf[:n], st.offset); err != nil {
				return gained, &sinkError{err}
			}
			st.h.Write(d.buf[:n])
			st.offset += int64(n)
			gained += int64(n)
			if d.req.Progress != nil {
				d.req.Progress(st.offset, size)
			}
			if d.checkpointDue(st) && st.offset < size {
				if err := d.checkpoint(st); err != nil {
					return gained, &sinkError{err}
				}
			}
			if d.req.RateLimit > 0 {
				due := t0.Add(time.Duration(float64(gained) / float64(d.req.RateLimit) * float64(time.Second)))
				if err := d.wait(attemptCtx, due.Sub(d.clock.Now())); err != nil {
					return gained, wd.cause(err)
				}
				wd.kick()
			}
		}
		switch {
		case rerr == io.EOF && st.offset == size:
			return gained, nil
		case rerr == io.EOF:
			return gained, errTooShort
		case rerr != nil:
			return gained, wd.cause(rerr)
		}
	}
}

// finish syncs the sink, checks the digest and records a complete checkpoint.
func (d *downloader) finish(st *state) (Result, error) {
	if d.trunc != nil {
		if err := d.trunc.Truncate(d.req.Size); err != nil {
			return d.res, reason.Errorf(reason.DownloadFailed, "%s: truncate sink: %w", d.obj, err)
		}
	}
	if err := d.req.Sink.Sync(); err != nil {
		return d.res, reason.Errorf(reason.DownloadFailed, "%s: sync sink: %w", d.obj, err)
	}
	sum := st.h.Sum(nil)
	if d.req.SHA256 != nil && subtle.ConstantTimeCompare(sum, d.req.SHA256) != 1 {
		_ = d.distrust()
		err := reason.Errorf(reason.DigestMismatch, "%s: sha256 %x, expected %x", d.obj, sum, d.req.SHA256)
		d.log.Error("download: failed", "url", d.obj, "err", err)
		return Result{BytesOnWire: d.res.BytesOnWire}, err
	}
	if st.lastCP != st.offset || d.res.BytesOnWire > 0 {
		if err := d.writeCheckpoint(st); err != nil {
			return d.res, reason.Errorf(reason.DownloadFailed, "%s: checkpoint: %w", d.obj, err)
		}
	}
	d.res.SHA256, d.res.Size = sum, st.offset
	d.log.Info("download: complete", "url", d.obj, "size", st.offset, "wire", d.res.BytesOnWire,
		"restarts", d.res.Restarts, "refreshes", d.res.Refreshes, "sha256", fmt.Sprintf("%x", sum))
	return d.res, nil
}

// restart forgets everything received: the checkpoint goes first, so a crash can never pair the
// old hash state with new bytes.
func (d *downloader) restart(st *state) error {
	if err := d.dropCheckpoint(); err != nil {
		return err
	}
	if d.trunc != nil {
		if err := d.trunc.Truncate(0); err != nil {
			return reason.Errorf(reason.DownloadFailed, "%s: truncate sink: %w", d.obj, err)
		}
	}
	st.offset, st.etag, st.lastCP = 0, "", 0
	st.h.Reset()
	d.res.Restarts++
	return nil
}

// distrust drops what a failed verification leaves, so nothing can resume from or use it.
func (d *downloader) distrust() error {
	err := d.dropCheckpoint()
	if d.trunc != nil {
		err = errors.Join(err, d.trunc.Truncate(0))
	}
	return err
}

// stop makes the progress durable on cancellation and returns the context's error.
func (d *downloader) stop(st *state, cause error) error {
	if err := d.checkpoint(st); err != nil {
		d.log.Warn("download: checkpoint on stop failed", "url", d.obj, "err", err)
	}
	return fmt.Errorf("download %s: stopped at %d of %d bytes: %w", d.obj, st.offset, d.req.Size, cause)
}

// wait sleeps for dur unless ctx ends first.
func (d *downloader) wait(ctx context.Context, dur time.Duration) error {
	if dur <= 0 {
		return ctx.Err()
	}
	t := d.clock.NewTimer(dur)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}

func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10) // lets a small error body free the connection
	_ = resp.Body.Close()
}

// strongETag returns a strong ETag as sent, or "" for a weak or missing one (If-Range needs strong).
func strongETag(e string) string {
	e = strings.TrimSpace(e)
	if strings.HasPrefix(e, "W/") || len(e) < 2 || e[0] != '"' || e[len(e)-1] != '"' {
		return ""
	}
	return e
}

// parseContentRange reads "bytes first-last/total".
func parseContentRange(s string) (first, last, total int64, ok bool) {
	rest, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, 0, false
	}
	var err1, err2, err3 error
	first, err1 = strconv.ParseInt(a, 10, 64)
	last, err2 = strconv.ParseInt(b, 10, 64)
	total, err3 = strconv.ParseInt(tot, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || first < 0 || last < first || total <= last {
		return 0, 0, 0, false
	}
	return first, last, total, true
}

// marshalState snapshots a SHA-256 state (the stdlib digest implements encoding.BinaryMarshaler).
func marshalState(h hash.Hash) ([]byte, error) {
	m, ok := h.(encoding.BinaryMarshaler)
	if !ok {
		return nil, errors.New("hash state cannot be saved")
	}
	return m.MarshalBinary()
}

// watchdog cancels the attempt when no byte has arrived for the stall duration, and (with
// watchSpeed) when a whole window brought too few bytes.
type watchdog struct {
	last   atomic.Int64
	bytes  atomic.Int64 // received in this attempt
	slow   atomic.Bool
	clock  Clock
	done   chan struct{}
	fired  atomic.Bool
	cancel context.CancelCauseFunc
}

func newWatchdog(c Clock, stall time.Duration, cancel context.CancelCauseFunc) *watchdog {
	w := &watchdog{clock: c, done: make(chan struct{}), cancel: cancel}
	w.kick()
	t := c.NewTimer(stall)
	go func() {
		defer t.Stop()
		for {
			select {
			case <-w.done:
				return
			case <-t.C():
				idle := c.Now().Sub(time.Unix(0, w.last.Load()))
				if idle >= stall {
					w.fired.Store(true)
					cancel(errStalled)
					return
				}
				t.Reset(stall - idle)
			}
		}
	}()
	return w
}

// watchSpeed cancels the attempt when a window of the given length brings fewer than
// min·window bytes.
func (w *watchdog) watchSpeed(minSpeed int64, window time.Duration) {
	need := int64(float64(minSpeed) * window.Seconds())
	t := w.clock.NewTimer(window)
	go func() {
		defer t.Stop()
		var before int64
		for {
			select {
			case <-w.done:
				return
			case <-t.C():
				now := w.bytes.Load()
				if now-before < need {
					w.slow.Store(true)
					w.cancel(errTooSlow)
					return
				}
				before = now
				t.Reset(window)
			}
		}
	}()
}

func (w *watchdog) kick() { w.last.Store(w.clock.Now().UnixNano()) }
func (w *watchdog) stop() { close(w.done) }

// cause names a stall as such instead of a bare "context canceled".
func (w *watchdog) cause(err error) error {
	switch {
	case w.slow.Load():
		return fmt.Errorf("%w (%w)", errTooSlow, err)
	case w.fired.Load():
		return fmt.Errorf("%w (%w)", errStalled, err)
	}
	return err
}
