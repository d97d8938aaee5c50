package s3

import (
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type fixture struct {
	srv  *Server
	hs   *httptest.Server
	p    *Presigner
	data []byte
	dir  string
	now  time.Time
}

const obj = "firmware/app-1.2.bin"

func newFixture(t *testing.T, tlsOn bool) *fixture {
	t.Helper()
	dir := t.TempDir()
	data := make([]byte, 300<<10)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(data)
	if err := os.MkdirAll(filepath.Join(dir, "firmware"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, obj), data, 0o644); err != nil {
		t.Fatal(err)
	}
	fx := &fixture{dir: dir, data: data, now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	fx.p = &Presigner{Secret: []byte("s3cret"), Now: func() time.Time { return fx.now }}
	fx.srv = NewServer(dir, fx.p)
	if tlsOn {
		fx.hs = httptest.NewTLSServer(fx.srv)
	} else {
		fx.hs = httptest.NewServer(fx.srv)
	}
	t.Cleanup(fx.hs.Close)
	fx.p.Base = fx.hs.URL
	return fx
}

func (fx *fixture) get(t *testing.T, method, u string, hdr map[string]string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := fx.hs.Client().Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// quiet waits until the server has accounted for every request.
func quiet(t *testing.T, s *Server) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); s.InFlight() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("requests still in flight")
		}
	}
}

func etagOf(b []byte) string {
	s := md5.Sum(b)
	return `"` + hex.EncodeToString(s[:]) + `"`
}

func TestPresignedGetServesObjectWithETagAndLength(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		fx := newFixture(t, tlsOn)
		resp, body, err := fx.get(t, "GET", fx.p.Sign(obj, time.Hour), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || !bytes.Equal(body, fx.data) {
			t.Fatalf("tls=%v: status %d, %d bytes", tlsOn, resp.StatusCode, len(body))
		}
		if got := resp.Header.Get("ETag"); got != etagOf(fx.data) {
			t.Fatalf("ETag %s", got)
		}
		if resp.ContentLength != int64(len(fx.data)) || resp.Header.Get("Accept-Ranges") != "bytes" {
			t.Fatalf("length %d accept-ranges %q", resp.ContentLength, resp.Header.Get("Accept-Ranges"))
		}
		if tlsOn != (resp.TLS != nil) {
			t.Fatal("TLS state wrong")
		}
		head, hb, err := fx.get(t, "HEAD", fx.p.Sign(obj, time.Hour), nil)
		if err != nil || head.StatusCode != 200 || len(hb) != 0 || head.ContentLength != int64(len(fx.data)) || head.Header.Get("ETag") != etagOf(fx.data) {
			t.Fatalf("HEAD: %v %+v", err, head)
		}
	}
}

