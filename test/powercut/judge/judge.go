// Package judge decides, offline and deterministically, whether a replayed disk (test/powercut/
// replay) is one the board survives: it reads the disk the way the board would at its next
// power-on — the U-Boot environment's two copies off the FAT boot partition (as boot.cmd and as
// libubootenv pick them), the slots' bytes, the data partition's ext4 after its journal is
// replayed (Debian's e2fsprogs) and the agent's state files through the agent's own parsers —
// and checks the invariants the update's ordering promises (persist, then act): the bootloader
// is never pointed at a slot that does not hold the whole image, the journal never runs ahead of
// the environment, an installed version is never recorded before it is in place, the service
// never knows more than the journal can account for. It also predicts how the job must end, and
// puts the point in a class of agent-visible states, so that one boot per class (test/device)
// proves the prediction.
package judge

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/fieldota/fieldota/agent"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/durable"
	"github.com/fieldota/fieldota/test/powercut/replay"
	"github.com/fieldota/fieldota/test/powercut/wlog"
)

// Layout says where things are on the board's disk.
type Layout struct {
	Boot, SlotA, SlotB, Data replay.Region
	EnvFiles                 [2]string // on the boot partition, copy 0 and copy 1
	EnvSize                  int
	StateDir                 string // the agent's state_dir, as a path inside the data file system
	// AppDirs are where the jobs place what they install (the files root, the swapped
	// binary's directory), as paths inside the data file system.
	AppDirs []string
	// BootFsck: the board checks the data partition before it mounts it, as
	// test/device/guest/slot-init does: `e2fsck -p`, and `e2fsck -y` when that leaves errors
	// (it repairs a damaged primary superblock from a backup). Without it the judge asks for
	// what a plain mount needs: the journal replayed, nothing else wrong.
	BootFsck bool
}

// Job is one job of the recording.
type Job struct {
	ID      string `json:"id"`
	Target  string `json:"target"` // files | binary | slot
	Version string `json:"version"`
	Key     string `json:"key"` // installed.json key of its target
	// Payload is what the job downloads (for slot jobs, Recording.SlotB).
	Payload []byte `json:"-"`
	// File (files, binary): the path inside the data file system of the file it installs, its
	// content before (OldSHA256, "" = absent) and after.
	File      string `json:"file,omitempty"`
	OldSHA256 string `json:"oldSha256,omitempty"`
	NewSHA256 string `json:"newSha256,omitempty"`
}

// Event is one change of the service's record of a job, stamped with the size of the write log
// at the moment the service made it (before the device could hear of it).
type Event struct {
	LogBytes int64             `json:"logBytes"`
	Entries  int               `json:"entries"` // log entries before it (Bind)
	Kind     string            `json:"kind"`    // created | status | updated
	JobID    string            `json:"jobId"`
	Status   string            `json:"status"`
	Version  int64             `json:"versionNumber"`
	Details  map[string]string `json:"statusDetails,omitempty"`
}

// Recording is everything the judge knows about the run.
type Recording struct {
	Layout Layout
	// SlotA is slot a's content as the recording found it; SlotB the image the update writes.
	SlotA, SlotB []byte
	Jobs         []Job
	Events       []Event
}

// Bind stamps each event with the number of log entries logged before it.
func Bind(events []Event, l *wlog.Log) {
	for i := range events {
		n := 0
		for n < len(l.Entries) && l.Entries[n].Pos < events[i].LogBytes {
			n++
		}
		events[i].Entries = n
	}
}

// ServiceJob is the service's record of one job at a point.
type ServiceJob struct {
	Status  string
	Version int64
	Details map[string]string
	Events  int // how many of the job's events happened before the point
}

// Terminal tells whether the execution has ended.
func (s ServiceJob) Terminal() bool {
	switch s.Status {
	case "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED":
		return true
	}
	return false
}

// ServiceAt is the service's record of every job created before the cut: the events made while
// the log held at most boundary entries (a report the service processed later was still in
// flight and is lost with the power).
func (r *Recording) ServiceAt(boundary int) map[string]ServiceJob {
	out := map[string]ServiceJob{}
	for _, e := range r.Events {
		if e.Entries > boundary {
			break
		}
		s := out[e.JobID]
		s.Status, s.Version, s.Details = e.Status, e.Version, e.Details
		s.Events++
		out[e.JobID] = s
	}
	return out
}

