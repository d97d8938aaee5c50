// Package confine keeps the agent's file operations where no unprivileged user can swap a path
// under it. A directory the agent writes into as root must be owned by root, and neither it nor
// any parent up to / may be writable by anyone else (sshd's StrictModes rule): then no one but
// root can rename, replace or symlink anything on the way, and checking once is enough. Every
// operation inside goes through an os.Root opened on that directory (so nothing is ever
// resolved outside it), checked to be the very directory that was inspected.
//
// Files that belong to a user (files.run_as: the seed's /home/ec2-user/JobSampleTesting) are
// placed with that user's rights only: As runs the work on a thread whose file-system identity
// is the user's (setfsuid/setfsgid/setgroups, which also drops root's file capabilities for the
// thread), so no root step ever touches a path that user can write.
package confine

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/fieldota/fieldota/ota/durable"
	"github.com/fieldota/fieldota/ota/reason"
)

// User is the account files of a files install belong to (config files.run_as).
type User struct {
	Name     string
	UID, GID uint32
	Groups   []uint32 // supplementary groups
	Home     string
}

// LookupUser reads an account from the system's user database.
func LookupUser(name string) (*User, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, err
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user %s: non-numeric uid or gid", name)
	}
	if uid == 0 {
		return nil, fmt.Errorf("user %s is root: leave files.run_as empty instead", name)
	}
	out := &User{Name: name, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir}
	gids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("user %s: groups: %w", name, err)
	}
	for _, g := range gids {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil && uint32(n) != out.GID {
			out.Groups = append(out.Groups, uint32(n))
		}
	}
	return out, nil
}

// Credential is the user as a process credential (for programs run as the user).
func (u *User) Credential() *syscall.Credential {
	if u == nil {
		return nil
	}
	return &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups}
}

// Env is the minimal environment of a program run as the user.
func (u *User) Env(base []string) []string {
	if u == nil {
		return base
	}
	out := make([]string, 0, len(base)+2)
	for _, kv := range base {
		if !strings.HasPrefix(kv, "HOME=") {
			out = append(out, kv)
		}
	}
	home := u.Home
	if home == "" {
		home = "/"
	}
	return append(out, "HOME="+home, "USER="+u.Name, "LOGNAME="+u.Name)
}

func (u *User) owns(st *syscall.Stat_t) bool { return u != nil && st.Uid == u.UID }

// Resolve returns dir with the symlinks of its existing part resolved, and refuses it unless it
// lies under one of roots (resolved too): a symlink inside an allowed root may point elsewhere
// inside it (current -> releases/x), never out of it. The result is what the device records
// versions under, however the path was spelt.
func Resolve(dir string, roots []string) (string, error) {
	real, err := resolveExisting(dir)
	if err != nil {
		return "", reason.Errorf(reason.UnsafePath, "resolving %s: %w", dir, err)
	}
	for _, r := range roots {
		rr, err := resolveExisting(r)
		if err != nil {
			continue
		}
		if real == rr || rr == "/" || strings.HasPrefix(real, rr+"/") {
			return real, nil
		}
	}
	return "", reason.Errorf(reason.UnsafePath, "%s resolves to %s, outside the allowed roots %q", dir, real, roots)
}

// resolveExisting resolves symlinks in the longest existing prefix of p and appends the rest.
func resolveExisting(p string) (string, error) {
	p = filepath.Clean(p)
	var rest []string
	for {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(append([]string{real}, rest...)...), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(p)
		if parent == p {
			return "", fmt.Errorf("%s: %w", p, os.ErrNotExist)
		}
		rest = append([]string{filepath.Base(p)}, rest...)
		p = parent
	}
}

// Checked is a directory path found safe by Check.
type Checked struct {
	Path string
	// Existing is the deepest component that exists (Path itself when it exists), and stat its
	// identity, so that Open can prove it opened what was checked.
	Existing string
	dev, ino uint64
}

// Check walks a resolved absolute path from / down without following symlinks. Every existing
// component must be a directory owned by root — or by u, when the files belong to a user — that
// neither group nor others may write. A parent with the sticky bit (/tmp) may be writable by
// all: the kernel lets no one but its owner rename what root or u owns inside. Components that
// do not exist yet are the installer's to create. Refusals are UNSAFE_PATH, naming the
// component, its owner and mode.
func Check(dir string, u *User) (Checked, error) {
	if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir {
		return Checked{}, reason.Errorf(reason.UnsafePath, "%q is not a clean absolute path", dir)
	}
	fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Checked{}, reason.Errorf(reason.UnsafePath, "open /: %w", err)
	}
	cur := "/"
	parts := strings.Split(strings.TrimPrefix(dir, "/"), "/")
	if dir == "/" {
		parts = nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return Checked{}, reason.Errorf(reason.UnsafePath, "stat /: %w", err)
	}
	for i := 0; ; i++ {
		last := i == len(parts)
		if err := checkDir(cur, &st, u, last); err != nil {
			unix.Close(fd)
			return Checked{}, err
		}
		if last {
			break
		}
		next, err := unix.Openat(fd, parts[i], unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			break
		}
		if err != nil {
			unix.Close(fd)
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				return Checked{}, reason.Errorf(reason.UnsafePath, "%s is not a directory (a symlink appeared after the path was resolved?)", filepath.Join(cur, parts[i]))
			}
			return Checked{}, reason.Errorf(reason.UnsafePath, "open %s: %w", filepath.Join(cur, parts[i]), err)
		}
		unix.Close(fd)
		fd, cur = next, filepath.Join(cur, parts[i])
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return Checked{}, reason.Errorf(reason.UnsafePath, "stat %s: %w", cur, err)
		}
	}
	unix.Close(fd)
	return Checked{Path: dir, Existing: cur, dev: uint64(st.Dev), ino: st.Ino}, nil
}

