package download

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/fieldota/fieldota/ota/reason"
)

// Ranges reads byte ranges of one object through its presigned URL: one single-range GET per
// range, as S3 serves them, for a compressed payload's full part or a delta's missing frames.
// Each range reader survives what Download survives — cuts (it asks again from the byte it
// reached, so the consumer never sees a seam), stalls, 5xx and 429 (retries with backoff), an
// expired URL (Refresh, then the same byte) — and the object is pinned: the first response's
// strong ETag goes out as If-Match on every later request, so ranges of two objects never mix.
type Ranges struct {
	cfg    RangesConfig
	url    string
	obj    string // redacted
	etag   string
	rc     *retryablehttp.Client
	closer func()
	log    *slog.Logger
	stats  RangeStats
	paced  time.Time // RateLimit: when the bytes received so far are due; the next read waits for it
}

// RangesConfig describes the object. URL and Size are required.
type RangesConfig struct {
	URL  string
	Size int64  // the object's signed size: every Content-Range must name it as the total
	ETag string // the object's ETag from a checkpoint, pinned from the first request; "" = pin the first seen

	Refresh      func(ctx context.Context) (string, error) // a fresh URL after 400/403/404
	MaxRefreshes int                                       // in a row without a byte gained (default 3)

	Retries      int           // attempts without progress (default 8)
	RetryWaitMin time.Duration // default 1 s
	RetryWaitMax time.Duration // default 30 s
	Stall        time.Duration // no byte for this long → reconnect (default 30 s)

	// MinSpeed (bytes per second, 0 = off) is Download's slow-retrieval watchdog, per range: a
	// connection that brings fewer than MinSpeed·MinSpeedWindow bytes in a MinSpeedWindow
	// (default 60 s) is dropped and the range asked for again from the byte reached; MaxSlow
	// (default 3) such windows in a row end it DOWNLOAD_TOO_SLOW.
	MinSpeed       int64
	MinSpeedWindow time.Duration
	MaxSlow        int

	// RateLimit (bytes per second, 0 = unlimited) paces every range of the object together, as
	// Download paces its one stream (download.rate_limit_bytes_per_sec): a metered link gets the
	// same cap whether the payload comes whole, compressed or as a delta's missing frames. The
	// time between ranges earns no burst.
	RateLimit int64

	// Policy, if set, is applied to the URL, every fresh URL, every redirect and every address
	// connected to (with the default client): HOST_NOT_ALLOWED otherwise.
	Policy *Policy

	Progress   func(bytes int64) // body bytes received, called after each read; keep it quick
	HTTPClient *http.Client
	TLSConfig  *tls.Config
	Logger     *slog.Logger
	Clock      Clock
}

// RangeStats counts what the ranges cost.
type RangeStats struct {
	Requests    int   // GETs sent (retries by the HTTP client included)
	BytesOnWire int64 // body bytes received
	Refreshes   int
	Reconnects  int // requests that continued a range after a cut
}

var (
	// ErrRangeIgnored: the server answered a range request with the whole object.
	ErrRangeIgnored = errors.New("the server ignores Range requests")
	// ErrObjectChanged: the object is no longer the one pinned (412 on If-Match, a new ETag).
	ErrObjectChanged = errors.New("the object changed")
)