// Boundary is the number of log entries issued when the power went at p.
func Boundary(p replay.Point) int {
	if p.Kind == replay.KindBetween {
		return p.Issued
	}
	return p.Prefix
}

// Problem is one broken promise at a point.
type Problem struct {
	Check string // short name of the invariant, e.g. "slot-before-env"
	What  string
}

func (p Problem) String() string { return p.Check + ": " + p.What }

// Outcome is how the job under way must end once the board is powered on again.
type Outcome struct {
	Job    string // "" when no job is under way: the board must come up idle
	Status string // SUCCEEDED | FAILED
	// Reported: the service already holds the terminal status; the boot must not add another.
	Reported   bool
	RolledBack bool
	Slot       string // where the board runs at the end (a, b)
}

func (o Outcome) String() string {
	if o.Job == "" {
		return "idle on slot " + o.Slot
	}
	s := o.Job + " " + o.Status
	if o.RolledBack {
		s += " rolledBack"
	}
	if o.Reported {
		s += " (already reported)"
	}
	return s + " on slot " + o.Slot
}

// Observed is what the board will find.
type Observed struct {
	Env         redundantEnv
	FSError     string
	Repaired    string // what the board's boot-time fsck repairs (Layout.BootFsck)
	Journal     *ota.Journal
	JournalErr  string
	Installed   map[string]string
	InstalledOK bool
	Checkpoints map[string]string // board path -> "offset N of M" or the parse error
	Staging     []string          // files under state_dir/staging
	Temps       []string          // leftovers of durable writes, files and swap installs
	App         map[string]string // data-fs path under an AppDirs entry -> sha256
	SlotBIntact bool
	SlotBPrefix int64 // bytes of slot b that match the image from the start
	SlotAIntact bool
	Service     map[string]ServiceJob

	checkpointOffsets map[string]int64  // data-fs path -> offset
	files             map[string][]byte // the data file system's files
}

// Result is the verdict on one point.
type Result struct {
	Point    replay.Point
	Problems []Problem
	// Warnings are states the agent must recognise and recover from (a torn checkpoint): not
	// failures offline, but their class is always booted.
	Warnings []string
	Expect   Outcome
	Class    string
	Obs      *Observed
}

// Judge caches what it has read per partition content.
type Judge struct {
	rec     *Recording
	work    string
	seed    maphash.Seed
	envs    map[uint64]redundantEnv
	data    map[uint64]*dataState
	slotB   map[uint64][2]int64
	slotA   map[uint64]bool
	hashes  [4]uint64
	hashed  [4]bool
	slotBSz int64
	// DataReads counts the ext4 partitions read (distinct data partition contents).
	DataReads int
}

// New makes a judge; work is a scratch directory.
func New(rec *Recording, work string) *Judge {
	return &Judge{rec: rec, work: work, seed: maphash.MakeSeed(), envs: map[uint64]redundantEnv{},
		data: map[uint64]*dataState{}, slotB: map[uint64][2]int64{}, slotA: map[uint64]bool{}}
}

// Regions are the partitions in the order the judge tracks them: boot, slot a, slot b, data.
func (l Layout) Regions() []replay.Region { return []replay.Region{l.Boot, l.SlotA, l.SlotB, l.Data} }

func (j *Judge) regionHash(d *replay.Disk, i int) uint64 {
	if j.hashed[i] && !d.Dirty(i) {
		return j.hashes[i]
	}
	r := j.rec.Layout.Regions()[i]
	j.hashes[i] = maphash.Bytes(j.seed, d.Buf[r.Start:r.Start+r.Size])
	j.hashed[i] = true
	d.Clean(i)
	return j.hashes[i]
}

type dataState struct {
	fsErr       string
	repaired    string            // what the boot-time fsck repaired
	files       map[string][]byte // data-fs path -> content
	journal     *ota.Journal
	journalErr  string
	installed   map[string]string
	installedOK bool
	checkpoints map[string]string
	cpOffsets   map[string]int64
	cpBad       []string
	staging     []string
	temps       []string
	app         map[string]string
}

