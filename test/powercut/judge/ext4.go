package judge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ext4 tools: Debian's e2fsprogs on an image file, the way the kernel would find the file
// system at the next mount (journal replayed), then a full read-only check and a dump.

const toolTimeout = 2 * time.Minute

func runTool(name string, args ...string) (string, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode(), nil
	}
	if err != nil {
		return out.String(), -1, fmt.Errorf("%s: %w", name, err)
	}
	return out.String(), 0, nil
}

// ext4Image is one replayed ext4 partition written to a file.
type ext4Image struct {
	path string
}

// run runs an e2fsprogs tool on the image; its output names the image "data.img" rather than
// a scratch path, so that verdicts read the same from run to run.
func (x ext4Image) run(name string, args ...string) (string, int, error) {
	out, code, err := runTool(name, append(args, x.path)...)
	return strings.ReplaceAll(out, x.path, "data.img"), code, err
}

// recover replays the journal as a mount would. e2fsck exits 0 or 1 when it recovered cleanly.
func (x ext4Image) recover() error {
	out, code, err := x.run("e2fsck", "-E", "journal_only", "-p")
	if err != nil {
		return err
	}
	if code > 1 {
		return fmt.Errorf("journal replay (e2fsck -E journal_only) exited %d: %s", code, strings.TrimSpace(out))
	}
	return nil
}

// bootFsck does what the board's slot-init does before mounting the data partition:
// `e2fsck -p`, then `e2fsck -y` when preen mode leaves errors or cannot open the file system
// (a primary superblock that fails its checksum: -y falls back to a backup). It returns what
// e2fsck said it did.
func (x ext4Image) bootFsck() (string, error) {
	out, code, err := x.run("e2fsck", "-p")
	if err != nil {
		return "", err
	}
	if code < 4 {
		return "e2fsck -p: " + firstLine(out), nil
	}
	out2, code2, err := x.run("e2fsck", "-y")
	if err != nil {
		return "", err
	}
	if code2 >= 4 {
		return "", fmt.Errorf("e2fsck -y exited %d: %s", code2, lastLines(out2, 8))
	}
	return "e2fsck -p exited " + strconv.Itoa(code) + ", then e2fsck -y: " + summarizeFsck(out2), nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// summarizeFsck keeps e2fsck's questions (what it fixed), one line.
func summarizeFsck(out string) string {
	var fixed []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasSuffix(l, "yes") || strings.Contains(l, "superblock") || strings.Contains(l, "Superblock") {
			fixed = append(fixed, strings.TrimSuffix(l, " yes"))
		}
	}
	if len(fixed) == 0 {
		return "nothing to fix"
	}
	return strings.Join(fixed, "; ")
}

// check is `e2fsck -fn`: any inconsistency after the journal replay is a file system the
// kernel would mount damaged.
func (x ext4Image) check() error {
	out, code, err := x.run("e2fsck", "-fn")
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("e2fsck -fn exited %d: %s", code, lastLines(out, 12))
	}
	return nil
}

// dump copies the whole file system tree into dir.
func (x ext4Image) dump(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	out, code, err := x.run("debugfs", "-R", "rdump / "+dir)
	if err != nil {
		return err
	}
	if code != 0 || strings.Contains(out, "rdump:") {
		return fmt.Errorf("debugfs rdump: %s", strings.TrimSpace(out))
	}
	return nil
}

// owners names the files holding the given file system blocks (ext4 block numbers), for
// reports: "<journal>", "/fieldota/journal.json", "metadata" (superblock, bitmaps, inode
// tables) or "free".
func (x ext4Image) owners(blocks []int64) map[int64]string {
	out := map[int64]string{}
	if len(blocks) == 0 {
		return out
	}
	args := "icheck"
	for _, b := range blocks {
		args += " " + strconv.FormatInt(b, 10)
	}
	text, _, err := x.run("debugfs", "-R", args)
	if err != nil {
		return out
	}
	inodes := map[int64]int64{}
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		b, err1 := strconv.ParseInt(f[0], 10, 64)
		if err1 != nil {
			continue
		}
		if i, err := strconv.ParseInt(f[1], 10, 64); err == nil {
			inodes[b] = i
		} else {
			out[b] = "metadata or free space"
		}
	}
	var ids []string
	seen := map[int64]bool{}
	for _, i := range inodes {
		if !seen[i] {
			seen[i] = true
			ids = append(ids, strconv.FormatInt(i, 10))
		}
	}
	names := map[int64]string{8: "<the ext4 journal>", 7: "<reserved GDT blocks>"}
	if len(ids) > 0 {
		text, _, err := x.run("debugfs", "-R", "ncheck "+strings.Join(ids, " "))
		if err == nil {
			for _, l := range strings.Split(text, "\n") {
				f := strings.Fields(l)
				if len(f) < 2 {
					continue
				}
				if i, err := strconv.ParseInt(f[0], 10, 64); err == nil && names[i] == "" {
					names[i] = f[1]
				}
			}
		}
	}
	for b, i := range inodes {
		if n := names[i]; n != "" {
			out[b] = n
		} else {
			out[b] = fmt.Sprintf("inode %d (no name: deleted or not yet linked)", i)
		}
	}
	return out
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// writeImage writes b to path, leaving holes for zero blocks (most of a partition is empty).
func writeImage(path string, b []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	const blk = 64 << 10
	zero := make([]byte, blk)
	for off := 0; off < len(b); off += blk {
		end := min(off+blk, len(b))
		if bytes.Equal(b[off:end], zero[:end-off]) {
			continue
		}
		if _, err := f.WriteAt(b[off:end], int64(off)); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Truncate(int64(len(b))); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// walk lists the regular files under root (relative paths, slash-separated).
func walk(root string) (map[string][]byte, error) {
	files := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			files["/"+filepath.ToSlash(rel)] = b
		}
		return nil
	})
	return files, err
}
