// Command fieldota-agent is the device daemon: `run` serves AWS IoT Jobs until stopped,
// `status` prints the journal, installed versions and slots, `--version` the build.
// It links no broker and no emulator: only the Jobs client, the downloader, the verifier and
// the installers.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	otarun "github.com/fieldota/fieldota/ota/run"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/fieldota/fieldota/agent"
	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/verify"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// onTransition is nil in production builds; a build with -tags faultinject sets it so that
// end-to-end tests can kill the agent in a chosen state.
var onTransition func(*ota.Journal)

func main() {
	// An autoStart program is run through this binary acting as its shim (package run).
	otarun.MaybeShim()
	root := &cobra.Command{
		Use:           "fieldota-agent",
		Short:         "fieldota-agent: over-the-air updates for this device through AWS IoT Jobs",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var cfgPath string
	root.PersistentFlags().StringVarP(&cfgPath, "config", "c", "/etc/fieldota/agent.toml", "configuration file")
	root.AddCommand(&cobra.Command{
		Use:   "run",
		Short: "serve update jobs until stopped (SIGTERM is safe at any moment)",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), cfgPath) },
	})
	root.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "print the job in progress, installed versions and slots as JSON",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return status(cmd.Context(), cmd.OutOrStdout(), cfgPath) },
	})
	root.AddCommand(newRecoverCmd(&cfgPath))
	root.AddCommand(newProvisionCmd(&cfgPath))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "fieldota-agent:", err)
		os.Exit(1)
	}
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // validated by config
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

func run(ctx context.Context, cfgPath string) error {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log.Level)
	var trust *verify.TrustStore
	if len(cfg.Verify.Keys) > 0 || len(cfg.Verify.CACerts) > 0 {
		if trust, err = verify.LoadTrustStore(cfg.Verify.Keys, cfg.Verify.CACerts); err != nil {
			if a := agent.New(agent.Options{Config: cfg, Logger: log}); a.ProbationDeadline() > 0 && ctx.Err() == nil {
				log.Error("the slot on trial cannot load its trust store: it counts as unhealthy", "err", err)
				return a.FailProbationOffline(ctx)
			}
			return err
		}
	}
	// The agent exists before the connection so that the client's callbacks have a target.
	a := agent.New(agent.Options{Config: cfg, Trust: trust, Logger: log, OnTransition: onTransition})
	// A slot on probation must reach the broker within its health deadline: a new slot that
	// cannot would otherwise wait forever, never judged, its one trial boot already spent.
	dialCtx, cancel := ctx, context.CancelFunc(func() {})
	if d := a.ProbationDeadline(); d > 0 {
		dialCtx, cancel = context.WithTimeout(ctx, d)
	}
	id, err := openIdentity(cfg)
	if err != nil {
		cancel()
		if a.ProbationDeadline() > 0 && ctx.Err() == nil {
			log.Error("the slot on trial cannot open its identity key: it counts as unhealthy", "err", err)
			return a.FailProbationOffline(ctx)
		}
		return err
	}
	defer id.Close()
	cl, err := jobs.Dial(dialCtx, jobs.Config{
		Endpoint:       cfg.MQTT.Endpoint,
		ThingName:      cfg.ThingName,
		ClientID:       cfg.MQTT.ClientID,
		CAFile:         cfg.MQTT.CAFile,
		CertFile:       cfg.MQTT.CertFile,
		KeyFile:        id.KeyFile,
		Key:            id.Signer,
		ServerName:     cfg.MQTT.ServerName,
		KeepAlive:      cfg.MQTT.KeepAlive.Duration,
		RequestTimeout: cfg.Jobs.RequestTimeout.Duration,
		Logger:         log,
		OnConnect:      func(context.Context) { a.Wake() },
		OnNotifyNext:   a.NotifyNext,
		Extra:          a.Subscriptions(),
		OnMessage:      a.OnMessage,
	})
	cancel()
	if err != nil && a.ProbationDeadline() > 0 && ctx.Err() == nil {
		// Any failure to come up while a slot is on trial (no broker within the deadline, a
		// certificate the new slot cannot read, a refused subscription) counts against the
		// slot: it is rolled back rather than left running uncommitted and unjudged. A crash
		// loop is caught by the journal's loop breaker, which rolls back too.
		log.Error("cannot reach the Jobs service from the slot on trial: it counts as unhealthy", "err", err)
		return a.FailProbationOffline(ctx)
	}
	if err != nil {
		return err
	}
	defer cl.Close()
	log.Info("fieldota-agent started", "version", version, "thing", cfg.ThingName, "endpoint", cfg.MQTT.Endpoint)
	return a.Run(ctx, cl)
}

func status(ctx context.Context, w io.Writer, cfgPath string) error {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	out := map[string]any{"thingName": cfg.ThingName, "stateDir": cfg.StateDir}
	st := &ota.Store{Dir: cfg.StateDir}
	switch j, err := st.Load(); {
	case errors.Is(err, ota.ErrNoJournal):
		out["job"] = nil
	case err != nil:
		out["journalError"] = err.Error()
	default:
		out["job"] = j
	}
	if b, err := os.ReadFile(filepath.Join(cfg.StateDir, "installed.json")); err == nil {
		out["installed"] = json.RawMessage(b)
	}
	if id := identityStatus(cfg); id != nil {
		out["identity"] = id
	}
	if sl := agent.New(agent.Options{Config: cfg}).Slots(ctx); sl != nil {
		out["slots"] = sl
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