func TestExpiredOrAlteredURLIsAccessDenied(t *testing.T) {
	fx := newFixture(t, false)
	good := fx.p.Sign(obj, time.Minute)
	short := fx.p.SignShort(obj, 2*time.Second)
	tamper := func(u string, f func(q url.Values, uu *url.URL)) string {
		uu, _ := url.Parse(u)
		q := uu.Query()
		f(q, uu)
		uu.RawQuery = q.Encode()
		return uu.String()
	}
	fx.now = fx.now.Add(3 * time.Second) // the short URL is now expired; the good one is not
	cases := []struct {
		name, url, msg, code string
	}{
		{"expired", short, "Request has expired", "AccessDenied"},
		{"signature flipped", tamper(good, func(q url.Values, _ *url.URL) {
			s := []byte(q.Get(ParamSignature))
			if s[0] == '0' { // another hex digit: a well-formed but wrong signature
				s[0] = '1'
			} else {
				s[0] = '0'
			}
			q.Set(ParamSignature, string(s))
		}), "signature", "SignatureDoesNotMatch"},
		{"expiry extended", tamper(short, func(q url.Values, _ *url.URL) { q.Set(ParamExpires, "3600") }), "signature", "SignatureDoesNotMatch"},
		{"other object", tamper(good, func(_ url.Values, uu *url.URL) { uu.Path = "/firmware/other.bin" }), "signature", "SignatureDoesNotMatch"},
		{"other version", tamper(good, func(q url.Values, _ *url.URL) { q.Set("versionId", "abc") }), "signature", "SignatureDoesNotMatch"},
		{"no query (anonymous)", strings.Split(good, "?")[0], "Access Denied", "AccessDenied"},
	}
	for _, c := range cases {
		resp, body, err := fx.get(t, "GET", c.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		var e s3ErrorBody
		if err := xml.Unmarshal(body, &e); err != nil {
			t.Fatalf("%s: body %q: %v", c.name, body, err)
		}
		if resp.StatusCode != 403 || e.Code != c.code || !strings.Contains(e.Message, c.msg) || bytes.Contains(body, fx.data[:16]) {
			t.Fatalf("%s: %d %+v", c.name, resp.StatusCode, e)
		}
	}
	if resp, _, _ := fx.get(t, "GET", good, nil); resp.StatusCode != 200 {
		t.Fatalf("good URL refused: %d", resp.StatusCode)
	}
}

func TestMissingKeyAndTraversalAreNoSuchKey(t *testing.T) {
	fx := newFixture(t, false)
	if err := os.WriteFile(filepath.Join(filepath.Dir(fx.dir), "secret"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, o := range []string{"firmware/nope.bin", "firmware/../../secret"} {
		resp, body, err := fx.get(t, "GET", fx.p.Sign(o, time.Hour), nil)
		if err != nil {
			t.Fatal(err)
		}
		var e s3ErrorBody
		_ = xml.Unmarshal(body, &e)
		if resp.StatusCode != 404 || e.Code != "NoSuchKey" {
			t.Fatalf("%s: %d %q", o, resp.StatusCode, body)
		}
	}
}

func TestRangeAndIfRange(t *testing.T) {
	fx := newFixture(t, false)
	u := fx.p.Sign(obj, time.Hour)
	et := etagOf(fx.data)
	cases := []struct {
		name   string
		hdr    map[string]string
		status int
		from   int
		cr     string
	}{
		{"open range", map[string]string{"Range": "bytes=1000-"}, 206, 1000, "bytes 1000-307199/307200"},
		{"if-range same etag", map[string]string{"Range": "bytes=5-", "If-Range": et}, 206, 5, "bytes 5-307199/307200"},
		{"if-range stale etag → whole object", map[string]string{"Range": "bytes=5-", "If-Range": `"0000"`}, 200, 0, ""},
		{"multi-range → whole object, like S3", map[string]string{"Range": "bytes=0-1,5-9"}, 200, 0, ""},
	}
	for _, c := range cases {
		resp, body, err := fx.get(t, "GET", u, c.hdr)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != c.status || !bytes.Equal(body, fx.data[c.from:]) || resp.Header.Get("Content-Range") != c.cr {
			t.Fatalf("%s: %d, %d bytes, %q", c.name, resp.StatusCode, len(body), resp.Header.Get("Content-Range"))
		}
	}
	resp, _, _ := fx.get(t, "GET", u, map[string]string{"Range": "bytes=999999-"})
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("past end: %d", resp.StatusCode)
	}
}

func TestFaults(t *testing.T) {
	size := int64(300 << 10)
	cases := []struct {
		name  string
		f     Faults
		hdr   map[string]string
		check func(t *testing.T, fx *fixture, resp *http.Response, body []byte, err error, took time.Duration)
	}{
		{"cut after N bytes", Faults{CutAfterBytes: 12345}, nil, func(t *testing.T, fx *fixture, resp *http.Response, body []byte, err error, _ time.Duration) {
			if !errors.Is(err, io.ErrUnexpectedEOF) || len(body) != 12345 || !bytes.Equal(body, fx.data[:12345]) {
				t.Fatalf("err %v, %d bytes", err, len(body))
			}
			quiet(t, fx.srv)
			if st := fx.srv.Stats(obj); st.BytesSent != 12345 || st.Requests != 1 {
				t.Fatalf("stats %+v", st)
			}
			if rq := fx.srv.Requests(); len(rq) != 1 || !rq[0].Cut {
				t.Fatalf("log %+v", rq)
			}
		}},
		{"cut at object offset across a range", Faults{CutAtOffsets: []int64{50000}}, map[string]string{"Range": "bytes=40000-"}, func(t *testing.T, fx *fixture, resp *http.Response, body []byte, err error, _ time.Duration) {
			if !errors.Is(err, io.ErrUnexpectedEOF) || len(body) != 10000 || !bytes.Equal(body, fx.data[40000:50000]) {
				t.Fatalf("err %v, %d bytes", err, len(body))
			}
			// one-shot: the next request passes
			resp2, b2, err := fx.get(t, "GET", fx.p.Sign(obj, time.Hour), nil)
			if err != nil || resp2.StatusCode != 200 || len(b2) != len(fx.data) {
				t.Fatalf("second: %v", err)
			}
		}},
		{"503 twice with Retry-After", Faults{Status: 503, StatusTimes: 2, RetryAfter: 3 * time.Second}, nil, func(t *testing.T, fx *fixture, resp *http.Response, body []byte, err error, _ time.Duration) {
			if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "3" || !bytes.Contains(body, []byte("<Code>SlowDown</Code>")) {
				t.Fatalf("%d %q", resp.StatusCode, body)
			}
			r2, _, _ := fx.get(t, "GET", fx.p.Sign(obj, time.Hour), nil)
			r3, b3, _ := fx.get(t, "GET", fx.p.Sign(obj, time.Hour), nil)
			if r2.StatusCode != 503 || r3.StatusCode != 200 || len(b3) != len(fx.data) {
				t.Fatalf("%d %d", r2.StatusCode, r3.StatusCode)
			}
		}},
		{"ignore range", Faults{IgnoreRange: true}, map[string]string{"Range": "bytes=100-"}, func(t *testing.T, fx *fixture, resp *http.Response, body []byte, err error, _ time.Duration) {
			if resp.StatusCode != 200 || !bytes.Equal(body, fx.data) {
				t.Fatalf("%d", resp.StatusCode)
			}
		}},
		{"throttle", Faults{RateBytesPerSec: size * 4}, nil, func(t *testing.T, fx *fixture, resp *http.Response, body []byte, err error, took time.Duration) {
			if err != nil || !bytes.Equal(body, fx.data) || took < 200*time.Millisecond {
				t.Fatalf("err %v took %v", err, took)
			}
		}},
		{"stall", Faults{Stall: 300 * time.Millisecond, StallAfterBytes: 1000}, nil, func(t *testing.T, fx *fixture, resp *http.Response, body []byte, err error, took time.Duration) {
			if err != nil || !bytes.Equal(body, fx.data) || took < 300*time.Millisecond {
				t.Fatalf("err %v took %v", err, took)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fx := newFixture(t, false)
			fx.srv.SetFaults(obj, c.f)
			t0 := time.Now()
			resp, body, err := fx.get(t, "GET", fx.p.Sign(obj, time.Hour), c.hdr)
			c.check(t, fx, resp, body, err, time.Since(t0))
		})
	}
}

func TestReplaceMidResponseKeepsOldBytesThenNewETag(t *testing.T) {
	fx := newFixture(t, false)
	newData := bytes.Repeat([]byte("N"), 1000)
	fx.srv.SetFaults(obj, Faults{ReplaceAfterBytes: 4096, ReplaceWith: newData})
	u := fx.p.Sign(obj, time.Hour)
	resp, body, err := fx.get(t, "GET", u, nil)
	if err != nil || !bytes.Equal(body, fx.data) || resp.Header.Get("ETag") != etagOf(fx.data) {
		t.Fatalf("in-flight response changed: %v", err)
	}
	resp, body, err = fx.get(t, "GET", u, map[string]string{"Range": "bytes=4096-", "If-Range": etagOf(fx.data)})
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, newData) || resp.Header.Get("ETag") != etagOf(newData) {
		t.Fatalf("after replace: %d %v", resp.StatusCode, err)
	}
}

func TestPerRequestFaultsByNumber(t *testing.T) {
	fx := newFixture(t, false)
	fx.srv.OnRequest(func(n int, r *http.Request) Faults {
		if n == 1 {
			return Faults{Status: 500}
		}
		if n == 2 {
			return Faults{CutAfterBytes: 10}
		}
		return Faults{}
	})
	u := fx.p.Sign(obj, time.Hour)
	r1, _, _ := fx.get(t, "GET", u, nil)
	_, b2, err2 := fx.get(t, "GET", u, nil)
	r3, b3, err3 := fx.get(t, "GET", u, nil)
	if r1.StatusCode != 500 || len(b2) != 10 || err2 == nil || err3 != nil || r3.StatusCode != 200 || len(b3) != len(fx.data) {
		t.Fatalf("%d %d %v %v", r1.StatusCode, len(b2), err2, err3)
	}
	quiet(t, fx.srv)
	log := fx.srv.Requests()
	if st := fx.srv.Stats(""); st.Requests != 3 || len(log) != 3 || st.BytesSent != log[0].Bytes+10+int64(len(fx.data)) ||
		log[0].Status != 500 || !log[1].Cut || log[2].Bytes != int64(len(fx.data)) {
		t.Fatalf("%+v %+v", st, log)
	}
}