// NewRanges prepares range reads of one object.
func NewRanges(cfg RangesConfig) (*Ranges, error) {
	if cfg.URL == "" || cfg.Size <= 0 {
		return nil, reason.Errorf(reason.DownloadFailed, "ranges need a URL and the object's size")
	}
	cfg.Retries = orInt(cfg.Retries, defaultRetries)
	cfg.MaxRefreshes = orInt(cfg.MaxRefreshes, defaultMaxRefreshes)
	if cfg.RetryWaitMin <= 0 {
		cfg.RetryWaitMin = time.Second
	}
	if cfg.RetryWaitMax < cfg.RetryWaitMin {
		cfg.RetryWaitMax = max(cfg.RetryWaitMin, 30*time.Second)
	}
	if cfg.Stall <= 0 {
		cfg.Stall = defaultStall
	}
	if cfg.MinSpeedWindow <= 0 {
		cfg.MinSpeedWindow = time.Minute
	}
	cfg.MaxSlow = orInt(cfg.MaxSlow, 3)
	if cfg.Policy != nil {
		if err := cfg.Policy.Check(cfg.URL); err != nil {
			return nil, err
		}
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	r := &Ranges{cfg: cfg, url: cfg.URL, obj: Redact(cfg.URL), etag: strongETag(cfg.ETag), closer: func() {}, log: cfg.Logger}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.DisableCompression = true
		tr.ResponseHeaderTimeout = cfg.Stall
		if cfg.TLSConfig != nil {
			tr.TLSClientConfig = cfg.TLSConfig.Clone()
		}
		tr.DialContext = cfg.Policy.dialContext()
		hc = &http.Client{Transport: tr, CheckRedirect: cfg.Policy.checkRedirect}
		r.closer = tr.CloseIdleConnections
	}
	r.rc = &retryablehttp.Client{
		HTTPClient: hc, RetryWaitMin: cfg.RetryWaitMin, RetryWaitMax: cfg.RetryWaitMax, RetryMax: cfg.Retries,
		CheckRetry: checkRetry, Backoff: r.backoff, ErrorHandler: retryablehttp.PassthroughErrorHandler,
		RequestLogHook: func(_ retryablehttp.Logger, req *http.Request, attempt int) {
			r.stats.Requests++
			if attempt > 0 {
				r.log.Info("ranges: retrying request", "url", r.obj, "attempt", attempt, "range", req.Header.Get("Range"))
			}
		},
	}
	return r, nil
}

// ETag is the pinned ETag ("" before the first response): checkpoint it with the progress.
func (r *Ranges) ETag() string { return r.etag }

// Stats returns the counters so far.
func (r *Ranges) Stats() RangeStats { return r.stats }

// Close releases idle connections.
func (r *Ranges) Close() { r.closer() }

// Open returns a reader of the n bytes at off. It sends its first request on the first Read.
// Use one range reader at a time per Ranges.
func (r *Ranges) Open(ctx context.Context, off, n int64) io.ReadCloser {
	return &rangeReader{r: r, ctx: ctx, off: off, n: n}
}

type rangeReader struct {
	r       *Ranges
	ctx     context.Context
	off, n  int64
	got     int64
	resp    *http.Response
	cancel  context.CancelCauseFunc
	wd      *watchdog
	err     error
	tries   int // requests in a row without a byte gained
	refresh int
	slow    int // connections in a row dropped by the speed watchdog
}

func (rr *rangeReader) Read(p []byte) (int, error) {
	for {
		if rr.err != nil {
			return 0, rr.err
		}
		if rr.got == rr.n {
			rr.closeResp()
			return 0, io.EOF
		}
		if rr.resp == nil {
			if err := rr.connect(); err != nil {
				rr.err = err
				return 0, err
			}
		}
		want := min(int64(len(p)), rr.n-rr.got)
		if rate := rr.r.cfg.RateLimit; rate > 0 {
			want = min(want, max(rate/10, 1)) // pace in tenths of a second, well under any stall timeout
		}
		k, err := rr.resp.Body.Read(p[:want])
		if k > 0 {
			rr.wd.kick()
			rr.wd.bytes.Add(int64(k))
			rr.got += int64(k)
			rr.r.stats.BytesOnWire += int64(k)
			rr.tries, rr.refresh = 0, 0
			if rr.r.cfg.Progress != nil {
				rr.r.cfg.Progress(int64(k))
			}
			if perr := rr.pace(int64(k)); perr != nil {
				rr.closeResp()
				rr.err = perr
				return k, perr
			}
		}
		if rr.got == rr.n {
			rr.closeResp()
		} else if err != nil {
			cause := rr.wd.cause(err)
			rr.closeResp()
			if rr.ctx.Err() != nil {
				rr.err = rr.ctx.Err()
				return k, rr.err
			}
			if errors.Is(cause, errTooSlow) {
				rr.slow++
				if rr.slow >= rr.r.cfg.MaxSlow {
					rr.err = reason.Errorf(reason.DownloadTooSlow, "%s: below %d bytes/s for %d windows of %s in a row (bytes %d-%d)",
						rr.r.obj, rr.r.cfg.MinSpeed, rr.slow, rr.r.cfg.MinSpeedWindow, rr.off+rr.got, rr.off+rr.n-1)
					rr.r.log.Error("ranges: failed", "url", rr.r.obj, "err", rr.err)
					return k, rr.err
				}
			} else {
				rr.slow = 0
			}
			rr.r.log.Warn("ranges: connection lost, asking for the rest", "url", rr.r.obj, "offset", rr.off+rr.got, "err", scrub(cause))
		}
		if k > 0 {
			return k, nil
		}
	}
}

