package conformance

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/test/jobsim"
)

// TestBrokerDropsDeviceMidJobAndTheJobGoesOn: the broker cuts the device's connection while its job
// is IN_PROGRESS. The client reconnects, subscribes again (the clean session lost every
// subscription), runs the OnConnect hook, which finds the job through $next as the agent does, and
// the job is finished — with a request that was issued while the link was down.
func TestBrokerDropsDeviceMidJobAndTheJobGoesOn(t *testing.T) {
	for _, e := range environments {
		t.Run(e.name, func(t *testing.T) {
			f := &fx{env: e.start(t), t: t}
			hookSaw := make(chan *jobs.JobExecution, 8)
			var client atomic.Pointer[jobs.Client]
			dialed := make(chan struct{})
			d := f.device(func(cfg *jobs.Config) {
				signal := cfg.OnConnect // the helper's "connected" signal
				cfg.OnConnect = func(ctx context.Context) {
					signal(ctx)
					select { // the first connect happens inside Dial, before we hold the client
					case <-dialed:
					case <-ctx.Done():
						return
					}
					// What the agent does after every (re)connect: ask for $next again.
					ex, err := client.Load().Describe(ctx, jobs.DescribeInput{JobID: jobs.NextJobID, IncludeJobDocument: true})
					if err != nil {
						t.Errorf("$next from the OnConnect hook: %v", err)
					}
					hookSaw <- ex
				}
			})
			client.Store(d.c)
			close(dialed)
			if ex := <-hookSaw; ex != nil {
				t.Fatalf("first connect saw %+v, want nothing pending", ex)
			}
			j := f.job([]string{d.thing})
			d.expectNotify(t, map[jobs.Status][]string{jobs.Queued: {j}})
			d.expectNext(t, j)
			e1, err := d.c.StartNext(f.ctx(), jobs.StartNextInput{StatusDetails: map[string]string{"stage": "download", "progress": "10"}, StepTimeoutInMinutes: 100})
			if err != nil || e1 == nil {
				t.Fatal(e1, err)
			}

			f.dropDevice(t, d.thing)
			// Issued while the link is down (or going down): it must still land, once.
			upd := make(chan error, 1)
			go func() {
				_, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.InProgress, StatusDetails: map[string]string{"stage": "download", "progress": "60"}})
				upd <- err
			}()

			select {
			case ex := <-hookSaw:
				if ex == nil || ex.JobID != j || ex.Status != jobs.InProgress || ex.ExecutionNumber != e1.ExecutionNumber {
					t.Fatalf("after reconnect $next is %+v, want %s IN_PROGRESS", ex, j)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("the client did not reconnect and run its OnConnect hook")
			}
			if err := <-upd; err != nil {
				t.Fatalf("update across the drop: %v", err)
			}

			// Subscriptions are back: a new job's notify reaches the device.
			j2 := f.job([]string{d.thing})
			d.expectNotify(t, map[jobs.Status][]string{jobs.InProgress: {j}, jobs.Queued: {j2}})

			ex, err := d.c.Describe(f.ctx(), jobs.DescribeInput{JobID: j, IncludeJobDocument: false})
			if err != nil || ex.StatusDetails["progress"] != "60" {
				t.Fatalf("execution after the drop: %+v %v", ex, err)
			}
			u, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.Succeeded, ExpectedVersion: jobs.Version(ex.VersionNumber),
				StatusDetails: map[string]string{"stage": "done"}, IncludeJobExecutionState: true})
			if err != nil || u.ExecutionState.Status != jobs.Succeeded {
				t.Fatalf("finishing the job: %+v %v", u, err)
			}
			d.expectNext(t, j2)
		})
	}
}

// TestMosquittoRestartMidJobAndTheJobGoesOn: the whole broker restarts (no persistence) while a
// job is IN_PROGRESS. The device and the emulator both reconnect and subscribe again; the device's
// report, sent while the broker was down, is delivered, and events flow again.
func TestMosquittoRestartMidJobAndTheJobGoesOn(t *testing.T) {
	f := &fx{env: startMosquitto(t), t: t}
	d := f.device()
	j := f.job([]string{d.thing})
	d.expectNotify(t, map[jobs.Status][]string{jobs.Queued: {j}})
	d.expectNext(t, j)
	if _, err := d.c.StartNext(f.ctx(), jobs.StartNextInput{StatusDetails: map[string]string{"stage": "download"}}); err != nil {
		t.Fatal(err)
	}

	f.broker.Restart(t)
	upd := make(chan error, 1)
	go func() {
		_, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.InProgress, StatusDetails: map[string]string{"stage": "install"}})
		upd <- err
	}()
	select {
	case <-d.connects:
	case <-time.After(15 * time.Second):
		t.Fatal("the device did not reconnect after the broker restart")
	}
	if err := <-upd; err != nil {
		t.Fatalf("update across the restart: %v", err)
	}
	j2 := f.job([]string{d.thing})
	d.expectNotify(t, map[jobs.Status][]string{jobs.InProgress: {j}, jobs.Queued: {j2}})
	if _, err := d.c.Update(f.ctx(), j, jobs.UpdateInput{Status: jobs.Succeeded, StatusDetails: map[string]string{"stage": "done"}}); err != nil {
		t.Fatal(err)
	}
	d.expectNext(t, j2)
	x, err := f.sim.DescribeJobExecution(j, d.thing, 0)
	if err != nil || x.Status != jobsim.StatusSucceeded || x.StatusDetails.DetailsMap["stage"] != "done" {
		t.Fatalf("control plane: %+v %v", x, err)
	}
}
