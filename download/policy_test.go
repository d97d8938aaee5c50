package download

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/test/jobsim/s3"
)

func TestPolicyAllowsOnlyItsHostsAndHTTPS(t *testing.T) {
	aws := Policy{}
	lab := Policy{Hosts: []string{"127.0.0.1", "*.example.net"}, AllowHTTP: true}
	cases := []struct {
		p    Policy
		url  string
		want error
	}{
		{aws, "https://bucket.s3.eu-west-1.amazonaws.com/k?X-Amz-Signature=x", nil},
		{aws, "https://s3.amazonaws.com/bucket/k", nil},
		{aws, "https://bucket.s3.cn-north-1.amazonaws.com.cn/k", nil},
		{aws, "HTTPS://bucket.s3.eu-west-1.amazonaws.com/k", nil}, // the scheme in any case
		{aws, "https://amazonaws.com.evil.example/k", reason.HostNotAllowed},
		{aws, "https://evilamazonaws.com/k", reason.HostNotAllowed},
		{aws, "https://169.254.169.254/latest/meta-data/", reason.HostNotAllowed},
		{aws, "https://127.0.0.1:8080/jobs", reason.HostNotAllowed}, // the emulator's control API
		{aws, "https://192.168.1.1/admin", reason.HostNotAllowed},
		{aws, "http://bucket.s3.eu-west-1.amazonaws.com/k", reason.InvalidDocument},
		{aws, "HTTP://bucket.s3.eu-west-1.amazonaws.com/k", reason.InvalidDocument},
		{aws, "ftp://bucket.s3.eu-west-1.amazonaws.com/k", reason.InvalidDocument},
		{aws, "https://user:pw@bucket.s3.eu-west-1.amazonaws.com/k", reason.InvalidDocument},
		{lab, "http://127.0.0.1:9000/b/k", nil},
		{lab, "HTTP://127.0.0.1:9000/b/k", nil},
		{lab, "https://cdn.example.net/k", nil},
		{lab, "https://example.net/k", reason.HostNotAllowed},
		{lab, "http://localhost:9000/b/k", reason.HostNotAllowed},
	}
	for _, c := range cases {
		err := c.p.Check(c.url)
		if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.url, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "X-Amz") {
			t.Errorf("%s: the refusal leaks the query: %v", c.url, err)
		}
	}
}

func TestDialRefusesLinkLocalAndUnnamedLoopback(t *testing.T) {
	p := Policy{Hosts: []string{"*.amazonaws.com"}}
	for _, a := range []string{"169.254.169.254", "fe80::1", "0.0.0.0", "224.0.0.1", "127.0.0.1", "::1"} {
		if p.allowsAddr(netip.MustParseAddr(a)) {
			t.Errorf("%s allowed", a)
		}
	}
	for _, a := range []string{"52.95.150.1", "10.0.3.4"} { // S3, and an S3 VPC endpoint
		if !p.allowsAddr(netip.MustParseAddr(a)) {
			t.Errorf("%s refused", a)
		}
	}
	if !(Policy{Hosts: []string{"127.0.0.1"}}).allowsAddr(netip.MustParseAddr("127.0.0.1")) {
		t.Error("loopback named in the policy refused")
	}
}

// TestRedirectToAnotherHostIsRefused: a server on an allowed host answers with a redirect to a
// host the policy does not name; the download stops there, HOST_NOT_ALLOWED, without a request
// to the other host.
func TestRedirectToAnotherHostIsRefused(t *testing.T) {
	hit := false
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hit = true }))
	defer other.Close()
	target := strings.Replace(other.URL, "127.0.0.1", "localhost", 1) + "/latest/meta-data/"
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target, http.StatusFound)
	}))
	defer redirector.Close()
	f, err := createSink(t)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Download(context.Background(), Request{URL: redirector.URL + "/obj", Size: 10, Sink: f, Retries: 1,
		RetryWaitMin: time.Millisecond, Policy: &Policy{Hosts: []string{"127.0.0.1"}, AllowHTTP: true}})
	if !errors.Is(err, reason.HostNotAllowed) || hit {
		t.Fatalf("got %v (other host reached: %v)", err, hit)
	}
}

// TestTrickleServerFailsTooSlow is the slow-retrieval attack: a server that sends a byte now and
// then never trips the stall watchdog; the speed watchdog reconnects, then fails.
func TestTrickleServerFailsTooSlow(t *testing.T) {
	e := newEnv(t, 1<<20, false)
	e.srv.SetFaults(object, s3.Faults{RateBytesPerSec: 20000}) // steady, far below the minimum
	f, _ := e.sink("payload")
	req := e.request(f, filepath.Join(e.dir, "ckpt"))
	req.MinSpeed, req.MinSpeedWindow, req.MaxSlow = 100<<10, 300*time.Millisecond, 3
	t0 := time.Now()
	_, err := Download(context.Background(), req)
	if !errors.Is(err, reason.DownloadTooSlow) {
		t.Fatalf("got %v", err)
	}
	if took := time.Since(t0); took > 10*time.Second {
		t.Fatalf("took %s", took)
	}
	if st := e.stats(object); st.Requests != 3 {
		t.Fatalf("%d requests: want one per slow window, the last one ending it", st.Requests)
	}
}

// TestSlowButSteadyLinkIsNotCut: a link above the minimum finishes.
func TestSlowButSteadyLinkIsNotCut(t *testing.T) {
	e := newEnv(t, 256<<10, false)
	e.srv.SetFaults(object, s3.Faults{RateBytesPerSec: 400 << 10})
	f, path := e.sink("payload")
	req := e.request(f, filepath.Join(e.dir, "ckpt"))
	req.MinSpeed, req.MinSpeedWindow = 50<<10, 200*time.Millisecond
	if _, err := Download(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	e.assertFile(path, e.data)
}

func createSink(t *testing.T) (*os.File, error) {
	return os.Create(filepath.Join(t.TempDir(), "sink"))
}
