package download

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/test/jobsim/s3"
)

const object = "firmware/rootfs.img"

// lockedBuffer collects log lines from the downloader (which logs from one goroutine, but tests
// read concurrently with the server goroutines' requests).
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type env struct {
	t      *testing.T
	dir    string
	data   []byte
	sum    []byte
	srv    *s3.Server
	hs     *httptest.Server
	p      *s3.Presigner
	skew   atomic.Int64 // added to the presigner's clock: lets a test make URLs expire
	logs   *lockedBuffer
	logger *slog.Logger
	sigs   []string // every signature minted, none of which may leak
}

func newEnv(t *testing.T, size int, tlsOn bool) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), logs: &lockedBuffer{}}
	e.data = make([]byte, size)
	_, _ = rand.NewChaCha8([32]byte{byte(size), 7}).Read(e.data)
	s := sha256.Sum256(e.data)
	e.sum = s[:]
	art := filepath.Join(e.dir, "artifacts")
	if err := os.MkdirAll(filepath.Join(art, "firmware"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(art, object), e.data, 0o644); err != nil {
		t.Fatal(err)
	}
	e.p = &s3.Presigner{Secret: []byte("test-secret"), Now: func() time.Time { return time.Now().Add(time.Duration(e.skew.Load())) }}
	e.srv = s3.NewServer(art, e.p)
	if tlsOn {
		e.hs = httptest.NewTLSServer(e.srv)
	} else {
		e.hs = httptest.NewServer(e.srv)
	}
	t.Cleanup(e.hs.Close)
	e.p.Base = e.hs.URL
	e.logger = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(e.assertNoSecretsLogged)
	return e
}

// stats and requests read the server's counters once every request has been accounted for
// (a client can finish reading a body before the server's handler returns).
func (e *env) stats(obj string) s3.Stats {
	e.quiet()
	return e.srv.Stats(obj)
}

func (e *env) requests() []s3.Request {
	e.quiet()
	return e.srv.Requests()
}

func (e *env) quiet() {
	e.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); e.srv.InFlight() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			e.t.Fatal("server requests still in flight")
		}
	}
}

func (e *env) sign(obj string, d time.Duration) string {
	u := e.p.Sign(obj, d)
	e.remember(u)
	return u
}

func (e *env) remember(u string) {
	pu, err := url.Parse(u)
	if err != nil {
		e.t.Fatal(err)
	}
	e.sigs = append(e.sigs, pu.Query().Get(s3.ParamSignature))
}

func (e *env) sink(name string) (*os.File, string) {
	e.t.Helper()
	path := filepath.Join(e.dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = f.Close() })
	return f, path
}

// request is a fast-failing request: small waits, small checkpoints.
func (e *env) request(sink Sink, cp string) Request {
	return Request{
		URL:             e.sign(object, time.Hour),
		Size:            int64(len(e.data)),
		SHA256:          e.sum,
		Sink:            sink,
		CheckpointPath:  cp,
		CheckpointEvery: 256 << 10,
		Retries:         4,
		RetryWaitMin:    5 * time.Millisecond,
		RetryWaitMax:    40 * time.Millisecond,
		Stall:           2 * time.Second,
		Logger:          e.logger,
	}
}

// assertNoSecret checks an error (and, at cleanup, every log line) for presigned query material.
func (e *env) assertNoSecret(what string, s string) {
	e.t.Helper()
	if strings.Contains(s, s3.ParamSignature) || strings.Contains(s, s3.ParamDate) || strings.Contains(s, "?") {
		e.t.Errorf("%s leaks the presigned query: %s", what, s)
	}
	for _, sig := range e.sigs {
		if sig != "" && strings.Contains(s, sig) {
			e.t.Errorf("%s leaks a signature: %s", what, s)
		}
	}
}

func (e *env) assertNoSecretsLogged() {
	logs := e.logs.String()
	for line := range strings.SplitSeq(logs, "\n") {
		e.assertNoSecret("log line", line)
	}
}

