package delta

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/fieldota/fieldota/download"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/slot"
	"github.com/fieldota/fieldota/ota/zimage"
	"github.com/fieldota/fieldota/test/artifact"
	"github.com/fieldota/fieldota/test/jobsim/s3"
)

func TestMain(m *testing.M) {
	if os.Getenv("DELTA_CHILD") == "1" {
		os.Exit(child())
	}
	os.Exit(m.Run())
}

func child() int {
	var m zimage.Manifest
	if err := json.Unmarshal([]byte(os.Getenv("D_MANIFEST")), &m); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	req := Request{Manifest: m, Target: os.Getenv("D_TARGET"), Active: Source{Path: os.Getenv("D_ACTIVE")}, StateDir: os.Getenv("D_STATE"),
		Object: download.RangesConfig{URL: os.Getenv("D_URL"), RetryWaitMin: time.Millisecond, RetryWaitMax: 10 * time.Millisecond}}
	if _, err := Install(context.Background(), req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

type pair struct {
	old, new []byte
	obj      []byte
	m        zimage.Manifest
}

func newPair(t *testing.T, size int) pair {
	t.Helper()
	old := artifact.Image(size, 11)
	nw := artifact.Edit(old, 12)
	var out bytes.Buffer
	m, err := zimage.Build(context.Background(), bytes.NewReader(nw), int64(len(nw)), &out,
		zimage.Options{FullFrameSize: 256 << 10, Delta: true, FrameSize: 64 << 10, BlockSize: 4096, Encoder: zimage.GoEncoder{Level: zstd.SpeedDefault}})
	if err != nil {
		t.Fatal(err)
	}
	return pair{old: old, new: nw, obj: out.Bytes(), m: m}
}

type setup struct {
	fx     *artifact.Fixture
	obj    string
	active string
	target string
	state  string
}

func newSetup(t *testing.T, p pair, targetContent []byte) setup {
	t.Helper()
	fx := artifact.New(t)
	dir := t.TempDir()
	s := setup{fx: fx, obj: fx.Put(t, "rootfs.img.zst", p.obj), active: filepath.Join(dir, "slot-a"), target: filepath.Join(dir, "slot-b"), state: filepath.Join(dir, "state")}
	must(t, os.WriteFile(s.active, p.old, 0o600))
	must(t, os.WriteFile(s.target, targetContent, 0o600))
	must(t, os.Mkdir(s.state, 0o700))
	return s
}

func (s setup) request(p pair) Request {
	return Request{Manifest: p.m, Target: s.target, Active: Source{Path: s.active}, StateDir: s.state,
		Object: download.RangesConfig{URL: s.fx.URL(s.obj), RetryWaitMin: time.Millisecond, RetryWaitMax: 5 * time.Millisecond, Stall: 2 * time.Second}}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func checkImage(t *testing.T, s setup, p pair) {
	t.Helper()
	got, err := os.ReadFile(s.target)
	must(t, err)
	if !bytes.Equal(got, p.new) {
		t.Fatalf("target holds %d bytes that are not the new image (%d)", len(got), len(p.new))
	}
	if err := slot.ReadBack(context.Background(), s.target, p.m.Raw.Size, p.m.Raw.SHA256); err != nil {
		t.Fatal(err)
	}
}

func TestDeltaIntoFileBackedSlotProducesTheExactImage(t *testing.T) {
	p := newPair(t, 4<<20)
	for name, target := range map[string][]byte{
		"target holds garbage":      bytes.Repeat([]byte{0xa5}, len(p.new)+10000),
		"target holds the old one":  p.old,
		"target is an empty file":   nil,
		"target already holds half": append(append([]byte(nil), p.new[:len(p.new)/2]...), p.old[len(p.new)/2:]...),
	} {
		t.Run(name, func(t *testing.T) {
			s := newSetup(t, p, target)
			rep, err := Install(context.Background(), s.request(p))
			must(t, err)
			checkImage(t, s, p)
			if rep.Mode != "delta" || rep.Fallback != "" {
				t.Fatalf("mode %s (%s), want delta", rep.Mode, rep.Fallback)
			}
			s.fx.WaitIdle(t)
			if st := s.fx.Srv.Stats(s.obj); st.BytesSent != rep.Fetched || int64(st.Requests) != int64(rep.Requests) {
				t.Fatalf("report says %d bytes in %d requests, the server sent %d in %d", rep.Fetched, rep.Requests, st.BytesSent, st.Requests)
			}
			if rep.Fetched >= p.m.Full.Size/2 {
				t.Fatalf("fetched %d bytes, a full download is %d: the delta saved too little", rep.Fetched, p.m.Full.Size)
			}
			for _, r := range s.fx.Srv.Requests() {
				if r.Status != http.StatusPartialContent || strings.Contains(r.Range, ",") {
					t.Fatalf("request %d: %q → %d; want single ranges only", r.N, r.Range, r.Status)
				}
			}
			d := rep.Detail()
			if !strings.HasPrefix(d, "saved ") || len(d) > 1024 || strings.ContainsAny(d, "\n\r\t") {
				t.Fatalf("detail %q", d)
			}
			t.Logf("%s: %s (read %d, wrote %d)", name, d, rep.ReadOld, rep.Written)
		})
	}
}

func TestDeltaRequestsStayWithinTheLimit(t *testing.T) {
	p := newPair(t, 4<<20)
	s := newSetup(t, p, nil)
	req := s.request(p)
	req.MaxRequests, req.MergeGap = 2, 1
	rep, err := Install(context.Background(), req)
	must(t, err)
	checkImage(t, s, p)
	if rep.Requests > 3 { // the index, then at most two spans of frames
		t.Fatalf("%d requests, want ≤ 3", rep.Requests)
	}
}

func TestTamperedDeltaFrameOrIndexRefused(t *testing.T) {
	p := newPair(t, 4<<20)
	// find a delta frame the install will fetch: the one where the edit inserted new blocks
	var ixRaw bytes.Buffer
	_ = ixRaw
	for _, tc := range []struct {
		name string
		at   func(m zimage.Manifest) int64
	}{
		{"byte flipped in a fetched delta frame", func(m zimage.Manifest) int64 {
			// the inserted run sits at a third of the image: its frame is always fetched
			f := int64(len(p.new)/3) / m.Delta.FrameSize
			return m.Full.Size + (m.Delta.Index.Offset-m.Full.Size)*f/m.Delta.DeltaFrames(m.Raw.Size) + 200
		}},
		{"byte flipped in the index", func(m zimage.Manifest) int64 { return m.Delta.Index.Offset + m.Delta.Index.Size/2 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := append([]byte(nil), p.obj...)
			bad[tc.at(p.m)] ^= 0x40
			tp := p
			tp.obj = bad
			s := newSetup(t, tp, nil)
			_, err := Install(context.Background(), s.request(tp))
			if !errors.Is(err, reason.DigestMismatch) && !errors.Is(err, reason.DecompressionBomb) && !errors.Is(err, reason.SizeMismatch) {
				t.Fatalf("got %v, want a refusal (DIGEST_MISMATCH)", err)
			}
			t.Logf("refused: %v", err)
		})
	}
}

func TestURLExpiryMidDeltaRefreshed(t *testing.T) {
	p := newPair(t, 4<<20)
	s := newSetup(t, p, nil)
	// Request 2 (the first span of frames) is cut after a few bytes and the URL expires.
	s.fx.Srv.OnRequest(func(n int, r *http.Request) s3.Faults {
		if n == 2 {
			s.fx.Advance(2 * time.Hour)
			return s3.Faults{CutAfterBytes: 100}
		}
		return s3.Faults{}
	})
	req := s.request(p)
	refreshes := 0
	req.Object.Refresh = func(context.Context) (string, error) { refreshes++; return s.fx.URL(s.obj), nil }
	rep, err := Install(context.Background(), req)
	must(t, err)
	checkImage(t, s, p)
	if refreshes != 1 || rep.Refreshes != 1 || rep.Mode != "delta" {
		t.Fatalf("refreshes %d (report %d), mode %s", refreshes, rep.Refreshes, rep.Mode)
	}
}

func TestRebootMidDeltaResumes(t *testing.T) {
	p := newPair(t, 8<<20)
	s := newSetup(t, p, bytes.Repeat([]byte{0x11}, len(p.new)))
	// what a whole delta costs, measured on a copy
	fresh := newSetup(t, p, bytes.Repeat([]byte{0x11}, len(p.new)))
	whole, err := Install(context.Background(), fresh.request(p))
	must(t, err)

	s.fx.Srv.SetFaults(s.obj, s3.Faults{RateBytesPerSec: whole.Fetched / 2})
	mj, _ := json.Marshal(p.m)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "DELTA_CHILD=1", "D_MANIFEST="+string(mj), "D_TARGET="+s.target, "D_ACTIVE="+s.active, "D_STATE="+s.state, "D_URL="+s.fx.URL(s.obj))
	cmd.Stderr = os.Stderr
	must(t, cmd.Start())
	// power cut once the first span is durable (progress written in delta mode with bytes)
	deadline := time.Now().Add(30 * time.Second)
	var killedAt progress
	prog := filepath.Join(s.state, "delta-"+p.m.Raw.SHA256[:16]+".json")
	for {
		var pr progress
		if b, err := os.ReadFile(prog); err == nil && json.Unmarshal(b, &pr) == nil && pr.Mode == "delta" && pr.Fetched >= whole.Fetched/2 {
			killedAt = pr
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatal("no durable progress within 30 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	must(t, cmd.Process.Kill())
	_ = cmd.Wait()
	if b, err := os.ReadFile(prog); err != nil || json.Unmarshal(b, &killedAt) != nil {
		t.Fatalf("progress after the cut: %v", err)
	}
	s.fx.WaitIdle(t)
	s.fx.Srv.ClearFaults()
	s.fx.Srv.ResetStats()

	rep, err := Install(context.Background(), s.request(p))
	must(t, err)
	checkImage(t, s, p)
	s.fx.WaitIdle(t)
	again := s.fx.Srv.Stats(s.obj).BytesSent
	if !rep.Resumed || rep.Mode != "delta" {
		t.Fatalf("resumed=%v mode=%s", rep.Resumed, rep.Mode)
	}
	// the index is kept, and what was written before the cut is found in place
	// (the frames in flight when the power went are fetched again: allow half of what was durable)
	if again > whole.Fetched-p.m.Delta.Index.Size-(killedAt.Fetched-p.m.Delta.Index.Size)/2 {
		t.Fatalf("after the reboot the install fetched %d bytes, a whole delta is %d: it started over", again, whole.Fetched)
	}
	t.Logf("whole delta %d bytes; cut after %d durable; %d more after the reboot", whole.Fetched, killedAt.Fetched, again)
}

func TestDeltaFallsBackToFullAndSaysWhy(t *testing.T) {
	p := newPair(t, 4<<20)
	for _, tc := range []struct {
		name, why string
		edit      func(t *testing.T, s *setup, req *Request)
	}{
		{"unreadable active slot (missing)", "active slot cannot be read", func(t *testing.T, s *setup, req *Request) {
			req.Active.Path = filepath.Join(filepath.Dir(s.active), "no-such-slot")
		}},
		{"unreadable active slot (read error)", "active slot cannot be read", func(t *testing.T, s *setup, req *Request) {
			dir := filepath.Join(filepath.Dir(s.active), "a-dir")
			must(t, os.Mkdir(dir, 0o700))
			req.Active = Source{Path: dir, Size: 1 << 20}
		}},
		{"too few matches", "too few matches", func(t *testing.T, s *setup, req *Request) {
			must(t, os.WriteFile(s.active, artifact.Image(4<<20, 999), 0o600))
		}},
		{"index larger than the agent takes", "at most", func(t *testing.T, s *setup, req *Request) { req.MaxBlocks = 16 }},
		{"server ignores Range", "ignores Range", func(t *testing.T, s *setup, req *Request) {
			s.fx.Srv.OnRequest(func(n int, r *http.Request) s3.Faults { return s3.Faults{IgnoreRange: n == 1} })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSetup(t, p, nil)
			req := s.request(p)
			tc.edit(t, &s, &req)
			rep, err := Install(context.Background(), req)
			must(t, err)
			checkImage(t, s, p)
			if rep.Mode != "full" || !strings.Contains(rep.Fallback, tc.why) || !strings.Contains(rep.Detail(), tc.why) {
				t.Fatalf("mode %s, fallback %q; want full because %q", rep.Mode, rep.Fallback, tc.why)
			}
			t.Logf("%s", rep.Detail())
		})
	}
}

// The slots are block devices: the target is written in place (never truncated), the active
// one is read to its end, and the bytes after the image on the target are not part of it.
func TestDeltaIntoABlockDeviceSlot(t *testing.T) {
	p := newPair(t, 4<<20)
	s := newSetup(t, p, nil)
	s.target = artifact.LoopDevice(t, bytes.Repeat([]byte{0x5a}, len(p.new)+1<<20))
	s.active = artifact.LoopDevice(t, p.old)
	rep, err := Install(context.Background(), s.request(p))
	must(t, err)
	if rep.Mode != "delta" {
		t.Fatalf("mode %s: %s", rep.Mode, rep.Fallback)
	}
	if err := slot.ReadBack(context.Background(), s.target, p.m.Raw.Size, p.m.Raw.SHA256); err != nil {
		t.Fatal(err)
	}
}

// The state directory is not trusted between runs: an index file edited while the agent was
// down is fetched again, never used.
func TestEditedIndexInTheStateDirectoryIsFetchedAgain(t *testing.T) {
	p := newPair(t, 4<<20)
	s := newSetup(t, p, nil)
	_, err := Install(context.Background(), s.request(p))
	must(t, err)
	ixPath := filepath.Join(s.state, "delta-"+p.m.Raw.SHA256[:16]+".index.zst")
	b, err := os.ReadFile(ixPath)
	must(t, err)
	b[len(b)/2] ^= 1
	must(t, os.WriteFile(ixPath, b, 0o600))
	must(t, os.WriteFile(s.target, nil, 0o600))
	s.fx.WaitIdle(t)
	s.fx.Srv.ResetStats()
	_, err = Install(context.Background(), s.request(p))
	must(t, err)
	checkImage(t, s, p)
	s.fx.WaitIdle(t)
	if first := s.fx.Srv.Requests()[0]; !strings.HasPrefix(first.Range, fmt.Sprintf("bytes=%d-", p.m.Delta.Index.Offset)) {
		t.Fatalf("first request %q, want the index fetched again", first.Range)
	}
}
