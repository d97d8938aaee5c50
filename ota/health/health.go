// Package health decides whether newly installed software is healthy: configured commands exit
// 0, an HTTP URL answers 2xx, systemd units are active, and any probe the caller adds (the agent
// adds "the broker is reachable again") passes — all within one deadline. Checks are retried
// until they all pass at once or the deadline passes; then the error carries
// HEALTH_CHECK_FAILED and says which check failed last and how.
package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"time"

	"github.com/fieldota/fieldota/ota/reason"
)

// Probe is one extra check supplied by the caller.
type Probe struct {
	Name  string
	Check func(ctx context.Context) error
}

// Checks is the health configuration.
type Checks struct {
	Commands [][]string    // argv lists, run directly (never through a shell); exit 0 = healthy
	URL      string        // GET must answer 2xx
	Units    []string      // systemd units that must be active (systemctl is-active)
	Probes   []Probe       // extra checks from the caller
	Timeout  time.Duration // overall deadline; 0 = 5 minutes
	Interval time.Duration // between rounds; 0 = 2 s
	// PerCheck bounds one command or request; 0 = 30 s.
	PerCheck time.Duration
}

// Wait runs rounds of every check until one round passes completely (nil) or the deadline
// passes (HEALTH_CHECK_FAILED). A canceled ctx returns ctx.Err(): shutting down is not a verdict.
func Wait(ctx context.Context, c Checks) error {
	timeout, interval, per := c.Timeout, c.Interval, c.PerCheck
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	if interval <= 0 {
		interval = 2 * time.Second
	}
	if per <= 0 {
		per = 30 * time.Second
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var last error
	for {
		last = c.round(ctx, per)
		if last == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-deadline.C:
			t.Stop()
			return reason.Errorf(reason.HealthCheckFailed, "not healthy within %s: %w", timeout, last)
		case <-t.C:
		}
	}
}

// round runs every check once and returns the first failure.
func (c Checks) round(ctx context.Context, per time.Duration) error {
	for _, argv := range c.Commands {
		if err := runCommand(ctx, per, argv); err != nil {
			return err
		}
	}
	for _, u := range c.Units {
		if err := runCommand(ctx, per, []string{"systemctl", "is-active", "--quiet", u}); err != nil {
			return fmt.Errorf("unit %s is not active: %w", u, err)
		}
	}
	if c.URL != "" {
		if err := get(ctx, per, c.URL); err != nil {
			return err
		}
	}
	for _, p := range c.Probes {
		pctx, cancel := context.WithTimeout(ctx, per)
		err := p.Check(pctx)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", p.Name, err)
		}
	}
	return nil
}

func runCommand(ctx context.Context, per time.Duration, argv []string) error {
	if len(argv) == 0 {
		return errors.New("empty health command")
	}
	ctx, cancel := context.WithTimeout(ctx, per)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 200 {
			msg = msg[len(msg)-200:]
		}
		if msg == "" { // a silent command: no empty "()" at the end of the device's detail
			return fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
		}
		return fmt.Errorf("%s: %w (%s)", strings.Join(argv, " "), err, msg)
	}
	return nil
}

func get(ctx context.Context, per time.Duration, url string) error {
	ctx, cancel := context.WithTimeout(ctx, per)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
