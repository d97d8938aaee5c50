package main

// killloop.go: the downloader SIGKILLed again and again on a throttled link, restarted each time
// from its checkpoint, until the payload is complete: what each kill costs in bytes served again.

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fieldota/fieldota/download"
	"github.com/fieldota/fieldota/test/jobsim/s3"
)

// killLoopResult is one link speed's kill loop.
type killLoopResult struct {
	rate       int64 // bytes/s of the link
	size       int64
	kills      int
	served     int64   // body bytes the server sent for the object, every run included
	lossPerCut []int64 // per kill: bytes the run received but had not made durable
	sentPerCut []int64 // per kill: bytes the server sent during the run minus the durable progress
	wall       time.Duration
}

func mean(xs []int64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var s int64
	for _, x := range xs {
		s += x
	}
	return float64(s) / float64(len(xs))
}

func (r killLoopResult) meanLoss() float64 { return mean(r.lossPerCut) }

// killLoop runs the downloading child on a link of rate bytes/s and SIGKILLs it after a random
// 1–3 s, again and again, until a run completes; every run resumes from the checkpoint.
func (b *bench) killLoop(a artifact, rate int64, rng *rand.Rand) (killLoopResult, error) {
	res := killLoopResult{rate: rate, size: a.size}
	dest, _, ckpt := b.paths(fmt.Sprintf("kill-%d", rate))
	b.srv.SetFaults(a.obj, s3.Faults{RateBytesPerSec: rate})
	defer b.srv.ClearFaults()
	quiet := func() {
		for deadline := time.Now().Add(10 * time.Second); b.srv.InFlight() != 0 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	quiet()
	start0 := b.srv.Stats(a.obj).BytesSent
	url := b.p.Sign(a.obj, 2*time.Hour)
	t0 := time.Now()
	for run := 1; ; run++ {
		if run > 500 {
			return res, errors.New("no progress after 500 kills")
		}
		sentBefore, durableBefore := b.srv.Stats(a.obj).BytesSent, download.CheckpointOffset(ckpt)
		// The destination ends where the checkpoint does: after a kill, its length is how far
		// the killed run had written (the page cache outlives the process).
		if err := os.Truncate(dest, durableBefore); err != nil && !os.IsNotExist(err) {
			return res, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		cmd := exec.CommandContext(ctx, b.exe)
		cmd.Env = append(os.Environ(), childEnv+"=1", "B_KEEP=1", "B_URL="+url, "B_SIZE="+strconv.FormatInt(a.size, 10),
			"B_SHA256="+hex.EncodeToString(a.sum), "B_DEST="+dest, "B_CKPT="+ckpt)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			cancel()
			return res, err
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		after := time.Second + time.Duration(rng.Int64N(int64(2*time.Second)))
		select {
		case err := <-done:
			cancel()
			if err != nil {
				return res, fmt.Errorf("run %d: %w: %s", run, err, strings.TrimSpace(out.String()))
			}
			quiet()
			res.served = b.srv.Stats(a.obj).BytesSent - start0
			res.wall = time.Since(t0)
			return res, b.cleanup(dest, a.size, ckpt)
		case <-time.After(after):
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
			cancel()
		}
		quiet()
		res.kills++
		durable := download.CheckpointOffset(ckpt)
		reached := durable
		if fi, err := os.Stat(dest); err == nil {
			reached = max(reached, fi.Size())
		}
		res.lossPerCut = append(res.lossPerCut, reached-durable)
		res.sentPerCut = append(res.sentPerCut, b.srv.Stats(a.obj).BytesSent-sentBefore-(durable-durableBefore))
	}
}

func renderKillLoops(rs []killLoopResult) string {
	var w strings.Builder
	w.WriteString("## Kill loop on a throttled link (download checkpoints)\n\n")
	w.WriteString("The downloading process is SIGKILLed 1–3 s (uniformly random) after each start and started again, resuming\n" +
		"from its checkpoint (every 1 MiB or 1 s, whichever comes first), until a run completes.\n\n")
	w.WriteString("| link | payload | kills | lost per kill: mean | max | served again per kill: mean | max | served / payload | wall (s) |\n|---|---|---|---|---|---|---|---|---|\n")
	kib := func(x float64) string { return fmt.Sprintf("%.0f KiB", x/1024) }
	for _, r := range rs {
		fmt.Fprintf(&w, "| %s | %d MiB | %d | %s | %s | %s | %s | %.3f× | %.1f |\n", rateName(r.rate), r.size>>20, r.kills,
			kib(r.meanLoss()), kib(float64(slices.Max(append(r.lossPerCut, 0)))),
			kib(mean(r.sentPerCut)), kib(float64(slices.Max(append(r.sentPerCut, 0)))),
			float64(r.served)/float64(r.size), r.wall.Seconds())
	}
	w.WriteString("\nLost per kill = bytes the killed run had received and written but not yet checkpointed: the part of the\n" +
		"download the next run fetches again (the destination's length after the kill minus the checkpoint offset).\n" +
		"Served again per kill = body bytes the server sent during the run minus the run's durable progress: the lost bytes\n" +
		"plus whatever was still in flight (socket buffers, here up to several MB on loopback while the downloader syncs a\n" +
		"checkpoint); on a real network that share depends on its bandwidth-delay product, not on the agent. The goal is\n" +
		"measured on the lost bytes. Command: `make bench` (this section: `killLoop` in test/bench/killloop.go).\n\n")
	return w.String()
}

func rateName(r int64) string {
	switch {
	case r >= 1e6:
		return fmt.Sprintf("%g MB/s", float64(r)/1e6)
	default:
		return fmt.Sprintf("%g KB/s", float64(r)/1e3)
	}
}