// Judge reads the disk at p (d must be at p) and checks it.
func (j *Judge) Judge(d *replay.Disk, p replay.Point) (*Result, error) {
	res := &Result{Point: p}
	obs, warnings, err := j.observe(d)
	if err != nil {
		return nil, err
	}
	res.Obs, res.Warnings = obs, warnings
	obs.Service = j.rec.ServiceAt(Boundary(p))
	j.check(res)
	res.Class = j.class(res)
	return res, nil
}

// observe reads what the board will find on d.
func (j *Judge) observe(d *replay.Disk) (*Observed, []string, error) {
	L := j.rec.Layout
	obs := &Observed{}
	var warnings []string

	// The U-Boot environment.
	h := j.regionHash(d, 0)
	env, ok := j.envs[h]
	if !ok {
		boot := d.Buf[L.Boot.Start : L.Boot.Start+L.Boot.Size]
		var copies [2]envCopy
		vol, err := openFAT(boot)
		for i, name := range L.EnvFiles {
			if err != nil {
				copies[i] = envCopy{Why: err.Error()}
				continue
			}
			b, rerr := vol.readFile(name)
			if rerr != nil {
				copies[i] = envCopy{Why: rerr.Error()}
				continue
			}
			copies[i] = parseEnvCopy(b, L.EnvSize)
		}
		env = pickEnv(copies[0], copies[1])
		j.envs[h] = env
	}
	obs.Env = env

	// Slot a is never written by these flows; slot b is compared with the image.
	h = j.regionHash(d, 1)
	intact, ok := j.slotA[h]
	if !ok {
		intact = bytes.Equal(d.Buf[L.SlotA.Start:L.SlotA.Start+int64(len(j.rec.SlotA))], j.rec.SlotA)
		j.slotA[h] = intact
	}
	obs.SlotAIntact = intact
	h = j.regionHash(d, 2)
	sb, ok := j.slotB[h]
	if !ok {
		got := d.Buf[L.SlotB.Start : L.SlotB.Start+int64(len(j.rec.SlotB))]
		n := int64(0)
		const blk = 4096
		for n < int64(len(got)) {
			e := min(n+blk, int64(len(got)))
			if !bytes.Equal(got[n:e], j.rec.SlotB[n:e]) {
				for n < e && got[n] == j.rec.SlotB[n] {
					n++
				}
				break
			}
			n = e
		}
		sb = [2]int64{n, int64(len(got))}
		j.slotB[h] = sb
	}
	obs.SlotBPrefix, obs.SlotBIntact = sb[0], sb[0] == sb[1]

	// The data partition.
	h = j.regionHash(d, 3)
	ds, ok := j.data[h]
	if !ok {
		var err error
		ds, err = j.readData(d.Buf[L.Data.Start : L.Data.Start+L.Data.Size])
		if err != nil {
			return nil, nil, err
		}
		j.data[h] = ds
		j.DataReads++
	}
	obs.FSError, obs.Repaired, obs.Journal, obs.JournalErr = ds.fsErr, ds.repaired, ds.journal, ds.journalErr
	obs.Installed, obs.InstalledOK, obs.Checkpoints = ds.installed, ds.installedOK, ds.checkpoints
	obs.checkpointOffsets, obs.files = ds.cpOffsets, ds.files
	obs.Staging, obs.Temps, obs.App = ds.staging, ds.temps, ds.app
	for _, c := range ds.cpBad {
		warnings = append(warnings, "torn checkpoint "+c+": the downloader must drop it and start over")
	}
	if ds.repaired != "" {
		warnings = append(warnings, ds.repaired)
	}
	return obs, warnings, nil
}

