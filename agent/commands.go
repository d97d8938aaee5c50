package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/run"
	"github.com/fieldota/fieldota/ota/slot"
)

// AWS IoT Commands (docs/aws-device-management.md): the device hears an execution on
// $aws/commands/things/<T>/executions/<id>/request/json and answers on …/response/json with
// AWS's status and statusReason.reasonCode. Each command runs only where commands.allow names
// it, and never while a job runs:
//
//   - {"command":"rollback"}: go back to what ran before the last commit — the previous A/B slot
//     now. It is journaled like a job's rollback (state rollback → report → cleanup), so a
//     reboot or a kill anywhere finishes it, and it is answered when the old slot runs.
//   - {"command":"reboot"}: answered, then commands.reboot runs.
//   - {"command":"report-inventory"}: `$package` is read and corrected now.

// Reason codes of refused or failed commands (statusReason.reasonCode, [A-Z0-9_-]{1,64}).
const (
	cmdDisabled     = "COMMAND_DISABLED"
	cmdUnsupported  = "UNSUPPORTED_COMMAND"
	cmdInvalid      = "INVALID_COMMAND"
	cmdJobRunning   = "JOB_IN_PROGRESS"
	cmdNoPrevious   = "NO_PREVIOUS_VERSION"
	cmdFailed       = "COMMAND_FAILED"
	commandJobIDPfx = "command-"
)

type commander struct {
	a      *Agent
	pub    publisher
	prefix string // $aws/commands/things/<T>/executions/

	mu   sync.Mutex
	seen map[string]bool // executions answered (QoS 1 redelivers)
}

func newCommander(a *Agent) *commander {
	return &commander{a: a, prefix: "$aws/commands/things/" + a.cfg.ThingName + "/executions/", seen: map[string]bool{}}
}

type commandResponse struct {
	Status       string            `json:"status"`
	StatusReason *commandReason    `json:"statusReason,omitempty"`
	Result       map[string]result `json:"result,omitempty"`
}

type commandReason struct {
	ReasonCode        string `json:"reasonCode"`
	ReasonDescription string `json:"reasonDescription,omitempty"`
}

type result struct {
	S string `json:"s"`
}

// respond answers an execution; delivery is retried until ctx ends (an answer lost leaves the
// operator with a TIMED_OUT, not the device with a wrong state).
func (c *commander) respond(ctx context.Context, id string, r commandResponse) error {
	if r.StatusReason != nil && len(r.StatusReason.ReasonDescription) > 1024 {
		r.StatusReason.ReasonDescription = r.StatusReason.ReasonDescription[:1024]
	}
	b, _ := json.Marshal(r)
	return c.a.retryTransient(ctx, func() error {
		return c.pub.Publish(ctx, c.prefix+id+"/response/json", b)
	})
}

func refused(code, format string, a ...any) commandResponse {
	return commandResponse{Status: "REJECTED", StatusReason: &commandReason{ReasonCode: code, ReasonDescription: fmt.Sprintf(format, a...)}}
}

// onMessage takes a command request (and ignores the service's acknowledgements).
func (c *commander) onMessage(ctx context.Context, topic string, payload []byte) {
	rest, ok := strings.CutPrefix(topic, c.prefix)
	id, tail, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 || tail != "request/json" || id == "" {
		return
	}
	c.mu.Lock()
	dup := c.seen[id]
	if len(c.seen) > 256 {
		c.seen = map[string]bool{} // redeliveries come within seconds
	}
	c.seen[id] = true
	c.mu.Unlock()
	if dup {
		return
	}
	resp := c.run(ctx, id, payload)
	if resp == nil {
		return // answered later (a rollback answers from the old slot)
	}
	if err := c.respond(ctx, id, *resp); err != nil {
		c.a.log.Warn("command response not delivered", "execution", id, "err", err)
	}
}

