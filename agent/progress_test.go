package agent

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/test/jobsim"
)

// slowAnswers is a link whose answers take a while: the service applies each update at once, the
// device hears back latency later — what every real Jobs service over a real network looks like.
// A caller that gives up (its ctx ends) before the answer arrives never learns the new version.
type slowAnswers struct {
	jobsAPI
	latency time.Duration
}

func (s slowAnswers) Update(ctx context.Context, jobID string, in jobs.UpdateInput) (*jobs.UpdateResult, error) {
	res, err := s.jobsAPI.Update(ctx, jobID, in)
	select {
	case <-time.After(s.latency):
		return res, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// rejections lists the device requests the emulator answered on /rejected with code.
func (h *harness) rejections(code string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, e := range h.events {
		if e.Kind == jobsim.EventRejected && strings.Contains(e.Detail, code) {
			out = append(out, e.Detail)
		}
	}
	return out
}

// TestFinalProgressReportLandsBeforeTheVerifyStageSoNoVersionMismatch: the 100 % report was
// aborted in flight when the download returned, so the journal never learned its versionNumber
// and the verify stage's update was refused VersionMismatch on every job. A normal job on a link
// with latency must see no VersionMismatch at all.
func TestFinalProgressReportLandsBeforeTheVerifyStageSoNoVersionMismatch(t *testing.T) {
	h := newHarness(t)
	h.wrapAPI = func(api jobsAPI) jobsAPI { return slowAnswers{jobsAPI: api, latency: 150 * time.Millisecond} }
	work := filepath.Join(h.appRoot, "w")
	big := h.throttled("big.bin", 256<<10, 512<<10)
	h.createJob("slowlink", h.seedDoc("big.bin", big, "6.0", work))
	h.run()
	if ex := h.waitTerminal("slowlink"); ex.Status != "SUCCEEDED" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if got := h.rejections(jobs.CodeVersionMismatch); len(got) > 0 {
		t.Fatalf("%d VersionMismatch rejections in a normal job: %v", len(got), got)
	}
}