// Final checks the disk a board left after a job ended (powered off once it was idle): the
// file system clean, one valid environment both readers agree on with no trial pending and
// booting slot, slot b whole if it boots, no journal, no staged payload, checkpoint or temp
// file left, and every job in succeeded recorded as installed with its content in place.
func Final(rec *Recording, disk []byte, work, slot string, succeeded []string) ([]Problem, error) {
	j := New(rec, work)
	d := replay.NewDisk(disk, nil, rec.Layout.Regions())
	o, _, err := j.observe(d)
	if err != nil {
		return nil, err
	}
	var out []Problem
	bad := func(check, format string, a ...any) {
		out = append(out, Problem{check, fmt.Sprintf(format, a...)})
	}
	if o.FSError != "" {
		bad("data-fs", "%s", o.FSError)
	}
	env := o.Env.Current()
	switch {
	case o.Env.UBoot < 0:
		bad("env-valid", "no valid environment copy")
	case o.Env.UBoot != o.Env.Linux:
		bad("env-agree", "U-Boot reads copy %d, fw_printenv copy %d", o.Env.UBoot, o.Env.Linux)
	case env["fieldota_try"] == "1":
		bad("no-trial-left", "a trial is still pending: %s", envString(env))
	}
	if got := env["fieldota_slot"]; got != slot {
		bad("boots-where-it-runs", "the environment boots slot %q, the board runs slot %s", got, slot)
	}
	if slot == "b" && !o.SlotBIntact {
		bad("slot-b-whole", "slot b holds only %d bytes of the image", o.SlotBPrefix)
	}
	if !o.SlotAIntact {
		bad("slot-a-untouched", "slot a was written")
	}
	if o.Journal != nil || o.JournalErr != "" {
		bad("journal-removed", "a journal is left (%v %s)", o.Journal != nil, o.JournalErr)
	}
	for _, l := range [][]string{o.Staging, o.Temps} {
		if len(l) > 0 {
			bad("nothing-left-behind", "left behind: %s", strings.Join(l, ", "))
		}
	}
	for c := range o.Checkpoints {
		bad("nothing-left-behind", "checkpoint left: %s", c)
	}
	for _, id := range succeeded {
		jb := j.job(id)
		if jb == nil {
			continue
		}
		if o.Installed[jb.Key] != jb.Version {
			bad("installed-recorded", "installed.json has %s=%q, want %s", jb.Key, o.Installed[jb.Key], jb.Version)
		}
		if jb.File != "" && o.App[jb.File] != jb.NewSHA256 {
			bad("installed-in-place", "%s holds %s, want %s", jb.File, short(o.App[jb.File]), short(jb.NewSHA256))
		}
	}
	return out, nil
}

func (j *Judge) readData(part []byte) (*dataState, error) {
	L := j.rec.Layout
	ds := &dataState{}
	img := filepath.Join(j.work, "data.img")
	if err := writeImage(img, part); err != nil {
		return nil, err
	}
	x := ext4Image{img}
	err := x.recover()
	if err == nil {
		err = x.check()
	}
	if err != nil && L.BootFsck {
		// What a mount alone would not survive, the board's fsck may repair: do what it does.
		if werr := writeImage(img, part); werr != nil {
			return nil, werr
		}
		what, ferr := x.bootFsck()
		if ferr == nil {
			ferr = x.check()
		}
		if ferr == nil {
			ds.repaired = fmt.Sprintf("%s; the board's boot-time e2fsck repairs it: %s", firstLine(err.Error()), what)
			err = nil
		} else {
			err = fmt.Errorf("%v; the boot-time e2fsck does not repair it: %v", err, ferr)
		}
	}
	if err != nil {
		// Read what can still be read: the report names the files too.
		ds.fsErr = err.Error()
	}
	dump := filepath.Join(j.work, "data")
	if err := os.RemoveAll(dump); err != nil {
		return nil, err
	}
	if err := x.dump(dump); err != nil {
		if ds.fsErr == "" {
			ds.fsErr = err.Error()
		}
		return ds, nil
	}
	files, err := walk(dump)
	if err != nil {
		return nil, err
	}
	ds.files = files
	// The journal, through the agent's own loader.
	stateDir := filepath.Join(dump, filepath.FromSlash(L.StateDir))
	jl, err := (&ota.Store{Dir: stateDir}).Load()
	switch {
	case errors.Is(err, ota.ErrNoJournal):
	case err != nil:
		ds.journalErr = strings.ReplaceAll(err.Error(), dump, "")
	default:
		ds.journal = jl
	}
	// installed.json, read as the agent reads it (a corrupt record is refused, never emptied).
	ds.installed, ds.installedOK = readInstalled(stateDir)
	ds.checkpoints, ds.cpOffsets = map[string]string{}, map[string]int64{}
	ds.app = map[string]string{}
	for p, b := range files {
		base := filepath.Base(p)
		switch {
		case strings.HasPrefix(base, durable.TempPrefix), strings.HasPrefix(base, ".fieldota-prev-"),
			strings.HasPrefix(base, ".fieldota-new-"), strings.HasSuffix(base, ".new") && strings.HasPrefix(base, "."):
			ds.temps = append(ds.temps, p)
		case strings.HasPrefix(p, L.StateDir+"/staging/"):
			ds.staging = append(ds.staging, p)
		}
		if strings.HasSuffix(p, ".checkpoint") {
			var cp struct {
				Version int   `json:"version"`
				Size    int64 `json:"size"`
				Offset  int64 `json:"offset"`
			}
			if err := json.Unmarshal(b, &cp); err != nil || cp.Version == 0 {
				ds.checkpoints[p] = fmt.Sprintf("unreadable (%d bytes)", len(b))
				ds.cpBad = append(ds.cpBad, p)
			} else {
				ds.checkpoints[p] = fmt.Sprintf("offset %d of %d", cp.Offset, cp.Size)
				ds.cpOffsets[p] = cp.Offset
			}
		}
		for _, dir := range L.AppDirs {
			if strings.HasPrefix(p, dir+"/") {
				sum := sha256.Sum256(b)
				ds.app[p] = hex.EncodeToString(sum[:])
			}
		}
	}
	sort.Strings(ds.temps)
	sort.Strings(ds.staging)
	return ds, nil
}

