package policy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	l, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestWindowOpenAndNextOpening(t *testing.T) {
	berlin := mustLoc(t, "Europe/Berlin")
	at := func(s string, loc *time.Location) time.Time {
		t.Helper()
		v, err := time.ParseInLocation("2006-01-02 15:04", s, loc)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	cases := []struct {
		name       string
		cron       string
		dur        time.Duration
		loc        *time.Location
		now        time.Time
		open       bool
		change     time.Time // closes when open, opens when closed
		changeNote string
	}{
		{"before a nightly window", "0 2 * * *", 3 * time.Hour, time.UTC, at("2026-03-10 01:59", time.UTC), false, at("2026-03-10 02:00", time.UTC), ""},
		{"at the opening minute", "0 2 * * *", 3 * time.Hour, time.UTC, at("2026-03-10 02:00", time.UTC), true, at("2026-03-10 05:00", time.UTC), ""},
		{"inside", "0 2 * * *", 3 * time.Hour, time.UTC, at("2026-03-10 04:59", time.UTC), true, at("2026-03-10 05:00", time.UTC), ""},
		{"at the closing minute (half open)", "0 2 * * *", 3 * time.Hour, time.UTC, at("2026-03-10 05:00", time.UTC), false, at("2026-03-11 02:00", time.UTC), ""},
		{"a window spanning midnight", "0 22 * * *", 4 * time.Hour, time.UTC, at("2026-03-11 01:30", time.UTC), true, at("2026-03-11 02:00", time.UTC), ""},
		{"weekly, on Saturdays only", "0 2 * * 6", 2 * time.Hour, time.UTC, at("2026-03-10 03:00", time.UTC), false, at("2026-03-14 02:00", time.UTC), "Tuesday → Saturday"},
		{"overlapping hourly openings merge", "0 * * * *", 2 * time.Hour, time.UTC, at("2026-03-10 03:30", time.UTC), true, time.Time{}, "never closes within the merge bound"},
		{"in the configured zone, not UTC", "0 2 * * *", time.Hour, berlin, at("2026-03-10 01:30", time.UTC), true, at("2026-03-10 03:00", berlin), "02:00 Berlin is 01:00 UTC"},
		{"across the spring DST change", "0 1 * * *", 3 * time.Hour, berlin, at("2026-03-29 03:30", berlin), true, at("2026-03-29 05:00", berlin), "01:00 CET + 3h = 05:00 CEST"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, err := ParseWindow(c.cron, c.dur, c.loc)
			if err != nil {
				t.Fatal(err)
			}
			open, change := w.At(c.now)
			if open != c.open {
				t.Fatalf("open = %v at %s, want %v", open, c.now, c.open)
			}
			if c.change.IsZero() {
				if !change.After(c.now.Add(24 * time.Hour)) {
					t.Fatalf("closes at %s: overlapping openings were not merged", change)
				}
				return
			}
			if !change.Equal(c.change) {
				t.Fatalf("change at %s, want %s %s", change, c.change, c.changeNote)
			}
		})
	}
}

func TestWindowsOfAPhase(t *testing.T) {
	a, _ := ParseWindow("0 2 * * *", time.Hour, time.UTC)
	b, _ := ParseWindow("30 12 * * *", time.Hour, time.UTC)
	now := time.Date(2026, 3, 10, 10, 0, 0, 0, time.UTC)
	if open, opens := (Windows{a, b}).At(now); open || !opens.Equal(time.Date(2026, 3, 10, 12, 30, 0, 0, time.UTC)) {
		t.Fatalf("open=%v opens=%s, want the earlier of the two next openings", open, opens)
	}
	if open, _ := (Windows{a, b}).At(now.Add(3 * time.Hour)); !open {
		t.Fatal("one open window must open the phase")
	}
	if open, _ := (Windows{}).At(now); !open {
		t.Fatal("no window means always open")
	}
}

func TestWindowConfigurationThatCannotWorkIsRefused(t *testing.T) {
	cases := map[string]struct {
		cron string
		dur  time.Duration
	}{
		"empty":                           {"", time.Hour},
		"time zone inside (and no space)": {"CRON_TZ=UTC", time.Hour},
		"time zone prefix":                {"TZ=Europe/Berlin 0 2 * * *", time.Hour},
		"@every":                          {"@every 1h", time.Hour},
		"never fires":                     {"0 0 30 2 *", time.Hour},
		"six fields":                      {"0 0 2 * * *", time.Hour},
		"out of range":                    {"61 2 * * *", time.Hour},
		"garbage":                         {"now please", time.Hour},
		"duration too short":              {"0 2 * * *", 30 * time.Second},
		"duration past a week":            {"0 2 * * *", 8 * 24 * time.Hour},
	}
	for name, c := range cases {
		if _, err := ParseWindow(c.cron, c.dur, time.UTC); err == nil {
			t.Errorf("%s: %q for %s accepted", name, c.cron, c.dur)
		}
	}
	if _, err := ParseWindow("@daily", time.Hour, nil); err != nil {
		t.Errorf("@daily: %v", err)
	}
}

