package health

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota/reason"
)

func TestHealthVerdicts(t *testing.T) {
	var hits atomic.Int32
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) < 3 {
			http.Error(w, "warming up", http.StatusServiceUnavailable)
		}
	}))
	defer flaky.Close()
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "broken", http.StatusInternalServerError)
	}))
	defer down.Close()

	// A fake systemctl on PATH: units named "good" are active.
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "systemctl"), []byte("#!/bin/sh\n[ \"$3\" = good ]\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))

	cases := []struct {
		name    string
		c       Checks
		healthy bool
		says    string
	}{
		{"commands pass", Checks{Commands: [][]string{{"true"}, {"sh", "-c", "exit 0"}}}, true, ""},
		{"a command fails", Checks{Commands: [][]string{{"true"}, {"sh", "-c", "echo db down; exit 1"}}}, false, "db down"},
		{"a command hangs past its bound", Checks{Commands: [][]string{{"sleep", "30"}}, PerCheck: 100 * time.Millisecond}, false, "sleep 30"},
		{"url recovers within the deadline", Checks{URL: flaky.URL}, true, ""},
		{"url stays broken", Checks{URL: down.URL}, false, "500"},
		{"unit active", Checks{Units: []string{"good"}}, true, ""},
		{"unit inactive", Checks{Units: []string{"bad"}}, false, "unit bad"},
		{"probe fails", Checks{Probes: []Probe{{"broker reconnect", func(context.Context) error { return errors.New("not connected") }}}}, false, "broker reconnect"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.Timeout, tc.c.Interval = 1500*time.Millisecond, 50*time.Millisecond
			if tc.c.PerCheck == 0 {
				tc.c.PerCheck = time.Second
			}
			err := Wait(context.Background(), tc.c)
			if tc.healthy {
				if err != nil {
					t.Fatalf("unhealthy: %v", err)
				}
				return
			}
			if !errors.Is(err, reason.HealthCheckFailed) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("want HEALTH_CHECK_FAILED mentioning %q, got %v", tc.says, err)
			}
		})
	}
}

func TestShutdownIsNotAVerdict(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	err := Wait(ctx, Checks{Commands: [][]string{{"false"}}, Timeout: time.Minute, Interval: 10 * time.Millisecond})
	if !errors.Is(err, context.Canceled) || errors.Is(err, reason.HealthCheckFailed) {
		t.Fatalf("got %v", err)
	}
}

// TestSilentFailingCommandHasNoEmptyParentheses: a check that fails without output is reported as
// "false: exit status 1", not "false: exit status 1 ()" (seen at the end of the demo's detail).
func TestSilentFailingCommandHasNoEmptyParentheses(t *testing.T) {
	err := runCommand(context.Background(), 5*time.Second, []string{"false"})
	if err == nil || err.Error() != "false: exit status 1" {
		t.Fatalf("got %v", err)
	}
	err = runCommand(context.Background(), 5*time.Second, []string{"ls", "/nonexistent-fieldota"})
	if err == nil || !strings.HasSuffix(err.Error(), ")") || strings.HasSuffix(err.Error(), "()") {
		t.Fatalf("a command with output lost it: %v", err)
	}
}