func (e *env) assertFile(path string, want []byte) {
	e.t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		e.t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		e.t.Fatalf("file has %d bytes, differs from the expected %d", len(got), len(want))
	}
}

func readCheckpoint(t *testing.T, path string) (checkpoint, bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return checkpoint{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	var cp checkpoint
	if err := json.Unmarshal(b, &cp); err != nil {
		t.Fatalf("torn checkpoint %q: %v", b, err)
	}
	return cp, true
}

func TestCleanDownload(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", tlsOn), func(t *testing.T) {
			e := newEnv(t, 3<<20+17, tlsOn)
			f, path := e.sink("payload")
			cp := filepath.Join(e.dir, "payload.ckpt")
			req := e.request(f, cp)
			if tlsOn {
				pool := x509.NewCertPool()
				pool.AddCert(e.hs.Certificate())
				req.TLSConfig = &tls.Config{RootCAs: pool}
			}
			var last int64
			req.Progress = func(done, total int64) {
				if done < last || total != int64(len(e.data)) {
					t.Errorf("progress went %d → %d of %d", last, done, total)
				}
				last = done
			}
			res, err := Download(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(res.SHA256, e.sum) || res.Size != int64(len(e.data)) || res.BytesOnWire != res.Size || res.Resumed || last != res.Size {
				t.Fatalf("result %+v, progress %d", res, last)
			}
			e.assertFile(path, e.data)
			if st := e.stats(object); st.Requests != 1 || st.BytesSent != res.Size {
				t.Fatalf("server %+v", st)
			}
			// A crash after completion but before the caller moved on costs no second download.
			if c, ok := readCheckpoint(t, cp); !ok || c.Offset != res.Size {
				t.Fatalf("complete checkpoint missing: %+v", c)
			}
			again, err := Download(context.Background(), e.request(f, cp))
			if err != nil || !bytes.Equal(again.SHA256, e.sum) || again.BytesOnWire != 0 {
				t.Fatalf("second call: %+v %v", again, err)
			}
			if st := e.stats(object); st.Requests != 1 {
				t.Fatalf("second call went to the server: %+v", st)
			}
			if err := RemoveCheckpoint(cp); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestConnectionCutAtTenRandomOffsetsResumesWithoutRefetching(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 42))
	e := newEnv(t, 6<<20, false)
	size := int64(len(e.data))
	offsets := make([]int64, 10)
	for i := range offsets {
		offsets[i] = 1 + rng.Int64N(size-1)
	}
	slices.Sort(offsets)
	t.Logf("cuts at %v", offsets)
	e.srv.SetFaults(object, s3.Faults{CutAtOffsets: offsets})
	f, path := e.sink("payload")
	res, err := Download(context.Background(), e.request(f, filepath.Join(e.dir, "ckpt")))
	if err != nil {
		t.Fatal(err)
	}
	e.assertFile(path, e.data)
	st := e.stats(object)
	if limit := size + 10*(1<<20); st.BytesSent > limit || res.BytesOnWire > limit {
		t.Fatalf("%d bytes sent, %d received for %d (limit %d)", st.BytesSent, res.BytesOnWire, size, limit)
	}
	cuts := 0
	for _, r := range e.requests() {
		if r.Cut {
			cuts++
		}
	}
	distinct := len(slices.Compact(slices.Clone(offsets)))
	if cuts != distinct || st.Requests != distinct+1 || res.Restarts != 0 {
		t.Fatalf("%d cuts, %d requests, %d restarts for %d distinct offsets", cuts, st.Requests, res.Restarts, distinct)
	}
	for _, r := range e.requests()[1:] {
		if !strings.HasPrefix(r.Range, "bytes=") || r.IfRange == "" || r.Status != http.StatusPartialContent {
			t.Fatalf("resume request %+v is not a conditional range", r)
		}
	}
}

// TestHelperDownloadProcess is the body of the process that TestKilledProcessResumesFromCheckpoint
// kills; it does nothing unless that test starts it.
func TestHelperDownloadProcess(t *testing.T) {
	if os.Getenv("FIELDOTA_DOWNLOAD_HELPER") != "1" {
		return
	}
	size, _ := strconv.ParseInt(os.Getenv("DL_SIZE"), 10, 64)
	sum, _ := hex.DecodeString(os.Getenv("DL_SHA256"))
	f, err := os.OpenFile(os.Getenv("DL_SINK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	every := int64(128 << 10)
	if os.Getenv("DL_DEFAULT_CHECKPOINTS") == "1" {
		every = 0 // what the agent uses
	}
	_, err = Download(context.Background(), Request{
		URL: os.Getenv("DL_URL"), Size: size, Sink: f, CheckpointPath: os.Getenv("DL_CKPT"), SHA256: sum,
		CheckpointEvery: every, RetryWaitMin: 5 * time.Millisecond, RetryWaitMax: 40 * time.Millisecond,
	})
	if os.Getenv("DL_MAY_FINISH") == "1" && err == nil {
		return
	}
	t.Fatalf("the helper should have been killed first (err %v)", err)
}

func TestKilledProcessResumesFromCheckpoint(t *testing.T) {
	e := newEnv(t, 4<<20, false)
	size := int64(len(e.data))
	e.srv.SetFaults(object, s3.Faults{RateBytesPerSec: 2 << 20}) // ~2 s: the kill lands mid-download
	_, sinkPath := e.sink("payload")
	cpPath := filepath.Join(e.dir, "ckpt")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperDownloadProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "FIELDOTA_DOWNLOAD_HELPER=1", "DL_URL="+e.sign(object, time.Hour),
		"DL_SIZE="+strconv.FormatInt(size, 10), "DL_SINK="+sinkPath, "DL_SHA256="+hex.EncodeToString(e.sum), "DL_CKPT="+cpPath)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, ok := readCheckpoint(t, cpPath); ok && c.Offset >= 1<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint past 1 MiB; helper said: %s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("helper not killed: %v\n%s", err, out.String())
	}
	c, _ := readCheckpoint(t, cpPath)
	if c.Offset <= 0 || c.Offset >= size {
		t.Fatalf("checkpoint offset %d", c.Offset)
	}
	t.Logf("killed with checkpoint at %d of %d", c.Offset, size)

	e.srv.ClearFaults()
	// The killed process's request is accounted for once its handler notices the dead connection.
	before := e.stats(object).BytesSent
	f, _ := e.sink("payload")
	res, err := Download(context.Background(), e.request(f, cpPath))
	if err != nil {
		t.Fatal(err)
	}
	sent := e.stats(object).BytesSent - before
	if !res.Resumed || res.ResumedFrom != c.Offset || sent != size-c.Offset || res.BytesOnWire != sent {
		t.Fatalf("resume %+v: server sent %d, wanted %d", res, sent, size-c.Offset)
	}
	e.assertFile(sinkPath, e.data)
}

func TestTamperedSinkAfterCrashIsNotResumed(t *testing.T) {
	e := newEnv(t, 2<<20, false)
	f, path := e.sink("payload")
	cp := filepath.Join(e.dir, "ckpt")
	e.srv.SetFaults(object, s3.Faults{CutAtOffsets: []int64{1 << 20}})
	ctx, cancel := context.WithCancel(context.Background())
	req := e.request(f, cp)
	req.Progress = func(done, _ int64) {
		if done >= 1<<20 {
			cancel() // the "crash": stop once the cut's checkpoint is durable
		}
	}
	if _, err := Download(ctx, req); !errors.Is(err, context.Canceled) {
		t.Fatalf("want canceled, got %v", err)
	}
	c, ok := readCheckpoint(t, cp)
	if !ok || c.Offset != 1<<20 {
		t.Fatalf("checkpoint %+v", c)
	}
	if _, err := f.WriteAt([]byte("evil"), 4096); err != nil { // someone edits the temp file while we are down
		t.Fatal(err)
	}
	res, err := Download(context.Background(), e.request(f, cp))
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed || res.BytesOnWire != int64(len(e.data)) {
		t.Fatalf("resumed over a tampered sink: %+v", res)
	}
	e.assertFile(path, e.data)
}

func TestURLExpiresMidDownloadRefreshesAndContinuesFromSameOffset(t *testing.T) {
	e := newEnv(t, 3<<20, false)
	size := int64(len(e.data))
	cutAt := int64(1<<20 + 123)
	e.srv.OnRequest(func(n int, r *http.Request) s3.Faults {
		if n == 1 {
			e.skew.Store(int64(2 * time.Hour)) // the URL dies while its first response is in flight
			return s3.Faults{CutAfterBytes: cutAt}
		}
		return s3.Faults{}
	})
	f, path := e.sink("payload")
	req := e.request(f, filepath.Join(e.dir, "ckpt"))
	refreshes := 0
	req.Refresh = func(ctx context.Context) (string, error) {
		refreshes++
		return e.sign(object, time.Hour), nil
	}
	res, err := Download(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	e.assertFile(path, e.data)
	log := e.requests()
	if refreshes != 1 || res.Refreshes != 1 || len(log) != 3 || log[1].Status != 403 ||
		log[2].Range != fmt.Sprintf("bytes=%d-", cutAt) || log[2].Status != 206 {
		t.Fatalf("refreshes %d, log %+v", refreshes, log)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "fresh URL") || !strings.Contains(logs, e.hs.URL+"/"+object) {
		t.Fatalf("refresh not logged with the redacted URL:\n%s", logs)
	}
	if st := e.stats(object); st.BytesSent != size { // the 403 went to no object
		t.Fatalf("payload bytes sent %d for %d", st.BytesSent, size)
	}
}

func TestObjectReplacedMidwayIsNeverStitched(t *testing.T) {
	const size = 2 << 20
	sameSize := make([]byte, size)
	_, _ = rand.NewChaCha8([32]byte{9}).Read(sameSize)
	newSum := sha256.Sum256(sameSize)
	cases := []struct {
		name        string
		faults      s3.Faults
		expectOld   bool // the request names the old object's digest
		wantCode    reason.Code
		wantContent []byte // nil: the old data
	}{
		{"server honours If-Range, no digest pinned → whole new object", s3.Faults{ReplaceAfterBytes: 512 << 10, ReplaceWith: sameSize, CutAfterBytes: 1 << 20}, false, "", sameSize},
		{"server honours If-Range, old digest pinned → DIGEST_MISMATCH", s3.Faults{ReplaceAfterBytes: 512 << 10, ReplaceWith: sameSize, CutAfterBytes: 1 << 20}, true, reason.DigestMismatch, nil},
		{"broken cache serves the new object's range → ETag check restarts", s3.Faults{ReplaceAfterBytes: 512 << 10, ReplaceWith: sameSize, CutAfterBytes: 1 << 20, IgnoreIfRange: true}, false, "", sameSize},
		{"new object of another size → SIZE_MISMATCH", s3.Faults{ReplaceAfterBytes: 512 << 10, ReplaceWith: sameSize[:size-5], CutAfterBytes: 1 << 20}, false, reason.SizeMismatch, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, size, false)
			e.srv.SetFaults(object, c.faults)
			f, path := e.sink("payload")
			cp := filepath.Join(e.dir, "ckpt")
			req := e.request(f, cp)
			if !c.expectOld {
				req.SHA256 = nil
			}
			res, err := Download(context.Background(), req)
			got, _ := os.ReadFile(path)
			if c.wantCode != "" {
				if !errors.Is(err, c.wantCode) || res.SHA256 != nil {
					t.Fatalf("want %s, got %v (%+v)", c.wantCode, err, res)
				}
				e.assertNoSecret("error", err.Error())
				if len(got) != 0 {
					t.Fatalf("%d untrusted bytes left in the sink", len(got))
				}
				if _, ok := readCheckpoint(t, cp); ok {
					t.Fatal("checkpoint of an untrusted download kept")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, c.wantContent) || !bytes.Equal(res.SHA256, newSum[:]) || res.Restarts != 1 {
				t.Fatalf("content mixed or wrong: restarts %d, digest %x", res.Restarts, res.SHA256)
			}
		})
	}
}

func TestServerAnswering200ToRangeRestartsFromZero(t *testing.T) {
	e := newEnv(t, 2<<20, false)
	size := int64(len(e.data))
	e.srv.SetFaults(object, s3.Faults{CutAtOffsets: []int64{700 << 10}, IgnoreRange: true})
	f, path := e.sink("payload")
	res, err := Download(context.Background(), e.request(f, filepath.Join(e.dir, "ckpt")))
	if err != nil {
		t.Fatal(err)
	}
	e.assertFile(path, e.data)
	log := e.requests()
	if len(log) != 2 || log[1].Range == "" || log[1].Status != 200 || res.Restarts != 1 || res.BytesOnWire != size+700<<10 {
		t.Fatalf("%+v %+v", res, log)
	}
}

func TestWrongSizeOrDigestIsTypedErrorAndNothingTrusted(t *testing.T) {
	e := newEnv(t, 1<<20, false)
	// A misbehaving origin for bodies S3 would never send: longer or shorter than announced.
	odd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("ETag", `"odd"`)
		w.(http.Flusher).Flush() // chunked: no Content-Length to hold the client to
		_, _ = w.Write(e.data[:min(n, len(e.data))])
		if n > len(e.data) {
			_, _ = w.Write(make([]byte, n-len(e.data)))
		}
	}))
	t.Cleanup(odd.Close)
	wrong := sha256.Sum256([]byte("not it"))
	size := int64(len(e.data))
	cases := []struct {
		name   string
		url    string
		size   int64
		digest []byte
		code   reason.Code
	}{
		{"announced length larger than expected", e.sign(object, time.Hour), size - 1, nil, reason.SizeMismatch},
		{"announced length smaller than expected", e.sign(object, time.Hour), size + 1, nil, reason.SizeMismatch},
		{"unannounced body runs past the expected size", odd.URL + "/x?n=" + strconv.Itoa(len(e.data)+100), size, nil, reason.SizeMismatch},
		{"unannounced body ends early", odd.URL + "/x?n=1000", size, nil, reason.SizeMismatch},
		{"digest differs", e.sign(object, time.Hour), size, wrong[:], reason.DigestMismatch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, path := e.sink(strings.ReplaceAll(c.name, " ", "-"))
			cp := path + ".ckpt"
			req := e.request(f, cp)
			req.URL, req.Size, req.SHA256 = c.url, c.size, c.digest
			res, err := Download(context.Background(), req)
			if !errors.Is(err, c.code) || res.SHA256 != nil {
				t.Fatalf("want %s, got %v, %+v", c.code, err, res)
			}
			e.assertNoSecret("error", err.Error())
			if fi, _ := f.Stat(); fi.Size() != 0 {
				t.Fatalf("%d bytes of an untrusted download left", fi.Size())
			}
			if _, ok := readCheckpoint(t, cp); ok {
				t.Fatal("checkpoint kept")
			}
		})
	}
}