func (j *Judge) job(id string) *Job {
	for i := range j.rec.Jobs {
		if j.rec.Jobs[i].ID == id {
			return &j.rec.Jobs[i]
		}
	}
	return nil
}

// check applies the invariants and predicts the outcome.
func (j *Judge) check(res *Result) {
	o := res.Obs
	bad := func(check, format string, a ...any) {
		res.Problems = append(res.Problems, Problem{check, fmt.Sprintf(format, a...)})
	}
	if o.FSError != "" {
		bad("data-fs", "the data partition's ext4 is damaged after its journal is replayed: %s", o.FSError)
	}
	env := o.Env.Current()
	switch {
	case o.Env.UBoot < 0:
		bad("env-valid", "neither U-Boot environment copy is valid (%s; %s)", o.Env.Copies[0].Why, o.Env.Copies[1].Why)
	case o.Env.UBoot != o.Env.Linux:
		bad("env-agree", "U-Boot boots with copy %d but fw_printenv reads copy %d (flags %d, %d)", o.Env.UBoot, o.Env.Linux, o.Env.Copies[0].Flags, o.Env.Copies[1].Flags)
	}
	if !o.SlotAIntact {
		bad("slot-a-untouched", "slot a (the running slot) was written")
	}
	if o.JournalErr != "" {
		bad("journal-parses", "the agent refuses its journal and stops: %s", o.JournalErr)
	}
	if !o.InstalledOK {
		bad("installed-parses", "installed.json does not parse: the agent refuses every job")
	}
	slot, try := env["fieldota_slot"], env["fieldota_try"] == "1"
	if slot == "" {
		slot = "a"
	}
	if slot == "b" && !o.SlotBIntact {
		bad("slot-before-env", "the environment boots slot b (try=%v) but slot b holds only the first %d bytes of the image", try, o.SlotBPrefix)
	}
	if o.Installed["slot"] != "" && o.Installed["slot"] != "1.0.0" && (slot != "b" || try) {
		bad("commit-before-record", "installed.json says slot %s but the environment is %s", o.Installed["slot"], envString(env))
	}
	for _, jb := range j.rec.Jobs {
		if jb.Target == "slot" || jb.File == "" {
			continue
		}
		if o.Installed[jb.Key] == jb.Version && o.App[jb.File] != jb.NewSHA256 {
			bad("place-before-record", "installed.json records %s %s but %s holds %s", jb.Key, jb.Version, jb.File, short(o.App[jb.File]))
		}
	}
	j.checkCheckpoints(o, bad)
	jl := o.Journal
	if jl != nil {
		svc, known := o.Service[jl.JobID]
		switch {
		case !known:
			bad("service-knows-job", "the journal names job %s, which the service had not created", jl.JobID)
		case jl.VersionNumber > svc.Version:
			bad("service-behind-journal", "the journal says versionNumber %d, the service only %d", jl.VersionNumber, svc.Version)
		}
		if jl.Target == "slot" && jl.Slot == "b" {
			switch jl.State {
			case ota.StateReboot, ota.StateSelftest, ota.StateCommit:
				if slot != "b" && env["fieldota_bad_b"] != "1" {
					bad("env-before-journal", "the journal is in %s but the environment never switched: %s", jl.State, envString(env))
				}
			}
			if jl.Report != nil && jl.Report.Status == "SUCCEEDED" && (slot != "b" || try) {
				bad("commit-before-report", "the journal reports SUCCEEDED but the environment is %s", envString(env))
			}
		}
	}
	for id, svc := range o.Service {
		if (svc.Status == "IN_PROGRESS") && (jl == nil || jl.JobID != id) {
			bad("journal-before-report", "the service holds %s IN_PROGRESS (stage %s) but the device has no journal of it", id, svc.Details["stage"])
		}
		jb := j.job(id)
		if jb != nil && jb.Target == "slot" && svc.Status == "SUCCEEDED" && (slot != "b" || try || !o.SlotBIntact) {
			bad("commit-before-report", "the service holds %s SUCCEEDED but the environment is %s", id, envString(env))
		}
	}
	res.Expect = j.predict(o, slot, try, env)
}

