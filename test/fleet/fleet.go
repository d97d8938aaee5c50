// Package fleet runs many real agents (package agent, each with its own state directory, config
// and MQTT connection) in one process against one emulator: the fleet of `fieldota sim fleet`, of
// the rollout tests and of the 1,000-device benchmark.
//
// Each device manages one binary of its own (target "binary": swap.target in its directory), so
// that one signed release can be installed by every device of the process without their files
// meeting. A device seeded to fail has a health check that never passes: it installs, fails its
// probation, rolls back and reports FAILED HEALTH_CHECK_FAILED.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/fieldota/fieldota/agent"
	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/verify"
)

// Options describe a fleet.
type Options struct {
	Devices    int
	Prefix     string // thing names are Prefix + "0001"…; default "dev-"
	Dir        string // one subdirectory per device
	MQTT       string // the broker, e.g. the emulator's tcp://127.0.0.1:port
	S3Host     string // host:port the devices may download from (the emulator's S3)
	ReleaseKey string // PEM public key the devices trust
	// Fail says which devices (0-based index) are seeded to fail their health check.
	Fail func(i int) bool
	// Logger for every agent (nil = discard); the thing name is added to each record.
	Logger *slog.Logger
	// Configure may adjust each device's configuration after the defaults (nil = none).
	Configure func(i int, c *config.Config)
}

// Device is one running agent.
type Device struct {
	Thing   string
	Dir     string
	Target  string // the managed binary
	Failing bool

	client *jobs.Client
}

// Fleet is the running devices.
type Fleet struct {
	Devices []*Device

	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
}

// Name is the thing name of device i.
func (o Options) Name(i int) string {
	p := o.Prefix
	if p == "" {
		p = "dev-"
	}
	return fmt.Sprintf("%s%04d", p, i+1)
}

// deviceConfig is the device's agent configuration: the defaults of config.Load, the emulator's
// broker, one managed binary, quick health checks.
func (o Options) deviceConfig(i int, dir string, failing bool) (*config.Config, error) {
	target := filepath.Join(dir, "app", "app")
	health := `[]`
	if failing {
		health = `[["false"]]`
	}
	// Built as TOML and read by config.Load, so the fleet runs exactly what a device would parse.
	toml := fmt.Sprintf(`thing_name = %q
state_dir = %q
[mqtt]
endpoint = %q
[jobs]
progress_every_percent = 100
progress_min_interval = "1h"
[verify]
keys = [%q]
[download]
allow_insecure_http = true   # the emulator's S3 is plain http on loopback
allowed_hosts = ["127.0.0.1"] # …and the only host payloads may come from
[swap]
target = %q
restart = ["true"]
probation = "1ms"
probe_interval = "1ms"
[health]
commands = %s
timeout = "300ms"
interval = "50ms"
`, o.Name(i), filepath.Join(dir, "state"), o.MQTT, o.ReleaseKey, target, health)
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(target, []byte("factory build\n"), 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
		return nil, err
	}
	c, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	if o.Configure != nil {
		o.Configure(i, c)
	}
	return c, c.EnsureStateDir()
}

// Start connects every device and runs its agent until Stop. It returns once every device has
// its first connection (or ctx ends).
func Start(ctx context.Context, o Options) (*Fleet, error) {
	if o.Devices < 1 || o.MQTT == "" || o.ReleaseKey == "" || o.Dir == "" {
		return nil, errors.New("fleet: Devices, MQTT, ReleaseKey and Dir are required")
	}
	trust, err := verify.LoadTrustStore([]string{o.ReleaseKey}, nil)
	if err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	f := &Fleet{cancel: cancel}
	type dialed struct {
		i   int
		err error
	}
	results := make(chan dialed, o.Devices)
	// Connect a few at a time: a thousand TLS-less CONNECTs at once are fine for the broker, but
	// spreading them keeps the first connection of each agent within its timeout on 2 cores.
	sem := make(chan struct{}, 64)
	for i := range o.Devices {
		failing := o.Fail != nil && o.Fail(i)
		dir := filepath.Join(o.Dir, o.Name(i))
		d := &Device{Thing: o.Name(i), Dir: dir, Target: filepath.Join(dir, "app", "app"), Failing: failing}
		f.Devices = append(f.Devices, d)
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			results <- dialed{i, f.startOne(ctx, runCtx, o, i, d, trust, log.With("thing", d.Thing))}
		}()
	}
	var errs []error
	for range o.Devices {
		r := <-results
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", o.Name(r.i), r.err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		f.Stop()
		return nil, err
	}
	return f, nil
}

func (f *Fleet) startOne(ctx, runCtx context.Context, o Options, i int, d *Device, trust *verify.TrustStore, log *slog.Logger) error {
	cfg, err := o.deviceConfig(i, d.Dir, d.Failing)
	if err != nil {
		return err
	}
	a := agent.New(agent.Options{Config: cfg, Trust: trust, Logger: log})
	cl, err := jobs.Dial(ctx, jobs.Config{
		Endpoint:       cfg.MQTT.Endpoint,
		ThingName:      cfg.ThingName,
		ClientID:       cfg.MQTT.ClientID,
		KeepAlive:      cfg.MQTT.KeepAlive.Duration,
		RequestTimeout: cfg.Jobs.RequestTimeout.Duration,
		Logger:         log,
		OnConnect:      func(context.Context) { a.Wake() },
		OnNotifyNext:   a.NotifyNext,
	})
	if err != nil {
		return err
	}
	d.client = cl
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer cl.Close()
		if err := a.Run(runCtx, cl); err != nil && !errors.Is(err, context.Canceled) {
			f.mu.Lock()
			f.errs = append(f.errs, fmt.Errorf("%s: %w", d.Thing, err))
			f.mu.Unlock()
		}
	}()
	return nil
}

// Stop ends every agent and waits for them; it returns what the agents' Run returned.
func (f *Fleet) Stop() error {
	f.cancel()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return errors.Join(f.errs...)
}

// Installed is the content of device d's managed binary.
func (d *Device) Installed() (string, error) {
	b, err := os.ReadFile(d.Target)
	return strings.TrimSpace(string(b)), err
}
