package agent

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/fieldota/fieldota/ota/run"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/fieldota/fieldota/test/jobsim/s3"
	"github.com/fieldota/fieldota/test/testdoc"
	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
)

// harness runs the emulator and an in-process agent connected to it over real MQTT and HTTP.
type harness struct {
	t         *testing.T
	sim       *jobsim.Sim
	dir       string
	artifacts string
	appRoot   string
	key       crypto.Signer
	cfg       *config.Config
	// onTransition, if set before run, sees each persisted transition (a crash point).
	onTransition func(*ota.Journal)
	// cancel stops the running agent without waiting for it (a callback may be blocking it).
	cancel context.CancelFunc
	// clk is the time of the emulator and of every agent the harness starts.
	clk *clock
	// cfgPath and cfgBody are the agent's configuration file (addConfig extends it).
	cfgPath, cfgBody string
	// wrapAPI, if set before run, stands between the agent and the Jobs client (a slow link).
	wrapAPI func(jobsAPI) jobsAPI

	mu     sync.Mutex
	events []jobsim.Event
}

const thing = "dev1"

func TestMain(m *testing.M) {
	run.MaybeShim() // autoStart programs run through this test binary as their shim
	os.Exit(m.Run())
}

// clock is a wall clock that a test can move forward (to expire presigned URLs, to reach a
// maintenance window): time passes as usual, and Advance jumps, firing every After whose
// deadline it passes. The emulator and the agent share it.
type clock struct {
	mu         sync.Mutex
	skew       time.Duration
	waiters    []waiter
	registered int // Afters asked for so far: a test waits for the agent to park on one
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return time.Now().Add(c.skew) }

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.skew += d
	c.mu.Unlock()
	c.fire()
}

// After fires when the clock, by passing time or by Advance, reaches now+d.
func (c *clock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.mu.Lock()
	c.waiters = append(c.waiters, waiter{at: time.Now().Add(c.skew + d), ch: ch})
	c.registered++
	c.mu.Unlock()
	time.AfterFunc(d, c.fire) // the skew only grows: real time reaches the deadline no later
	return ch
}

// Registered counts the Afters asked for so far.
func (c *clock) Registered() int { c.mu.Lock(); defer c.mu.Unlock(); return c.registered }

func (c *clock) fire() {
	now := c.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(now) {
			kept = append(kept, w)
			continue
		}
		w.ch <- now
	}
	c.waiters = kept
}

func newHarness(t *testing.T) *harness { return newHarnessClock(t, nil) }

