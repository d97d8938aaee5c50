package agent

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/reason"
)

// nastyRunes mixes what program output and error messages really contain with what AWS refuses:
// control characters, format characters (zero-width, bidi), unassigned code points, invalid
// UTF-8, surrogate halves, and multi-byte letters that make bytes ≠ characters.
var nastyRunes = []string{"a", "Z", "0", " ", "\n", "\r", "\t", "\x00", "\x1b[31m", "\x7f", "é", "日本", "🙂",
	"\u200b", "\u202e", "\ufeff", "\U000e0001", "\U0010ffff", "\u0378", "\xff", "\xed\xa0\x80", "\u2028", "%", "\"", "\\"}

func randomText(r *rand.Rand, max int) string {
	var b strings.Builder
	n := r.IntN(max + 1)
	for i := 0; i < n; i++ {
		b.WriteString(nastyRunes[r.IntN(len(nastyRunes))])
	}
	return b.String()
}

// TestEveryStatusDetailsMapIsWithinAWSLimits is a property test over every way the agent builds
// statusDetails: stage maps with versions from the document, failures with any error text and
// reason, and program output — after the sanitizing the updater applies, the service's rules
// (as agent/jobs validates them) always hold, and stage and reason always survive.
func TestEveryStatusDetailsMapIsWithinAWSLimits(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	stages := []string{"validate", "download", "verify", "install", "reboot", "selftest", "commit", "rollback", "done"}
	for i := 0; i < 5000; i++ {
		j := &ota.Journal{Version: randomText(r, 40), PreviousVersion: randomText(r, 40)}
		stage := stages[r.IntN(len(stages))]
		extra := map[string]string{}
		if r.IntN(2) == 0 {
			extra["progress"] = randomText(r, 3)
		}
		if r.IntN(2) == 0 {
			extra["output"] = ota.Tail(randomText(r, 3000), 1024)
		}
		var d map[string]string
		if r.IntN(2) == 0 {
			d = details(j, stage, extra)
		} else {
			code := reason.All[r.IntN(len(reason.All))]
			var err error = reason.Errorf(code, "%s", randomText(r, 2000))
			if r.IntN(3) == 0 {
				err = errors.New(randomText(r, 2000)) // unclassified → INTERNAL
			}
			ota.Fail(j, err, details(j, stage, extra))
			d = j.Report.Details
		}
		sent := ota.SanitizeDetails(d)
		if err := jobs.ValidateStatusDetails(sent); err != nil {
			t.Fatalf("case %d: %v\nmap %q", i, err, sent)
		}
		if sent["stage"] != stage {
			t.Fatalf("case %d: stage lost: %q", i, sent)
		}
		if want := d["reason"]; want != "" && sent["reason"] != want {
			t.Fatalf("case %d: reason %q became %q", i, want, sent["reason"])
		}
	}
}
