package files

import (
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/fieldota/fieldota/ota/confine"
	"github.com/fieldota/fieldota/ota/reason"
)

// staged writes content to a root-only staging file and returns it open, with its digest.
func staged(t *testing.T, content string) (*os.File, []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "staged")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	sum := sha256.Sum256([]byte(content))
	return f, sum[:]
}

func file(t *testing.T, name, content string, mode fs.FileMode) File {
	f, sum := staged(t, content)
	return File{Name: name, Mode: mode, Staged: f, SHA256: sum}
}

// rootDir is a working directory no one but root can change (t.TempDir: 0700 under sticky /tmp).
func rootDir(t *testing.T) (string, confine.Checked) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "app")
	c, err := confine.Check(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return dir, c
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		return "<missing>"
	}
	return string(b)
}

func assertNoMarkers(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".fieldota-") {
			t.Fatalf("marker left: %s", e.Name())
		}
	}
}

func TestPlacesFilesWithTheirModesAndCreatesTheDirectory(t *testing.T) {
	dir, c := rootDir(t)
	old := syscall.Umask(0o077) // the shipped unit's UMask must not make the directory unreadable
	defer syscall.Umask(old)
	p := Plan{Dir: c, Files: []File{file(t, "install.sh", "#!/bin/sh\n", 0o750), file(t, "app.conf", "new conf", 0o640)}}
	if err := Place(p); err != nil {
		t.Fatal(err)
	}
	if err := Commit(p); err != nil {
		t.Fatal(err)
	}
	if read(t, filepath.Join(dir, "app.conf")) != "new conf" {
		t.Fatal("conf not placed")
	}
	for name, want := range map[string]fs.FileMode{"install.sh": 0o750, "app.conf": 0o640} {
		fi, _ := os.Stat(filepath.Join(dir, name))
		if fi.Mode().Perm() != want {
			t.Fatalf("%s mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != confine.DirMode {
		t.Fatalf("created directory mode %v under umask 077", fi.Mode().Perm())
	}
	assertNoMarkers(t, dir)
}

func TestRestorePutsPreviousFilesBack(t *testing.T) {
	dir, c := rootDir(t)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "app.conf"), []byte("old conf"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := Plan{Dir: c, Files: []File{file(t, "app.conf", "new conf", 0o644), file(t, "new.bin", "x", 0o644)}}
	if err := Place(p); err != nil {
		t.Fatal(err)
	}
	if err := Restore(p); err != nil {
		t.Fatal(err)
	}
	if read(t, filepath.Join(dir, "app.conf")) != "old conf" || read(t, filepath.Join(dir, "new.bin")) != "<missing>" {
		t.Fatal("previous state not restored")
	}
	assertNoMarkers(t, dir)
}

// TestCrashMidPlaceIsUndoneThenRedone: markers left by a crash after the first file are
// restored before the next Place runs.
func TestCrashMidPlaceIsUndoneThenRedone(t *testing.T) {
	dir, c := rootDir(t)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "a"), []byte("old a"), 0o644)
	// The state after a kill between the two files: a replaced (backup kept), b untouched, a
	// temp file of the interrupted write.
	os.Link(filepath.Join(dir, "a"), filepath.Join(dir, prevPrefix+"a"))
	os.Remove(filepath.Join(dir, "a"))
	os.WriteFile(filepath.Join(dir, "a"), []byte("half new a"), 0o644)
	os.WriteFile(filepath.Join(dir, ".fieldota-tmp-b-123"), []byte("partial"), 0o600)
	p := Plan{Dir: c, Files: []File{file(t, "a", "new a", 0o644), file(t, "b", "new b", 0o644)}}
	if err := Place(p); err != nil {
		t.Fatal(err)
	}
	if read(t, filepath.Join(dir, "a")) != "new a" || read(t, filepath.Join(dir, "b")) != "new b" {
		t.Fatal("not placed")
	}
	if err := Restore(p); err != nil {
		t.Fatal(err)
	}
	if read(t, filepath.Join(dir, "a")) != "old a" || read(t, filepath.Join(dir, "b")) != "<missing>" {
		t.Fatalf("restore after a crash lost the original: a=%q", read(t, filepath.Join(dir, "a")))
	}
}

func TestPlanRefusesNamesAndModes(t *testing.T) {
	_, c := rootDir(t)
	for _, f := range []File{
		file(t, "../escape", "x", 0o644), file(t, "a/b", "x", 0o644), file(t, ".fieldota-prev-x", "x", 0o644),
		file(t, "ok", "x", 0o666), file(t, "ok", "x", 0o4755), file(t, "ok", "x", 0),
	} {
		if err := Place(Plan{Dir: c, Files: []File{f}}); err == nil {
			t.Errorf("%q mode %v accepted", f.Name, f.Mode)
		}
	}
}

