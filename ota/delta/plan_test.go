package delta

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/fieldota/fieldota/ota/zimage"
	"github.com/fieldota/fieldota/test/artifact"
)

func TestCoalesceKeepsEveryNeededFrameWithinTheRequestLimit(t *testing.T) {
	raw := artifact.Image(4<<20, 21)
	var out bytes.Buffer
	m, err := zimage.Build(context.Background(), bytes.NewReader(raw), int64(len(raw)), &out, zimage.Options{Delta: true, Encoder: zimage.GoEncoder{Level: zstd.SpeedFastest}})
	if err != nil {
		t.Fatal(err)
	}
	ix := openTestIndex(t, out.Bytes(), m)
	var need []int64
	for f := int64(0); f < ix.Frames; f += 2 {
		need = append(need, f)
	}
	for _, tc := range []struct {
		maxReq   int
		mergeGap int64
		want     int // spans, or -1 for "at most maxReq"
	}{
		{1 << 20, 0, len(need)},
		{5, 0, 5},
		{1, 0, 1},
		{1 << 20, 1 << 30, 1},
	} {
		spans := coalesce(ix, need, tc.maxReq, tc.mergeGap)
		if len(spans) != tc.want {
			t.Fatalf("maxReq %d gap %d: %d spans, want %d", tc.maxReq, tc.mergeGap, len(spans), tc.want)
		}
		covered := map[int64]bool{}
		for i, s := range spans {
			if i > 0 && s.first < spans[i-1].end {
				t.Fatalf("spans overlap or go backwards: %v", spans)
			}
			for f := s.first; f < s.end; f++ {
				covered[f] = true
			}
		}
		for _, f := range need {
			if !covered[f] {
				t.Fatalf("maxReq %d: frame %d not fetched", tc.maxReq, f)
			}
		}
	}
}

func openTestIndex(t *testing.T, obj []byte, m zimage.Manifest) *zimage.Index {
	t.Helper()
	d := m.Delta
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	raw, err := dec.DecodeAll(obj[d.Index.Offset+zimage.WrapperSize:d.Index.Offset+d.Index.Size], nil)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "index")
	if err := os.WriteFile(p, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	ix, err := zimage.OpenIndex(f, m)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}