func TestStallReconnects(t *testing.T) {
	cases := []struct {
		name   string
		faults s3.Faults
	}{
		{"body stops mid-way", s3.Faults{Stall: 20 * time.Second, StallAfterBytes: 300 << 10}},
		{"headers never come", s3.Faults{Stall: 20 * time.Second}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, 1<<20, false)
			e.srv.OnRequest(func(n int, r *http.Request) s3.Faults {
				if n == 1 {
					return c.faults
				}
				return s3.Faults{}
			})
			f, path := e.sink("payload")
			req := e.request(f, filepath.Join(e.dir, "ckpt"))
			// Short against the 20 s stall, long enough that a loaded CI machine's pause in the
			// healthy second request is not taken for one (300 ms once made it 3 requests).
			req.Stall = time.Second
			t0 := time.Now()
			if _, err := Download(context.Background(), req); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(t0); took > 5*time.Second {
				t.Fatalf("took %v: the stall was waited out, not detected", took)
			}
			e.assertFile(path, e.data)
			if st := e.stats(object); st.Requests != 2 {
				t.Fatalf("%d requests", st.Requests)
			}
			if c.faults.StallAfterBytes > 0 && e.requests()[1].Range != fmt.Sprintf("bytes=%d-", c.faults.StallAfterBytes) {
				t.Fatalf("reconnect did not resume: %+v", e.requests()[1])
			}
		})
	}
}

