package download

import (
	"errors"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fieldota/fieldota/ota/reason"
)

// Redact returns the URL without its query string, fragment and user info: a presigned URL's
// query is a credential. Every URL this package logs or puts in an error goes through it.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if i := strings.IndexAny(raw, "?#"); i >= 0 {
			raw = raw[:i]
		}
		if i := strings.Index(raw, "@"); i >= 0 {
			raw = raw[i+1:]
		}
		return raw
	}
	u.RawQuery, u.Fragment, u.RawFragment, u.User, u.ForceQuery = "", "", "", nil, false
	return u.String()
}

// scrub redacts the URL that net/http puts in its errors (*url.Error carries the full URL).
func scrub(err error) error {
	var ue *url.Error
	for e := err; errors.As(e, &ue); e = ue.Err {
		ue.URL = Redact(ue.URL)
	}
	return err
}

// Clock is the time source; tests may drive it.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer the downloader uses.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
	Reset(d time.Duration) bool
}

type realClock struct{}

func (realClock) Now() time.Time                 { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time        { return t.t.C }
func (t realTimer) Stop() bool                 { return t.t.Stop() }
func (t realTimer) Reset(d time.Duration) bool { return t.t.Reset(d) }

// backoff is exponential with jitter (between half and all of min·2^attempt, capped at max) and
// honours Retry-After, in seconds or as an HTTP date, up to maxRetryAfter.
func (d *downloader) backoff(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil {
		if ra := retryAfter(resp.Header.Get("Retry-After"), d.clock.Now()); ra > 0 {
			return min(ra, maxRetryAfter)
		}
	}
	base := hi
	if attempt < 30 && lo<<attempt < hi && lo<<attempt > 0 {
		base = lo << attempt
	}
	return base/2 + rand.N(base/2+1)
}

func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, int64(maxRetryAfter/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return t.Sub(now)
	}
	return 0
}

// statfsFree is the space an unprivileged writer may still use in dir.
func statfsFree(dir string) (int64, error) {
	var s syscall.Statfs_t
	if err := syscall.Statfs(dir, &s); err != nil {
		return 0, err
	}
	return int64(s.Bavail) * int64(s.Bsize), nil
}

// checkSpace refuses, before any request, a download the sink cannot hold: for a file sink the
// free space of its filesystem, for a device sink its size. Other sinks are their owner's business.
func (d *downloader) checkSpace(have int64) error {
	named, ok := d.req.Sink.(interface {
		Name() string
		Stat() (os.FileInfo, error)
	})
	if !ok {
		return nil
	}
	fi, err := named.Stat()
	if err != nil {
		return reason.Errorf(reason.DownloadFailed, "stat sink: %w", err)
	}
	need := d.req.Size - have
	switch {
	case fi.Mode().IsRegular():
		const margin = 1 << 20 // checkpoints and their temp files
		dir := filepath.Dir(named.Name())
		free, err := d.req.FreeSpace(dir)
		if err != nil {
			return reason.Errorf(reason.DownloadFailed, "free space of %s: %w", dir, err)
		}
		if free < need+margin {
			return reason.Errorf(reason.InsufficientSpace, "%s needs %d more bytes, %s has %d free", d.obj, need, dir, free)
		}
	case fi.Mode()&os.ModeDevice != 0:
		sk, ok := d.req.Sink.(interface {
			Seek(int64, int) (int64, error)
		})
		if !ok {
			return nil
		}
		end, err := sk.Seek(0, 2)
		if err != nil {
			return reason.Errorf(reason.DownloadFailed, "size of %s: %w", named.Name(), err)
		}
		if end < d.req.Size {
			return reason.Errorf(reason.InsufficientSpace, "%s needs %d bytes, device %s holds %d", d.obj, d.req.Size, named.Name(), end)
		}
	}
	return nil
}