func (c *commander) run(ctx context.Context, id string, payload []byte) *commandResponse {
	var req struct {
		Command string `json:"command"`
	}
	if err := json.Unmarshal(payload, &req); err != nil || req.Command == "" {
		r := refused(cmdInvalid, "the payload must be a JSON object naming the command, e.g. {\"command\":\"rollback\"}")
		return &r
	}
	switch req.Command {
	case "rollback", "reboot", "report-inventory":
	default:
		r := refused(cmdUnsupported, "command %q is not one of rollback, reboot, report-inventory", req.Command)
		return &r
	}
	if !slices.Contains(c.a.cfg.Commands.Allow, req.Command) {
		r := refused(cmdDisabled, "command %s is not enabled on this device (commands.allow)", req.Command)
		return &r
	}
	c.a.mu.Lock()
	running := c.a.running
	c.a.mu.Unlock()
	if j, err := c.a.store.Load(); running != "" || err == nil || !errors.Is(err, ota.ErrNoJournal) {
		if err == nil && j.JobID == commandJobIDPfx+id {
			return nil // our own rollback, redelivered: it answers when it is done
		}
		r := refused(cmdJobRunning, "a job is under way (%s): the command would race it", running)
		return &r
	}
	c.a.log.Info("command", "execution", id, "command", req.Command)
	switch req.Command {
	case "reboot":
		if err := c.respond(ctx, id, commandResponse{Status: "SUCCEEDED"}); err != nil {
			c.a.log.Warn("command response not delivered", "execution", id, "err", err)
		}
		if _, err := run.Run(ctx, run.Spec{Argv: c.a.cfg.Commands.Reboot, Timeout: time.Minute}); err != nil && ctx.Err() == nil {
			c.a.log.Error("reboot command failed", "argv", c.a.cfg.Commands.Reboot, "err", err)
		}
		return nil
	case "report-inventory":
		if !c.a.cfg.Inventory.Enabled {
			r := refused(cmdDisabled, "inventory.enabled is off: this device does not report $package")
			return &r
		}
		if err := c.a.inv.sync(ctx); err != nil {
			r := commandResponse{Status: "FAILED", StatusReason: &commandReason{ReasonCode: cmdFailed, ReasonDescription: err.Error()}}
			return &r
		}
		return &commandResponse{Status: "SUCCEEDED"}
	}
	return c.rollback(ctx, id)
}

// rollback journals a rollback of the committed slot to the previous one and runs it.
func (c *commander) rollback(ctx context.Context, id string) *commandResponse {
	a := c.a
	inst, err := loadInstalled(a.cfg.StateDir)
	if err != nil {
		r := commandResponse{Status: "FAILED", StatusReason: &commandReason{ReasonCode: cmdFailed, ReasonDescription: err.Error()}}
		return &r
	}
	cur, ok := inst["slot"]
	s := &slotFlow{a: a, cfg: a.cfg.Slot}
	if !ok || s.ready() != nil {
		r := refused(cmdUnsupported, "rollback is supported for A/B slots; this device has no committed slot release")
		return &r
	}
	if cur.Previous == nil {
		r := refused(cmdNoPrevious, "installed.json records nothing that ran before %s", cur.Version)
		return &r
	}
	booted, err := s.booted()
	if err == nil {
		var st slot.Status
		if st, err = slot.ReadStatus(ctx, s.bootloader()); err == nil {
			err = slot.CheckBooted(st, booted)
		}
	}
	if err != nil {
		r := commandResponse{Status: "FAILED", StatusReason: &commandReason{ReasonCode: string(reason.Of(err)), ReasonDescription: err.Error()}}
		return &r
	}
	j := &ota.Journal{JobID: commandJobIDPfx + id, Target: string(jobdoc.TargetSlot), TargetKey: "slot",
		Version: cur.Version, PreviousVersion: cur.Previous.Version, Slot: booted, State: ota.StateRollback,
		Data: map[string]string{"command": id},
		Report: &ota.Report{Status: string(jobs.Succeeded), Details: map[string]string{"stage": "rollback", "reason": "COMMANDED",
			"detail": "rollback command " + id, "version": cur.Version, "previousVersion": cur.Previous.Version}}}
	if err := c.respond(ctx, id, commandResponse{Status: "IN_PROGRESS"}); err != nil {
		a.log.Warn("command response not delivered", "execution", id, "err", err)
	}
	go func() {
		// The job loop's own lock: a job cannot start while the rollback runs, and vice versa.
		a.jobMu.Lock()
		defer a.jobMu.Unlock()
		if err := a.runJournal(ctx, j, false); err != nil && ctx.Err() == nil {
			a.log.Error("rollback command", "execution", id, "err", err)
		}
	}()
	return nil
}

