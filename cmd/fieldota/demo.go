package main

import (
	"context"

	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldota/fieldota/test/jobsim"
)

func init() { register(newDemoCmd) }

func newDemoCmd() *cobra.Command {
	var keep, verbose bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole story locally: emulator, signed package, job, agent, report",
		Long: `demo starts 'fieldota sim', makes a signing key and runs fieldota-agent (found next to this
binary) with a temporary state directory, then tells three chapters:

  1. a signed files package is placed and started (SUCCEEDED);
  2. the same release with tampered bytes in the bucket is refused (FAILED SIGNATURE_INVALID);
  3. A/B slots on a simulated board (a real U-Boot environment through fw_setenv): a good image
     is tried and committed, an unhealthy one is rolled back by the agent, one that never boots
     is rolled back by the bootloader.

Every job line is one transition of the execution (status and stage), taken from the emulator's
event stream ('fieldota sim --events'), so each run prints the same sequence. --verbose adds the
download progress and the execution as the emulator's control API describes it at the end.
--keep keeps the directory (keys, documents, the emulator's and the agent's logs). Nothing leaves
this machine; every process it starts is stopped before it returns.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			return runDemo(ctx, cmd.OutOrStdout(), keep, verbose)
		},
	}
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the temporary directory (keys, documents, logs, state) for inspection")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "also print download progress and each execution's final JSON")
	return cmd
}

// demoRegion is the one region of the demo: the emulator's ARNs and the S3 URLs agree.
const demoRegion = jobsim.Region

// demo holds what the walkthrough needs between its steps.
type demo struct {
	out     io.Writer
	start   time.Time
	dir     string
	self    string // this executable
	agent   string // fieldota-agent
	api     *jobsim.Client
	procs   []*exec.Cmd
	thing   string
	bucket  string
	appRoot string
	mqtt    string
	verbose bool
	events  chan jobsim.Event // the emulator's event stream
}

func (d *demo) say(who, format string, args ...any) {
	fmt.Fprintf(d.out, "[%5.1fs] %-9s %s\n", time.Since(d.start).Seconds(), who, fmt.Sprintf(format, args...))
}

func runDemo(ctx context.Context, out io.Writer, keep, verbose bool) (err error) {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	d := &demo{out: out, start: time.Now(), self: self, agent: filepath.Join(filepath.Dir(self), "fieldota-agent"), thing: "demo-device", verbose: verbose}
	if _, err := os.Stat(d.agent); err != nil {
		return fmt.Errorf("fieldota-agent not found next to %s (run 'make demo', which builds both): %w", self, err)
	}
	if d.dir, err = os.MkdirTemp("", "fieldota-demo-"); err != nil {
		return err
	}
	d.appRoot = filepath.Join(d.dir, "device", "app")
	defer func() {
		d.stopAll()
		if keep {
			d.say("demo", "kept %s (keys, documents, sim.log, agent.log, device state)", d.dir)
		} else {
			_ = os.RemoveAll(d.dir)
		}
	}()
	fmt.Fprintln(out, "fieldota demo: the AWS IoT Jobs emulator, a signed package and the agent, all on this machine.")

	if err := d.startSim(ctx); err != nil {
		return err
	}
	key, pub, err := d.keygen(ctx)
	if err != nil {
		return err
	}
	good := []byte("#!/usr/bin/env python3\nimport os, platform\nprint('hello from install.py v1.0 on', platform.node(), 'in', os.getcwd())\n")
	doc, err := d.signedJob(ctx, key, "install.py", good, "1.0", assets())
	if err != nil {
		return err
	}
	if err := d.startAgent(pub); err != nil {
		return err
	}

	fmt.Fprintln(out, "\nChapter 1 — a signed package, placed and started:")
	if err := d.createJob(ctx, "demo-install", doc); err != nil {
		return err
	}
	if err := d.follow(ctx, "demo-install", "SUCCEEDED"); err != nil {
		return err
	}

	fmt.Fprintln(out, "\nChapter 2 — the same release, but the bytes in the bucket were tampered with:")
	evil := []byte(strings.Replace(string(good), "hello", "pwned", 1))
	doc2, err := d.signedJob(ctx, key, "install.py", good, "1.1", nil) // signed for the good bytes…
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.bucket, "install.py"), evil, 0o644); err != nil { // …but the bucket holds others
		return err
	}
	d.say("attacker", "replaced bucket/install.py with different bytes of the same size")
	if err := d.createJob(ctx, "demo-tampered", doc2); err != nil {
		return err
	}
	if err := d.follow(ctx, "demo-tampered", "FAILED"); err != nil {
		return err
	}
	placed, _ := os.ReadFile(filepath.Join(d.appRoot, "demo", "install.py"))
	if strings.Contains(string(placed), "pwned") {
		return errors.New("the tampered package was placed: the demo found a bug")
	}
	d.say("device", "%s still holds the v1.0 package; nothing from the tampered job was placed", filepath.Join(d.appRoot, "demo"))
	if err := d.abChapter(ctx); err != nil {
		return err
	}
	fmt.Fprintln(out, "\nChapter 3 is over. Done: every process is stopped (run 'fieldota demo --keep' to keep the keys, documents and logs).")
	return nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (d *demo) startSim(ctx context.Context) error {
	mqttAddr, err1 := freeAddr()
	httpAddr, err2 := freeAddr()
	s3Addr, err3 := freeAddr()
	if err := errors.Join(err1, err2, err3); err != nil {
		return err
	}
	artifacts := filepath.Join(d.dir, "artifacts")
	d.bucket = filepath.Join(artifacts, "fieldota-demo")
	if err := os.MkdirAll(d.bucket, 0o755); err != nil {
		return err
	}
	log, err := os.Create(filepath.Join(d.dir, "sim.log"))
	if err != nil {
		return err
	}
	// The event stream comes over a pipe (fd 3 of the emulator): one JSON line per job event.
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	// Throttled so that the download's progress can be watched (--verbose): 1 MiB/s.
	cmd := exec.Command(d.self, "sim", "--mqtt", mqttAddr, "--http", httpAddr, "--s3", s3Addr, "--artifacts", artifacts,
		"--s3-rate", "1048576", "--events", "/dev/fd/3")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{pw}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return err
	}
	pw.Close()
	d.procs = append(d.procs, cmd)
	d.events = make(chan jobsim.Event, 1<<14)
	go func() {
		defer pr.Close()
		dec := json.NewDecoder(pr)
		for {
			var ev jobsim.Event
			if err := dec.Decode(&ev); err != nil {
				close(d.events)
				return
			}
			select {
			case d.events <- ev:
			default: // the demo only reads its own jobs' events; never block the emulator
			}
		}
	}()
	d.api = &jobsim.Client{BaseURL: "http://" + httpAddr}
	for ctx.Err() == nil {
		if resp, err := http.Get(d.api.BaseURL + "/jobs/none"); err == nil {
			resp.Body.Close()
			d.say("emulator", "fieldota sim: MQTT tcp://%s, control API http://%s, S3 http://%s", mqttAddr, httpAddr, s3Addr)
			d.mqtt = "tcp://" + mqttAddr
			return nil
		}
		if err := pause(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("the emulator did not start (see %s)", log.Name())
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// cli runs this binary with args, as an operator would, and shows the command.
func (d *demo) cli(ctx context.Context, args ...string) error {
	d.say("operator", "fieldota %s", strings.Join(shorten(d.dir, args), " "))
	cmd := exec.CommandContext(ctx, d.self, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("fieldota %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func shorten(dir string, args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = strings.ReplaceAll(a, dir+"/", "")
	}
	return out
}

func (d *demo) keygen(ctx context.Context) (key, pub string, err error) {
	prefix := filepath.Join(d.dir, "release")
	if err := d.cli(ctx, "keygen", "--out", prefix); err != nil {
		return "", "", err
	}
	return prefix + ".key", prefix + ".pub", nil
}

// assets is a 2 MiB data file shipped with the package, so that the download takes a moment.
func assets() []byte {
	b := make([]byte, 2<<20)
	for i := range b {
		b[i] = byte(i*31 + i>>11)
	}
	return b
}

func (d *demo) signedJob(ctx context.Context, key, name string, content []byte, version string, data []byte) (string, error) {
	pkgDir := filepath.Join(d.dir, "release-"+version)
	if err := os.MkdirAll(pkgDir, 0o755); err != nil {
		return "", err
	}
	args := []string{"job", "--key", key}
	add := func(n string, b []byte, mode os.FileMode) error {
		p := filepath.Join(pkgDir, n)
		if err := os.WriteFile(p, b, mode); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d.bucket, n), b, 0o644); err != nil {
			return err
		}
		args = append(args, "--file", p, "--presign", "https://s3."+demoRegion+".amazonaws.com/fieldota-demo/"+n)
		return nil
	}
	if err := add(name, content, 0o755); err != nil {
		return "", err
	}
	if data != nil {
		if err := add("assets.bin", data, 0o644); err != nil {
			return "", err
		}
	}
	doc := filepath.Join(pkgDir, "job.json")
	args = append(args, "--version", version, "--compatible", "demo-board",
		"--working-directory", filepath.Join(d.appRoot, "demo"), "--package-name", name, "--auto-start",
		"--out", doc)
	if err := d.cli(ctx, args...); err != nil {
		return "", err
	}
	b, err := os.ReadFile(doc)
	return string(b), err
}

func (d *demo) startAgent(pub string) error {
	state := filepath.Join(d.dir, "device", "state")
	if err := os.MkdirAll(d.appRoot, 0o755); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`thing_name = %q
state_dir = %q
compatible = ["demo-board"]
[mqtt]
endpoint = %q
[jobs]
progress_every_percent = 10
progress_min_interval = "1ms"
[verify]
keys = [%q]
[download]
allow_insecure_http = true   # the emulator's S3 is plain http on loopback
allowed_hosts = ["127.0.0.1"]  # …and the only host payloads may come from
[files]
allowed_roots = [%q]
`, d.thing, state, d.mqtt, pub, d.appRoot)
	cfgPath := filepath.Join(d.dir, "device", "agent.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	log, err := os.Create(filepath.Join(d.dir, "agent.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(d.agent, "run", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return err
	}
	d.procs = append(d.procs, cmd)
	d.say("device", "fieldota-agent run (thing %s, state dir device/state, app root device/app)", d.thing)
	return nil
}

func (d *demo) createJob(ctx context.Context, id, doc string) error {
	_, err := d.api.CreateJob(ctx, jobsim.CreateJobInput{JobID: id, Targets: []string{d.thing}, Document: doc})
	if err != nil {
		return err
	}
	d.say("operator", "create-job %s → %s (document %d bytes, presigned URL placeholder)", id, d.thing, len(doc))
	return nil
}

// follow prints one line per transition of the execution (status or stage), from the emulator's
// event stream, until it is terminal.
func (d *demo) follow(ctx context.Context, id, want string) error {
	last := ""
	for {
		var ev jobsim.Event
		select {
		case <-ctx.Done():
			return fmt.Errorf("job %s did not finish: %w", id, ctx.Err())
		case e, ok := <-d.events:
			if !ok {
				return fmt.Errorf("the emulator's event stream ended while job %s ran", id)
			}
			ev = e
		}
		if ev.JobID != id || ev.Thing != d.thing || (ev.Kind != jobsim.EventStatus && ev.Kind != jobsim.EventUpdated) {
			continue
		}
		det := ev.StatusDetails
		line := ev.Status
		if s := det["stage"]; s != "" {
			line += " stage=" + s
		}
		if r := det["reason"]; r != "" {
			line += " reason=" + r
		}
		if line != last {
			d.say("job", "%s  %s", id, line)
			last = line
		} else if p := det["progress"]; d.verbose && p != "" && det["stage"] == "download" {
			d.say("job", "%s  … %s%%", id, p)
		}
		switch ev.Status {
		case "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED":
			if o := det["output"]; o != "" {
				d.say("device", "output: %s", strings.TrimSpace(o))
			}
			if r := det["detail"]; r != "" {
				d.say("device", "detail: %s", r)
			}
			if d.verbose {
				ex, err := d.api.DescribeJobExecution(ctx, id, d.thing, 0)
				if err != nil {
					return err
				}
				b, _ := json.MarshalIndent(ex, "          ", "  ")
				fmt.Fprintf(d.out, "          execution as the emulator's control API describes it:\n          %s\n", b)
			}
			if ev.Status != want {
				return fmt.Errorf("job %s ended %s, expected %s", id, ev.Status, want)
			}
			return nil
		}
	}
}

// stopAll stops every process the demo started: SIGTERM, then SIGKILL after a grace period.
func (d *demo) stopAll() {
	for i := len(d.procs) - 1; i >= 0; i-- {
		p := d.procs[i]
		_ = p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
	d.procs = nil
}
