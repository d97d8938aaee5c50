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
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/fieldota/fieldota/agent"
	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/cmd/internal/cli"
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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	code := cli.Execute(ctx, newRoot(), os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

const defaultConfig = "/etc/fieldota/agent.toml"

// configHelp points at what documents the configuration; every command that reads it says so.
const configHelp = `The configuration is TOML, --config (default ` + defaultConfig + `): every key is
commented in scripts/agent.example.toml and described in docs/configuration.md.`

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "fieldota-agent",
		Short: "Over-the-air updates for this device through AWS IoT Jobs",
		Long: `fieldota-agent is the device daemon: it hears AWS IoT Jobs over MQTT, downloads, verifies and
installs each update (files, an A/B slot or a binary swap) and reports the outcome.

` + configHelp + `

Under systemd it runs as scripts/fieldota-agent.service (hardened; drop-ins for directories
outside its sandbox: docs/systemd.md). Exit status: 0 done, 1 failed, 2 usage (bad flags or arguments, a configuration
that cannot be read).`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		// A daemon has no use for shell completion scripts.
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	var cfgPath string
	root.PersistentFlags().StringVarP(&cfgPath, "config", "c", defaultConfig, "configuration file (TOML; see scripts/agent.example.toml)")
	root.AddCommand(
		&cobra.Command{
			Use:   "run",
			Short: "Serve update jobs until stopped (SIGTERM is safe at any moment)",
			Long: `Connect to the Jobs service named in the configuration, resume a job the journal holds, then
serve every job queued for this thing until SIGINT or SIGTERM. A stop at any moment is safe:
every state is journaled before it runs and resumes at the next start.

` + configHelp + `

Protocol and timeouts: docs/protocol.md. Job documents: docs/job-document.md.`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), cfgPath) },
		},
		&cobra.Command{
			Use:   "status",
			Short: "Print the job in progress, installed versions and slots as JSON",
			Long: `Print, as JSON, what the agent knows without changing anything: the journal of the job in
progress (presigned URLs redacted), the installed versions and, on an A/B device, which slot
runs and what the bootloader environment says.

` + configHelp,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error { return status(cmd.Context(), cmd.OutOrStdout(), cfgPath) },
		},
		newRecoverCmd(&cfgPath),
		newProvisionCmd(&cfgPath),
	)
	return root
}

// loadConfig reads the configuration; one that cannot be read or is invalid is a usage error
// (exit 2), and a missing file says where the example is.
func loadConfig(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, cli.UsageError(fmt.Errorf("no configuration at %s: copy scripts/agent.example.toml there and edit it, or pass --config FILE (keys: docs/configuration.md)", path))
	case err != nil:
		return nil, cli.UsageError(err)
	}
	return cfg, nil
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // validated by config
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

func run(ctx context.Context, cfgPath string) error {
	cfg, err := loadConfig(cfgPath)
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
	cfg, err := loadConfig(cfgPath)
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
		if out["job"], err = redactURLs(j); err != nil {
			return err
		}
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