func newHarnessClock(t *testing.T, clk *clock) *harness {
	t.Helper()
	if clk == nil {
		clk = &clock{}
	}
	h := &harness{t: t, dir: t.TempDir(), clk: clk}
	now := clk.Now
	h.artifacts = filepath.Join(h.dir, "artifacts")
	h.appRoot = filepath.Join(h.dir, "app")
	for _, d := range []string{filepath.Join(h.artifacts, "bucket"), h.appRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sim, err := jobsim.Start(context.Background(), jobsim.Config{
		MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0", ArtifactDir: h.artifacts, Now: now,
		OnEvent: func(e jobsim.Event) { h.mu.Lock(); h.events = append(h.events, e); h.mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	h.sim = sim
	key, err := sign.GenerateKey("ecdsa-p256")
	if err != nil {
		t.Fatal(err)
	}
	h.key = key
	pub := filepath.Join(h.dir, "release.pub")
	if _, err := sign.WriteKeyPair(key, filepath.Join(h.dir, "release.key"), pub); err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf(`thing_name = %q
state_dir = %q
compatible = ["board-rev-c"]
[mqtt]
endpoint = %q
[jobs]
progress_min_interval = "1ms"
[verify]
keys = [%q]
[download]
allow_insecure_http = true
allowed_hosts = ["127.0.0.1"]
stall_timeout = "5s"
[files]
allowed_roots = [%q]
autostart_timeout = "10s"
`, thing, filepath.Join(h.dir, "state"), sim.MQTTURL(), pub, h.appRoot)
	h.cfgPath, h.cfgBody = filepath.Join(h.dir, "agent.toml"), body
	h.addConfig("")
	return h
}

// addConfig appends TOML to the agent's configuration and loads it again (call it before
// changing h.cfg by hand).
func (h *harness) addConfig(toml string) {
	h.t.Helper()
	h.cfgBody += toml
	if err := os.WriteFile(h.cfgPath, []byte(h.cfgBody), 0o600); err != nil {
		h.t.Fatal(err)
	}
	var err error
	if h.cfg, err = config.Load(h.cfgPath); err != nil {
		h.t.Fatal(err)
	}
}

// publish puts an artifact in the emulator's bucket.
func (h *harness) publish(name string, content []byte) {
	h.t.Helper()
	if err := os.WriteFile(filepath.Join(h.artifacts, "bucket", name), content, 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// seedDoc is the seed's example document, signed: autoStart as a string ("true" for scripts),
// files as an object.
func (h *harness) seedDoc(name string, content []byte, version, workDir string) string {
	h.t.Helper()
	d := testdoc.For(name, content, version)
	d.WorkDir, d.AutoStart = workDir, strings.HasSuffix(name, ".sh") || strings.HasSuffix(name, ".py")
	doc, err := d.Signed(h.key)
	if err != nil {
		h.t.Fatal(err)
	}
	return doc
}

// doc signs a document described by d with the release key.
func (h *harness) doc(d testdoc.Doc) string {
	h.t.Helper()
	doc, err := d.Signed(h.key)
	if err != nil {
		h.t.Fatal(err)
	}
	return doc
}

func (h *harness) createJob(id, doc string) {
	h.t.Helper()
	if _, err := h.sim.CreateJob(jobsim.CreateJobInput{JobID: id, Targets: []string{thing}, Document: doc}); err != nil {
		h.t.Fatal(err)
	}
}

// run starts the agent; the returned func stops it and waits for it.
func (h *harness) run() func() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	log := slog.New(slog.NewTextHandler(testWriter{h.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	trust, err := verify.LoadTrustStore(h.cfg.Verify.Keys, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	a := New(Options{Config: h.cfg, Trust: trust, Logger: log, Clock: h.clk, OnTransition: h.onTransition})
	a.retryWait = 50 * time.Millisecond
	cl, err := jobs.Dial(ctx, jobs.Config{Endpoint: h.cfg.MQTT.Endpoint, ThingName: thing, Logger: log,
		RequestTimeout: 2 * time.Second, OnConnect: func(context.Context) { a.Wake() }, OnNotifyNext: a.NotifyNext,
		Extra: a.Subscriptions(), OnMessage: a.OnMessage})
	if err != nil {
		h.t.Fatal(err)
	}
	var api jobsAPI = cl
	if h.wrapAPI != nil {
		api = h.wrapAPI(cl)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, api) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				h.t.Errorf("agent: %v", err)
			}
			_ = cl.Close()
		})
	}
	h.t.Cleanup(stop)
	return stop
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// waitTerminal waits until the job's execution on our thing is terminal.
func (h *harness) waitTerminal(jobID string) jobsim.JobExecution {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ex, err := h.sim.DescribeJobExecution(jobID, thing, 0)
		if err == nil && jobs.Status(ex.Status).Terminal() {
			return ex
		}
		time.Sleep(20 * time.Millisecond)
	}
	ex, _ := h.sim.DescribeJobExecution(jobID, thing, 0)
	h.t.Fatalf("job %s not terminal: %+v", jobID, ex)
	return ex
}

// statuses lists the statuses the job went through, as the emulator recorded them.
func (h *harness) statuses(jobID string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, e := range h.events {
		if e.JobID == jobID && e.Kind == jobsim.EventStatus && (len(out) == 0 || out[len(out)-1] != e.Status) {
			out = append(out, e.Status)
		}
	}
	return out
}

func TestSeedInstallPyIsPlacedStartedAndSucceeds(t *testing.T) {
	h := newHarness(t)
	script := []byte("#!/usr/bin/env python3\nimport os\nprint('installed in', os.getcwd())\n")
	h.publish("install.py", script)
	work := filepath.Join(h.appRoot, "JobSampleTesting")
	h.createJob("seed", h.seedDoc("install.py", script, "1.0", work))
	h.run()
	ex := h.waitTerminal("seed")
	if ex.Status != "SUCCEEDED" {
		t.Fatalf("status %s details %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	d := ex.StatusDetails.DetailsMap
	if d["stage"] != "done" || d["version"] != "1.0" || !strings.Contains(d["output"], "installed in "+work) {
		t.Fatalf("details %v", d)
	}
	if b, err := os.ReadFile(filepath.Join(work, "install.py")); err != nil || string(b) != string(script) {
		t.Fatalf("placed file: %q %v", b, err)
	}
}

func TestInvalidDocumentIsRejectedAndNeverStarted(t *testing.T) {
	h := newHarness(t)
	h.createJob("bad", `{"operation":"install","version":"1.0","target":"files","workingDirectory":"/etc","files":{"fileName":"../passwd","url":"https://x/y","size":1}}`)
	h.run()
	ex := h.waitTerminal("bad")
	if ex.Status != "REJECTED" || ex.StatusDetails.DetailsMap["reason"] != "INVALID_DOCUMENT" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	for _, s := range h.statuses("bad") {
		if s == "IN_PROGRESS" {
			t.Fatalf("went IN_PROGRESS: %v", h.statuses("bad"))
		}
	}
}

func TestTamperedArtifactFailsAndNothingIsPlaced(t *testing.T) {
	h := newHarness(t)
	script := []byte("#!/bin/sh\necho good\n")
	work := filepath.Join(h.appRoot, "w")
	doc := h.seedDoc("run.sh", script, "2.0", work)
	h.publish("run.sh", []byte("#!/bin/sh\necho evil\n"))
	h.createJob("tampered", doc)
	h.run()
	ex := h.waitTerminal("tampered")
	if ex.Status != "FAILED" || ex.StatusDetails.DetailsMap["reason"] != "SIGNATURE_INVALID" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if _, err := os.Stat(filepath.Join(work, "run.sh")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("tampered file was placed")
	}
}

func TestTwoQueuedJobsRunInOrder(t *testing.T) {
	h := newHarness(t)
	work := filepath.Join(h.appRoot, "w")
	for i, id := range []string{"first", "second"} {
		content := []byte(fmt.Sprintf("#!/bin/sh\necho %s\n", id))
		h.publish(id+".sh", content)
		h.createJob(id, h.seedDoc(id+".sh", content, fmt.Sprintf("1.%d", i), work))
	}
	h.run()
	for _, id := range []string{"first", "second"} {
		if ex := h.waitTerminal(id); ex.Status != "SUCCEEDED" {
			t.Fatalf("%s: %s %v", id, ex.Status, ex.StatusDetails.DetailsMap)
		}
	}
	a, _ := h.sim.DescribeJobExecution("first", thing, 0)
	b, _ := h.sim.DescribeJobExecution("second", thing, 0)
	if a.LastUpdatedAt > b.StartedAt {
		t.Fatalf("second started (%d) before first finished (%d)", b.StartedAt, a.LastUpdatedAt)
	}
}

// throttled publishes a payload served slowly enough to act on the job mid-download.
func (h *harness) throttled(name string, size int, rate int64) []byte {
	content := make([]byte, size)
	for i := range content {
		content[i] = byte(i * 7)
	}
	h.publish(name, content)
	h.sim.Artifacts().SetFaults("bucket/"+name, s3.Faults{RateBytesPerSec: rate})
	return content
}

func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *harness) progressReports(jobID string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, e := range h.events {
		if e.JobID == jobID && e.Kind == jobsim.EventUpdated {
			out = append(out, e.Detail)
		}
	}
	return out
}

func TestForceCancelDuringDownloadStopsCleansUpAndTakesNextJob(t *testing.T) {
	h := newHarness(t)
	work := filepath.Join(h.appRoot, "w")
	big := h.throttled("big.bin", 256<<10, 64<<10)
	h.createJob("slow", h.seedDoc("big.bin", big, "3.0", work))
	next := []byte("#!/bin/sh\necho next\n")
	h.publish("next.sh", next)
	h.run()
	staging := filepath.Join(h.cfg.StateDir, "staging", "slow-1")
	h.waitFor("the download to start", func() bool {
		ex, err := h.sim.DescribeJobExecution("slow", thing, 0)
		return err == nil && ex.StatusDetails.DetailsMap["stage"] == "download" && ex.StatusDetails.DetailsMap["progress"] != "0" && ex.StatusDetails.DetailsMap["progress"] != ""
	})
	h.createJob("next", h.seedDoc("next.sh", next, "3.1", work))
	if err := h.sim.CancelJob("slow", jobsim.CancelJobInput{Force: true}); err != nil {
		t.Fatal(err)
	}
	if ex := h.waitTerminal("next"); ex.Status != "SUCCEEDED" {
		t.Fatalf("next job: %s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if ex, _ := h.sim.DescribeJobExecution("slow", thing, 0); ex.Status != "CANCELED" {
		t.Fatalf("canceled job: %s", ex.Status)
	}
	if _, err := os.Stat(staging); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("partial download left in %s", staging)
	}
	if _, err := os.Stat(filepath.Join(work, "big.bin")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("canceled payload was placed")
	}
}

func TestPresignedURLExpiringMidDownloadIsRefreshedAndCompletes(t *testing.T) {
	clk := &clock{}
	h := newHarnessClock(t, clk)
	work := filepath.Join(h.appRoot, "w")
	big := h.throttled("big.bin", 256<<10, 128<<10)
	// Cut the connection half-way: the reconnect must then present a URL that has expired.
	h.sim.Artifacts().SetFaults("bucket/big.bin", s3.Faults{RateBytesPerSec: 128 << 10, CutAtOffsets: []int64{128 << 10}})
	// The step timer outlasts the jump below: the job must not time out in the emulator meanwhile.
	h.cfg.Jobs.StepTimeoutMinutes = 180
	h.createJob("expiring", h.seedDoc("big.bin", big, "4.0", work))
	h.run()
	h.waitFor("the first progress report", func() bool {
		ex, err := h.sim.DescribeJobExecution("expiring", thing, 0)
		p := ex.StatusDetails.DetailsMap["progress"]
		return err == nil && p != "" && p != "0"
	})
	h.advance(2 * time.Hour) // every URL minted so far is now past its 3600 s; the job has not timed out
	ex := h.waitTerminal("expiring")
	if ex.Status != "SUCCEEDED" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	var denied, sent int64
	for _, r := range h.sim.Artifacts().Requests() {
		if r.Status == 403 {
			denied++
		}
		sent += r.Bytes
	}
	if denied == 0 {
		t.Fatal("no request was refused as expired: the test proved nothing")
	}
	if sent > int64(len(big))+(1<<20) {
		t.Fatalf("%d bytes sent for a %d-byte payload: the download restarted", sent, len(big))
	}
}

func TestProgressIsReportedInStepsNotPerChunk(t *testing.T) {
	h := newHarness(t)
	work := filepath.Join(h.appRoot, "w")
	big := h.throttled("big.bin", 512<<10, 256<<10)
	h.createJob("progress", h.seedDoc("big.bin", big, "5.0", work))
	h.run()
	if ex := h.waitTerminal("progress"); ex.Status != "SUCCEEDED" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	n := len(h.progressReports("progress"))
	// accept→download 0 %, ≤ 10 steps of 10 %, verify, install: well under one per chunk.
	if n < 3 || n > 14 {
		t.Fatalf("%d in-progress updates: %v", n, h.progressReports("progress"))
	}
}

func TestBadSignatureFailsAfterDownloadAndNothingIsPlaced(t *testing.T) {
	h := newHarness(t)
	script := []byte("#!/bin/sh\necho good\n")
	work := filepath.Join(h.appRoot, "w")
	h.publish("run.sh", script)
	// Signed over other bytes: the document is well formed, the signature is not the owner's.
	doc := h.seedDoc("run.sh", script, "2.0", work)
	other := h.seedDoc("run.sh", []byte("#!/bin/sh\necho other\n"), "2.0", work)
	var d, o map[string]any
	_ = json.Unmarshal([]byte(doc), &d)
	_ = json.Unmarshal([]byte(other), &o)
	d["files"].(map[string]any)["codesign"] = o["files"].(map[string]any)["codesign"]
	d["files"].(map[string]any)["codesign"].(map[string]any)["rawPayloadSize"] = len(script)
	b, _ := json.Marshal(d)
	h.createJob("badsig", string(b))
	h.run()
	ex := h.waitTerminal("badsig")
	if ex.Status != "FAILED" || ex.StatusDetails.DetailsMap["reason"] != "SIGNATURE_INVALID" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if _, err := os.Stat(filepath.Join(work, "run.sh")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("file with a bad signature was placed")
	}
}

func TestDocumentsThatCanNeverSucceedAreRejectedWhileQueued(t *testing.T) {
	h := newHarness(t)
	script := []byte("#!/bin/sh\necho x\n")
	h.publish("run.sh", script)
	work := filepath.Join(h.appRoot, "w")
	fd := testdoc.For("run.sh", script, "1.0")
	fd.WorkDir, fd.AutoStart = work, true
	unsigned, foreign, slotJob := fd, fd, fd
	unsigned.NoStatement, unsigned.FilePlain = true, map[string]any{"codesign": nil}
	foreign.Compatible = []string{"board-rev-a"}
	slotJob.Target = "slot"
	outside := h.seedDoc("run.sh", script, "1.0", "/etc/fieldota-test")
	cases := map[string]struct{ doc, reason string }{
		"unsigned":           {h.doc(unsigned), "UNSIGNED"},
		"incompatible":       {h.doc(foreign), "INCOMPATIBLE_DEVICE"},
		"outside the roots":  {outside, "UNSAFE_PATH"},
		"unsupported target": {h.doc(slotJob), "UNSUPPORTED_OPERATION"},
	}
	for name, c := range cases {
		h.createJob(strings.ReplaceAll(name, " ", "-"), c.doc)
	}
	h.run()
	for name, c := range cases {
		id := strings.ReplaceAll(name, " ", "-")
		ex := h.waitTerminal(id)
		if ex.Status != "REJECTED" || ex.StatusDetails.DetailsMap["reason"] != c.reason {
			t.Errorf("%s: %s %v, want REJECTED %s", name, ex.Status, ex.StatusDetails.DetailsMap, c.reason)
		}
		for _, s := range h.statuses(id) {
			if s == "IN_PROGRESS" {
				t.Errorf("%s went IN_PROGRESS", name)
			}
		}
	}
}

func TestSymlinkInsideAllowedRootCannotLeadOutside(t *testing.T) {
	h := newHarness(t)
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(h.appRoot, "escape")); err != nil {
		t.Fatal(err)
	}
	script := []byte("#!/bin/sh\necho x\n")
	h.publish("run.sh", script)
	h.createJob("escape", h.seedDoc("run.sh", script, "1.0", filepath.Join(h.appRoot, "escape", "deeper")))
	h.run()
	ex := h.waitTerminal("escape")
	// Resolved while QUEUED: refused before anything is downloaded.
	if ex.Status != "REJECTED" || ex.StatusDetails.DetailsMap["reason"] != "UNSAFE_PATH" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("wrote outside the allowed root: %v", ents)
	}
}

// TestCanceledAfterAHalfDoneInstallPutsEveryFileBack: an install cut short (a kill between
// two files) and then canceled by the operator must leave the directory exactly as before.
func TestCanceledAfterAHalfDoneInstallPutsEveryFileBack(t *testing.T) {
	h := newHarness(t)
	work := filepath.Join(h.appRoot, "w")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	old := []byte("#!/bin/sh\necho v1\n")
	if err := os.WriteFile(filepath.Join(work, "run.sh"), old, 0o755); err != nil {
		t.Fatal(err)
	}
	script := []byte("#!/bin/sh\necho v2\n")
	h.publish("run.sh", script)
	h.createJob("half", h.seedDoc("run.sh", script, "2.0", work))
	var once sync.Once
	h.onTransition = func(j *ota.Journal) {
		if j.State != ota.StateInstall {
			return
		}
		once.Do(func() {
			// What a kill mid-placement leaves: the previous copy kept, the new bytes in place.
			if err := os.Link(filepath.Join(work, "run.sh"), filepath.Join(work, ".fieldota-prev-run.sh")); err != nil {
				t.Error(err)
			}
			if err := os.Remove(filepath.Join(work, "run.sh")); err != nil {
				t.Error(err)
			}
			if err := os.WriteFile(filepath.Join(work, "run.sh"), script, 0o755); err != nil {
				t.Error(err)
			}
			if err := h.sim.CancelJob("half", jobsim.CancelJobInput{Force: true}); err != nil {
				t.Error(err)
			}
		})
	}
	h.run()
	h.waitTerminal("half")
	h.waitFor("the agent to finish the job", func() bool {
		_, err := os.Stat(filepath.Join(h.cfg.StateDir, "staging", "half-1"))
		return os.IsNotExist(err)
	})
	if got, _ := os.ReadFile(filepath.Join(work, "run.sh")); string(got) != string(old) {
		t.Fatalf("run.sh is %q after the cancel", got)
	}
	if ex, _ := h.sim.DescribeJobExecution("half", thing, 0); ex.Status != "CANCELED" {
		t.Fatalf("status %s", ex.Status)
	}
	ents, _ := os.ReadDir(work)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".fieldota-") {
			t.Fatalf("left behind: %s", e.Name())
		}
	}
}
