package agent

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/ota/slot"
	"github.com/fieldota/fieldota/test/bootsim"
	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/fieldota/fieldota/test/jobsim/commands"
	"github.com/fieldota/fieldota/test/jobsim/packages"
	"github.com/fieldota/fieldota/test/jobsim/shadow"
	"github.com/fieldota/fieldota/test/testdoc"
)

// packageRig is an A/B board whose agent reports `$package` and takes commands, with the
// emulator's catalog holding rootfs 1.0.0 and 2.0.0 (published) and Jobs writing $package at
// SUCCEEDED.
func newPackageRig(t *testing.T) (*slotRig, slot.File) {
	t.Helper()
	env := fileEnv(t, slot.Env{slot.VarSlot: "a", slot.VarTry: "0"})
	r := newSlotRig(t, env, config.Slot{Bootloader: "file", EnvFile: env.Path})
	r.h.cfg.Inventory = config.Inventory{Enabled: true, Packages: map[string]string{"slot": "rootfs"}}
	r.h.cfg.Commands.Allow = []string{"rollback", "report-inventory"}
	c := r.h.sim.Catalog()
	if _, err := c.CreatePackage("rootfs", ""); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"1.0.0", "2.0.0"} {
		if _, err := c.CreatePackageVersion("rootfs", v, packages.CreateVersionInput{}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.UpdatePackageVersion("rootfs", v, packages.UpdateVersionInput{Action: "PUBLISH"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.UpdatePackageConfiguration(packages.VersionUpdateByJobsConfig{Enabled: true, RoleArn: "arn:aws:iam::123456789012:role/spc"}); err != nil {
		t.Fatal(err)
	}
	return r, env
}

// packageJob creates a slot job for img whose SUCCEEDED makes Jobs write rootfs version.
func (r *slotRig) packageJob(id string, img []byte, version string) {
	r.h.t.Helper()
	r.h.publish("rootfs.img", img)
	d := testdoc.For("rootfs.img", img, version)
	d.Target, d.Package = "slot", "rootfs"
	in := jobsim.CreateJobInput{JobID: id, Targets: []string{thing}, Document: r.h.doc(d),
		DestinationPackageVersions: []string{r.h.sim.Catalog().VersionArn("rootfs", version)}}
	if _, err := r.h.sim.CreateJob(in); err != nil {
		r.h.t.Fatal(err)
	}
}

// reported is rootfs in $package: version and attributes, and the shadow's version.
func (h *harness) reported() (version string, attrs map[string]any, shadowVersion int64) {
	d, ok := h.sim.Shadows().Get(thing, shadow.PackageShadow)
	if !ok {
		return "", nil, 0
	}
	p, _ := d.Reported["rootfs"].(map[string]any)
	v, _ := p["version"].(string)
	a, _ := p["attributes"].(map[string]any)
	return v, a, d.Version
}

func (h *harness) waitReported(version, slotName string) {
	h.t.Helper()
	h.waitFor("$package rootfs "+version+" in slot "+slotName, func() bool {
		v, a, _ := h.reported()
		return v == version && a["slot"] == slotName
	})
}

// shadowWrites lists every state $package went through.
func (h *harness) shadowWrites() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, e := range h.events {
		if e.Kind == jobsim.EventShadow && strings.HasPrefix(e.Detail, shadow.PackageShadow+" ") {
			out = append(out, strings.TrimPrefix(e.Detail, shadow.PackageShadow+" "))
		}
	}
	return out
}

func (r *slotRig) rebootAndBoot() {
	r.h.t.Helper()
	r.h.waitFor("the reboot request", r.rebootRequested)
	r.agentStop()
	if err := os.Remove(r.marker); err != nil {
		r.h.t.Fatal(err)
	}
	r.stop = r.boot(nil)
}

func (r *slotRig) agentStop() {
	if r.stop != nil {
		r.stop()
	}
}

func (h *harness) command(payload string) string {
	h.t.Helper()
	svc := h.sim.Commands()
	id := strings.NewReplacer("{", "", "}", "", `"`, "", ":", "-").Replace(payload)
	if _, err := svc.CreateCommand(id, []byte(payload), "application/json"); err != nil && !strings.Contains(err.Error(), "exists") {
		h.t.Fatal(err)
	}
	ex, err := h.sim.StartCommandExecution(id, thing, time.Minute)
	if err != nil {
		h.t.Fatal(err)
	}
	return ex.ExecutionID
}

func (h *harness) waitCommand(id string, terminal bool) commands.Execution {
	h.t.Helper()
	var ex commands.Execution
	h.waitFor("command "+id, func() bool {
		ex, _ = h.sim.Commands().Get(id)
		return ex.Status != commands.Created && (!terminal || ex.Status != commands.InProgress)
	})
	return ex
}

// TestSlotSucceededWithDestinationPackageVersionsThenRollbackCommandRestoresTheOldVersion is the
// `$package` story end to end: the agent reports 1.0.0 at its first start; a slot update with
// destinationPackageVersions SUCCEEDS and Jobs writes 2.0.0 (stale attributes), which the agent
// confirms with its own; a restart with nothing changed writes nothing; a rollback command boots
// slot a again, is answered SUCCEEDED from there, and $package says 1.0.0 again.
func TestSlotSucceededWithDestinationPackageVersionsThenRollbackCommandRestoresTheOldVersion(t *testing.T) {
	r, env := newPackageRig(t)
	r.stop = r.boot(nil)
	r.h.waitReported("1.0.0", "a")

	r.packageJob("ab", bootsim.Image("2.0.0", bootsim.ImageOpts{}), "2.0.0")
	r.rebootAndBoot()
	if ex := r.h.waitTerminal("ab"); ex.Status != "SUCCEEDED" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	r.h.waitReported("2.0.0", "b")
	var byJobs bool
	for _, w := range r.h.shadowWrites() {
		// Jobs writes the version only: the attributes are still slot a's until the agent writes.
		byJobs = byJobs || strings.Contains(w, `"version":"2.0.0"`) && strings.Contains(w, `"slot":"a"`)
	}
	if !byJobs {
		t.Fatalf("Jobs did not write $package at SUCCEEDED: %v", r.h.shadowWrites())
	}

	// A restart with nothing changed: the agent reads the shadow and writes nothing.
	r.agentStop()
	_, _, before := r.h.reported()
	r.stop = r.boot(nil)
	select {
	case <-r.agent.inv.synced:
	case <-time.After(20 * time.Second):
		t.Fatal("no sync after the restart")
	}
	if _, _, after := r.h.reported(); after != before || r.agent.inv.writes.Load() != 0 {
		t.Fatalf("a restart with nothing changed wrote $package: version %d → %d, %d writes", before, after, r.agent.inv.writes.Load())
	}

	r.waitIdle()
	id := r.h.command(`{"command":"rollback"}`)
	r.rebootAndBoot()
	ex := r.h.waitCommand(id, true)
	if ex.Status != commands.Succeeded || string(ex.Result["slot"]) != `{"s":"a"}` {
		b, _ := json.Marshal(ex)
		t.Fatalf("rollback command: %s", b)
	}
	if st, _ := slot.ReadStatus(t.Context(), env); st.Slot != "a" || st.Try {
		t.Fatalf("environment after the rollback: %+v", st)
	}
	r.h.waitReported("1.0.0", "a")
	if inst, _ := loadInstalled(r.h.cfg.StateDir); inst["slot"].Version != "1.0.0" || inst["slot"].Previous == nil || inst["slot"].Previous.Version != "2.0.0" {
		t.Fatalf("installed after the rollback: %+v", inst["slot"])
	}
	// A second rollback would go forward again: it is a one-step record, not a queue.
	if _, err := os.Stat(r.h.cfg.StateDir + "/journal.json"); err == nil {
		t.Fatal("the command's journal was left behind")
	}
}

// TestHealthCheckRollbackNeverShowsTheFailedVersionInPackage: slot b fails its health check; the
// agent rolls back to a and reports FAILED, so Jobs never writes 2.0.0 and neither does the agent.
func TestHealthCheckRollbackNeverShowsTheFailedVersionInPackage(t *testing.T) {
	r, _ := newPackageRig(t)
	r.stop = r.boot(nil)
	r.h.waitReported("1.0.0", "a")
	r.packageJob("ab", bootsim.Image("2.0.0", bootsim.ImageOpts{FailHealth: true}), "2.0.0")
	r.rebootAndBoot() // into b, unhealthy: rollback reboots
	r.rebootAndBoot() // into a
	ex := r.h.waitTerminal("ab")
	if ex.Status != "FAILED" || ex.StatusDetails.DetailsMap["rolledBack"] != "true" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	r.waitIdle()
	id := r.h.command(`{"command":"report-inventory"}`)
	if ex := r.h.waitCommand(id, true); ex.Status != commands.Succeeded {
		t.Fatalf("report-inventory: %+v", ex)
	}
	for _, w := range r.h.shadowWrites() {
		if strings.Contains(w, "2.0.0") {
			t.Fatalf("$package showed the failed version: %s", w)
		}
	}
	r.h.waitReported("1.0.0", "a")
}

// TestCommandWhileAJobRunsIsRejectedWithAReasonCode: a rollback command during a download is
// REJECTED JOB_IN_PROGRESS; a command the device does not allow is REJECTED COMMAND_DISABLED;
// an unknown one UNSUPPORTED_COMMAND; and the job goes on to SUCCEEDED.
func TestCommandWhileAJobRunsIsRejectedWithAReasonCode(t *testing.T) {
	h := newHarness(t)
	h.cfg.Commands.Allow = []string{"rollback"}
	content := h.throttled("slow.bin", 64<<10, 16<<10)
	d := testdoc.For("slow.bin", content, "1.0.0")
	d.WorkDir = h.appRoot + "/slow"
	h.createJob("slow", h.doc(d))
	h.run()
	h.waitFor("the download", func() bool {
		ex, _ := h.sim.DescribeJobExecution("slow", thing, 0)
		return ex.Status == "IN_PROGRESS"
	})
	for payload, code := range map[string]string{
		`{"command":"rollback"}`: cmdJobRunning,
		`{"command":"reboot"}`:   cmdDisabled,
		`{"command":"format"}`:   cmdUnsupported,
		`{"cmd":1}`:              cmdInvalid,
	} {
		ex := h.waitCommand(h.command(payload), true)
		if ex.Status != commands.Rejected || ex.StatusReason == nil || ex.StatusReason.ReasonCode != code {
			t.Errorf("%s: %+v %+v", payload, ex, ex.StatusReason)
		}
	}
	if ex := h.waitTerminal("slow"); ex.Status != "SUCCEEDED" {
		t.Fatalf("the job: %s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
}

// waitIdle waits until the agent has finished its job: the journal gone and the job no longer
// running (the journal goes first: a command sent in between is refused as racing the job).
func (r *slotRig) waitIdle() {
	r.h.t.Helper()
	r.h.waitFor("the agent to be idle", func() bool {
		if _, err := os.Stat(r.h.cfg.StateDir + "/journal.json"); err == nil {
			return false
		}
		r.agent.mu.Lock()
		defer r.agent.mu.Unlock()
		return r.agent.running == ""
	})
}