// checkCheckpoints holds each download checkpoint to its promise: it is written only after the
// sink was synced, so the bytes it counts are on the medium (the downloader re-hashes them
// before it resumes, but a checkpoint ahead of its bytes is a missing sync all the same).
func (j *Judge) checkCheckpoints(o *Observed, bad func(check, format string, a ...any)) {
	L := j.rec.Layout
	for p, off := range o.checkpointOffsets {
		dir, file := filepath.Split(p)
		execDir := filepath.Base(filepath.Clean(dir))
		cut := strings.LastIndex(execDir, "-")
		if cut < 0 || !strings.HasPrefix(p, L.StateDir+"/staging/") {
			continue
		}
		jb := j.job(execDir[:cut])
		if jb == nil {
			bad("checkpoint-after-sync", "checkpoint %s belongs to no job of the recording", p)
			continue
		}
		if jb.Target == "slot" {
			if off > o.SlotBPrefix {
				bad("checkpoint-after-sync", "checkpoint %s counts %d bytes but slot b holds only the first %d", p, off, o.SlotBPrefix)
			}
			continue
		}
		sink := dir + strings.TrimSuffix(file, ".checkpoint") + ".payload"
		got := o.files[sink]
		if off > int64(len(jb.Payload)) || int64(len(got)) < off || !bytes.Equal(got[:off], jb.Payload[:off]) {
			bad("checkpoint-after-sync", "checkpoint %s counts %d bytes but %s holds %d bytes that do not all match the payload", p, off, sink, len(got))
		}
	}
}

// predict says how the job under way must end.
func (j *Judge) predict(o *Observed, slot string, try bool, env map[string]string) Outcome {
	out := Outcome{Slot: slot}
	bootcount, _ := strconv.Atoi(env["bootcount"])
	limit, _ := strconv.Atoi(env["bootlimit"])
	if limit < 1 {
		limit = 1
	}
	if try && bootcount+1 > limit {
		out.Slot = "a" // U-Boot falls back on this boot
		if slot == "a" {
			out.Slot = "b"
		}
	}
	var id string
	if o.Journal != nil {
		id = o.Journal.JobID
	} else {
		for _, jb := range j.rec.Jobs {
			if s, ok := o.Service[jb.ID]; ok && !s.Terminal() {
				id = jb.ID
			}
		}
	}
	if id == "" {
		return out
	}
	out.Job = id
	jb := j.job(id)
	if svc := o.Service[id]; svc.Terminal() {
		out.Status, out.Reported, out.RolledBack = svc.Status, true, svc.Details["rolledBack"] == "true"
		if jb != nil && jb.Target == "slot" && !out.RolledBack && svc.Status == "SUCCEEDED" {
			out.Slot = "b"
		}
		return out
	}
	failed := o.Journal != nil && o.Journal.Report != nil && o.Journal.Report.Status != "SUCCEEDED"
	if jb == nil || jb.Target != "slot" {
		out.Status = "SUCCEEDED"
		if failed {
			out.Status = "FAILED"
		}
		return out
	}
	state := ota.State("")
	if o.Journal != nil {
		state = o.Journal.State
	}
	switch {
	case failed:
		out.Status, out.RolledBack, out.Slot = "FAILED", true, "a"
	case out.Slot == "b":
		// Committed, or a trial that U-Boot grants on this boot.
		out.Status, out.Slot = "SUCCEEDED", "b"
	case env["fieldota_bad_b"] == "1" || try:
		out.Status, out.RolledBack, out.Slot = "FAILED", true, "a"
	case state == ota.StateReboot || state == ota.StateSelftest || state == ota.StateCommit || state == ota.StateRollback:
		out.Status, out.RolledBack, out.Slot = "FAILED", true, "a"
	default:
		// Before the switch: the download resumes, the trial is set, the board ends on b.
		out.Status, out.Slot = "SUCCEEDED", "b"
	}
	return out
}