func TestRefusedURLForeverGivesUpAfterBoundedRefreshes(t *testing.T) {
	cases := []struct {
		name   string
		obj    string
		faults s3.Faults
		code   reason.Code
	}{
		{"404 forever", "firmware/gone.img", s3.Faults{}, reason.DownloadFailed},
		{"403 forever", object, s3.Faults{Status: 403}, reason.URLExpired},
		{"400 forever", object, s3.Faults{Status: 400}, reason.DownloadFailed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, 64<<10, false)
			e.srv.SetFaults(c.obj, c.faults)
			f, _ := e.sink("payload")
			req := e.request(f, "")
			req.URL = e.sign(c.obj, time.Hour)
			req.MaxRefreshes = 3
			asked := 0
			req.Refresh = func(context.Context) (string, error) {
				asked++
				return e.sign(c.obj, time.Hour), nil
			}
			_, err := Download(context.Background(), req)
			if !errors.Is(err, c.code) {
				t.Fatalf("want %s, got %v", c.code, err)
			}
			e.assertNoSecret("error", err.Error())
			if asked != 3 || e.stats(c.obj).Requests != 4 {
				t.Fatalf("%d refreshes, %d requests", asked, e.stats(c.obj).Requests)
			}
		})
	}
}

func TestServerErrorsAreRetriedHonouringRetryAfter(t *testing.T) {
	e := newEnv(t, 256<<10, false)
	e.srv.SetFaults(object, s3.Faults{Status: 503, StatusTimes: 2, RetryAfter: 500 * time.Millisecond})
	f, path := e.sink("payload")
	t0 := time.Now()
	if _, err := Download(context.Background(), e.request(f, "")); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took < 2*time.Second { // Retry-After rounds up to 1 s, twice
		t.Fatalf("Retry-After not honoured: %v", took)
	}
	e.assertFile(path, e.data)

	e.srv.SetFaults(object, s3.Faults{Status: 500})
	_, err := Download(context.Background(), e.request(f, ""))
	if !errors.Is(err, reason.DownloadFailed) {
		t.Fatalf("500 forever: %v", err)
	}
	e.assertNoSecret("error", err.Error())
	if n := e.stats(object).Requests; n != 3+5 { // 2×503 + OK, then 500 × (1 + Retries)
		t.Fatalf("%d requests: retries not bounded at Retries+1", n)
	}
}

