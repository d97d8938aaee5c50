package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/fieldota/fieldota/test/jobsim/s3"
)

// simProc is `fieldota sim` running as a process, driven through its HTTP control API.
type simProc struct {
	t         *testing.T
	api       *jobsim.Client
	mqtt      string
	artifacts string
	out       *syncBuffer
}

func startSimProc(t *testing.T, extra ...string) *simProc {
	t.Helper()
	s := &simProc{t: t, artifacts: filepath.Join(t.TempDir(), "artifacts"), out: &syncBuffer{}}
	if err := os.MkdirAll(filepath.Join(s.artifacts, "bucket"), 0o755); err != nil {
		t.Fatal(err)
	}
	mqtt, httpAddr, s3Addr := freePort(t), freePort(t), freePort(t)
	args := append([]string{"sim", "--mqtt", mqtt, "--http", httpAddr, "--s3", s3Addr, "--artifacts", s.artifacts}, extra...)
	cmd := exec.Command(filepath.Join(bin, "fieldota"), args...)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("fieldota sim did not exit cleanly on SIGTERM: %v", err)
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			t.Error("fieldota sim ignored SIGTERM")
		}
		if t.Failed() {
			t.Logf("fieldota sim output:\n%s", s.out.String())
		}
	})
	s.api, s.mqtt = &jobsim.Client{BaseURL: "http://" + httpAddr}, "tcp://"+mqtt
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(s.api.BaseURL + "/jobs/none")
		if err == nil {
			resp.Body.Close()
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("fieldota sim did not start: %v\n%s", err, s.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *simProc) publish(name string, content []byte) {
	s.t.Helper()
	if err := os.WriteFile(filepath.Join(s.artifacts, "bucket", name), content, 0o644); err != nil {
		s.t.Fatal(err)
	}
}

func (s *simProc) createJob(id, doc string) {
	s.t.Helper()
	if _, err := s.api.CreateJob(context.Background(), jobsim.CreateJobInput{JobID: id, Targets: []string{thing}, Document: doc}); err != nil {
		s.t.Fatal(err)
	}
}

func (s *simProc) execution(id string) jobsim.JobExecution {
	ex, _ := s.api.DescribeJobExecution(context.Background(), id, thing, 0)
	return ex
}

func (s *simProc) waitTerminal(id string) jobsim.JobExecution {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ex := s.execution(id)
		if jobs.Status(ex.Status).Terminal() {
			return ex
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("job %s not terminal: %+v", id, ex)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// deviceFor makes a device whose agent talks to the sim process.
func deviceFor(t *testing.T, s *simProc) *device {
	d := newDevice(t)
	d.writeConfig(s.mqtt, "", "", "")
	return d
}

func TestProcessesSeedInstallPyIsPlacedStartedAndSucceeds(t *testing.T) {
	t.Parallel()
	s := startSimProc(t)
	d := deviceFor(t, s)
	script := []byte("#!/usr/bin/env python3\nimport os\nprint('installed in', os.getcwd())\n")
	s.publish("install.py", script)
	work := filepath.Join(d.appRoot, "JobSampleTesting")
	s.createJob("seed", d.seedDoc("install.py", script, "1.0", work, true))
	d.startAgent()
	ex := s.waitTerminal("seed")
	if ex.Status != "SUCCEEDED" || !strings.Contains(ex.StatusDetails.DetailsMap["output"], "installed in "+work) {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if !strings.Contains(s.out.String(), "status=SUCCEEDED") {
		t.Fatalf("the emulator did not print the job's events:\n%s", s.out.String())
	}
}

func TestProcessesInvalidDocumentIsRejectedAndNeverStarted(t *testing.T) {
	t.Parallel()
	s := startSimProc(t)
	d := deviceFor(t, s)
	s.createJob("bad", `{"operation":"install","version":"1.0","target":"files","workingDirectory":"/etc","files":{"fileName":"../passwd","url":"https://x/y","size":1}}`)
	d.startAgent()
	ex := s.waitTerminal("bad")
	if ex.Status != "REJECTED" || ex.StatusDetails.DetailsMap["reason"] != "INVALID_DOCUMENT" || ex.StartedAt != 0 {
		t.Fatalf("%+v", ex)
	}
	if strings.Contains(s.out.String(), "job=bad thing=dev1 execution=1 status=IN_PROGRESS") {
		t.Fatalf("went IN_PROGRESS:\n%s", s.out.String())
	}
}

func TestProcessesBadSignatureFailsAndNothingIsPlaced(t *testing.T) {
	t.Parallel()
	s := startSimProc(t)
	d := deviceFor(t, s)
	script := []byte("#!/bin/sh\necho good\n")
	work := filepath.Join(d.appRoot, "w")
	doc := d.seedDoc("run.sh", script, "2.0", work, true)
	s.publish("run.sh", []byte("#!/bin/sh\necho evil\n")) // not the bytes that were signed
	s.createJob("badsig", doc)
	d.startAgent()
	ex := s.waitTerminal("badsig")
	if ex.Status != "FAILED" || ex.StatusDetails.DetailsMap["reason"] != "SIGNATURE_INVALID" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if _, err := os.Stat(filepath.Join(work, "run.sh")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a file with a bad signature was placed")
	}
}

func TestProcessesForceCancelDuringDownloadStopsAndTakesTheNextJob(t *testing.T) {
	t.Parallel()
	s := startSimProc(t, "--s3-rate", "262144")
	d := deviceFor(t, s)
	big := make([]byte, 2<<20)
	for i := range big {
		big[i] = byte(i * 13)
	}
	s.publish("big.bin", big)
	next := []byte("#!/bin/sh\necho next\n")
	s.publish("next.sh", next)
	work := filepath.Join(d.appRoot, "w")
	s.createJob("slow", d.seedDoc("big.bin", big, "3.0", work, false))
	d.startAgent()
	deadline := time.Now().Add(20 * time.Second)
	for p := ""; p == "" || p == "0"; p = s.execution("slow").StatusDetails.DetailsMap["progress"] {
		if time.Now().After(deadline) {
			t.Fatal("the download never made progress")
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.createJob("next", d.seedDoc("next.sh", next, "3.1", work, true))
	if err := s.api.CancelJob(context.Background(), "slow", jobsim.CancelJobInput{Force: true}); err != nil {
		t.Fatal(err)
	}
	if ex := s.waitTerminal("next"); ex.Status != "SUCCEEDED" {
		t.Fatalf("next: %s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if ex := s.execution("slow"); ex.Status != "CANCELED" {
		t.Fatalf("slow: %s", ex.Status)
	}
	if _, err := os.Stat(filepath.Join(d.stateDir, "staging", "slow-1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the partial download was not removed")
	}
	if _, err := os.Stat(filepath.Join(work, "big.bin")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the canceled payload was placed")
	}
	d.assertNoLeftovers()
}

func TestProcessesTwoQueuedJobsRunInOrder(t *testing.T) {
	t.Parallel()
	s := startSimProc(t)
	d := deviceFor(t, s)
	work := filepath.Join(d.appRoot, "w")
	for i, id := range []string{"first", "second"} {
		content := []byte(fmt.Sprintf("#!/bin/sh\necho %s\n", id))
		s.publish(id+".sh", content)
		s.createJob(id, d.seedDoc(id+".sh", content, fmt.Sprintf("1.%d", i), work, true))
	}
	d.startAgent()
	a, b := s.waitTerminal("first"), s.waitTerminal("second")
	if a.Status != "SUCCEEDED" || b.Status != "SUCCEEDED" {
		t.Fatalf("%s %s", a.Status, b.Status)
	}
	if a.LastUpdatedAt > b.StartedAt {
		t.Fatalf("second started (%d) before first ended (%d)", b.StartedAt, a.LastUpdatedAt)
	}
}

// TestAgentProcessRefreshesAnExpiredURLMidDownload: the URL expiry needs the emulator's clock to
// move, so the emulator runs in-process here; the agent is the real binary.
func TestAgentProcessRefreshesAnExpiredURLMidDownload(t *testing.T) {
	t.Parallel()
	clk := &clock{}
	e := newEnv(t, envOpts{clock: clk, stepTimeoutMinutes: 180}) // outlasts the jump below
	payload := make([]byte, 1<<20)
	for i := range payload {
		payload[i] = byte(i * 5)
	}
	e.publish("fw.bin", payload)
	e.sim.Artifacts().SetFaults("bucket/fw.bin", s3.Faults{RateBytesPerSec: 512 << 10, CutAtOffsets: []int64{512 << 10}})
	e.createJob("expiring", e.seedDoc("fw.bin", payload, "9.0", filepath.Join(e.appRoot, "fw"), false))
	e.startAgent()
	e.waitFor("progress", func() bool {
		ex, err := e.sim.DescribeJobExecution("expiring", thing, 0)
		p := ex.StatusDetails.DetailsMap["progress"]
		return err == nil && p != "" && p != "0"
	})
	clk.Advance(2 * time.Hour) // every URL minted so far is past its 3600 s
	e.sim.FireTimers()         // as the emulator would at any moment: the job has not timed out
	if ex := e.waitTerminal("expiring", 30*time.Second); ex.Status != "SUCCEEDED" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	denied, sent := 0, int64(0)
	for _, r := range e.sim.Artifacts().Requests() {
		if r.Status == http.StatusForbidden {
			denied++
		}
		sent += r.Bytes
	}
	if denied == 0 || sent > int64(len(payload))+(1<<20) {
		t.Fatalf("denied %d, sent %d for %d bytes", denied, sent, len(payload))
	}
}