func checkDir(p string, st *unix.Stat_t, u *User, last bool) error {
	mode := st.Mode
	if mode&unix.S_IFMT != unix.S_IFDIR {
		return reason.Errorf(reason.UnsafePath, "%s is not a directory", p)
	}
	if st.Uid != 0 && (u == nil || st.Uid != u.UID) {
		who := "root"
		if u != nil {
			who = "root or " + u.Name
		}
		return reason.Errorf(reason.UnsafePath, "%s belongs to uid %d, not %s: that user could swap what the agent installs", p, st.Uid, who)
	}
	if mode&0o022 != 0 && (last || mode&unix.S_ISVTX == 0) {
		return reason.Errorf(reason.UnsafePath, "%s (mode %04o) is writable by group or others: they could swap what the agent installs", p, mode&0o7777)
	}
	return nil
}

// DirMode is the mode of directories the agent creates: explicit, so that the service's
// UMask=0077 does not make an application's own directory unreadable to it.
const DirMode fs.FileMode = 0o755

// Open creates the components of c.Path that do not exist (DirMode, each made durable in its
// parent) and opens c.Path as an os.Root, refusing it unless the deepest component that existed
// at Check is the one the walk reached. Call it inside As when the files belong to a user, so
// that user creates them.
func Open(c Checked) (*os.Root, error) {
	base, err := os.OpenRoot(c.Existing)
	if err != nil {
		return nil, reason.Errorf(reason.UnsafePath, "open %s: %w", c.Existing, err)
	}
	fi, err := base.Stat(".")
	if err != nil {
		base.Close()
		return nil, reason.Errorf(reason.UnsafePath, "stat %s: %w", c.Existing, err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || uint64(st.Dev) != c.dev || st.Ino != c.ino {
		base.Close()
		return nil, reason.Errorf(reason.UnsafePath, "%s changed between its check and its use", c.Existing)
	}
	rel, err := filepath.Rel(c.Existing, c.Path)
	if err != nil || rel == "." {
		return base, err
	}
	cur := base
	for _, part := range strings.Split(rel, "/") {
		err := durable.MkdirAt(cur, part, DirMode)
		if err != nil && !errors.Is(err, fs.ErrExist) {
			cur.Close()
			return nil, reason.Errorf(reason.InstallFailed, "create %s: %w", part, err)
		}
		next, err := cur.OpenRoot(part)
		cur.Close()
		if err != nil {
			return nil, reason.Errorf(reason.UnsafePath, "open %s: %w", part, err)
		}
		cur = next
	}
	return cur, nil
}

// As runs fn with u's file-system identity: on its own locked OS thread whose fsuid, fsgid and
// supplementary groups are u's. That thread is never unlocked, so Go discards it when fn
// returns and the changed identity never runs anything else. nil runs fn as the agent.
func As(u *User, fn func() error) error {
	if u == nil {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		defer func() {
			if r := recover(); r != nil {
				errc <- fmt.Errorf("as %s: panic: %v", u.Name, r)
			}
		}()
		if err := becomeFS(u); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// becomeFS sets this thread's groups, then fsgid, then fsuid (once the uid is not root's, the
// others could no longer be changed), and proves each took effect: setfsuid reports failure
// only through the value it returns.
func becomeFS(u *User) error {
	groups := make([]int, len(u.Groups))
	for i, g := range u.Groups {
		groups[i] = int(g)
	}
	if err := unix.Setgroups(groups); err != nil {
		return fmt.Errorf("as %s: setgroups: %w", u.Name, err)
	}
	unix.SetfsgidRetGid(int(u.GID))
	if prev, _ := unix.SetfsgidRetGid(int(u.GID)); prev != int(u.GID) {
		return fmt.Errorf("as %s: setfsgid did not take (fsgid %d)", u.Name, prev)
	}
	unix.SetfsuidRetUid(int(u.UID))
	if prev, _ := unix.SetfsuidRetUid(int(u.UID)); prev != int(u.UID) {
		return fmt.Errorf("as %s: setfsuid did not take (fsuid %d)", u.Name, prev)
	}
	return nil
}