func TestUnreachableServerErrorHidesSignature(t *testing.T) {
	e := newEnv(t, 1024, false)
	u := e.sign(object, time.Hour)
	e.hs.Close()
	f, _ := e.sink("payload")
	req := e.request(f, "")
	req.URL, req.Retries = u, 1
	_, err := Download(context.Background(), req)
	if !errors.Is(err, reason.DownloadFailed) {
		t.Fatalf("got %v", err)
	}
	e.assertNoSecret("error", err.Error())
}

func TestTooLittleDiskIsRefusedBeforeAnyByte(t *testing.T) {
	cases := []struct {
		name  string
		size  int64
		statf func(string) (int64, error)
	}{
		{"injected statfs: 1 MiB free for 3 MiB", 3 << 20, func(string) (int64, error) { return 1 << 20, nil }},
		{"real statfs: 1 EiB payload", 1 << 60, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, 1024, false)
			f, _ := e.sink("payload")
			req := e.request(f, filepath.Join(e.dir, "ckpt"))
			req.Size, req.FreeSpace, req.SHA256 = c.size, c.statf, nil
			_, err := Download(context.Background(), req)
			if !errors.Is(err, reason.InsufficientSpace) {
				t.Fatalf("got %v", err)
			}
			if n := e.stats("").Requests; n != 0 {
				t.Fatalf("%d requests reached the server", n)
			}
			if fi, _ := f.Stat(); fi.Size() != 0 {
				t.Fatal("bytes written")
			}
		})
	}
}

