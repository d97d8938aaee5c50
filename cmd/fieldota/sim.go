package main

// sim.go: `fieldota sim` runs the local AWS IoT Jobs emulator (test/jobsim); its subcommands call
// the emulator's HTTP control API the way `aws iot create-job` and friends call AWS.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/fieldota/fieldota/test/jobsim/s3"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func init() { register(newSimCmd) }

type simServeFlags struct {
	mqtt, tlsAddr, tlsCert, tlsKey, clientCA string
	http, s3, artifacts                      string
	minute                                   time.Duration
	s3Rate                                   int64
	extURL, extID, extCert, extKey, extCA    string
	events                                   string
}

func (f *simServeFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.mqtt, "mqtt", "127.0.0.1:1883", "plain MQTT listen address (thing = client id); empty to disable")
	fs.StringVar(&f.tlsAddr, "tls", "", "MQTT over mutual TLS listen address, e.g. 127.0.0.1:8883 (thing = certificate CN)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "server certificate (PEM) for --tls")
	fs.StringVar(&f.tlsKey, "tls-key", "", "server key (PEM) for --tls")
	fs.StringVar(&f.clientCA, "client-ca", "", "CA (PEM) that issued the device certificates, for --tls")
	fs.StringVar(&f.http, "http", "127.0.0.1:8080", "control API listen address; empty to disable")
	fs.StringVar(&f.s3, "s3", "127.0.0.1:8081", "artifact server listen address; empty to disable")
	fs.StringVar(&f.artifacts, "artifacts", "", "artifact directory: s3 URL https://s3.<region>.amazonaws.com/BUCKET/KEY serves DIR/BUCKET/KEY")
	fs.DurationVar(&f.minute, "minute", time.Minute, "length of one minute of job timers (shorten for demos)")
	fs.Int64Var(&f.s3Rate, "s3-rate", 0, "throttle every artifact download to this many bytes/s (to watch progress, or test a slow link); 0 = unthrottled")
	fs.StringVar(&f.extURL, "external-broker", "", "attach to this broker (ssl://host:port or tcp://host:port) instead of embedding one")
	fs.StringVar(&f.extID, "external-client-id", "jobsim", "client id of the emulator on the external broker")
	fs.StringVar(&f.extCert, "external-cert", "", "client certificate (PEM) of the emulator on the external broker")
	fs.StringVar(&f.extKey, "external-key", "", "client key (PEM) of the emulator on the external broker")
	fs.StringVar(&f.extCA, "external-ca", "", "CA (PEM) of the external broker's server certificate")
	fs.StringVar(&f.events, "events", "", "also write every job event as a JSON line to this file (e.g. /dev/fd/3): the timeline of every execution, device updates and their statusDetails included")
}

