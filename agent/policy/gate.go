package policy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/fieldota/fieldota/ota/run"
)

// Phase names what a gate lets happen.
type Phase string

// The phases, in the order an update meets them.
const (
	Download Phase = "download"
	Install  Phase = "install"
	Reboot   Phase = "reboot"  // slot: switch the bootloader to the new slot and reboot
	Restart  Phase = "restart" // binary: swap and restart; files: place and start the program
)

// Verdict is a gate's answer.
type Verdict int

// The verdicts.
const (
	Go     Verdict = iota // the phase may run now
	NotNow                // ask again later
	Refuse                // never: the update fails (REJECTED while QUEUED)
)

func (v Verdict) String() string {
	switch v {
	case Go:
		return "go"
	case NotNow:
		return "not now"
	}
	return "refuse"
}

// Decision is a gate's answer with its why.
type Decision struct {
	Verdict Verdict
	// Reason is one line for statusDetails: a hook's own words, or the policy's.
	Reason string
	// Until is when a window opens, for NotNow from a window; zero when it is not known (a hook
	// or the link decides).
	Until time.Time
	// Dynamic says the answer may change before Until: a hook or the link check decided, so
	// the gate must be asked again on the recheck schedule.
	Dynamic bool
}

// Job is what a hook is told about the update, in its environment.
type Job struct {
	ID              string
	Execution       int64
	Target          string
	Version         string
	PreviousVersion string
	// WaitingSince is when this phase first heard "not now" (zero: it has not waited).
	WaitingSince time.Time
}

// LinkCheck says whether the network link is metered (NetworkManager through D-Bus by default).
type LinkCheck interface {
	Metered(ctx context.Context) (metered bool, what string, err error)
}

// Gate decides one phase: windows first (outside them nothing else is asked, so hooks never
// bother the application for nothing), then the metered-link check, then each hook in order;
// the first answer that is not go decides.
type Gate struct {
	Phase   Phase
	Windows Windows
	// Unmetered, when set, waits while Link says the link is metered.
	Link  LinkCheck
	Hooks []Hook
}

// Empty tells whether the gate always says go.
func (g Gate) Empty() bool { return len(g.Windows) == 0 && g.Link == nil && len(g.Hooks) == 0 }

// Dynamic tells whether the gate's answer can change other than at a window's opening.
func (g Gate) Dynamic() bool { return g.Link != nil || len(g.Hooks) > 0 }

// Decide asks the gate at now. A ctx that ends returns NotNow with ctx's error as the reason;
// callers check ctx first.
func (g Gate) Decide(ctx context.Context, now time.Time, job Job) Decision {
	if open, opens := g.Windows.At(now); !open {
		d := Decision{Verdict: NotNow, Until: opens, Reason: fmt.Sprintf("outside the %s window", g.Phase)}
		if !opens.IsZero() {
			d.Reason += " (opens " + opens.Format(time.RFC3339) + ")"
		}
		return d
	}
	if g.Link != nil {
		metered, what, err := g.Link.Metered(ctx)
		switch {
		case err != nil:
			// Not knowing is not permission: wait, and say why.
			return Decision{Verdict: NotNow, Dynamic: true, Reason: oneLine("cannot tell whether the link is metered: " + err.Error())}
		case metered:
			return Decision{Verdict: NotNow, Dynamic: true, Reason: "the network link is metered (" + what + ")"}
		}
	}
	for _, h := range g.Hooks {
		if d := h.Ask(ctx, g.Phase, job); d.Verdict != Go {
			return d
		}
	}
	return Decision{Verdict: Go}
}

// The hook exit-code contract.
const (
	ExitGo     = 0
	ExitNotNow = 75 // EX_TEMPFAIL (sysexits.h)
)

// DefaultHookTimeout bounds a hook when the configuration gives none.
const DefaultHookTimeout = 30 * time.Second

// Hook is a program the device owner installs to decide a phase: an argv list (never a
// shell) run with a timeout through ota/run.
type Hook struct {
	Argv    []string
	Timeout time.Duration
}

// MaxReason bounds the reason a hook prints (statusDetails values hold 1024 characters).
const MaxReason = 256

// Ask runs the hook. Exit 0 is go, 75 not now, any other exit refuse. A hook that cannot run,
// times out or is killed by a signal gave no answer: not now, with that as the reason (the
// wait is bounded by the job's timeout; a refusal could not be taken back).
func (h Hook) Ask(ctx context.Context, phase Phase, job Job) Decision {
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = DefaultHookTimeout
	}
	res, err := run.Run(ctx, run.Spec{Argv: h.Argv, Env: append(os.Environ(), job.env(phase)...), Timeout: timeout, MaxStdout: 4096})
	name := run.Describe(h.Argv)
	said := firstLine(res.Stdout)
	var ee *run.ExitError
	switch {
	case errors.As(err, &ee) && ee.Signal == "" && ee.Code == ExitNotNow:
		if said == "" {
			said = name + " said not now (exit 75)"
		}
		return Decision{Verdict: NotNow, Dynamic: true, Reason: said}
	case errors.As(err, &ee) && ee.Signal == "":
		if said == "" {
			said = fmt.Sprintf("%s refused (exit %d)", name, ee.Code)
		}
		return Decision{Verdict: Refuse, Reason: said}
	case ctx.Err() == nil && (err == nil || res.ExitCode == 0):
		// Exit 0; an error with it can only be output past MaxStdout, which changes nothing.
		return Decision{Verdict: Go, Reason: said}
	}
	return Decision{Verdict: NotNow, Dynamic: true, Reason: oneLine(fmt.Sprintf("%s gave no answer: %v", name, err))}
}

// env is what a hook is told.
func (j Job) env(phase Phase) []string {
	e := []string{
		"FIELDOTA_PHASE=" + string(phase),
		"FIELDOTA_JOB_ID=" + j.ID,
		"FIELDOTA_EXECUTION_NUMBER=" + strconv.FormatInt(j.Execution, 10),
		"FIELDOTA_TARGET=" + j.Target,
		"FIELDOTA_VERSION=" + j.Version,
		"FIELDOTA_PREVIOUS_VERSION=" + j.PreviousVersion,
	}
	if !j.WaitingSince.IsZero() {
		e = append(e, "FIELDOTA_WAITING_SINCE="+j.WaitingSince.UTC().Format(time.RFC3339))
	}
	return e
}

// firstLine is the first non-empty line of a hook's output, cleaned for statusDetails.
func firstLine(b []byte) string {
	for _, l := range strings.Split(string(b), "\n") {
		if l = oneLine(l); l != "" {
			return l
		}
	}
	return ""
}

// oneLine drops control and format characters and cuts s to MaxReason characters.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.Is(unicode.C, r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > MaxReason {
		s = string(r[:MaxReason-1]) + "…"
	}
	return s
}
