package zimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/fieldota/fieldota/ota/reason"
)

// testImage is compressible, with zero runs and repeated blocks like a filesystem image.
func testImage(size int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, size)
	for off := 0; off < size; off += 4096 {
		switch r.IntN(4) {
		case 0: // zero block
		case 1:
			copy(b[off:], b[r.IntN(off/4096+1)*4096:][:min(4096, size-off)])
		default:
			for i := off; i < min(off+4096, size); i++ {
				b[i] = byte('a' + r.IntN(8))
			}
		}
	}
	return b
}

func build(t *testing.T, raw []byte, opt Options) ([]byte, Manifest) {
	t.Helper()
	var out bytes.Buffer
	m, err := Build(context.Background(), bytes.NewReader(raw), int64(len(raw)), &out, opt)
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), m
}

func TestBuildReadsBackWithReferenceZstd(t *testing.T) {
	raw := testImage(3<<20+1000, 1)
	for _, tc := range []struct {
		name string
		opt  Options
	}{
		{"full only, go", Options{FullFrameSize: 1 << 20}},
		{"delta, go", Options{FullFrameSize: 1 << 20, Delta: true}},
		{"delta, zstd cli", Options{FullFrameSize: 1 << 20, Delta: true, Encoder: CLIEncoder{Level: 3}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obj, m := build(t, raw, tc.opt)
			if int64(len(obj)) != m.Stored.Size || sha(obj) != m.Stored.SHA256 || sha(obj[:m.Full.Size]) != m.Full.SHA256 || sha(raw) != m.Raw.SHA256 {
				t.Fatalf("manifest does not describe the object: %+v", m)
			}
			// any zstd decoder reads the whole object sequentially and gets the image once
			p := filepath.Join(t.TempDir(), "obj.zst")
			if err := os.WriteFile(p, obj, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := exec.Command("zstd", "-d", "-c", p).Output()
			if err != nil {
				t.Fatalf("zstd -d: %v", err)
			}
			if !bytes.Equal(got, raw) {
				t.Fatalf("zstd -d gave %d bytes, want the %d of the image", len(got), len(raw))
			}
			if m.Delta == nil {
				return
			}
			ix := openIndexOf(t, obj, m)
			if ix.Blocks != int64(len(raw)+4095)/4096 {
				t.Fatalf("%d blocks", ix.Blocks)
			}
		})
	}
}

func TestManifestValidateRefusesEachBadField(t *testing.T) {
	_, good := build(t, testImage(1<<20, 2), Options{FullFrameSize: 256 << 10, Delta: true})
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(m *Manifest){
		"compression":        func(m *Manifest) { m.Compression = "xz" },
		"stored size":        func(m *Manifest) { m.Stored.Size = 0 },
		"raw digest":         func(m *Manifest) { m.Raw.SHA256 = "ABC" },
		"upper-case hex":     func(m *Manifest) { m.Full.SHA256 = "A" + m.Full.SHA256[1:] },
		"full beyond object": func(m *Manifest) { m.Full.Size = m.Stored.Size + 1 },
		"full frame tiny":    func(m *Manifest) { m.FullFrameSize = 4096 },
		"full frame huge":    func(m *Manifest) { m.FullFrameSize = 1 << 30 },
		"block size odd":     func(m *Manifest) { m.Delta.BlockSize = 3000 },
		"frame not multiple": func(m *Manifest) { m.Delta.FrameSize = m.Delta.BlockSize*3 + 1 },
		"frame huge":         func(m *Manifest) { m.Delta.FrameSize = 8 << 20 },
		"index in full part": func(m *Manifest) { m.Delta.Index.Offset = 10 },
		"index past end":     func(m *Manifest) { m.Delta.Index.Size = m.Stored.Size },
		"index digest":       func(m *Manifest) { m.Delta.Index.SHA256 = "" },
		"no delta, prefix":   func(m *Manifest) { m.Delta = nil },
		"raw huge index":     func(m *Manifest) { m.Raw.Size = 1 << 50 },
	} {
		t.Run(name, func(t *testing.T) {
			m := good
			d := *good.Delta
			m.Delta = &d
			edit(&m)
			if err := m.Validate(); !errors.Is(err, reason.InvalidDocument) {
				t.Fatalf("got %v, want INVALID_DOCUMENT", err)
			}
		})
	}
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

type zeroReader struct{}

func (zeroReader) ReadAt(p []byte, _ int64) (int, error) { clear(p); return len(p), nil }

// An index larger than the decoder's window must still decode within IndexWindow: a 1 GiB image
// has an 8 MiB index, and the device's budget is 32 MiB in all.
func TestLargeIndexDecodesWithinTheIndexWindow(t *testing.T) {
	const size = 256 << 20
	var out bytes.Buffer
	m, err := Build(context.Background(), zeroReader{}, size, &out, Options{Delta: true, Encoder: GoEncoder{Level: zstd.SpeedFastest}})
	if err != nil {
		t.Fatal(err)
	}
	if m.IndexRawSize() <= IndexWindow {
		t.Fatalf("index of %d bytes does not exceed the window", m.IndexRawSize())
	}
	d := m.Delta
	dec, _ := zstd.NewReader(bytes.NewReader(out.Bytes()[d.Index.Offset+8:d.Index.Offset+d.Index.Size]), zstd.WithDecoderMaxWindow(IndexWindow), zstd.WithDecoderConcurrency(1))
	defer dec.Close()
	n, err := io.Copy(io.Discard, dec)
	if err != nil || n != m.IndexRawSize() {
		t.Fatalf("decoded %d of %d bytes: %v", n, m.IndexRawSize(), err)
	}
}

func TestVerifyChecksEveryPartOffline(t *testing.T) {
	raw := testImage(2<<20, 5)
	obj, m := build(t, raw, Options{FullFrameSize: 256 << 10, Delta: true, Encoder: GoEncoder{Level: zstd.SpeedDefault}})
	if err := Verify(context.Background(), bytes.NewReader(obj), m, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	for name, at := range map[string]int64{
		"full part":   m.Full.Size / 2,
		"delta frame": m.Full.Size + 100,
		"index":       m.Delta.Index.Offset + m.Delta.Index.Size/2,
	} {
		t.Run(name, func(t *testing.T) {
			bad := append([]byte(nil), obj...)
			bad[at] ^= 1
			// re-sign the object digests so that only the deeper check can catch it
			mm := m
			mm.Stored.SHA256 = sha(bad)
			if at < m.Full.Size {
				mm.Full.SHA256 = sha(bad[:m.Full.Size])
			}
			d := *m.Delta
			if at >= m.Delta.Index.Offset {
				d.Index.SHA256 = sha(bad[d.Index.Offset : d.Index.Offset+d.Index.Size])
			}
			mm.Delta = &d
			if err := Verify(context.Background(), bytes.NewReader(bad), mm, t.TempDir()); !errors.Is(err, reason.DigestMismatch) {
				t.Fatalf("got %v, want DIGEST_MISMATCH", err)
			}
		})
	}
}

// TestVerifyRefusesAFrameSizeTheObjectDoesNotHave: the manifest signs 128 KiB frames for an
// object built with 256 KiB ones; every digest matches, and the full part decodes to the raw
// image, but a device would refuse the first frame (it declares more than its share): so does
// Verify, with the device's reason. A smaller claim the other way is a size mismatch.
func TestVerifyRefusesAFrameSizeTheObjectDoesNotHave(t *testing.T) {
	raw := testImage(1<<20, 6)
	obj, m := build(t, raw, Options{FullFrameSize: 256 << 10, Encoder: GoEncoder{Level: zstd.SpeedDefault}})
	for _, tc := range []struct {
		frame int64
		want  reason.Code
	}{{128 << 10, reason.DecompressionBomb}, {512 << 10, reason.SizeMismatch}} {
		mm := m
		mm.FullFrameSize = tc.frame
		if err := Verify(context.Background(), bytes.NewReader(obj), mm, t.TempDir()); !errors.Is(err, tc.want) {
			t.Fatalf("frames of %d signed: got %v, want %s", tc.frame, err, tc.want)
		}
	}
}
