//go:build device

package device

// Power-loss truth (docs/power-loss.md): the board's disk is attached through QEMU's
// blklogwrites driver while it runs a files install, a binary swap and a complete A/B update;
// test/powercut replays the write log to every flush point and to seeded samples between
// flushes, judges each replayed disk offline, and boots the board from one disk per class of
// agent-visible state, against an emulator restored to what the service held at that moment.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/fieldota/fieldota/test/powercut/judge"
	"github.com/fieldota/fieldota/test/powercut/replay"
	"github.com/fieldota/fieldota/test/powercut/wlog"
	"github.com/fieldota/fieldota/test/testdoc"
)

// powerLossSeed seeds the in-between samples; FIELDOTA_POWERCUT_SEED overrides it to explore.
const powerLossSeed = 14

// The payloads of the files and binary jobs.
const (
	helloV2    = "hello 2.0.0\n"
	binaryV2   = "#!/bin/sh\necho hello 2.0.0\n"
	appVersion = "2.0.0"
)

// powerLossMode is FIELDOTA_POWERCUT: "full" (make test-powercut: more samples between
// flushes, every class booted) or the CI sample (the default).
type powerLossMode struct {
	full bool
	replay.Options
}

func currentPowerLossMode() powerLossMode {
	m := powerLossMode{Options: replay.Options{Seed: powerLossSeed, Exhaustive: 10, PerInterval: 32, Tears: 2, Halves: true}}
	if os.Getenv("FIELDOTA_POWERCUT") == "full" {
		m.full, m.Exhaustive, m.PerInterval, m.Tears = true, 12, 128, 8
	}
	if s := os.Getenv("FIELDOTA_POWERCUT_SEED"); s != "" {
		if n, err := strconv.ParseUint(s, 10, 64); err == nil {
			m.Seed = n
		}
	}
	return m
}

// board is an agent build with its slot images and pristine disk.
type board struct {
	name     string
	pristine string
	slotA    string // slot a's image (v1)
	good     string // the v2 image the A/B update writes (under the emulator's bucket)
}

func (e *env) defaultBoard() *board {
	return &board{name: "agent", pristine: e.pristine, slotA: e.images["slot-a-v1"], good: e.images["good-v2"]}
}

var faultBoards sync.Map // tag -> *board

// faultBoard builds the agent with a fault-injection tag, its two slot images and a disk.
func (e *env) faultBoard(t *testing.T, tag string) *board {
	t.Helper()
	if b, ok := faultBoards.Load(tag); ok {
		return b.(*board)
	}
	agent := filepath.Join(e.dir, "arm64", "fieldota-agent-"+tag)
	env := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64"}
	if err := goBuild(e.repo, env, agentTags+" "+tag, agent, "./cmd/fieldota-agent"); err != nil {
		t.Fatal(err)
	}
	b := &board{name: tag, slotA: filepath.Join(e.dir, "slot-a-v1-"+tag+".img"),
		good: filepath.Join(e.artifacts, "bucket", "good-v2-"+tag+".img"), pristine: filepath.Join(e.dir, "pristine-"+tag+".img")}
	if err := e.buildSlot(slotImage{"slot-a-v1", slotVersionA, "normal", `[["/bin/true"]]`}, agent, b.slotA); err != nil {
		t.Fatal(err)
	}
	if err := e.buildSlot(slotImage{"good-v2", slotVersionB, "normal", `[["/bin/true"]]`}, agent, b.good); err != nil {
		t.Fatal(err)
	}
	if err := e.buildDisk(b.pristine, b.slotA); err != nil {
		t.Fatal(err)
	}
	faultBoards.Store(tag, b)
	return b
}

// recording is one recorded run: the disk before it, the write log, the service's timeline.
type recording struct {
	dir, base, log string
	rec            *judge.Recording
	docs           map[string]string // job id -> the signed document it was created with
	took           time.Duration
}

