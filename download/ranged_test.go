package download_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
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
