package confine

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/fieldota/fieldota/ota/reason"
)

var nobody = &User{Name: "nobody", UID: 65534, GID: 65534}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Fatal("this test needs root (CI runs as root)")
	}
}

// tree is a fresh directory other users can traverse (t.TempDir's parent is 0700).
func tree(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "fieldota-confine-")
	if err != nil || os.Chmod(d, 0o755) != nil {
		t.Fatal("temp dir", err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// mkdir makes p with the raw mode bits (0o1777 is sticky) and owner.
func mkdir(t *testing.T, p string, mode uint32, uid int) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, uid, uid); err != nil {
		t.Fatal(err)
	}
}

// TestCheckRefusesWhatAnotherUserCouldSwap is sshd's StrictModes rule for every directory the
// agent installs into as root.
func TestCheckRefusesWhatAnotherUserCouldSwap(t *testing.T) {
	needRoot(t)
	base := tree(t)
	cases := []struct {
		name  string
		setup func(t *testing.T) string // returns the directory to check
		user  *User
		want  error // nil = safe
	}{
		{"root's own directories, the last not there yet", func(t *testing.T) string {
			mkdir(t, filepath.Join(base, "a/opt"), 0o755, 0)
			return filepath.Join(base, "a/opt/app/x")
		}, nil, nil},
		{"a parent owned by a user", func(t *testing.T) string {
			mkdir(t, filepath.Join(base, "b/home"), 0o755, 0)
			mkdir(t, filepath.Join(base, "b/home/ec2-user"), 0o755, 65534)
			return filepath.Join(base, "b/home/ec2-user/JobSampleTesting")
		}, nil, reason.UnsafePath},
		{"the same parent when the files belong to that user", func(t *testing.T) string {
			return filepath.Join(base, "b/home/ec2-user/JobSampleTesting")
		}, nobody, nil},
		{"a group-writable parent", func(t *testing.T) string {
			mkdir(t, filepath.Join(base, "c/srv"), 0o775, 0)
			return filepath.Join(base, "c/srv/app")
		}, nil, reason.UnsafePath},
		{"a world-writable parent without the sticky bit", func(t *testing.T) string {
			mkdir(t, filepath.Join(base, "d/drop"), 0o777, 0)
			return filepath.Join(base, "d/drop/app")
		}, nil, reason.UnsafePath},
		{"a sticky world-writable parent (like /tmp) with a root-owned child", func(t *testing.T) string {
			mkdir(t, filepath.Join(base, "e/tmp"), 0o1777, 0)
			mkdir(t, filepath.Join(base, "e/tmp/app"), 0o755, 0)
			return filepath.Join(base, "e/tmp/app")
		}, nil, nil},
		{"the working directory itself sticky and world-writable", func(t *testing.T) string {
			mkdir(t, filepath.Join(base, "f/app"), 0o1777, 0)
			return filepath.Join(base, "f/app")
		}, nil, reason.UnsafePath},
		{"a user's directory under the files' user's home, owned by a third user", func(t *testing.T) string {
			mkdir(t, filepath.Join(base, "g/home/u"), 0o755, 65534)
			mkdir(t, filepath.Join(base, "g/home/u/app"), 0o755, 4242)
			return filepath.Join(base, "g/home/u/app")
		}, nobody, reason.UnsafePath},
		{"a symlink on the way (not resolved first)", func(t *testing.T) string {
			mkdir(t, filepath.Join(base, "h/real"), 0o755, 0)
			os.Symlink(filepath.Join(base, "h/real"), filepath.Join(base, "h/link"))
			return filepath.Join(base, "h/link/app")
		}, nil, reason.UnsafePath},
		{"a file where a directory should be", func(t *testing.T) string {
			mkdir(t, filepath.Join(base, "i"), 0o755, 0)
			os.WriteFile(filepath.Join(base, "i/app"), nil, 0o644)
			return filepath.Join(base, "i/app/x")
		}, nil, reason.UnsafePath},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Check(c.setup(t), c.user)
			if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			t.Logf("%v", err)
		})
	}
}

// TestSecondSpellingOfAPathResolvesToOneKey is attack 3's ground: `current -> releases/x` and
// `releases/x` are one place, however the job spells it; a symlink out of the roots is refused.
func TestSecondSpellingOfAPathResolvesToOneKey(t *testing.T) {
	root := filepath.Join(tree(t), "opt/app")
	os.MkdirAll(filepath.Join(root, "releases/x"), 0o755)
	os.Symlink("releases/x", filepath.Join(root, "current"))
	outside := tree(t)
	os.Symlink(outside, filepath.Join(root, "escape"))
	a, err1 := Resolve(filepath.Join(root, "current"), []string{root})
	b, err2 := Resolve(filepath.Join(root, "releases/x"), []string{root})
	if err1 != nil || err2 != nil || a != b {
		t.Fatalf("%q %v / %q %v", a, err1, b, err2)
	}
	if _, err := Resolve(filepath.Join(root, "escape/y"), []string{root}); !errors.Is(err, reason.UnsafePath) {
		t.Fatalf("symlink out of the root: %v", err)
	}
	if _, err := Resolve(root+"lication", []string{root}); !errors.Is(err, reason.UnsafePath) {
		t.Fatalf("a sibling sharing the root's prefix: %v", err)
	}
}

func TestOpenRefusesADirectoryReplacedAfterItsCheck(t *testing.T) {
	base := tree(t)
	dir := filepath.Join(base, "app")
	os.Mkdir(dir, 0o755)
	c, err := Check(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	os.Rename(dir, filepath.Join(base, "old"))
	os.Mkdir(dir, 0o755)
	if _, err := Open(c); !errors.Is(err, reason.UnsafePath) {
		t.Fatalf("a replaced directory opened: %v", err)
	}
}

func TestAsUsesTheUsersRightsOnly(t *testing.T) {
	needRoot(t)
	base := tree(t)
	rootOnly := filepath.Join(base, "root-only")
	mkdir(t, rootOnly, 0o755, 0)
	userDir := filepath.Join(base, "user")
	mkdir(t, userDir, 0o755, 65534)
	err := As(nobody, func() error {
		if err := os.WriteFile(filepath.Join(rootOnly, "x"), nil, 0o644); err == nil {
			return errors.New("wrote into root's directory")
		}
		return os.WriteFile(filepath.Join(userDir, "mine"), nil, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(userDir, "mine"))
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 {
		t.Fatalf("file owned by %d", st.Uid)
	}
	// The identity stayed on its thread: this goroutine is still root.
	if err := os.WriteFile(filepath.Join(rootOnly, "y"), nil, 0o644); err != nil {
		t.Fatalf("root lost its rights after As: %v", err)
	}
}

func TestLookupUserRefusesRoot(t *testing.T) {
	if _, err := LookupUser("root"); err == nil || !strings.Contains(err.Error(), "root") {
		t.Fatalf("got %v", err)
	}
	u, err := LookupUser("nobody")
	if err != nil || u.UID == 0 {
		t.Fatalf("%+v %v", u, err)
	}
}