// flowJobs are the three jobs of a recording, in order.
func (e *env) flowJobs(b *board) ([]judge.Job, map[string]testdoc.Doc) {
	for name, content := range map[string]string{"hello.txt": helloV2, "hello": binaryV2} {
		if err := writeFile(filepath.Join(e.artifacts, "bucket", name), content, 0o644); err != nil {
			panic(err)
		}
	}
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	files := testdoc.For("hello.txt", []byte(helloV2), appVersion)
	files.WorkDir, files.Compatible = appDir, []string{boardName}
	bin := testdoc.For("hello", []byte(binaryV2), appVersion)
	bin.Target, bin.Compatible = "binary", []string{boardName}
	slot := e.slotDoc("good-v2")
	digest, size := fileDigest(b.good)
	slot.Name, slot.SHA256, slot.Size = filepath.Base(b.good), digest, size
	id := func(s string) string { return "powerloss-" + b.name + "-" + s }
	jobsList := []judge.Job{
		{ID: id("files"), Target: "files", Version: appVersion, Key: "files:" + appDir, Payload: []byte(helloV2),
			File: "/app/hello.txt", NewSHA256: sum(helloV2)},
		{ID: id("binary"), Target: "binary", Version: appVersion, Key: "binary:" + appBinary, Payload: []byte(binaryV2),
			File: "/bin/hello", OldSHA256: sum(appBinaryV1), NewSHA256: sum(binaryV2)},
		{ID: id("slot"), Target: "slot", Version: slotVersionB, Key: "slot"},
	}
	return jobsList, map[string]testdoc.Doc{jobsList[0].ID: files, jobsList[1].ID: bin, jobsList[2].ID: slot}
}

func fileDigest(path string) ([]byte, int64) {
	b, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	h := sha256.Sum256(b)
	return h[:], int64(len(b))
}

