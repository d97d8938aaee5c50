package download_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fieldota/fieldota/download"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/test/artifact"
	"github.com/fieldota/fieldota/test/jobsim/s3"
)

func rangesFor(t *testing.T, fx *artifact.Fixture, obj string, size int64) *download.Ranges {
	t.Helper()
	r, err := download.NewRanges(download.RangesConfig{URL: fx.URL(obj), Size: size, RetryWaitMin: time.Millisecond, RetryWaitMax: 5 * time.Millisecond, Stall: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func TestRangeCutContinuesWithinTheRange(t *testing.T) {
	fx := artifact.New(t)
	data := artifact.Image(1<<20, 3)
	obj := fx.Put(t, "r.bin", data)
	fx.Srv.SetFaults(obj, s3.Faults{CutAtOffsets: []int64{300_000, 500_000}})
	r := rangesFor(t, fx, obj, int64(len(data)))
	got, err := io.ReadAll(r.Open(context.Background(), 200_000, 600_000))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data[200_000:800_000]) {
		t.Fatal("range content differs")
	}
	fx.WaitIdle(t)
	if st := fx.Srv.Stats(obj); st.Requests != 3 || st.BytesSent != 600_000 {
		t.Fatalf("%d requests, %d bytes: want 3 and exactly the range", st.Requests, st.BytesSent)
	}
	for _, rq := range fx.Srv.Requests() {
		if rq.N > 1 && rq.Status != http.StatusPartialContent {
			t.Fatalf("request %d: status %d", rq.N, rq.Status)
		}
	}
}

func TestRangesRefuseWhatIsNotTheirObject(t *testing.T) {
	data := artifact.Image(256<<10, 4)
	for _, tc := range []struct {
		name   string
		faults s3.Faults
		size   int64 // the signed size the client expects
		want   error
		code   reason.Code
	}{
		{"object replaced between ranges (If-Match)", s3.Faults{}, 256 << 10, download.ErrObjectChanged, reason.DownloadFailed},
		{"server ignores Range", s3.Faults{IgnoreRange: true}, 256 << 10, download.ErrRangeIgnored, reason.DownloadFailed},
		{"object of another size", s3.Faults{}, 256<<10 + 1, nil, reason.SizeMismatch},
		{"URL expired and no refresh", s3.Faults{Status: http.StatusForbidden}, 256 << 10, nil, reason.URLExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := artifact.New(t)
			obj := fx.Put(t, "o.bin", data)
			r := rangesFor(t, fx, obj, tc.size)
			if tc.want == download.ErrObjectChanged {
				// pin the ETag with a first range, then the object changes
				if _, err := io.ReadAll(r.Open(context.Background(), 0, 2000)); err != nil {
					t.Fatal(err)
				}
				fx.Put(t, "o.bin", bytes.Repeat([]byte{9}, 256<<10))
			}
			fx.Srv.SetFaults(obj, tc.faults)
			_, err := io.ReadAll(r.Open(context.Background(), 4096, 8192))
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !errors.Is(err, tc.code) {
				t.Fatalf("got %v, want %s", err, tc.code)
			}
		})
	}
}

// TestRangesTrickleServerFailsTooSlow is the slow-retrieval attack on a ranged read (a
// compressed install, a delta's frames): a server that keeps sending a little never trips the
// stall watchdog; the speed watchdog drops each slow connection, asks again from the byte
// reached, and ends it DOWNLOAD_TOO_SLOW after MaxSlow windows.
func TestRangesTrickleServerFailsTooSlow(t *testing.T) {
	fx := artifact.New(t)
	data := artifact.Image(1<<20, 5)
	obj := fx.Put(t, "slow.bin", data)
	fx.Srv.SetFaults(obj, s3.Faults{RateBytesPerSec: 20000})
	r, err := download.NewRanges(download.RangesConfig{URL: fx.URL(obj), Size: int64(len(data)), RetryWaitMin: time.Millisecond,
		RetryWaitMax: 5 * time.Millisecond, Stall: 5 * time.Second, MinSpeed: 100 << 10, MinSpeedWindow: 300 * time.Millisecond, MaxSlow: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	t0 := time.Now()
	_, err = io.ReadAll(r.Open(context.Background(), 0, int64(len(data))))
	if !errors.Is(err, reason.DownloadTooSlow) {
		t.Fatalf("got %v, want DOWNLOAD_TOO_SLOW", err)
	}
	if took := time.Since(t0); took > 10*time.Second {
		t.Fatalf("took %s", took)
	}
	fx.WaitIdle(t)
	if st := fx.Srv.Stats(obj); st.Requests != 3 {
		t.Fatalf("%d requests: want one per slow window", st.Requests)
	}
}

// TestRangesSteadyLinkAboveTheMinimumIsNotCut: the watchdog leaves a link above the minimum alone.
func TestRangesSteadyLinkAboveTheMinimumIsNotCut(t *testing.T) {
	fx := artifact.New(t)
	data := artifact.Image(256<<10, 6)
	obj := fx.Put(t, "steady.bin", data)
	fx.Srv.SetFaults(obj, s3.Faults{RateBytesPerSec: 400 << 10})
	r, err := download.NewRanges(download.RangesConfig{URL: fx.URL(obj), Size: int64(len(data)), RetryWaitMin: time.Millisecond,
		MinSpeed: 50 << 10, MinSpeedWindow: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r.Open(context.Background(), 0, int64(len(data))))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
}

// TestRangesKeepToTheDownloadPolicy: ranged reads obey download.allowed_hosts as Download does —
// the URL, a fresh URL and a redirect (the dialler is Download's) — HOST_NOT_ALLOWED, and the other
// host is never reached.
func TestRangesKeepToTheDownloadPolicy(t *testing.T) {
	fx := artifact.New(t)
	data := artifact.Image(64<<10, 7)
	obj := fx.Put(t, "p.bin", data)
	hit := false
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hit = true }))
	defer other.Close()
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, strings.Replace(other.URL, "127.0.0.1", "localhost", 1)+"/latest/meta-data/", http.StatusFound)
	}))
	defer redirector.Close()
	lab := &download.Policy{Hosts: []string{"127.0.0.1"}, AllowHTTP: true}
	for _, tc := range []struct {
		name    string
		url     string
		policy  *download.Policy
		refresh func(context.Context) (string, error)
		faults  s3.Faults
	}{
		{name: "the URL's host", url: fx.URL(obj), policy: &download.Policy{Hosts: []string{"*.amazonaws.com"}, AllowHTTP: true}},
		{name: "a redirect to another host", url: redirector.URL + "/o", policy: lab},
		{name: "a fresh URL on another host", url: fx.URL(obj), policy: lab, faults: s3.Faults{Status: http.StatusForbidden, StatusTimes: 1},
			refresh: func(context.Context) (string, error) {
				return strings.Replace(other.URL, "127.0.0.1", "localhost", 1) + "/o", nil
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hit = false
			fx.Srv.SetFaults(obj, tc.faults)
			r, err := download.NewRanges(download.RangesConfig{URL: tc.url, Size: int64(len(data)), Policy: tc.policy, Refresh: tc.refresh,
				Retries: 1, RetryWaitMin: time.Millisecond, RetryWaitMax: 2 * time.Millisecond})
			if err == nil {
				defer r.Close()
				_, err = io.ReadAll(r.Open(context.Background(), 0, 4096))
			}
			if !errors.Is(err, reason.HostNotAllowed) || hit {
				t.Fatalf("got %v (other host reached: %v), want HOST_NOT_ALLOWED", err, hit)
			}
		})
	}
}