func TestRateLimitThrottles(t *testing.T) {
	e := newEnv(t, 512<<10, false)
	f, path := e.sink("payload")
	req := e.request(f, "")
	req.RateLimit = 1 << 20
	t0 := time.Now()
	if _, err := Download(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took < 400*time.Millisecond {
		t.Fatalf("512 KiB at 1 MiB/s took %v", took)
	}
	e.assertFile(path, e.data)
}

func TestSeekSinkForNonWriterAtTargets(t *testing.T) {
	e := newEnv(t, 1<<20, false)
	e.srv.SetFaults(object, s3.Faults{CutAtOffsets: []int64{300 << 10}})
	f, path := e.sink("payload")
	if _, err := Download(context.Background(), e.request(SeekSink(f), "")); err != nil {
		t.Fatal(err)
	}
	e.assertFile(path, e.data)
}

func TestRedactDropsQueryUserAndFragment(t *testing.T) {
	cases := map[string]string{
		"https://u:p@h.example/b/k?X-Amz-Signature=abc&X-Amz-Date=1#f": "https://h.example/b/k",
		"http://127.0.0.1:9/b/k%2Fx?a=b":                               "http://127.0.0.1:9/b/k%2Fx",
		"::not a url?X-Amz-Signature=abc":                              "::not a url",
	}
	for in, want := range cases {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	good := map[string][3]int64{"bytes 0-9/10": {0, 9, 10}, "bytes 5-9/10": {5, 9, 10}}
	for in, want := range good {
		a, b, n, ok := parseContentRange(in)
		if !ok || [3]int64{a, b, n} != want {
			t.Errorf("%q → %d %d %d %v", in, a, b, n, ok)
		}
	}
	for _, bad := range []string{"", "bytes */10", "bytes 5-4/10", "bytes 0-9/9", "items 0-1/2", "bytes 0-9/*", "bytes -1-9/10"} {
		if _, _, _, ok := parseContentRange(bad); ok {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestBackoffHasJitterBoundsAndHonoursRetryAfter(t *testing.T) {
	d := newDownloader(Request{URL: "http://x/y", Sink: seekSink{}})
	for attempt := 1; attempt < 40; attempt++ {
		w := d.backoff(time.Second, 30*time.Second, attempt, nil)
		base := min(30*time.Second, time.Second<<min(attempt, 20))
		if w < base/2 || w > base {
			t.Fatalf("attempt %d: %v outside [%v, %v]", attempt, w, base/2, base)
		}
	}
	h := http.Header{"Retry-After": {"7"}}
	if w := d.backoff(time.Second, 2*time.Second, 1, &http.Response{Header: h}); w != 7*time.Second {
		t.Fatalf("Retry-After 7 → %v", w)
	}
	h.Set("Retry-After", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat))
	if w := d.backoff(time.Second, 2*time.Second, 1, &http.Response{Header: h}); w != maxRetryAfter {
		t.Fatalf("Retry-After an hour away → %v", w)
	}
}

// slotDevice is a file that claims to be a block device and, like one, refuses Truncate.
type slotDevice struct{ *os.File }

type deviceInfo struct{ os.FileInfo }

func (deviceInfo) Mode() os.FileMode { return os.ModeDevice | 0o600 }

func (s slotDevice) Stat() (os.FileInfo, error) {
	fi, err := s.File.Stat()
	return deviceInfo{fi}, err
}
func (slotDevice) Truncate(int64) error {
	return errors.New("truncate: invalid argument (block device)")
}

func TestBlockDeviceSinkIsNeverTruncatedAndMustBeBigEnough(t *testing.T) {
	e := newEnv(t, 1<<20, false)
	f, path := e.sink("slot-b")
	if err := f.Truncate(4 << 20); err != nil { // the "partition" is bigger than the payload
		t.Fatal(err)
	}
	e.srv.SetFaults(object, s3.Faults{CutAtOffsets: []int64{100 << 10}, IgnoreRange: true}) // forces a restart from zero
	res, err := Download(context.Background(), e.request(slotDevice{f}, filepath.Join(e.dir, "ckpt")))
	if err != nil || res.Restarts != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	got, _ := os.ReadFile(path)
	if len(got) != 4<<20 || !bytes.Equal(got[:len(e.data)], e.data) {
		t.Fatal("slot content wrong")
	}
	small, _ := e.sink("tiny-slot")
	_, err = Download(context.Background(), e.request(slotDevice{small}, ""))
	if !errors.Is(err, reason.InsufficientSpace) || e.stats(object).Requests != 2 { // none for the small slot
		t.Fatalf("too small a slot: %v", err)
	}
}

// TestKillLoopOnASlowLinkLosesAtMostASecondPerCut: with checkpoints only every 8 MiB, a 500 KB/s
// link cut every ~6 s never got one, restarted from zero each time and never finished (87.8 MB
// served for 41.9 MB). With the default checkpoints (1 MiB or 1 s), each kill -9 costs at most
// about a second of the link, and the download completes.
func TestKillLoopOnASlowLinkLosesAtMostASecondPerCut(t *testing.T) {
	const rate = 200 << 10
	e := newEnv(t, 3*rate, false) // 3 s of link
	size := int64(len(e.data))
	e.srv.SetFaults(object, s3.Faults{RateBytesPerSec: rate})
	_, sinkPath := e.sink("payload")
	cpPath := filepath.Join(e.dir, "ckpt")
	url := e.sign(object, time.Hour)
	cuts := 0
	for run := 1; ; run++ {
		if run > 8 {
			t.Fatalf("not complete after %d kills: each run starts again from %d", cuts, CheckpointOffset(cpPath))
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperDownloadProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), "FIELDOTA_DOWNLOAD_HELPER=1", "DL_DEFAULT_CHECKPOINTS=1", "DL_MAY_FINISH=1", "DL_URL="+url,
			"DL_SIZE="+strconv.FormatInt(size, 10), "DL_SINK="+sinkPath, "DL_SHA256="+hex.EncodeToString(e.sum), "DL_CKPT="+cpPath)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("run %d: %v\n%s", run, err, out.String())
			}
		case <-time.After(1300 * time.Millisecond):
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
			cuts++
			continue
		}
		break
	}
	if cuts < 2 {
		t.Fatalf("only %d kills: the test proved nothing", cuts)
	}
	e.assertFile(sinkPath, e.data)
	lost := e.stats(object).BytesSent - size
	// A kill loses what arrived since the last checkpoint: at most one interval of the link
	// (plus the chunk in flight).
	if perCut := lost / int64(cuts); perCut > rate*3/2 {
		t.Fatalf("%d bytes re-downloaded over %d kills (%d per kill, link %d B/s)", lost, cuts, perCut, rate)
	}
	t.Logf("%d kills, %d bytes re-downloaded (%d per kill)", cuts, lost, lost/int64(cuts))
}