// class is the agent-visible state, with what cannot change the agent's course left out
// (timestamps, progress percentages, exact download offsets inside one checkpoint interval).
func (j *Judge) class(res *Result) string {
	o := res.Obs
	var parts []string
	add := func(k, v string) { parts = append(parts, k+"="+v) }
	add("env", envString(o.Env.Current()))
	if o.Env.UBoot >= 0 {
		add("envcopies", fmt.Sprintf("%v%v", o.Env.Copies[0].Valid, o.Env.Copies[1].Valid))
	}
	if o.Repaired != "" {
		add("fs", "repaired by the boot-time fsck")
	}
	switch {
	case o.FSError != "":
		add("fs", "damaged")
	case o.JournalErr != "":
		add("journal", "corrupt")
	case o.Journal == nil:
		add("journal", "none")
	default:
		jl := o.Journal
		s := fmt.Sprintf("%s/%s/%s", jl.JobID, jl.Target, jl.State)
		staged := 0
		for _, st := range jl.Staged {
			if st.SHA256 != "" {
				staged++
			}
		}
		s += fmt.Sprintf(" staged=%d/%d slot=%s", staged, len(jl.Staged), jl.Slot)
		if jl.Report != nil {
			s += " report=" + jl.Report.Status + ":" + jl.Report.Details["reason"]
		}
		var keys []string
		for k := range jl.Data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		s += " data=" + strings.Join(keys, ",")
		if svc, ok := o.Service[jl.JobID]; ok {
			s += fmt.Sprintf(" version=%s", cmpVersion(jl.VersionNumber, svc.Version))
		}
		add("journal", s)
	}
	var inst []string
	for k, v := range o.Installed {
		inst = append(inst, k+":"+v)
	}
	sort.Strings(inst)
	add("installed", strings.Join(inst, ","))
	var cps []string
	for p, c := range o.Checkpoints {
		state := "partial"
		switch {
		case strings.HasPrefix(c, "unreadable"):
			state = "torn"
		case strings.HasPrefix(c, "offset 0 "):
			state = "empty"
		default:
			var off, size int64
			if _, err := fmt.Sscanf(c, "offset %d of %d", &off, &size); err == nil && off == size {
				state = "complete"
			}
		}
		cps = append(cps, filepath.Base(p)+":"+state)
	}
	sort.Strings(cps)
	add("checkpoints", strings.Join(cps, ","))
	add("staging", strconv.Itoa(len(o.Staging)))
	add("temps", strings.Join(o.Temps, ","))
	var app []string
	for p, h := range o.App {
		app = append(app, p+":"+short(h))
	}
	sort.Strings(app)
	add("app", strings.Join(app, ","))
	switch {
	case o.SlotBIntact:
		add("slotb", "image")
	case o.SlotBPrefix == 0:
		add("slotb", "other")
	default:
		add("slotb", "partial")
	}
	var svc []string
	for _, jb := range j.rec.Jobs {
		if s, ok := o.Service[jb.ID]; ok {
			svc = append(svc, jb.ID+":"+s.Status+"/"+s.Details["stage"])
		}
	}
	add("service", strings.Join(svc, ","))
	return strings.Join(parts, " | ")
}

func cmpVersion(journal, service int64) string {
	switch {
	case journal == service:
		return "same"
	case journal < service:
		return "behind"
	}
	return "ahead"
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	if h == "" {
		return "absent"
	}
	return h
}

// readInstalled reads installed.json through the agent's own reader: a record the agent would
// refuse is not OK (the agent then refuses every job), never read as empty.
func readInstalled(stateDir string) (map[string]string, bool) {
	m, err := agent.InstalledVersions(stateDir)
	if err != nil {
		return map[string]string{}, false
	}
	return m, true
}