func newSimCmd() *cobra.Command {
	var f simServeFlags
	cmd := &cobra.Command{
		Use:   "sim [serve] [flags]",
		Short: "Run the local AWS IoT Jobs emulator, or call its control API",
		Long: `sim runs a local stand-in for AWS IoT Core + Jobs + S3 (docs/emulator.md): an MQTT broker with
the Jobs device API, a JSON control API named after AWS's (CreateJob, DescribeJob, …) and an artifact
server for the presigned URLs it puts into job documents. It prints what it listens on and one line
per job event, and stops on SIGINT or SIGTERM.

The subcommands create-job, describe, describe-execution, list-executions, cancel and delete call a
running emulator's control API (--api).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runSim(cmd, f) },
	}
	f.bind(cmd.Flags())
	var sf simServeFlags
	serve := &cobra.Command{
		Use:   "serve [flags]",
		Short: "Run the emulator (the same as 'fieldota sim')",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runSim(cmd, sf) },
	}
	sf.bind(serve.Flags())
	cmd.AddCommand(serve, newSimFleetCmd(), newSimCommandCmd(), newSimCreateJobCmd(), newSimDescribeCmd(), newSimDescribeExecutionCmd(),
		newSimListExecutionsCmd(), newSimCancelCmd(), newSimDeleteCmd())
	return cmd
}

func runSim(cmd *cobra.Command, f simServeFlags) error {
	cfg := jobsim.Config{MQTTAddr: f.mqtt, TLSAddr: f.tlsAddr, HTTPAddr: f.http, S3Addr: f.s3,
		ArtifactDir: f.artifacts, Minute: f.minute}
	if f.s3 != "" {
		if f.artifacts == "" {
			return usageErr(errors.New("--artifacts DIR is required with --s3 (or pass --s3 '')"))
		}
		if st, err := os.Stat(f.artifacts); err != nil || !st.IsDir() {
			return usageErr(fmt.Errorf("--artifacts %s: not a directory", f.artifacts))
		}
	}
	if f.tlsAddr != "" {
		tc, err := serverTLS(f.tlsCert, f.tlsKey, f.clientCA)
		if err != nil {
			return usageErr(err)
		}
		cfg.TLS = tc
	}
	if f.extURL != "" {
		cfg.MQTTAddr, cfg.TLSAddr = "", ""
		ext := &jobsim.ExternalBroker{URL: f.extURL, ClientID: f.extID}
		if f.extCert != "" || f.extCA != "" {
			tc, err := clientTLS(f.extCert, f.extKey, f.extCA)
			if err != nil {
				return usageErr(err)
			}
			ext.TLS = tc
		}
		cfg.External = ext
	}
	out := cmd.OutOrStdout()
	var mu sync.Mutex
	say := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, format+"\n", a...)
	}
	var events *json.Encoder
	if f.events != "" {
		ef, err := os.OpenFile(f.events, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return usageErr(fmt.Errorf("--events: %w", err))
		}
		defer ef.Close()
		events = json.NewEncoder(ef)
	}
	cfg.OnEvent = func(e jobsim.Event) {
		say("%s", e)
		if events != nil {
			mu.Lock()
			_ = events.Encode(e) // a reader that went away must not stop the emulator
			mu.Unlock()
		}
	}

	parent := cmd.Context()
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	sim, err := jobsim.Start(startCtx, cfg)
	cancel()
	if err != nil {
		return ioErr(err)
	}
	if f.s3Rate > 0 && sim.Artifacts() != nil {
		rate := f.s3Rate
		sim.Artifacts().OnRequest(func(int, *http.Request) s3.Faults { return s3.Faults{RateBytesPerSec: rate} })
	}
	if u := sim.MQTTURL(); u != "" {
		say("fieldota sim: MQTT %s (thing = client id)", u)
	}
	if u := sim.TLSURL(); u != "" {
		say("fieldota sim: MQTT over mutual TLS %s (thing = certificate CN)", u)
	}
	if f.extURL != "" {
		say("fieldota sim: attached to %s as %s", f.extURL, f.extID)
	}
	if u := sim.HTTPURL(); u != "" {
		say("fieldota sim: control API %s", u)
	}
	if u := sim.S3URL(); u != "" {
		say("fieldota sim: artifacts %s from %s", u, f.artifacts)
	}
	say("fieldota sim: ready; job minute = %v", f.minute)
	<-ctx.Done()
	err = sim.Close()
	say("fieldota sim: stopped")
	if err != nil {
		return ioErr(err)
	}
	return nil
}

func serverTLS(certPath, keyPath, caPath string) (*tls.Config, error) {
	if certPath == "" || keyPath == "" || caPath == "" {
		return nil, errors.New("--tls needs --tls-cert, --tls-key and --client-ca")
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	pool, err := loadPool(caPath)
	if err != nil {
		return nil, fmt.Errorf("--client-ca: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

func clientTLS(certPath, keyPath, caPath string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if certPath != "" {
		cert, err := tls.LoadX509KeyPair(certPath, keyPath)
		if err != nil {
			return nil, fmt.Errorf("--external-cert/--external-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if caPath != "" {
		pool, err := loadPool(caPath)
		if err != nil {
			return nil, fmt.Errorf("--external-ca: %w", err)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

func loadPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return pool, nil
}

// --- control API subcommands ---

const defaultAPI = "http://127.0.0.1:8080"

func apiFlag(fs *pflag.FlagSet, api *string) {
	def := defaultAPI
	if v := os.Getenv("FIELDOTA_SIM_API"); v != "" {
		def = v
	}
	fs.StringVar(api, "api", def, "the emulator's control API (default from $FIELDOTA_SIM_API)")
}

// jobIDArg takes the job id from --job-id or the first argument.
func jobIDArg(flag string, args []string) (string, []string, error) {
	if flag != "" {
		return flag, args, nil
	}
	if len(args) == 0 {
		return "", nil, usageErr(errors.New("give the job id (argument or --job-id)"))
	}
	return args[0], args[1:], nil
}

// apiErr makes a control-API refusal exit 1 and a transport failure exit 2.
func apiErr(err error) error {
	var ae *jobsim.APIError
	if errors.As(err, &ae) {
		return &cliError{1, err}
	}
	return ioErr(err)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

func newSimCreateJobCmd() *cobra.Command {
	var (
		api, file, jobID, description string
		targets, retries              []string
		expiresIn, progressTimeout    int64
	)
	cmd := &cobra.Command{
		Use:   "create-job --file DOC.json --job-id ID --target THING [flags]",
		Short: "CreateJob: queue a job document for things",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" || jobID == "" || len(targets) == 0 {
				return usageErr(errors.New("--file, --job-id and at least one --target are required"))
			}
			doc, err := os.ReadFile(file)
			if err != nil {
				return ioErr(err)
			}
			in := jobsim.CreateJobInput{JobID: jobID, Targets: targets, Document: string(doc), Description: description}
			if cmd.Flags().Changed("expires-in") {
				in.PresignedURLConfig = &jobsim.PresignedURLConfig{ExpiresInSec: expiresIn}
			}
			if progressTimeout > 0 {
				in.TimeoutConfig = &jobsim.TimeoutConfig{InProgressTimeoutInMinutes: progressTimeout}
			}
			for _, r := range retries {
				typ, n, ok := strings.Cut(r, ":")
				count, err := strconv.Atoi(n)
				if !ok || err != nil {
					return usageErr(fmt.Errorf("--retry %q: want TYPE:N, e.g. FAILED:2", r))
				}
				if in.JobExecutionsRetryConfig == nil {
					in.JobExecutionsRetryConfig = &jobsim.RetryConfig{}
				}
				in.JobExecutionsRetryConfig.CriteriaList = append(in.JobExecutionsRetryConfig.CriteriaList,
					jobsim.RetryCriteria{FailureType: typ, NumberOfRetries: count})
			}
			out, err := (&jobsim.Client{BaseURL: api}).CreateJob(cmd.Context(), in)
			if err != nil {
				return apiErr(err)
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	fs := cmd.Flags()
	apiFlag(fs, &api)
	fs.StringVar(&file, "file", "", "job document (JSON; presigned URL placeholders are expanded on delivery)")
	fs.StringVar(&jobID, "job-id", "", "job id ([a-zA-Z0-9_-]{1,64})")
	fs.StringArrayVar(&targets, "target", nil, "thing name or thing ARN (repeat for several)")
	fs.Int64Var(&expiresIn, "expires-in", 3600, "presignedUrlConfig.expiresInSec (60–3600)")
	fs.Int64Var(&progressTimeout, "in-progress-timeout", 0, "timeoutConfig.inProgressTimeoutInMinutes (1–10080)")
	fs.StringArrayVar(&retries, "retry", nil, "jobExecutionsRetryConfig criterion TYPE:N (FAILED, TIMED_OUT or ALL), repeatable")
	fs.StringVar(&description, "description", "", "job description")
	return cmd
}

func newSimDescribeCmd() *cobra.Command {
	var api, jobID string
	cmd := &cobra.Command{
		Use:   "describe JOB_ID",
		Short: "DescribeJob",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, _, err := jobIDArg(jobID, args)
			if err != nil {
				return err
			}
			j, err := (&jobsim.Client{BaseURL: api}).DescribeJob(cmd.Context(), id)
			if err != nil {
				return apiErr(err)
			}
			return printJSON(cmd.OutOrStdout(), map[string]any{"job": j})
		},
	}
	apiFlag(cmd.Flags(), &api)
	cmd.Flags().StringVar(&jobID, "job-id", "", "job id")
	return cmd
}

func newSimDescribeExecutionCmd() *cobra.Command {
	var api, jobID, thing string
	var number int64
	cmd := &cobra.Command{
		Use:   "describe-execution JOB_ID THING",
		Short: "DescribeJobExecution (the latest execution unless --execution-number)",
		Args:  cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, rest, err := jobIDArg(jobID, args)
			if err != nil {
				return err
			}
			if thing == "" && len(rest) > 0 {
				thing = rest[0]
			}
			if thing == "" {
				return usageErr(errors.New("give the thing name (argument or --thing)"))
			}
			x, err := (&jobsim.Client{BaseURL: api}).DescribeJobExecution(cmd.Context(), id, thing, number)
			if err != nil {
				return apiErr(err)
			}
			return printJSON(cmd.OutOrStdout(), map[string]any{"execution": x})
		},
	}
	apiFlag(cmd.Flags(), &api)
	cmd.Flags().StringVar(&jobID, "job-id", "", "job id")
	cmd.Flags().StringVar(&thing, "thing", "", "thing name")
	cmd.Flags().Int64Var(&number, "execution-number", 0, "execution number (0 = latest)")
	return cmd
}

func newSimListExecutionsCmd() *cobra.Command {
	var api, jobID string
	cmd := &cobra.Command{
		Use:   "list-executions JOB_ID",
		Short: "ListJobExecutionsForJob",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, _, err := jobIDArg(jobID, args)
			if err != nil {
				return err
			}
			l, err := (&jobsim.Client{BaseURL: api}).ListJobExecutionsForJob(cmd.Context(), id)
			if err != nil {
				return apiErr(err)
			}
			return printJSON(cmd.OutOrStdout(), map[string]any{"executionSummaries": l})
		},
	}
	apiFlag(cmd.Flags(), &api)
	cmd.Flags().StringVar(&jobID, "job-id", "", "job id")
	return cmd
}

func newSimCancelCmd() *cobra.Command {
	var api, jobID string
	var in jobsim.CancelJobInput
	cmd := &cobra.Command{
		Use:   "cancel JOB_ID [--force]",
		Short: "CancelJob: QUEUED executions are canceled, IN_PROGRESS ones too with --force",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, _, err := jobIDArg(jobID, args)
			if err != nil {
				return err
			}
			if err := (&jobsim.Client{BaseURL: api}).CancelJob(cmd.Context(), id, in); err != nil {
				return apiErr(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "canceled %s\n", id)
			return nil
		},
	}
	apiFlag(cmd.Flags(), &api)
	cmd.Flags().StringVar(&jobID, "job-id", "", "job id")
	cmd.Flags().BoolVar(&in.Force, "force", false, "also cancel IN_PROGRESS executions")
	cmd.Flags().StringVar(&in.ReasonCode, "reason-code", "", "reasonCode")
	cmd.Flags().StringVar(&in.Comment, "comment", "", "comment")
	return cmd
}

func newSimDeleteCmd() *cobra.Command {
	var api, jobID string
	var force bool
	cmd := &cobra.Command{
		Use:   "delete JOB_ID [--force]",
		Short: "DeleteJob (a job with IN_PROGRESS executions needs --force)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, _, err := jobIDArg(jobID, args)
			if err != nil {
				return err
			}
			if err := (&jobsim.Client{BaseURL: api}).DeleteJob(cmd.Context(), id, force); err != nil {
				return apiErr(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", id)
			return nil
		},
	}
	apiFlag(cmd.Flags(), &api)
	cmd.Flags().StringVar(&jobID, "job-id", "", "job id")
	cmd.Flags().BoolVar(&force, "force", false, "delete even with IN_PROGRESS executions")
	return cmd
}
