// Package artifact serves test objects from the emulator's S3 artifact server (test/jobsim/s3)
// through presigned URLs, with a clock the test drives, and makes filesystem-like test images.
// It is the one place the compressed-payload and delta tests touch the emulator's API.
package artifact

import (
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fieldota/fieldota/test/jobsim/s3"
)

// Fixture is one artifact server on loopback.
type Fixture struct {
	Srv *s3.Server
	P   *s3.Presigner
	Dir string

	mu  sync.Mutex
	now time.Time
	hs  *httptest.Server
}

// New starts a server; it stops when the test ends.
func New(t testing.TB) *Fixture {
	t.Helper()
	f := &Fixture{Dir: t.TempDir(), now: time.Now()}
	f.P = &s3.Presigner{Secret: []byte("artifact-secret"), Now: f.Now}
	f.Srv = s3.NewServer(f.Dir, f.P)
	f.hs = httptest.NewServer(f.Srv)
	f.P.Base = f.hs.URL
	t.Cleanup(f.hs.Close)
	return f
}

// Now is the presigner's clock.
func (f *Fixture) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Advance moves the presigner's clock (URLs minted earlier expire).
func (f *Fixture) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

// Put stores data as bucket/key and returns the object path.
func (f *Fixture) Put(t testing.TB, key string, data []byte) string {
	t.Helper()
	obj := "bucket/" + key
	p := filepath.Join(f.Dir, filepath.FromSlash(obj))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return obj
}

// URL presigns obj for an hour of the fixture's clock.
func (f *Fixture) URL(obj string) string { return f.P.Sign(obj, time.Hour) }

// WaitIdle waits until no request is being answered, so Stats and Requests are complete.
func (f *Fixture) WaitIdle(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for f.Srv.InFlight() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("artifact server still answering after 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Image is a filesystem-like test image: zero blocks, repeated blocks and compressible data in
// 4 KiB blocks, deterministic for a seed.
func Image(size int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, size)
	for off := 0; off < size; off += 4096 {
		end := min(off+4096, size)
		switch r.IntN(5) {
		case 0: // zero block
		case 1:
			src := r.IntN(off/4096+1) * 4096
			copy(b[off:end], b[src:])
		default:
			for i := off; i < end; i++ {
				b[i] = byte('a' + r.IntN(12))
			}
		}
	}
	return b
}

// Edit returns a copy of old as the next release might be: a few scattered blocks rewritten
// (metadata), a run of blocks rewritten (an upgraded file), and a run inserted at a third of the
// image (an added file: everything after it shifts by whole blocks, as ext4 data moves).
func Edit(old []byte, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 2))
	n := append([]byte(nil), old...)
	fill := func(b []byte) {
		for i := range b {
			b[i] = byte('A' + r.IntN(20))
		}
	}
	blocks := len(n) / 4096
	for range 6 {
		off := r.IntN(blocks) * 4096
		fill(n[off:min(off+4096, len(n))])
	}
	run := blocks / 2 * 4096
	fill(n[run:min(run+24*4096, len(n))])
	ins := make([]byte, 16*4096)
	fill(ins)
	at := blocks / 3 * 4096
	return append(n[:at:at], append(ins, n[at:len(n)-len(ins)]...)...)
}

// LoopDevice attaches a file holding content as a loop block device (root and util-linux's
// losetup, as in CI), detached when the test ends: slot code meets a real block device.
func LoopDevice(t testing.TB, content []byte) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, content, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup (needs root and loop devices, like CI): %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v %s", dev, err, out)
		}
	})
	return dev
}