// recordFlows runs the three jobs on board b with its disk under a write log.
func (e *env) recordFlows(t *testing.T, b *board) *recording {
	t.Helper()
	start := time.Now()
	jobList, docs := e.flowJobs(b)
	r := &recording{docs: map[string]string{}}
	var mu sync.Mutex
	var events []judge.Event
	ours := map[string]bool{}
	for _, j := range jobList {
		ours[j.ID] = true
	}
	var logPath string
	s := newScenarioWith(t, scenarioOpts{inProcess: true, disk: b.pristine, onEvent: func(sim *jobsim.Sim, ev jobsim.Event) {
		kind := map[string]string{jobsim.EventJobCreated: "created", jobsim.EventStatus: "status", jobsim.EventUpdated: "updated"}[ev.Kind]
		if kind == "" || !ours[ev.JobID] {
			return
		}
		// Called before the device hears of the change: every write it makes because of it
		// comes after this size of the log.
		fi, err := os.Stat(logPath)
		if err != nil {
			t.Errorf("write log: %v", err)
			return
		}
		x, err := sim.DescribeJobExecution(ev.JobID, thing, 0)
		if err != nil {
			t.Errorf("describe %s: %v", ev.JobID, err)
			return
		}
		mu.Lock()
		events = append(events, judge.Event{LogBytes: fi.Size(), Kind: kind, JobID: ev.JobID, Status: x.Status,
			Version: x.VersionNumber, Details: x.StatusDetails.DetailsMap})
		mu.Unlock()
	}})
	r.dir = s.dir
	r.base = filepath.Join(s.dir, "base.img")
	if out, err := runCmd("cp", "--sparse=always", s.disk, r.base); err != nil {
		t.Fatalf("copying the disk: %v %s", err, out)
	}
	logPath = filepath.Join(s.dir, "writes.log")
	s.recordLog = logPath
	s.powerOn()
	i := s.expectRunning("a", slotVersionA, 0)
	for _, j := range jobList {
		doc, err := docs[j.ID].Signed(e.key)
		if err != nil {
			t.Fatal(err)
		}
		r.docs[j.ID] = doc
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = s.api.CreateJob(ctx, jobsim.CreateJobInput{JobID: j.ID, Targets: []string{thing}, Document: doc})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		i = s.expect("msg=reported job="+j.ID, i, jobTimeout)
		i = s.expect("no pending job", i, jobTimeout)
		s.expectDetails(s.waitTerminalOf(j.ID, jobTimeout), "SUCCEEDED", map[string]string{"version": j.Version})
	}
	s.expect(fmt.Sprintf("fieldota-device: slot=b version=%s up", slotVersionB), 0, time.Second)
	s.powerCut()
	r.log = logPath
	r.took = time.Since(start)

	base, err := os.ReadFile(r.base)
	if err != nil {
		t.Fatal(err)
	}
	layout, err := diskLayout(base)
	if err != nil {
		t.Fatal(err)
	}
	slotA, err := os.ReadFile(b.slotA)
	if err != nil {
		t.Fatal(err)
	}
	slotB, err := os.ReadFile(b.good)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	r.rec = &judge.Recording{Layout: layout, SlotA: slotA, SlotB: slotB, Jobs: jobList, Events: events}
	mu.Unlock()
	// The manifest lets `go run ./test/powercut/cmd/replay` judge the recording again.
	m := &judge.Manifest{Base: "base.img", Log: "writes.log", SlotA: b.slotA, SlotB: b.good, Layout: layout,
		Jobs: jobList, Events: r.rec.Events, Docs: r.docs, Payloads: map[string]string{
			jobList[0].ID: filepath.Join(e.artifacts, "bucket", "hello.txt"),
			jobList[1].ID: filepath.Join(e.artifacts, "bucket", "hello")}}
	if err := m.Save(r.dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("recording on board %s: %.1fs, %d service events", b.name, r.took.Seconds(), len(events))
	return r
}

func runCmd(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

// diskLayout reads the MBR that build-image.sh writes: p1 boot, p2 slot a, p3 slot b, p4 data.
func diskLayout(disk []byte) (judge.Layout, error) {
	if len(disk) < 512 || disk[510] != 0x55 || disk[511] != 0xaa {
		return judge.Layout{}, fmt.Errorf("no MBR")
	}
	var parts [4]replay.Region
	for i, name := range []string{"boot", "slot a", "slot b", "data"} {
		e := disk[446+16*i:]
		parts[i] = replay.Region{Name: name, Start: int64(binary.LittleEndian.Uint32(e[8:])) * 512,
			Size: int64(binary.LittleEndian.Uint32(e[12:])) * 512}
		if parts[i].Size == 0 || parts[i].Start+parts[i].Size > int64(len(disk)) {
			return judge.Layout{}, fmt.Errorf("partition %d (%s) outside the disk", i+1, name)
		}
	}
	return judge.Layout{Boot: parts[0], SlotA: parts[1], SlotB: parts[2], Data: parts[3],
		EnvFiles: [2]string{"uboot.env", "uboot-redund.env"}, EnvSize: 0x4000,
		StateDir: "/fieldota", AppDirs: []string{"/app", "/bin"}, BootFsck: true}, nil
}

// open reads the disk the recording started from and its write log.
func (r *recording) open(t *testing.T) ([]byte, *wlog.Log) {
	t.Helper()
	base, err := os.ReadFile(r.base)
	if err != nil {
		t.Fatal(err)
	}
	l, err := wlog.Open(r.log, int64(len(base)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return base, l
}

// replayAll judges every point of the recording offline.
func replayAll(t *testing.T, r *recording, m powerLossMode) (*judge.Summary, *wlog.Log) {
	t.Helper()
	base, l := r.open(t)
	judge.Bind(r.rec.Events, l)
	plan := replay.NewPlan(l, m.Options)
	work := filepath.Join(r.dir, "judge")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	sum, err := judge.Run(r.rec, base, l, plan, m.Seed, work)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	sum.Report(&sb, false, false)
	t.Logf("write log: %d entries (%d counted by its superblock), %d bytes\n%s", len(l.Entries), l.Counted, fileSize(r.log), sb.String())
	t.Logf("points by the job under way (flush / in-between / failing): %s", pointsPerFlow(r, sum))
	// The whole verdict, every class and failure, stays with the recording.
	var full strings.Builder
	sum.Report(&full, true, true)
	if err := os.WriteFile(filepath.Join(r.dir, "verdict.txt"), []byte(full.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return sum, l
}

// pointsPerFlow counts the points by the flow the board was in when the power went: the last
// job created before the cut (the A/B update includes its reboots and commit).
func pointsPerFlow(r *recording, sum *judge.Summary) string {
	target := map[string]string{}
	for _, j := range r.rec.Jobs {
		target[j.ID] = j.Target
	}
	type count struct{ flush, between, failed int }
	counts := map[string]*count{}
	order := []string{"idle"}
	for _, j := range r.rec.Jobs {
		order = append(order, j.Target)
	}
	for _, k := range order {
		counts[k] = &count{}
	}
	for _, res := range sum.Results {
		flow := "idle"
		for _, ev := range r.rec.Events {
			if ev.Entries > judge.Boundary(res.Point) {
				break
			}
			if ev.Kind == "created" {
				flow = target[ev.JobID]
			}
		}
		c := counts[flow]
		switch res.Point.Kind {
		case replay.KindFlush:
			c.flush++
		case replay.KindBetween:
			c.between++
		}
		if len(res.Problems) > 0 {
			c.failed++
		}
	}
	var parts []string
	for _, k := range order {
		c := counts[k]
		parts = append(parts, fmt.Sprintf("%s %d/%d/%d", k, c.flush, c.between, c.failed))
	}
	return strings.Join(parts, ", ")
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return -1
	}
	return fi.Size()
}

// TestPowerLoss: every flush point and every sampled in-between point of a recorded files
// install, binary swap and A/B update passes the offline judge, and the board booted from one
// disk of each sampled class of states (all of them with FIELDOTA_POWERCUT=full) ends the way
// the judge predicted, reported once, with nothing left behind.
func TestPowerLoss(t *testing.T) {
	m := currentPowerLossMode()
	e := shared
	var r *recording
	t.Run("Record", func(t *testing.T) { r = e.recordFlows(t, e.defaultBoard()) })
	if r == nil || t.Failed() {
		t.FailNow()
	}
	sum, l := replayAll(t, r, m)
	if len(sum.Failures) > 0 {
		t.Errorf("%d of %d replay points break a promise (above; all in %s)", len(sum.Failures), len(sum.Results), filepath.Join(r.dir, "verdict.txt"))
	}
	classes, why := sum.Classes, map[*judge.Class]string{}
	if !m.full {
		classes, why = ciSample(sum)
	}
	t.Logf("booting %d of %d state classes", len(classes), len(sum.Classes))
	bootClasses(t, r, sum, l, classes, why)
}

// ciSample is the fixed sample of classes CI boots: one class for each of these moments (the
// first class, in log order, whose representative matches), chosen by what the board finds so
// that it does not depend on the recording's timing.
func ciSample(sum *judge.Summary) ([]*judge.Class, map[*judge.Class]string) {
	type moment struct {
		name  string
		match func(o *judge.Observed, c *judge.Class) bool
	}
	state := func(o *judge.Observed) string {
		if o.Journal == nil {
			return ""
		}
		return o.Journal.Target + "/" + string(o.Journal.State)
	}
	env := func(o *judge.Observed, k string) string {
		if e := o.Env.Current(); e != nil {
			return e[k]
		}
		return ""
	}
	moments := []moment{
		// The download into slot b was cut with part of it checkpointed: resume, not restart.
		{"slot download resumes from its checkpoint", func(o *judge.Observed, c *judge.Class) bool {
			return state(o) == "slot/download" && !o.SlotBIntact && o.SlotBPrefix > 0 && len(o.Checkpoints) > 0
		}},
		// The trial is set but the journal still says install.
		{"trial set, journal at install", func(o *judge.Observed, c *judge.Class) bool {
			return state(o) == "slot/install" && env(o, "fieldota_try") == "1"
		}},
		// Slot b committed, the report not yet delivered.
		{"slot committed, report pending", func(o *judge.Observed, c *judge.Class) bool {
			return strings.HasPrefix(state(o), "slot/") && env(o, "fieldota_slot") == "b" && env(o, "fieldota_try") == "0" && !c.Expect.Reported
		}},
		// The service holds SUCCEEDED but the journal was not yet removed.
		{"reported, journal not yet removed", func(o *judge.Observed, c *judge.Class) bool {
			return o.Journal != nil && c.Expect.Reported
		}},
		// The binary swapped in, on probation.
		{"binary on probation", func(o *judge.Observed, c *judge.Class) bool {
			return state(o) == "binary/selftest"
		}},
	}
	var out []*judge.Class
	why := map[*judge.Class]string{}
	for _, mo := range moments {
		for _, c := range sum.Classes {
			if o := sum.Results[c.Points[0]].Obs; o != nil && why[c] == "" && mo.match(o, c) {
				out = append(out, c)
				why[c] = mo.name
				break
			}
		}
	}
	// Every class with a torn file the agent must recognise is booted too.
	for _, c := range sum.Classes {
		if c.Recover && why[c] == "" {
			out = append(out, c)
			why[c] = "a torn file to recognise"
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Points[0] < out[b].Points[0] })
	return out, why
}

// bootClasses replays the log again and, at the representative point of each class, writes
// the disk out, restores the service and boots the board from it.
func bootClasses(t *testing.T, r *recording, sum *judge.Summary, l *wlog.Log, classes []*judge.Class, why map[*judge.Class]string) {
	t.Helper()
	want := map[int]*judge.Class{}
	for _, c := range classes {
		want[c.Points[0]] = c
	}
	base, err := os.ReadFile(r.base)
	if err != nil {
		t.Fatal(err)
	}
	d := replay.NewDisk(base, l, r.rec.Layout.Regions())
	n := 0
	for idx, res := range sum.Results {
		c := want[idx]
		if c == nil {
			continue
		}
		n++
		undo, err := d.At(res.Point)
		if err != nil {
			t.Fatal(err)
		}
		img := filepath.Join(r.dir, fmt.Sprintf("class-%03d.img", idx))
		if err := os.WriteFile(img, d.Buf, 0o644); err != nil {
			t.Fatal(err)
		}
		undo()
		name := fmt.Sprintf("%02d-%s", n, strings.NewReplacer("#", "", "{", "-", "}", "", ",", "-", "=", "", ".", "-", "(", "", ")", "", ":", "").Replace(res.Point.Name()))
		if len(name) > 60 {
			name = name[:60]
		}
		t.Run(name, func(t *testing.T) {
			if why[c] != "" {
				t.Logf("in the sample for: %s", why[c])
			}
			bootPoint(t, r, res, c, img)
		})
		os.Remove(img)
	}
}

// bootPoint boots the board from the disk of one replay point.
func bootPoint(t *testing.T, r *recording, res *judge.Result, c *judge.Class, img string) {
	t.Logf("point %s (%d points in its class); expect %s", res.Point.Name(), len(c.Points), c.Expect)
	s := newScenarioWith(t, scenarioOpts{inProcess: true, disk: img})
	mark := restoreService(t, s, r, judge.Boundary(res.Point))
	s.powerOn()
	o := c.Expect
	version := map[string]string{"a": slotVersionA, "b": slotVersionB}[o.Slot]
	if o.Job == "" {
		i := s.expectRunning(o.Slot, version, 0)
		s.expect("no pending job", i, jobTimeout)
	} else {
		ex := s.waitTerminalOf(o.Job, jobTimeout)
		want := map[string]string{}
		if o.RolledBack {
			want["rolledBack"] = "true"
		}
		s.expectDetails(ex, o.Status, want)
		// The agent is idle once the journal is gone: it looks for the next job and finds none.
		line := fmt.Sprintf("fieldota-device: slot=%s version=%s up", o.Slot, version)
		i := s.expect(line, 0, jobTimeout)
		for {
			next, err := s.board.waitLine(line, i, time.Millisecond)
			if err != nil {
				break
			}
			i = next
		}
		s.expect("no pending job", i, jobTimeout)
	}
	time.Sleep(2 * time.Second) // a duplicate report would show up now
	reports := 0
	for _, line := range s.sim.lines()[mark:] {
		if strings.Contains(line, " status job=") && strings.Contains(line, "by device") &&
			(strings.Contains(line, "→ SUCCEEDED") || strings.Contains(line, "→ FAILED")) {
			reports++
		}
	}
	if want := map[bool]int{true: 0, false: 1}[o.Reported || o.Job == ""]; reports != want {
		t.Errorf("the board made %d terminal reports after the power came back, want %d", reports, want)
	}
	s.powerCut()
	var succeeded []string
	for id := range r.rec.ServiceAt(judge.Boundary(res.Point)) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		x, err := s.api.DescribeJobExecution(ctx, id, thing, 0)
		cancel()
		if err == nil && x.Status == "SUCCEEDED" {
			succeeded = append(succeeded, id)
		}
	}
	disk, err := os.ReadFile(s.disk)
	if err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(s.dir, "final")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	problems, err := judge.Final(r.rec, disk, work, o.Slot, succeeded)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("after the job: %s", p)
	}
}

// restoreService brings a fresh emulator to what the service held when the power went: the
// jobs created by then, each execution driven through the device API with the updates the
// device had made (so that versionNumbers match). It returns how many emulator lines the
// restoration printed.
func restoreService(t *testing.T, s *scenario, r *recording, boundary int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var cl *jobs.Client
	last := map[string]int64{}
	for _, ev := range r.rec.Events {
		if ev.Entries > boundary {
			break
		}
		if ev.Kind == "created" {
			if _, err := s.api.CreateJob(ctx, jobsim.CreateJobInput{JobID: ev.JobID, Targets: []string{thing}, Document: r.docs[ev.JobID]}); err != nil {
				t.Fatal(err)
			}
			last[ev.JobID] = ev.Version
			continue
		}
		if ev.Version <= last[ev.JobID] {
			continue // the service changed nothing the device asked for (its own notifications)
		}
		if cl == nil {
			var err error
			cl, err = jobs.Dial(ctx, jobs.Config{Endpoint: fmt.Sprintf("tcp://127.0.0.1:%d", s.e.mqttPort), ThingName: thing,
				ClientID: thing, MaxRetries: -1})
			if err != nil {
				t.Fatalf("restoring the service: %v", err)
			}
		}
		_, err := cl.Update(ctx, ev.JobID, jobs.UpdateInput{Status: jobs.Status(ev.Status), StatusDetails: ev.Details,
			ExpectedVersion: jobs.Version(last[ev.JobID])})
		if err != nil {
			t.Fatalf("restoring %s to %s v%d: %v", ev.JobID, ev.Status, ev.Version, err)
		}
		last[ev.JobID] = ev.Version
	}
	if cl != nil {
		cl.Close()
	}
	for id, js := range r.rec.ServiceAt(boundary) {
		x, err := s.api.DescribeJobExecution(ctx, id, thing, 0)
		if err != nil {
			t.Fatal(err)
		}
		if x.Status != js.Status || x.VersionNumber != js.Version {
			t.Fatalf("restored %s as %s v%d, the service held %s v%d", id, x.Status, x.VersionNumber, js.Status, js.Version)
		}
	}
	return len(s.sim.lines())
}

// TestPowerLossHarnessIsNotBlind: with the fsync before the rename removed from the durable
// write helper (build tag fault_durable_nofilesync), the offline judge finds points where the
// board would fail; they are printed with the write, its file and the seed.
func TestPowerLossHarnessIsNotBlind(t *testing.T) {
	m := currentPowerLossMode()
	e := shared
	b := e.faultBoard(t, "fault_durable_nofilesync")
	var r *recording
	t.Run("Record", func(t *testing.T) { r = e.recordFlows(t, b) })
	if r == nil || t.Failed() {
		t.FailNow()
	}
	sum, _ := replayAll(t, r, m)
	if len(sum.Failures) == 0 {
		t.Fatalf("the agent without its fsync before rename passed all %d points: the harness cannot see a missing fsync", len(sum.Results))
	}
	t.Logf("as it must, the judge finds %d of %d points broken (listed above by promise)", len(sum.Failures), len(sum.Results))

	// And the board agrees: booted from the first disk with an unreadable journal, the agent
	// refuses to resume and the job never ends.
	for _, f := range sum.Failures {
		if f.Result.Problems[0].Check != "journal-parses" {
			continue
		}
		t.Run("BootFirstUnreadableJournal", func(t *testing.T) {
			img := filepath.Join(r.dir, "unreadable-journal.img")
			writeDiskAt(t, r, f.Result.Point, img)
			s := newScenarioWith(t, scenarioOpts{inProcess: true, disk: img})
			restoreService(t, s, r, judge.Boundary(f.Result.Point))
			s.powerOn()
			s.expect("cannot resume: journal", 0, bootTimeout)
			for id, js := range f.Result.Obs.Service {
				if js.Terminal() {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				x, err := s.api.DescribeJobExecution(ctx, id, thing, 0)
				cancel()
				if err != nil || x.Status != js.Status {
					t.Errorf("job %s: %s, %v; want it stuck at %s", id, x.Status, err, js.Status)
				}
				t.Logf("point %s: the agent refuses its journal; job %s stays %s", f.Result.Point.Name(), id, x.Status)
			}
			os.Remove(img)
		})
		break
	}
}

// writeDiskAt replays the recording to point p and writes the disk to path.
func writeDiskAt(t *testing.T, r *recording, p replay.Point, path string) {
	t.Helper()
	base, l := r.open(t)
	d := replay.NewDisk(base, l, r.rec.Layout.Regions())
	undo, err := d.At(p)
	if err != nil {
		t.Fatal(err)
	}
	defer undo()
	if err := os.WriteFile(path, d.Buf, 0o644); err != nil {
		t.Fatal(err)
	}
}
