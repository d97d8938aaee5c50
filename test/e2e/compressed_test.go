package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/fieldota/fieldota/ota/zimage"
	"github.com/fieldota/fieldota/test/artifact"
	"github.com/fieldota/fieldota/test/jobsim/s3"
	"github.com/fieldota/fieldota/test/testdoc"
)

// TestAgentKilledMidCompressedStreamResumesAtAFrameBoundary: the agent (the real binary) is
// SIGKILLed while a compressed payload streams through its decoder into the staged file; the
// restarted agent continues from the last frame boundary its checkpoint made durable — the very
// next byte of the object, not from zero — and the placed file is the raw payload.
func TestAgentKilledMidCompressedStreamResumesAtAFrameBoundary(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	raw := artifact.Image(8<<20, 9)
	var obj bytes.Buffer
	m, err := zimage.Build(context.Background(), bytes.NewReader(raw), int64(len(raw)), &obj,
		zimage.Options{FullFrameSize: 1 << 20, Encoder: zimage.GoEncoder{Level: zstd.SpeedDefault}})
	if err != nil {
		t.Fatal(err)
	}
	e.publish("data.bin", obj.Bytes())
	e.sim.Artifacts().SetFaults("bucket/data.bin", s3.Faults{RateBytesPerSec: int64(obj.Len()) / 3})
	work := filepath.Join(e.appRoot, "data")
	td := testdoc.ForCompressed("data.bin", m, "3.0")
	td.WorkDir = work
	e.createJob("z", e.sign(td))

	checkpoint := filepath.Join(e.stateDir, "staging", "z-1", "0.checkpoint")
	p := e.startAgent()
	e.waitFor("a frame boundary checkpointed", func() bool { return storedOffset(checkpoint) > 0 })
	_ = p.cmd.Process.Kill()
	<-p.done
	p.done <- nil
	at := storedOffset(checkpoint) // what the killed agent made durable
	if at <= 0 || at >= m.Full.Size {
		t.Fatalf("checkpoint at %d of %d", at, m.Full.Size)
	}
	e.waitFor("the killed agent's response to end", func() bool { return e.sim.Artifacts().InFlight() == 0 })
	e.sim.Artifacts().ResetStats()

	e.startAgent()
	if ex := e.waitTerminal("z", 60*time.Second); ex.Status != "SUCCEEDED" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	e.waitFor("the last response to be counted", func() bool { return e.sim.Artifacts().InFlight() == 0 })
	reqs := e.sim.Artifacts().Requests()
	if len(reqs) == 0 || reqs[0].Range != "bytes="+strconv.FormatInt(at, 10)+"-"+strconv.FormatInt(m.Full.Size-1, 10) {
		t.Fatalf("the restarted agent asked for %+v, want the rest of the full part from %d", reqs, at)
	}
	if sent := e.sim.Artifacts().Stats("bucket/data.bin").BytesSent; sent != m.Full.Size-at {
		t.Fatalf("the restarted agent fetched %d bytes, %d were left after the checkpoint", sent, m.Full.Size-at)
	}
	if got, err := os.ReadFile(filepath.Join(work, "data.bin")); err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("placed file: %d bytes, %v", len(got), err)
	}
	e.assertNoLeftovers()
}

func storedOffset(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	var cp struct {
		StoredOffset int64 `json:"storedOffset"`
	}
	if json.Unmarshal(b, &cp) != nil {
		return 0
	}
	return cp.StoredOffset
}
