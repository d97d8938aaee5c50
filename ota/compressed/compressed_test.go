package compressed

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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

const frame = 256 << 10

func TestMain(m *testing.M) {
	if os.Getenv("COMPRESSED_CHILD") == "1" {
		os.Exit(child())
	}
	os.Exit(m.Run())
}

// child installs into a file until killed; the parent owns the server.
func child() int {
	var m zimage.Manifest
	if err := json.Unmarshal([]byte(os.Getenv("C_MANIFEST")), &m); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	f, err := os.OpenFile(os.Getenv("C_SINK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	_, err = Install(context.Background(), Request{Manifest: m, Sink: f, CheckpointPath: os.Getenv("C_CKPT"),
		Object: download.RangesConfig{URL: os.Getenv("C_URL"), RetryWaitMin: time.Millisecond, RetryWaitMax: 10 * time.Millisecond}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

type release struct {
	raw []byte
	obj []byte
	m   zimage.Manifest
}

func newRelease(t *testing.T, size int, delta bool) release {
	t.Helper()
	raw := artifact.Image(size, 7)
	var out bytes.Buffer
	m, err := zimage.Build(context.Background(), bytes.NewReader(raw), int64(len(raw)), &out, zimage.Options{FullFrameSize: frame, Delta: delta, Encoder: zimage.GoEncoder{Level: zstd.SpeedDefault}})
	if err != nil {
		t.Fatal(err)
	}
	return release{raw: raw, obj: out.Bytes(), m: m}
}

func fastObject(url string) download.RangesConfig {
	return download.RangesConfig{URL: url, RetryWaitMin: time.Millisecond, RetryWaitMax: 5 * time.Millisecond, Stall: 2 * time.Second}
}

func TestCompressedPayloadInstallsWithRawDigestEnforced(t *testing.T) {
	rel := newRelease(t, 3<<20+777, true)
	fx := artifact.New(t)
	obj := fx.Put(t, "rootfs.zst", rel.obj)
	dir := t.TempDir()

	t.Run("file sink", func(t *testing.T) {
		f, err := os.Create(filepath.Join(dir, "payload"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		res, err := Install(context.Background(), Request{Manifest: rel.m, Sink: f, Object: fastObject(fx.URL(obj)), CheckpointPath: filepath.Join(dir, "ckpt")})
		if err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(f.Name())
		if !bytes.Equal(got, rel.raw) {
			t.Fatalf("file holds %d bytes, not the image", len(got))
		}
		if res.BytesOnWire != rel.m.Full.Size || res.Requests != 1 {
			t.Fatalf("fetched %d bytes in %d requests, want the full part (%d) in one", res.BytesOnWire, res.Requests, rel.m.Full.Size)
		}
	})
	t.Run("file-backed slot", func(t *testing.T) {
		path := filepath.Join(dir, "slot-b")
		if err := os.WriteFile(path, bytes.Repeat([]byte{0xee}, len(rel.raw)+8192), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := slot.OpenTarget(path, rel.m.Raw.Size)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := Install(context.Background(), Request{Manifest: rel.m, Sink: f, Object: fastObject(fx.URL(obj))}); err != nil {
			t.Fatal(err)
		}
		if err := slot.ReadBack(context.Background(), path, rel.m.Raw.Size, rel.m.Raw.SHA256); err != nil {
			t.Fatalf("read-back against the signed raw digest: %v", err)
		}
	})
	t.Run("raw digest other than signed", func(t *testing.T) {
		m := rel.m
		other := sha256.Sum256([]byte("another image"))
		m.Raw.SHA256 = hex.EncodeToString(other[:])
		f, _ := os.Create(filepath.Join(dir, "bad"))
		defer f.Close()
		ckpt := filepath.Join(dir, "bad.ckpt")
		_, err := Install(context.Background(), Request{Manifest: m, Sink: f, Object: fastObject(fx.URL(obj)), CheckpointPath: ckpt})
		if !errors.Is(err, reason.DigestMismatch) {
			t.Fatalf("got %v, want DIGEST_MISMATCH", err)
		}
		if _, err := os.Stat(ckpt); !os.IsNotExist(err) {
			t.Fatalf("a failed verification left a checkpoint to resume from: %v", err)
		}
	})
}

// maxSink records the furthest byte written.
type maxSink struct {
	f   *os.File
	end int64
}

func (s *maxSink) WriteAt(p []byte, off int64) (int, error) {
	s.end = max(s.end, off+int64(len(p)))
	return s.f.WriteAt(p, off)
}
func (s *maxSink) Sync() error { return s.f.Sync() }

func TestDecompressionBombRefusedBeforeWritingPastRawSize(t *testing.T) {
	rel := newRelease(t, 2<<20, false)
	fx := artifact.New(t)

	t.Run("signed raw size smaller than the stream", func(t *testing.T) {
		obj := fx.Put(t, "bomb.zst", rel.obj)
		m := rel.m
		m.Raw.Size -= 5000 // the last frame now declares more than is left of the signed size
		s := &maxSink{f: tempFile(t)}
		_, err := Install(context.Background(), Request{Manifest: m, Sink: s, Object: fastObject(fx.URL(obj))})
		if !errors.Is(err, reason.DecompressionBomb) {
			t.Fatalf("got %v, want DECOMPRESSION_BOMB", err)
		}
		if s.end > m.Raw.Size {
			t.Fatalf("wrote up to %d, past the signed %d", s.end, m.Raw.Size)
		}
	})
	t.Run("frame lies about its content size", func(t *testing.T) {
		// One frame whose header says 64 KiB while its raw blocks hold 1 MiB.
		payload := bytes.Repeat([]byte("bomb"), 1<<18)
		lying := lyingFrame(64<<10, payload)
		m := zimage.Manifest{Compression: "zstd", FullFrameSize: 64 << 10,
			Raw: zimage.Digest{Size: 64 << 10, SHA256: shaHex(payload[:64<<10])}, Full: zimage.Digest{Size: int64(len(lying)), SHA256: shaHex(lying)}}
		m.Stored = m.Full
		obj := fx.Put(t, "lying.zst", lying)
		s := &maxSink{f: tempFile(t)}
		_, err := Install(context.Background(), Request{Manifest: m, Sink: s, Object: fastObject(fx.URL(obj))})
		if !errors.Is(err, reason.DecompressionBomb) {
			t.Fatalf("got %v, want DECOMPRESSION_BOMB", err)
		}
		if s.end > m.Raw.Size {
			t.Fatalf("wrote up to %d, past the signed %d (%v)", s.end, m.Raw.Size, err)
		}
	})
}

// lyingFrame is a zstd frame declaring fcs bytes whose raw blocks hold all of payload.
func lyingFrame(fcs int, payload []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 0xFD2FB528)
	b = append(b, 0x80) // FCS field 4 bytes, not single segment, no checksum
	b = append(b, 0x30) // window 2^(10+6) = 64 KiB
	b = binary.LittleEndian.AppendUint32(b, uint32(fcs))
	const blk = 64 << 10
	for off := 0; off < len(payload); off += blk {
		n := min(blk, len(payload)-off)
		last := 0
		if off+n == len(payload) {
			last = 1
		}
		h := uint32(n)<<3 | 0<<1 | uint32(last) // raw block
		b = append(b, byte(h), byte(h>>8), byte(h>>16))
		b = append(b, payload[off:off+n]...)
	}
	return b
}

func TestCorruptedFrameRefused(t *testing.T) {
	rel := newRelease(t, 2<<20, false)
	bad := append([]byte(nil), rel.obj...)
	bad[len(bad)/2] ^= 0x5a
	fx := artifact.New(t)
	obj := fx.Put(t, "corrupt.zst", bad)
	ckpt := filepath.Join(t.TempDir(), "ckpt")
	_, err := Install(context.Background(), Request{Manifest: rel.m, Sink: &maxSink{f: tempFile(t)}, Object: fastObject(fx.URL(obj)), CheckpointPath: ckpt})
	if !errors.Is(err, reason.DigestMismatch) {
		t.Fatalf("got %v, want DIGEST_MISMATCH", err)
	}
	if _, err := os.Stat(ckpt); !os.IsNotExist(err) {
		t.Fatal("a corrupted download left a checkpoint behind")
	}
}

func TestConnectionCutsContinueFromTheByteReached(t *testing.T) {
	rel := newRelease(t, 4<<20, false)
	fx := artifact.New(t)
	obj := fx.Put(t, "cut.zst", rel.obj)
	n := rel.m.Full.Size
	fx.Srv.SetFaults(obj, s3.Faults{CutAtOffsets: []int64{n / 5, n / 2, n - 100}})
	f := tempFile(t)
	res, err := Install(context.Background(), Request{Manifest: rel.m, Sink: f, Object: fastObject(fx.URL(obj))})
	if err != nil {
		t.Fatal(err)
	}
	fx.WaitIdle(t)
	if st := fx.Srv.Stats(obj); st.Requests != 4 || st.BytesSent != n {
		t.Fatalf("server: %d requests, %d bytes; want 4 and exactly the full part's %d (no byte twice)", st.Requests, st.BytesSent, n)
	}
	if got, _ := os.ReadFile(f.Name()); !bytes.Equal(got, rel.raw) || res.Resumed {
		t.Fatal("wrong content after cuts")
	}
}

func TestURLExpiryMidStreamRefreshedAndContinued(t *testing.T) {
	rel := newRelease(t, 3<<20, false)
	fx := artifact.New(t)
	obj := fx.Put(t, "expire.zst", rel.obj)
	// The first response is cut half way; by then the URL has expired (the clock jumps).
	fx.Srv.OnRequest(func(n int, r *http.Request) s3.Faults {
		if n == 1 {
			fx.Advance(2 * time.Hour)
			return s3.Faults{CutAfterBytes: rel.m.Full.Size / 2}
		}
		return s3.Faults{}
	})
	refreshed := 0
	cfg := fastObject(fx.URL(obj))
	cfg.Refresh = func(context.Context) (string, error) { refreshed++; return fx.URL(obj), nil }
	f := tempFile(t)
	res, err := Install(context.Background(), Request{Manifest: rel.m, Sink: f, Object: cfg})
	if err != nil {
		t.Fatal(err)
	}
	fx.WaitIdle(t)
	if refreshed != 1 || res.Refreshes != 1 {
		t.Fatalf("refreshed %d times (result %d), want 1", refreshed, res.Refreshes)
	}
	if st := fx.Srv.Stats(obj); st.BytesSent != rel.m.Full.Size {
		t.Fatalf("server sent %d bytes, want %d: the refresh must continue, not start over", st.BytesSent, rel.m.Full.Size)
	}
	if got, _ := os.ReadFile(f.Name()); !bytes.Equal(got, rel.raw) {
		t.Fatal("wrong content")
	}
}

func TestKillMidStreamResumesAtAFrameBoundary(t *testing.T) {
	rel := newRelease(t, 6<<20, false)
	fx := artifact.New(t)
	obj := fx.Put(t, "kill.zst", rel.obj)
	// slow enough to be killed in the middle
	fx.Srv.SetFaults(obj, s3.Faults{RateBytesPerSec: rel.m.Full.Size / 2})
	dir := t.TempDir()
	sink, ckpt := filepath.Join(dir, "payload"), filepath.Join(dir, "ckpt")
	mj, _ := json.Marshal(rel.m)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "COMPRESSED_CHILD=1", "C_MANIFEST="+string(mj), "C_SINK="+sink, "C_CKPT="+ckpt, "C_URL="+fx.URL(obj))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// kill -9 once at least three frames are durable
	deadline := time.Now().Add(20 * time.Second)
	for {
		var cp checkpoint
		if b, err := os.ReadFile(ckpt); err == nil && json.Unmarshal(b, &cp) == nil && cp.Frame >= 3 {
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatal("no checkpoint of three frames within 20 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	fx.WaitIdle(t)
	sentBefore := fx.Srv.Stats(obj).BytesSent
	fx.Srv.ClearFaults()

	var killedAt checkpoint
	if b, err := os.ReadFile(ckpt); err != nil || json.Unmarshal(b, &killedAt) != nil {
		t.Fatalf("checkpoint after the kill: %v", err)
	}
	f, err := os.OpenFile(sink, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := Install(context.Background(), Request{Manifest: rel.m, Sink: f, Object: fastObject(fx.URL(obj)), CheckpointPath: ckpt})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Resumed || res.ResumedFrom < 3*frame || res.ResumedFrom%frame != 0 {
		t.Fatalf("resumed=%v from %d, want a frame boundary ≥ 3 frames", res.Resumed, res.ResumedFrom)
	}
	if got, _ := os.ReadFile(sink); !bytes.Equal(got, rel.raw) {
		t.Fatal("wrong content after resume")
	}
	// Only what lies past the last durable frame boundary is fetched again.
	if res.BytesOnWire != rel.m.Full.Size-killedAt.StoredOff {
		t.Fatalf("resumed run fetched %d bytes, want the %d after the checkpoint's boundary", res.BytesOnWire, rel.m.Full.Size-killedAt.StoredOff)
	}
	t.Logf("killed after %d bytes; resumed at raw %d, fetched %d more (full part %d)", sentBefore, res.ResumedFrom, res.BytesOnWire, rel.m.Full.Size)
}

func TestEditedCheckpointIsNotTrusted(t *testing.T) {
	rel := newRelease(t, 2<<20, false)
	fx := artifact.New(t)
	obj := fx.Put(t, "edit.zst", rel.obj)
	dir := t.TempDir()
	f := tempFile(t)
	ckpt := filepath.Join(dir, "ckpt")
	if _, err := Install(context.Background(), Request{Manifest: rel.m, Sink: f, Object: fastObject(fx.URL(obj)), CheckpointPath: ckpt, CheckpointEvery: 1}); err != nil {
		t.Fatal(err)
	}
	// An attacker marks a checkpoint half way, over a sink whose bytes were swapped.
	var cp checkpoint
	b, _ := os.ReadFile(ckpt)
	_ = json.Unmarshal(b, &cp)
	cp.Complete, cp.Frame, cp.RawOff = false, 4, 4*frame
	b, _ = json.Marshal(cp)
	_ = os.WriteFile(ckpt, b, 0o600)
	if _, err := f.WriteAt(bytes.Repeat([]byte{1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	res, err := Install(context.Background(), Request{Manifest: rel.m, Sink: f, Object: fastObject(fx.URL(obj)), CheckpointPath: ckpt})
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed {
		t.Fatal("resumed from a checkpoint that does not match the sink")
	}
	if got, _ := os.ReadFile(f.Name()); !bytes.Equal(got, rel.raw) {
		t.Fatal("wrong content")
	}
}

func tempFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "sink"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func shaHex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestFileSinkWithoutRoomRefusedBeforeAnyRequest(t *testing.T) {
	rel := newRelease(t, 3<<20, false)
	fx := artifact.New(t)
	obj := fx.Put(t, "big.zst", rel.obj)
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs (needs root, like CI): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
	f, err := os.Create(filepath.Join(dir, "payload"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = Install(context.Background(), Request{Manifest: rel.m, Sink: f, Object: fastObject(fx.URL(obj))})
	if !errors.Is(err, reason.InsufficientSpace) {
		t.Fatalf("got %v, want INSUFFICIENT_SPACE", err)
	}
	if st := fx.Srv.Stats(obj); st.Requests != 0 {
		t.Fatalf("%d requests sent before refusing", st.Requests)
	}
}