// isCommand tells a journal written by a command from a job's.
func isCommand(j *ota.Journal) bool { return j.Data["command"] != "" }

// finishCommand runs in the report state of a command's journal: the old slot runs, so the
// record goes back one step, the execution is answered and `$package` corrected.
func (a *Agent) finishCommand(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	id := j.Data["command"]
	resp := commandResponse{Status: "SUCCEEDED", Result: map[string]result{"version": {j.PreviousVersion}}}
	if j.Report.Details["rolledBack"] == "true" {
		if err := restorePrevious(a.cfg.StateDir, j.TargetKey, j.Version); err != nil {
			return "", fmt.Errorf("recording the rollback: %w", err)
		}
		if s := j.Report.Details["runningSlot"]; s != "" {
			resp.Result["slot"] = result{s}
		}
	} else {
		resp = commandResponse{Status: "FAILED", StatusReason: &commandReason{ReasonCode: cmdFailed, ReasonDescription: j.Report.Details["detail"]}}
	}
	if err := a.cmds.respond(ctx, id, resp); err != nil {
		return "", err
	}
	return ota.EvOK, nil
}

// restorePrevious makes the previous entry at key the installed one (idempotent: done once
// the record no longer names from).
func restorePrevious(stateDir, key, from string) error {
	m, err := loadInstalled(stateDir)
	if err != nil {
		return err
	}
	e, ok := m[key]
	if !ok || e.Version != from || e.Previous == nil {
		return nil
	}
	prev := *e.Previous
	e.Previous = nil
	prev.Previous = &e
	m[key] = prev
	return writeInstalled(stateDir, m)
}

// Subscriptions are the topic filters the agent needs beyond the Jobs API (jobs.Config.Extra).
func (a *Agent) Subscriptions() []string {
	var out []string
	if a.cfg.Inventory.Enabled {
		out = append(out, a.inv.topic+"/+/+")
	}
	if len(a.cfg.Commands.Allow) > 0 {
		out = append(out, a.cmds.prefix+"+/request/json", a.cmds.prefix+"+/response/+/json")
	}
	return out
}

// OnMessage takes what arrives on Subscriptions (jobs.Config.OnMessage). It must return soon:
// commands run on their own goroutine.
func (a *Agent) OnMessage(topic string, payload []byte) {
	switch {
	case strings.HasPrefix(topic, a.inv.topic+"/"):
		a.inv.onMessage(topic, payload)
	case strings.HasPrefix(topic, a.cmds.prefix):
		a.mu.Lock()
		ctx, pub := a.runCtx, a.cmds.pub
		a.mu.Unlock()
		if ctx == nil || pub == nil {
			return
		}
		a.bg.Add(1)
		go func() {
			defer a.bg.Done()
			a.cmds.onMessage(ctx, topic, payload)
		}()
	}
}

// startDeviceManagement starts the reporter when api can publish; the returned func waits for
// the goroutines after ctx ended.
func (a *Agent) startDeviceManagement(ctx context.Context, api jobsAPI) func() {
	pub, ok := api.(publisher)
	if !ok {
		return func() {}
	}
	a.mu.Lock()
	a.runCtx = ctx
	a.inv.pub, a.cmds.pub = pub, pub
	a.mu.Unlock()
	if a.cfg.Inventory.Enabled {
		a.bg.Add(1)
		go func() {
			defer a.bg.Done()
			a.inv.run(ctx)
		}()
		a.inv.Kick()
	}
	return a.bg.Wait
}