// pace waits until k more bytes fit RateLimit. The schedule is the Ranges', so consecutive ranges
// share one budget; it restarts from now after an idle gap instead of bursting to catch up.
func (rr *rangeReader) pace(k int64) error {
	r := rr.r
	if r.cfg.RateLimit <= 0 {
		return nil
	}
	now := r.cfg.Clock.Now()
	if r.paced.Before(now) {
		r.paced = now
	}
	r.paced = r.paced.Add(time.Duration(float64(k) / float64(r.cfg.RateLimit) * float64(time.Second)))
	if err := sleep(rr.ctx, r.cfg.Clock, r.paced.Sub(now)); err != nil {
		return err
	}
	if rr.wd != nil {
		rr.wd.kick() // waiting on our own pace is not a stall
	}
	return nil
}

func (rr *rangeReader) Close() error {
	rr.closeResp()
	if rr.err == nil {
		rr.err = errors.New("range reader closed")
	}
	return nil
}

func (rr *rangeReader) closeResp() {
	if rr.resp != nil {
		rr.wd.stop()
		_ = rr.resp.Body.Close()
		rr.cancel(nil)
		rr.resp = nil
	}
}

// connect sends requests until one answers with the rest of the range.
func (rr *rangeReader) connect() error {
	r := rr.r
	fail := func(code reason.Code, format string, args ...any) error {
		err := reason.Errorf(code, "%s: "+format, append([]any{r.obj}, args...)...)
		r.log.Error("ranges: failed", "url", r.obj, "err", err)
		return err
	}
	for {
		if err := rr.ctx.Err(); err != nil {
			return err
		}
		if rr.tries > r.cfg.Retries {
			return fail(reason.DownloadFailed, "giving up on bytes %d-%d after %d attempts without progress", rr.off+rr.got, rr.off+rr.n-1, rr.tries)
		}
		if rr.tries > 0 {
			if err := sleep(rr.ctx, r.cfg.Clock, r.backoff(r.cfg.RetryWaitMin, r.cfg.RetryWaitMax, rr.tries, nil)); err != nil {
				return err
			}
		}
		rr.tries++
		if rr.got > 0 {
			r.stats.Reconnects++
		}
		actx, cancel := context.WithCancelCause(rr.ctx)
		first, last := rr.off+rr.got, rr.off+rr.n-1
		req, err := retryablehttp.NewRequestWithContext(actx, http.MethodGet, r.url, nil)
		if err != nil {
			cancel(nil)
			return fail(reason.DownloadFailed, "%w", scrub(err))
		}
		req.Header.Set("Range", "bytes="+strconv.FormatInt(first, 10)+"-"+strconv.FormatInt(last, 10))
		if r.etag != "" {
			req.Header.Set("If-Match", r.etag)
		}
		resp, err := r.rc.Do(req)
		if err != nil {
			cancel(nil)
			if rr.ctx.Err() != nil {
				return rr.ctx.Err()
			}
			if refusedByPolicy(err) {
				return fail(reason.HostNotAllowed, "%w", scrub(err))
			}
			return fail(reason.DownloadFailed, "%w", scrub(err))
		}
		etag := strongETag(resp.Header.Get("ETag"))
		switch resp.StatusCode {
		case http.StatusPartialContent:
			f, l, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
			switch {
			case !ok || f != first || l != last || total != r.cfg.Size:
				drain(resp)
				cancel(nil)
				return fail(reason.SizeMismatch, "asked for bytes %d-%d/%d, got Content-Range %q", first, last, r.cfg.Size, resp.Header.Get("Content-Range"))
			case etag == "":
				drain(resp)
				cancel(nil)
				return fail(reason.DownloadFailed, "no strong ETag: nothing proves the ranges belong to one object")
			case r.etag != "" && etag != r.etag:
				drain(resp)
				cancel(nil)
				return fail(reason.DownloadFailed, "%w: ETag %s, pinned %s", ErrObjectChanged, etag, r.etag)
			}
			r.etag = etag
			rr.start(resp, cancel)
			return nil
		case http.StatusOK:
			drain(resp)
			cancel(nil)
			return fail(reason.DownloadFailed, "%w: 200 to a request for bytes %d-%d", ErrRangeIgnored, first, last)
		case http.StatusPreconditionFailed, http.StatusRequestedRangeNotSatisfiable:
			drain(resp)
			cancel(nil)
			return fail(reason.DownloadFailed, "%w: status %d for bytes %d-%d of ETag %s", ErrObjectChanged, resp.StatusCode, first, last, r.etag)
		case http.StatusBadRequest, http.StatusForbidden, http.StatusNotFound:
			drain(resp)
			cancel(nil)
			if r.cfg.Refresh == nil || rr.refresh >= r.cfg.MaxRefreshes {
				code := reason.DownloadFailed
				if resp.StatusCode == http.StatusForbidden {
					code = reason.URLExpired
				}
				return fail(code, "status %d and no fresh URL after %d refreshes", resp.StatusCode, rr.refresh)
			}
			rr.refresh++
			r.stats.Refreshes++
			rr.tries-- // a refused URL is not a failed attempt at the bytes
			r.log.Info("ranges: asking for a fresh URL", "url", r.obj, "status", resp.StatusCode, "offset", first)
			fresh, err := r.cfg.Refresh(rr.ctx)
			if err != nil {
				if rr.ctx.Err() != nil {
					return rr.ctx.Err()
				}
				if reason.Of(err) != reason.Internal {
					return fmt.Errorf("ranges %s: refresh: %w", r.obj, scrub(err))
				}
				return fail(reason.DownloadFailed, "refresh: %w", scrub(err))
			}
			if r.cfg.Policy != nil {
				if err := r.cfg.Policy.Check(fresh); err != nil {
					return err
				}
			}
			if Redact(fresh) != r.obj {
				r.log.Warn("ranges: fresh URL names another object", "url", r.obj, "fresh", Redact(fresh))
			}
			r.url = fresh
			continue
		default:
			drain(resp)
			cancel(nil)
			return fail(reason.DownloadFailed, "status %d for bytes %d-%d", resp.StatusCode, first, last)
		}
	}
}

func (rr *rangeReader) start(resp *http.Response, cancel context.CancelCauseFunc) {
	rr.resp, rr.cancel = resp, cancel
	rr.wd = newWatchdog(rr.r.cfg.Clock, rr.r.cfg.Stall, cancel)
	if rr.r.cfg.MinSpeed > 0 {
		rr.wd.watchSpeed(rr.r.cfg.MinSpeed, rr.r.cfg.MinSpeedWindow)
	}
}

// backoff is Download's: exponential with jitter, Retry-After honoured up to 10 minutes.
func (r *Ranges) backoff(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil {
		if ra := retryAfter(resp.Header.Get("Retry-After"), r.cfg.Clock.Now()); ra > 0 {
			return min(ra, maxRetryAfter)
		}
	}
	base := hi
	if attempt < 30 && lo<<attempt < hi && lo<<attempt > 0 {
		base = lo << attempt
	}
	return base/2 + rand.N(base/2+1)
}

func sleep(ctx context.Context, c Clock, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := c.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}

func orInt(v, d int) int {
	if v <= 0 {
		return d
	}
	return v
}
