package judge

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/test/powercut/replay"
)

// The judge reads what Debian's tools write: these tests build the partitions with mkfs.vfat,
// mcopy, mkenvimage and mkfs.ext4 (scripts/deps.sh installs them).

func tool(t *testing.T, name string, args ...string) {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if _, err2 := os.Stat("/usr/sbin/" + name); err2 != nil {
			t.Fatalf("%s not found: run scripts/deps.sh", name)
		}
		path = "/usr/sbin/" + name
	}
	if out, err := exec.Command(path, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// envImage is one redundant env copy made by mkenvimage -r, with its flags byte.
func envImage(t *testing.T, dir, name string, flags byte, vars ...string) string {
	t.Helper()
	txt := filepath.Join(dir, name+".txt")
	if err := os.WriteFile(txt, []byte(strings.Join(vars, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name)
	tool(t, "mkenvimage", "-r", "-s", "0x4000", "-o", out, txt)
	b, _ := os.ReadFile(out)
	b[4] = flags // mkenvimage -r writes flags 1; the CRC does not cover them
	if err := os.WriteFile(out, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestEnvCopiesPickedAsUBootAndLibubootenvPickThem(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name          string
		f0, f1        byte
		valid0        bool
		uboot, linux  int
		wantDisagreed bool
	}{
		{"pristine equal flags", 1, 1, true, 0, 0, false},
		{"copy 1 newer", 1, 2, true, 1, 1, false},
		{"copy 0 newer", 3, 2, true, 0, 0, false},
		{"wrap 255 then 0", 255, 0, true, 1, 1, false},
		{"copy 0 torn", 3, 2, false, 1, 1, false},
		{"flags apart by two", 1, 3, true, 0, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b0, _ := os.ReadFile(envImage(t, dir, "c0", tc.f0, "fieldota_slot=a"))
			b1, _ := os.ReadFile(envImage(t, dir, "c1", tc.f1, "fieldota_slot=b"))
			if !tc.valid0 {
				b0[100] ^= 0xff
			}
			r := pickEnv(parseEnvCopy(b0, 0x4000), parseEnvCopy(b1, 0x4000))
			if r.UBoot != tc.uboot || r.Linux != tc.linux {
				t.Fatalf("U-Boot copy %d, libubootenv copy %d; want %d, %d", r.UBoot, r.Linux, tc.uboot, tc.linux)
			}
			if want := map[int]string{0: "a", 1: "b"}[tc.uboot]; r.Current()["fieldota_slot"] != want {
				t.Fatalf("current env %v", r.Current())
			}
		})
	}
}

// fatImage makes a FAT volume holding files with mcopy.
func fatImage(t *testing.T, dir string, files map[string][]byte) []byte {
	t.Helper()
	img := filepath.Join(dir, "boot.img")
	os.Remove(img)
	tool(t, "mkfs.vfat", "-C", "-n", "TBOOT", img, "8192")
	for name, b := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		tool(t, "mcopy", "-i", img, p, "::/"+name)
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFATReaderFindsFilesByLongNameAndNamesTheirClusters(t *testing.T) {
	dir := t.TempDir()
	big := bytes.Repeat([]byte("0123456789abcdef"), 2048) // 32 KiB: several clusters
	vol, err := openFAT(fatImage(t, dir, map[string][]byte{"uboot.env": []byte("short"), "uboot-redund.env": big}))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := vol.readFile("uboot-redund.env"); err != nil || !bytes.Equal(b, big) {
		t.Fatalf("uboot-redund.env: %d bytes, %v", len(b), err)
	}
	if b, err := vol.readFile("UBOOT.ENV"); err != nil || string(b) != "short" {
		t.Fatalf("uboot.env: %q, %v", b, err)
	}
	if _, err := vol.readFile("missing.env"); err == nil {
		t.Fatal("a missing file was found")
	}
	files, _ := vol.root()
	for _, f := range files {
		if f.Name == "uboot-redund.env" {
			if got := vol.owner(vol.clusterAt(f.First), 512); got != "FAT file uboot-redund.env" {
				t.Fatalf("owner of its first cluster: %q", got)
			}
		}
	}
	if got := vol.owner(vol.fatStart, 512); got != "FAT allocation table" {
		t.Fatalf("owner of the FAT: %q", got)
	}
}

// board is a small disk in the board's layout, built from parts.
type board struct {
	t       *testing.T
	dir     string
	env     [2][]byte
	slotB   []byte
	image   []byte // what the update writes to slot b
	state   map[string][]byte
	journal *ota.Journal
}

func newBoard(t *testing.T) *board {
	dir := t.TempDir()
	b := &board{t: t, dir: dir, state: map[string][]byte{}, image: bytes.Repeat([]byte("slot-b-image"), 5000)}
	b.setEnv(2, "fieldota_slot=a", "fieldota_try=0", "bootcount=0", "bootlimit=1", "fieldota_bad_b=0")
	b.slotB = make([]byte, len(b.image))
	return b
}

// setEnv writes the env into the copy that a write after flags-1 would go to.
func (b *board) setEnv(flags byte, vars ...string) {
	c, _ := os.ReadFile(envImage(b.t, b.dir, "env", flags, vars...))
	b.env[int(flags)%2] = c
	if b.env[1-int(flags)%2] == nil {
		b.env[1-int(flags)%2] = c
	}
}

func (b *board) build() (*Recording, []byte) {
	t := b.t
	boot := fatImage(t, b.dir, map[string][]byte{"uboot.env": b.env[0], "uboot-redund.env": b.env[1]})
	data := filepath.Join(b.dir, "data")
	os.RemoveAll(data)
	if err := os.MkdirAll(filepath.Join(data, "fieldota"), 0o700); err != nil {
		t.Fatal(err)
	}
	if b.journal != nil {
		if err := (&ota.Store{Dir: filepath.Join(data, "fieldota")}).Save(b.journal); err != nil {
			t.Fatal(err)
		}
	}
	for p, c := range b.state {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(data, p)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(data, p), c, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	dataImg := filepath.Join(b.dir, "data.img")
	os.Remove(dataImg)
	tool(t, "mkfs.ext4", "-q", "-F", "-d", data, dataImg, "16M") // two block groups: a backup superblock
	ext, _ := os.ReadFile(dataImg)
	slotA := bytes.Repeat([]byte("slot-a"), 10000)
	var disk []byte
	region := func(name string, part []byte) replay.Region {
		r := replay.Region{Name: name, Start: int64(len(disk)), Size: int64(len(part))}
		disk = append(disk, part...)
		return r
	}
	L := Layout{EnvFiles: [2]string{"uboot.env", "uboot-redund.env"}, EnvSize: 0x4000, StateDir: "/fieldota", AppDirs: []string{"/app", "/bin"}}
	L.Boot, L.SlotA, L.SlotB, L.Data = region("boot", boot), region("slot a", slotA), region("slot b", b.slotB), region("data", ext)
	rec := &Recording{Layout: L, SlotA: slotA, SlotB: b.image, Jobs: []Job{{ID: "job-slot", Target: "slot", Version: "2.0.0", Key: "slot"}}}
	return rec, disk
}

func (b *board) judge(events ...Event) *Result {
	rec, disk := b.build()
	rec.Events = events
	j := New(rec, b.t.TempDir())
	res, err := j.Judge(replay.NewDisk(disk, nil, rec.Layout.Regions()), replay.Point{Kind: replay.KindStart, Torn: -1})
	if err != nil {
		b.t.Fatal(err)
	}
	return res
}

func checks(res *Result) string {
	var s []string
	for _, p := range res.Problems {
		s = append(s, p.Check)
	}
	return strings.Join(s, ",")
}

func created(status string, version int64) []Event {
	evs := []Event{{Kind: "created", JobID: "job-slot", Status: "QUEUED", Version: 1}}
	if status != "QUEUED" {
		evs = append(evs, Event{Kind: "status", JobID: "job-slot", Status: status, Version: version, Details: map[string]string{"stage": "install"}})
	}
	return evs
}

// Each broken promise of the A/B flow, built on a disk, is named by its check; the state the
// promises allow passes.
func TestJudgeNamesEachBrokenPromise(t *testing.T) {
	trial := []string{"fieldota_slot=b", "fieldota_try=1", "bootcount=0", "bootlimit=1", "fieldota_bad_b=0"}
	committed := []string{"fieldota_slot=b", "fieldota_try=0", "bootcount=0", "bootlimit=1", "fieldota_bad_b=0"}
	journal := func(state ota.State, version int64) *ota.Journal {
		return &ota.Journal{JobID: "job-slot", ExecutionNumber: 1, VersionNumber: version, State: state, Target: "slot", Slot: "b", Version: "2.0.0"}
	}
	for _, tc := range []struct {
		name   string
		setup  func(b *board)
		events []Event
		want   string
		expect string
	}{
		{"idle board", func(b *board) {}, nil, "", "idle on slot a"},
		{"trial set with the whole image in slot b", func(b *board) {
			copy(b.slotB, b.image)
			b.setEnv(3, trial...)
			b.journal = journal(ota.StateReboot, 3)
		}, created("IN_PROGRESS", 3), "", "job-slot SUCCEEDED on slot b"},
		{"trial set, slot b half written", func(b *board) {
			copy(b.slotB, b.image[:len(b.image)/2])
			b.setEnv(3, trial...)
			b.journal = journal(ota.StateReboot, 3)
		}, created("IN_PROGRESS", 3), "slot-before-env", ""},
		{"journal at reboot, environment never switched", func(b *board) {
			copy(b.slotB, b.image)
			b.journal = journal(ota.StateReboot, 3)
		}, created("IN_PROGRESS", 3), "env-before-journal", "job-slot FAILED rolledBack on slot a"},
		{"installed recorded before the commit", func(b *board) {
			copy(b.slotB, b.image)
			b.setEnv(3, trial...)
			b.journal = journal(ota.StateCommit, 3)
			b.state["fieldota/installed.json"] = []byte(`{"slot": "2.0.0"}`)
		}, created("IN_PROGRESS", 3), "commit-before-record", ""},
		{"journal torn", func(b *board) {
			b.state["fieldota/journal.json"] = []byte(`{"schema": 1, "jobId": "job-sl`)
		}, created("IN_PROGRESS", 2), "journal-parses,journal-before-report", ""},
		{"service ahead of a lost journal", func(b *board) {}, created("IN_PROGRESS", 2), "journal-before-report", ""},
		{"journal ahead of the service", func(b *board) {
			b.journal = journal(ota.StateDownload, 5)
		}, created("IN_PROGRESS", 2), "service-behind-journal", ""},
		{"service says SUCCEEDED, environment still on trial", func(b *board) {
			copy(b.slotB, b.image)
			b.setEnv(3, trial...)
			b.journal = journal(ota.StateReport, 4)
		}, created("SUCCEEDED", 4), "commit-before-report", ""},
		{"reported, journal not yet removed", func(b *board) {
			copy(b.slotB, b.image)
			b.setEnv(3, committed...)
			b.journal = journal(ota.StateReport, 3)
			b.state["fieldota/installed.json"] = []byte(`{"slot": "2.0.0"}`)
		}, created("SUCCEEDED", 4), "", "job-slot SUCCEEDED (already reported) on slot b"},
		{"checkpoint ahead of the slot's bytes", func(b *board) {
			copy(b.slotB, b.image[:1000])
			b.journal = journal(ota.StateDownload, 2)
			b.state["fieldota/staging/job-slot-1/0.checkpoint"] = []byte(`{"version":1,"size":60000,"offset":4096}`)
		}, created("IN_PROGRESS", 2), "checkpoint-after-sync", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBoard(t)
			tc.setup(b)
			res := b.judge(tc.events...)
			if got := checks(res); got != tc.want {
				t.Fatalf("problems %q, want %q: %v", got, tc.want, res.Problems)
			}
			if tc.expect != "" && res.Expect.String() != tc.expect {
				t.Fatalf("expect %q, want %q", res.Expect, tc.expect)
			}
		})
	}
}

// A data partition whose ext4 is damaged beyond what its journal repairs is a failure.
func TestDamagedFileSystemIsAFailure(t *testing.T) {
	b := newBoard(t)
	rec, disk := b.build()
	// Wreck the root directory's inode table entry area: group descriptors live at block 1/2.
	for i := rec.Layout.Data.Start + 2048; i < rec.Layout.Data.Start+4096; i++ {
		disk[i] ^= 0x55
	}
	j := New(rec, t.TempDir())
	res, err := j.Judge(replay.NewDisk(disk, nil, rec.Layout.Regions()), replay.Point{Kind: replay.KindStart, Torn: -1})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(checks(res), "data-fs") {
		t.Fatalf("problems %v, want data-fs", res.Problems)
	}
}

// A torn write of the ext4 superblock (one of its two sectors new) fails the superblock's
// checksum: a plain mount refuses the file system; the board's boot-time e2fsck repairs it
// from a backup superblock, and the judge says so instead of failing the point.
func TestTornSuperblockNeedsTheBootFsck(t *testing.T) {
	for _, fsck := range []bool{false, true} {
		t.Run(fmt.Sprintf("BootFsck=%v", fsck), func(t *testing.T) {
			b := newBoard(t)
			rec, disk := b.build()
			rec.Layout.BootFsck = fsck
			disk[rec.Layout.Data.Start+1024+600] ^= 0xff // the superblock's second sector
			j := New(rec, t.TempDir())
			res, err := j.Judge(replay.NewDisk(disk, nil, rec.Layout.Regions()), replay.Point{Kind: replay.KindStart, Torn: -1})
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case !fsck && !strings.Contains(checks(res), "data-fs"):
				t.Fatalf("a plain mount cannot use it, yet problems are %v", res.Problems)
			case fsck && (len(res.Problems) > 0 || len(res.Warnings) == 0 || res.Obs.Repaired == ""):
				t.Fatalf("with the boot fsck: problems %v, warnings %v", res.Problems, res.Warnings)
			}
			if fsck {
				t.Logf("repaired: %s", res.Obs.Repaired)
			}
		})
	}
}

// A recording's manifest brings back the same recording: the replay command judges kept runs.
func TestManifestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{"a.img": "slot a", "b.img": "slot b", "p": "payload"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := &Manifest{Base: "base.img", Log: "writes.log", SlotA: "a.img", SlotB: filepath.Join(dir, "b.img"),
		Layout: Layout{EnvSize: 0x4000, StateDir: "/fieldota", BootFsck: true, Data: replay.Region{Name: "data", Start: 512, Size: 1024}},
		Jobs:   []Job{{ID: "j", Target: "files", Version: "2"}}, Events: []Event{{LogBytes: 7, Kind: "created", JobID: "j", Status: "QUEUED", Version: 1}},
		Payloads: map[string]string{"j": "p"}}
	if err := m.Save(dir); err != nil {
		t.Fatal(err)
	}
	got, err := LoadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := got.Recording(dir)
	if err != nil {
		t.Fatal(err)
	}
	if string(rec.SlotA) != "slot a" || string(rec.SlotB) != "slot b" || string(rec.Jobs[0].Payload) != "payload" ||
		!reflect.DeepEqual(rec.Layout, m.Layout) || len(rec.Events) != 1 || rec.Events[0].LogBytes != 7 {
		t.Fatalf("recording from the manifest: %+v", rec)
	}
}

// The judge once read installed.json as bare versions, so every record the agent writes now
// (an entry per key) read as nothing installed: every succeeded job looked lost.
func TestJudgeReadsInstalledAsTheAgentWritesIt(t *testing.T) {
	for _, tc := range []struct {
		name, record string
		want         map[string]string
		ok           bool
	}{
		{"entries", `{"slot": {"version": "2.0.0", "signed": true, "files": {"b.img": "ab"}}, "binary:/data/bin/hello": {"version": "1.1", "signed": true, "previous": {"version": "1.0"}}}`,
			map[string]string{"slot": "2.0.0", "binary:/data/bin/hello": "1.1"}, true},
		{"first format", `{"slot": "2.0.0"}`, map[string]string{"slot": "2.0.0"}, true},
		{"torn", `{"slot": {"version": "2.`, map[string]string{}, false},
		{"entry of the wrong shape", `{"slot": 7}`, map[string]string{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "installed.json"), []byte(tc.record), 0o600); err != nil {
				t.Fatal(err)
			}
			got, ok := readInstalled(dir)
			if ok != tc.ok || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("readInstalled(%s) = %v, %v; want %v, %v", tc.record, got, ok, tc.want, tc.ok)
			}
		})
	}
}
