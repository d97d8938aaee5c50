package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/test/testdoc"
)

// The attacks of issue 11, each by someone with iot:CreateJob rights (or a local user, or an
// offline edit of the state), none holding the release key. Each is refused with its own reason,
// and nothing is placed, started, recorded or downloaded past the signed size.

// filesDoc is a signed release of one script into work.
func filesDoc(name string, content []byte, version, work string) testdoc.Doc {
	d := testdoc.For(name, content, version)
	d.WorkDir, d.AutoStart = work, true
	return d
}

func (h *harness) expect(id, status, reasonCode string) map[string]string {
	h.t.Helper()
	ex := h.waitTerminal(id)
	d := ex.StatusDetails.DetailsMap
	if ex.Status != status || d["reason"] != reasonCode {
		h.t.Fatalf("%s: %s %v, want %s %s", id, ex.Status, d, status, reasonCode)
	}
	if status == "REJECTED" {
		for _, s := range h.statuses(id) {
			if s == "IN_PROGRESS" {
				h.t.Fatalf("%s went IN_PROGRESS before it was refused", id)
			}
		}
	}
	return d
}

func (h *harness) installedVersion(key string) string {
	h.t.Helper()
	inst, err := loadInstalled(h.cfg.StateDir)
	if err != nil {
		h.t.Fatal(err)
	}
	return inst[key].Version
}

func TestReplayRelabelledOldReleaseIsRefusedAndNeverFreezesTheFleet(t *testing.T) {
	h := newHarness(t)
	work := filepath.Join(h.appRoot, "app")
	v1, v2, v3 := []byte("#!/bin/sh\necho 1.0\n"), []byte("#!/bin/sh\necho 2.0\n"), []byte("#!/bin/sh\necho 3.0\n")
	h.publish("v1.sh", v1)
	h.publish("v2.sh", v2)
	h.publish("v3.sh", v3)
	h.createJob("v2", h.doc(filesDoc("v2.sh", v2, "2.0", work)))
	// The genuine, signed 1.0, relabelled 9.0 in its plain field.
	old := filesDoc("v1.sh", v1, "1.0", work)
	old.Plain = map[string]any{"version": "9.0"}
	h.createJob("relabelled", h.doc(old))
	// The same with the statement stripped: nothing signs the install intent any more.
	stripped := filesDoc("v1.sh", v1, "9.0", work)
	stripped.NoStatement = true
	h.createJob("stripped", h.doc(stripped))
	// A release attested for board-x, its plain compatible list relabelled.
	boardX := filesDoc("v3.sh", v3, "3.0", work)
	boardX.Compatible, boardX.Plain = []string{"board-x"}, map[string]any{"compatible": []string{"board-rev-c"}}
	h.createJob("board-x", h.doc(boardX))
	h.createJob("v3", h.doc(filesDoc("v3.sh", v3, "3.0", work)))
	h.run()
	h.expect("v2", "SUCCEEDED", "")
	h.expect("relabelled", "REJECTED", "DOCUMENT_MISMATCH")
	h.expect("stripped", "REJECTED", "UNSIGNED")
	h.expect("board-x", "REJECTED", "DOCUMENT_MISMATCH")
	h.expect("v3", "SUCCEEDED", "") // not frozen: the next genuine release installs
	if v := h.installedVersion("files:" + work); v != "3.0" {
		t.Fatalf("recorded %q", v)
	}
}

func TestRenamedAndStartedReleaseIsNotRun(t *testing.T) {
	h := newHarness(t)
	work := filepath.Join(h.appRoot, "app")
	wipe := []byte("#!/bin/sh\ntouch " + filepath.Join(h.dir, "WIPED") + "\n")
	h.publish("factory-wipe.sh", wipe)
	d := filesDoc("factory-wipe.sh", wipe, "1.0", work)
	d.FilePlain = map[string]any{"fileName": "install.py"}
	d.Plain = map[string]any{"packageName": "install.py"}
	h.createJob("renamed", h.doc(d))
	// Signed as placed but not started; autoStart added in plain.
	quiet := testdoc.For("factory-wipe.sh", wipe, "1.0")
	quiet.WorkDir, quiet.Plain = work, map[string]any{"autoStart": "true", "packageName": "factory-wipe.sh"}
	h.createJob("started", h.doc(quiet))
	// Signed 0644, sent 0755.
	mode := filesDoc("factory-wipe.sh", wipe, "1.0", work)
	mode.Mode, mode.FilePlain = "0644", map[string]any{"mode": "0755"}
	h.createJob("mode", h.doc(mode))
	// Signed for one directory, sent to another.
	elsewhere := filesDoc("factory-wipe.sh", wipe, "1.0", work)
	elsewhere.Plain = map[string]any{"workingDirectory": filepath.Join(h.appRoot, "other")}
	h.createJob("elsewhere", h.doc(elsewhere))
	h.run()
	for _, id := range []string{"renamed", "started", "mode", "elsewhere"} {
		h.expect(id, "REJECTED", "DOCUMENT_MISMATCH")
	}
	if _, err := os.Stat(filepath.Join(h.dir, "WIPED")); err == nil {
		t.Fatal("the program ran")
	}
	if ents, _ := os.ReadDir(h.appRoot); len(ents) != 0 {
		t.Fatalf("placed: %v", ents)
	}
}