func TestSymlinkAtTargetIsNotFollowed(t *testing.T) {
	dir, c := rootDir(t)
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("precious"), 0o644)
	os.MkdirAll(dir, 0o755)
	os.Symlink(victim, filepath.Join(dir, "app.conf"))
	err := Place(Plan{Dir: c, Files: []File{file(t, "app.conf", "attack", 0o644)}})
	if !errors.Is(err, reason.InstallFailed) || read(t, victim) != "precious" {
		t.Fatalf("err %v, victim %q", err, read(t, victim))
	}
}

func TestStagedPayloadChangedAfterVerificationIsNotPlaced(t *testing.T) {
	dir, c := rootDir(t)
	f := file(t, "app.bin", "signed bytes", 0o644)
	if err := os.WriteFile(f.Staged.Name(), []byte("other bytes!"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Place(Plan{Dir: c, Files: []File{file(t, "first.conf", "fine", 0o644), f}})
	if !errors.Is(err, reason.DigestMismatch) {
		t.Fatalf("got %v", err)
	}
	// Nothing at all was placed: the digests are checked before the first file.
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		if read(t, filepath.Join(dir, "first.conf")) != "<missing>" {
			t.Fatal("a file was placed before the mismatch was found")
		}
	}
}

func TestPlacementAsTheFilesUserOwnsTheFilesAndCannotTouchRootsDirectories(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test needs root (CI runs as root)")
	}
	u := &confine.User{Name: "nobody", UID: 65534, GID: 65534}
	home := filepath.Join(reachable(t), "home", "user")
	if err := os.MkdirAll(home, 0o755); err != nil || os.Chown(home, 65534, 65534) != nil {
		t.Fatal("setup")
	}
	dir := filepath.Join(home, "JobSampleTesting")
	c, err := confine.Check(dir, u)
	if err != nil {
		t.Fatal(err)
	}
	p := Plan{Dir: c, User: u, Files: []File{file(t, "install.py", "print(1)\n", 0o755)}}
	if err := Place(p); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{dir, filepath.Join(dir, "install.py")} {
		fi, _ := os.Stat(path)
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 || st.Gid != 65534 {
			t.Fatalf("%s owned by %d:%d, want the files' user", path, st.Uid, st.Gid)
		}
	}
	if err := Commit(p); err != nil {
		t.Fatal(err)
	}
}

// TestDirectorySwappedMidInstallNeverRedirectsRoot is attack 4: a local user who can write the
// directory exchanges it for a symlink to a directory of root's (renameat2 RENAME_EXCHANGE), over
// and over, while installs run. Placing as that user (files.run_as), every write the exchange
// redirects is the user's own and fails in root's directory; without run_as the directory is
// refused outright.
func TestDirectorySwappedMidInstallNeverRedirectsRoot(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test needs root (CI runs as root)")
	}
	u := &confine.User{Name: "nobody", UID: 65534, GID: 65534}
	base := filepath.Join(reachable(t), "home")
	victim := filepath.Join(t.TempDir(), "etc") // root's, 0755
	for _, d := range []string{base, victim} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chown(base, 65534, 65534)
	dir, decoy := filepath.Join(base, "app"), filepath.Join(base, "decoy")
	os.Mkdir(dir, 0o755)
	os.Chown(dir, 65534, 65534)
	if err := os.Symlink(victim, decoy); err != nil {
		t.Fatal(err)
	}
	if _, err := confine.Check(dir, nil); !errors.Is(err, reason.UnsafePath) {
		t.Fatalf("a user's directory accepted for root: %v", err)
	}
	c, err := confine.Check(dir, u)
	if err != nil {
		t.Fatal(err)
	}
	placed := 0
	var stop atomic.Bool
	done := make(chan struct{})
	go func() { // the attacker
		defer close(done)
		for !stop.Load() {
			_ = unix.Renameat2(unix.AT_FDCWD, dir, unix.AT_FDCWD, decoy, unix.RENAME_EXCHANGE)
		}
	}()
	for range 200 {
		p := Plan{Dir: c, User: u, Files: []File{file(t, "cron.job", "* * * * * root evil", 0o644)}}
		if Place(p) == nil {
			placed++
			_ = Commit(p)
		}
	}
	stop.Store(true)
	<-done
	if placed == 0 {
		t.Fatal("no install went through at all: the test proves nothing")
	}
	ents, _ := os.ReadDir(victim)
	if len(ents) != 0 {
		t.Fatalf("root's directory gained %d entries (%s…)", len(ents), ents[0].Name())
	}
}

// reachable is a temp directory other users can traverse, like /home.
// (t.TempDir's parent is 0700).
func reachable(t *testing.T) string {
	d, err := os.MkdirTemp("", "fieldota-files-")
	if err != nil || os.Chmod(d, 0o755) != nil {
		t.Fatal("temp dir", err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