// A metered link capped at rate_limit got the whole line rate from a delta or a compressed
// payload: the cap held only for whole downloads. Ranges of one object now share the cap, and a
// pause between ranges earns no burst.
func TestRangesKeepToTheRateLimitAcrossRanges(t *testing.T) {
	fx := artifact.New(t)
	data := artifact.Image(1<<20, 5)
	obj := fx.Put(t, "rl.bin", data)
	const rate = 1 << 20 // bytes per second
	r, err := download.NewRanges(download.RangesConfig{URL: fx.URL(obj), Size: int64(len(data)), RateLimit: rate,
		RetryWaitMin: time.Millisecond, RetryWaitMax: 5 * time.Millisecond, Stall: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	read := func(off, n int64) time.Duration {
		t0 := time.Now()
		got, err := io.ReadAll(r.Open(context.Background(), off, n))
		if err != nil || !bytes.Equal(got, data[off:off+n]) {
			t.Fatalf("range %d+%d: %v", off, n, err)
		}
		return time.Since(t0)
	}
	// Three ranges of 192 KiB back to back: 576 KiB at 1 MiB/s is at least 0.56 s in all.
	var took time.Duration
	for i := range int64(3) {
		took += read(i*300_000, 192<<10)
	}
	if took < 500*time.Millisecond {
		t.Fatalf("576 KiB in three ranges at 1 MiB/s took %v", took)
	}
	// After an idle second the next range is paced from now, not sent at once to catch up.
	time.Sleep(time.Second)
	if d := read(900_000, 128<<10); d < 100*time.Millisecond {
		t.Fatalf("128 KiB after a pause at 1 MiB/s took %v: the pause was spent as a burst", d)
	}
}