func TestSecondSpellingOfThePathKeepsAntiRollback(t *testing.T) {
	h := newHarness(t)
	real := filepath.Join(h.appRoot, "releases", "x")
	if err := os.MkdirAll(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("releases/x", filepath.Join(h.appRoot, "current")); err != nil {
		t.Fatal(err)
	}
	v1, v2 := []byte("#!/bin/sh\necho 1\n"), []byte("#!/bin/sh\necho 2\n")
	h.publish("v1.sh", v1)
	h.publish("v2.sh", v2)
	h.createJob("v2", h.doc(filesDoc("v2.sh", v2, "2.0", real)))
	h.createJob("v1-through-the-link", h.doc(filesDoc("v1.sh", v1, "1.0", filepath.Join(h.appRoot, "current"))))
	h.run()
	h.expect("v2", "SUCCEEDED", "")
	h.expect("v1-through-the-link", "REJECTED", "DOWNGRADE_REFUSED")
}

// TestAutoStartInAUsersDirectoryIsRefusedAsRoot: attack 5 — the seed's own directory belongs to
// ec2-user, who could replace the placed file before root runs it. Without files.run_as the job
// is refused while QUEUED; the parallel case of a directory another user can write (attack 4's
// ground) too.
func TestAutoStartInAUsersDirectoryIsRefusedAsRoot(t *testing.T) {
	h := newHarness(t)
	home := filepath.Join(h.appRoot, "home", "ec2-user")
	if err := os.MkdirAll(home, 0o755); err != nil || os.Chown(home, 65534, 65534) != nil {
		t.Fatal("setup")
	}
	shared := filepath.Join(h.appRoot, "shared")
	if err := os.MkdirAll(shared, 0o755); err != nil || os.Chmod(shared, 0o777) != nil {
		t.Fatal("setup")
	}
	script := []byte("#!/bin/sh\necho hi\n")
	h.publish("install.py", script)
	h.createJob("users-dir", h.doc(filesDoc("install.py", script, "1.0", filepath.Join(home, "JobSampleTesting"))))
	h.createJob("world-writable", h.doc(filesDoc("install.py", script, "1.0", filepath.Join(shared, "app"))))
	h.run()
	h.expect("users-dir", "REJECTED", "UNSAFE_PATH")
	h.expect("world-writable", "REJECTED", "UNSAFE_PATH")
}

// TestSeedExampleInAUsersDirectoryRunsAsThatUser: with files.run_as the same job succeeds, the
// files belong to the user and the program runs as the user.
func TestSeedExampleInAUsersDirectoryRunsAsThatUser(t *testing.T) {
	h := newHarness(t)
	// The user must reach the directory, as on a real system (/home is 0755).
	base, err := os.MkdirTemp("", "fieldota-home-")
	if err != nil || os.Chmod(base, 0o755) != nil {
		t.Fatal("setup")
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	home := filepath.Join(base, "ec2-user")
	if err := os.MkdirAll(home, 0o755); err != nil || os.Chown(home, 65534, 65534) != nil {
		t.Fatal("setup")
	}
	h.cfg.Files.AllowedRoots = []string{home}
	h.cfg.Files.RunAs = "nobody"
	work := filepath.Join(home, "JobSampleTesting")
	script := []byte("#!/bin/sh\necho uid=$(id -u) home=$HOME\n")
	h.publish("install.py", script)
	h.createJob("seed", h.doc(filesDoc("install.py", script, "1.0", work)))
	h.run()
	d := h.expect("seed", "SUCCEEDED", "")
	if !strings.Contains(d["output"], "uid=65534") {
		t.Fatalf("output %q", d["output"])
	}
	fi, err := os.Stat(filepath.Join(work, "install.py"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 {
		t.Fatalf("placed file owned by %d", st.Uid)
	}
}

func TestUnsignedSizeCannotMakeTheDeviceDownloadMore(t *testing.T) {
	h := newHarness(t)
	work := filepath.Join(h.appRoot, "app")
	small := []byte("#!/bin/sh\necho small\n")
	// Bigger plain size than the signed one: refused before a byte.
	big := filesDoc("small.sh", small, "1.0", work)
	big.FilePlain = map[string]any{"size": 1 << 40}
	h.createJob("plain-size", h.doc(big))
	// The object in the bucket is 32 MiB, the signed size 21 bytes, the document gives none.
	h.publish("huge.sh", make([]byte, 32<<20))
	d := filesDoc("huge.sh", small, "1.0", work)
	d.FilePlain = map[string]any{"size": nil, "sha256": nil}
	h.createJob("object-too-big", h.doc(d))
	h.run()
	h.expect("plain-size", "REJECTED", "DOCUMENT_MISMATCH")
	h.expect("object-too-big", "FAILED", "SIZE_MISMATCH")
	if st := h.sim.Artifacts().Stats("bucket/huge.sh"); st.BytesSent > 8<<20 {
		t.Fatalf("%d bytes sent for a release signed at %d", st.BytesSent, len(small))
	}
}

// TestJournalEditedWhileTheAgentIsDownInstallsNothing: attack 8 — the agent stops at install; its
// journal is edited offline to name other staged bytes (digest and file); the resumed agent
// re-checks the staged bytes against the signed release and installs nothing. A journal whose
// own copies disagree with its document is an INTERNAL failure.
func TestJournalEditedWhileTheAgentIsDownInstallsNothing(t *testing.T) {
	for _, c := range []struct {
		name, reason string
		edit         func(t *testing.T, j map[string]any)
	}{
		{"staged bytes and their digest replaced", "DIGEST_MISMATCH", func(t *testing.T, j map[string]any) {
			evil := []byte("#!/bin/sh\necho pwned!!\n") // as long as the genuine script
			st := j["staged"].([]any)[0].(map[string]any)
			if err := os.WriteFile(st["path"].(string), evil, 0o600); err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(evil)
			st["sha256"] = hex.EncodeToString(sum[:])
		}},
		{"version copy changed", "INTERNAL", func(t *testing.T, j map[string]any) { j["version"] = "9.9.9" }},
		{"target copy changed", "INTERNAL", func(t *testing.T, j map[string]any) { j["targetKey"] = "files:/etc" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			work := filepath.Join(h.appRoot, "app")
			script := []byte("#!/bin/sh\necho genuine\n")
			h.publish("run.sh", script)
			h.createJob("edited", h.doc(filesDoc("run.sh", script, "1.0", work)))
			atInstall, release := make(chan struct{}), make(chan struct{})
			h.onTransition = func(j *ota.Journal) {
				if j.State == ota.StateInstall {
					close(atInstall)
					<-release
				}
			}
			stop := h.run()
			select {
			case <-atInstall:
			case <-time.After(20 * time.Second):
				t.Fatal("never reached install")
			}
			h.cancel()
			close(release)
			stop()
			h.offline()

			path := filepath.Join(h.cfg.StateDir, ota.JournalFile)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var j map[string]any
			if err := json.Unmarshal(b, &j); err != nil {
				t.Fatal(err)
			}
			if j["state"] != string(ota.StateInstall) {
				t.Fatalf("journal in %v", j["state"])
			}
			c.edit(t, j)
			b, _ = json.Marshal(j)
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			h.onTransition = nil
			h.run()
			h.expect("edited", "FAILED", c.reason)
			if _, err := os.Stat(filepath.Join(work, "run.sh")); err == nil {
				t.Fatal("installed from an edited journal")
			}
		})
	}
}

func TestSlowRetrievalFailsWithItsOwnReason(t *testing.T) {
	h := newHarness(t)
	h.cfg.Download.MinSpeed = 64 << 10
	h.cfg.Download.MinSpeedWindow.Duration = 300 * time.Millisecond
	h.cfg.Download.MaxSlowWindows = 2
	work := filepath.Join(h.appRoot, "app")
	content := h.throttled("slow.sh", 1<<20, 20000) // 20 kB/s: never a stall, always too slow
	h.createJob("trickle", h.doc(filesDoc("slow.sh", content, "1.0", work)))
	h.run()
	h.expect("trickle", "FAILED", "DOWNLOAD_TOO_SLOW")
}

// TestWhereTheBytesComeFromAndWhatTheyBecome: attack 11 — hosts off the allowlist, modes that
// let others write, bidi and reserved names: all refused while QUEUED.
func TestWhereTheBytesComeFromAndWhatTheyBecome(t *testing.T) {
	h := newHarness(t)
	work := filepath.Join(h.appRoot, "app")
	script := []byte("#!/bin/sh\necho hi\n")
	metadata := filesDoc("run.sh", script, "1.0", work)
	metadata.FilePlain = map[string]any{"url": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"}
	lan := filesDoc("run.sh", script, "1.0", work)
	lan.FilePlain = map[string]any{"url": "https://192.168.1.1/admin"}
	cases := map[string]struct {
		doc    testdoc.Doc
		reason string
	}{
		"metadata-service": {metadata, "HOST_NOT_ALLOWED"},
		"lan-admin-page":   {lan, "HOST_NOT_ALLOWED"},
		"world-writable-mode": {func() testdoc.Doc {
			d := filesDoc("run.sh", script, "1.0", work)
			d.FilePlain = map[string]any{"mode": "0777"}
			return d
		}(), "INVALID_DOCUMENT"},
		"bidi-name": {filesDoc("run\u202ehs.txt", script, "1.0", work), "INVALID_DOCUMENT"},
		"reserved-name": {func() testdoc.Doc {
			d := testdoc.For(".fieldota-prev-run.sh", script, "1.0")
			d.WorkDir = work
			return d
		}(), "INVALID_DOCUMENT"},
	}
	for id, c := range cases {
		h.createJob(id, h.doc(c.doc))
	}
	h.run()
	for id, c := range cases {
		h.expect(id, "REJECTED", c.reason)
	}
}

// TestAgentStoppedDuringAutoStartNeverStartsASecondCopy (issue 12, item 6): the agent goes away
// while the program runs (a kill, a restart); the next agent finds it still running, waits for
// it and reports its outcome. It ran once.
func TestAgentStoppedDuringAutoStartNeverStartsASecondCopy(t *testing.T) {
	h := newHarness(t)
	work := filepath.Join(h.appRoot, "app")
	runs := filepath.Join(h.dir, "runs")
	script := []byte("#!/bin/sh\necho run >> " + runs + "\nsleep 2\necho finished\n")
	h.publish("install.sh", script)
	h.createJob("once", h.doc(filesDoc("install.sh", script, "1.0", work)))
	stop := h.run()
	h.waitFor("the program to start", func() bool { b, _ := os.ReadFile(runs); return len(b) > 0 })
	stop()
	h.offline()
	h.run()
	d := h.expect("once", "SUCCEEDED", "")
	if b, _ := os.ReadFile(runs); strings.Count(string(b), "run") != 1 || !strings.Contains(d["output"], "finished") {
		t.Fatalf("runs %q, output %q", b, d["output"])
	}
}

// TestAutoStartThatBackgroundsAChildSucceeds (issue 12, item 7): `app &` with exit 0 is success
// at once, whatever the child does with its stdout.
func TestAutoStartThatBackgroundsAChildSucceeds(t *testing.T) {
	h := newHarness(t)
	work := filepath.Join(h.appRoot, "app")
	script := []byte("#!/bin/sh\necho launching\nsleep 30 &\nexit 0\n")
	h.publish("launch.sh", script)
	h.createJob("daemon", h.doc(filesDoc("launch.sh", script, "1.0", work)))
	start := time.Now()
	h.run()
	d := h.expect("daemon", "SUCCEEDED", "")
	if el := time.Since(start); el > 5*time.Second || !strings.Contains(d["output"], "launching") {
		t.Fatalf("took %s, output %q", el, d["output"])
	}
}

// TestBinaryInAUserWritableDirectoryIsRefusedWhileQueued is attack 6 at the device: the managed
// binary's directory is a user's, so the job is refused before anything is downloaded; and a
// release for another managed binary than the one configured is refused too.
func TestBinaryInAUserWritableDirectoryIsRefusedWhileQueued(t *testing.T) {
	h := newHarness(t)
	m := newManagedApp(t, h)
	v2 := realBinary(t, "true")
	h.publish("myapp", v2)
	other := testdoc.For("myapp", v2, "2.0")
	other.Target, other.Binary = "binary", "sshd"
	h.createJob("other-binary", h.doc(other))
	if err := os.Chown(m.dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	h.createJob("users-dir", h.binaryDoc("myapp", v2, "2.0"))
	h.run()
	h.expect("other-binary", "REJECTED", "UNSUPPORTED_OPERATION")
	h.expect("users-dir", "REJECTED", "UNSAFE_PATH")
}