// script writes an executable shell script for a hook (the hook itself is run without a shell).
func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hook")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHookExitCodeContract(t *testing.T) {
	job := Job{ID: "j1", Execution: 2, Target: "files", Version: "1.1", PreviousVersion: "1.0"}
	cases := []struct {
		name    string
		body    string
		timeout time.Duration
		verdict Verdict
		reason  string // substring
	}{
		{"exit 0 is go", "exit 0", 0, Go, ""},
		{"exit 75 is not now, with the hook's line", "echo 'van is mid-route'; echo second line; exit 75", 0, NotNow, "van is mid-route"},
		{"exit 75 without output", "exit 75", 0, NotNow, "exit 75"},
		{"exit 1 refuses, with the hook's line", "printf '\\n  owner said no\\033[0m  \\n'; exit 1", 0, Refuse, "owner said no"},
		{"exit 2 refuses", "exit 2", 0, Refuse, "exit 2"},
		{"a hook that hangs gave no answer", "sleep 5", 200 * time.Millisecond, NotNow, "no answer"},
		{"killed by a signal gave no answer", "kill -9 $$", 0, NotNow, "no answer"},
		{"the environment names job, target, version and phase", `[ "$FIELDOTA_JOB_ID $FIELDOTA_EXECUTION_NUMBER $FIELDOTA_TARGET $FIELDOTA_VERSION $FIELDOTA_PREVIOUS_VERSION $FIELDOTA_PHASE" = "j1 2 files 1.1 1.0 install" ] || { echo "env: $FIELDOTA_JOB_ID $FIELDOTA_PHASE"; exit 1; }`, 0, Go, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := Hook{Argv: []string{script(t, c.body)}, Timeout: c.timeout}.Ask(context.Background(), Install, job)
			if d.Verdict != c.verdict || !strings.Contains(d.Reason, c.reason) {
				t.Fatalf("%s %q, want %s containing %q", d.Verdict, d.Reason, c.verdict, c.reason)
			}
			if strings.ContainsAny(d.Reason, "\n\x1b") {
				t.Fatalf("reason is not one clean line: %q", d.Reason)
			}
		})
	}
	if d := (Hook{Argv: []string{"/nonexistent/hook"}}).Ask(context.Background(), Install, job); d.Verdict != NotNow {
		t.Fatalf("a missing hook: %s %q, want not now", d.Verdict, d.Reason)
	}
}

// linkCheck is a fake NetworkManager answer (the real one is tested in netman).
type linkCheck struct {
	metered bool
	err     error
}

func (l linkCheck) Metered(context.Context) (bool, string, error) { return l.metered, "yes", l.err }

func TestGateAsksWindowsThenLinkThenHooksInOrder(t *testing.T) {
	now := time.Date(2026, 3, 10, 10, 0, 0, 0, time.UTC)
	closed, _ := ParseWindow("0 2 * * *", time.Hour, time.UTC)
	open, _ := ParseWindow("0 9 * * *", 2*time.Hour, time.UTC)
	marker := filepath.Join(t.TempDir(), "asked")
	asked := Hook{Argv: []string{script(t, "touch "+marker+"; exit 0")}}
	no := Hook{Argv: []string{script(t, "echo kiosk busy; exit 75")}}
	cases := []struct {
		name    string
		gate    Gate
		verdict Verdict
		reason  string
		until   bool
		hookRan bool
	}{
		{"outside the window the hooks are not asked", Gate{Phase: Install, Windows: Windows{closed}, Hooks: []Hook{asked}}, NotNow, "outside the install window", true, false},
		{"a metered link is not now; hooks not asked", Gate{Phase: Download, Windows: Windows{open}, Link: linkCheck{metered: true}, Hooks: []Hook{asked}}, NotNow, "metered", false, false},
		{"a link that cannot be checked is not now", Gate{Phase: Download, Link: linkCheck{err: errors.New("no system bus")}}, NotNow, "no system bus", false, false},
		{"the first hook that is not go decides", Gate{Phase: Install, Windows: Windows{open}, Hooks: []Hook{no, asked}}, NotNow, "kiosk busy", false, false},
		{"all go", Gate{Phase: Install, Windows: Windows{open}, Link: linkCheck{}, Hooks: []Hook{asked}}, Go, "", false, true},
		{"an empty gate is go", Gate{Phase: Reboot}, Go, "", false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_ = os.Remove(marker)
			d := c.gate.Decide(context.Background(), now, Job{ID: "j"})
			if d.Verdict != c.verdict || !strings.Contains(d.Reason, c.reason) || d.Until.IsZero() == c.until {
				t.Fatalf("%+v, want %s %q until known=%v", d, c.verdict, c.reason, c.until)
			}
			if _, err := os.Stat(marker); (err == nil) != c.hookRan {
				t.Fatalf("hook ran = %v, want %v", err == nil, c.hookRan)
			}
		})
	}
}
