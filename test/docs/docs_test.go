package docs

// The rules for fenced code blocks in README.md and docs/*.md, which TestEveryDocumentedCommandRuns
// enforces:
//
//  1. Every fence names its language: ```sh for shell, ```text for diagrams and output, ```toml,
//     ```json, ```ini, ```go … An unlabelled fence fails the test, so that a new command cannot
//     hide in a block nobody runs.
//  2. Shell blocks (sh, bash, shell, console) run, each in a fresh directory with the freshly
//     built fieldota and fieldota-agent first on PATH, under bash -euo pipefail, in a network
//     namespace of their own (default ports such as the emulator's 1883/8080/8081 never collide
//     with anything else on the machine).
//  3. A shell block that cannot run here says why, with norun=REASON after the language, REASON
//     one of those in norunReasons (real AWS, changing the machine itself, a test suite CI runs
//     on its own, cosign). Any other reason fails the test.
//  4. Other words after the language prepare the block:
//     given=F,G   files the block reads but does not create, from the catalog in givens.go
//     sim         `fieldota sim --artifacts ./artifacts` runs (default ports) during the block
//     server      every command of the block is a long-running server: each must start, keep
//                 running for 2 s and stop with status 0 on SIGTERM
//     repo        runs in a copy of the repository (make targets, go install ./cmd/...)
//
// A block documenting a new command is covered by writing it as a ```sh block; if it needs an
// input file, name it in given= (and add it to givens.go if it is new).

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const repo = "../.."

// norunReasons are the only reasons a shell block may give for not running.
var norunReasons = map[string]string{
	"aws":       "talks to a real AWS account (aws iot …, KMS): nothing here reaches AWS",
	"host":      "changes the machine it runs on (installs Go or units, systemctl, block devices): for a person on a device or a fresh machine",
	"suite":     "is a test suite CI runs itself (make test, make test-device): running it from a test would recurse or run it twice",
	"cosign":    "needs cosign, which Debian does not package (only the interop test builds it, scripts/cosign.sh)",
	"script":    "is a script to install on a device, which the agent runs with FIELDOTA_* in its environment: not a command to type",
	"recording": "needs what a long device test run leaves behind (a kept power-loss recording)",
}

var shellLangs = map[string]bool{"sh": true, "bash": true, "shell": true, "console": true}

// block is one fenced code block.
type block struct {
	file  string
	line  int
	lang  string
	attrs map[string]string
	body  string
}

func (b block) String() string { return fmt.Sprintf("%s:%d", b.file, b.line) }

var fenceLine = regexp.MustCompile("^(\\s*)(```+|~~~+)(.*)$")

// blocks returns the fenced blocks of a Markdown file.
func blocks(t *testing.T, path string) []block {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rel, _ := filepath.Rel(repo, path)
	var out []block
	var cur *block
	var fence string
	var body []string
	for i, line := range strings.Split(string(b), "\n") {
		m := fenceLine.FindStringSubmatch(line)
		switch {
		case cur == nil && m != nil:
			fields := strings.Fields(m[3])
			cur = &block{file: rel, line: i + 1, attrs: map[string]string{}}
			fence = m[2]
			if len(fields) > 0 {
				cur.lang = fields[0]
				for _, f := range fields[1:] {
					k, v, _ := strings.Cut(f, "=")
					if k == "norun" {
						// the reason is the first word; the rest of the line may explain it
						cur.attrs[k] = v
						break
					}
					cur.attrs[k] = v
				}
			}
			body = nil
		case cur != nil && m != nil && strings.HasPrefix(m[2], fence[:1]) && len(m[2]) >= len(fence) && strings.TrimSpace(m[3]) == "":
			cur.body = strings.Join(body, "\n") + "\n"
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			body = append(body, line)
		}
	}
	if cur != nil {
		t.Errorf("%s:%d: fence never closed", rel, cur.line)
	}
	return out
}

func documents(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob(filepath.Join(repo, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{filepath.Join(repo, "README.md")}, docs...)
}

var buildOnce struct {
	sync.Once
	dir string
	err error
}

// binaries builds fieldota and fieldota-agent once for every block.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fieldota-docs-bin-")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.dir = dir
		for _, p := range []string{"fieldota", "fieldota-agent"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, p), "github.com/fieldota/fieldota/cmd/"+p)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildOnce.err = fmt.Errorf("go build %s: %v\n%s", p, err, out)
				return
			}
		}
	})
	if buildOnce.err != nil {
		t.Fatal(buildOnce.err)
	}
	return buildOnce.dir
}

func TestMain(m *testing.M) {
	if os.Getenv(netnsChild) == "1" {
		os.Exit(inNetns())
	}
	code := m.Run()
	if buildOnce.dir != "" {
		_ = os.RemoveAll(buildOnce.dir)
	}
	os.Exit(code)
}

// TestEveryDocumentedCommandRuns: README's release example `fieldota verify --key release.pub
// --document job.json install.py` failed (the flag is --job) because nothing ran the docs. Every
// shell command shown in README.md and docs/*.md runs here as written, and the rules above say
// which blocks are exempt and why.
func TestEveryDocumentedCommandRuns(t *testing.T) {
	var all []block
	for _, doc := range documents(t) {
		all = append(all, blocks(t, doc)...)
	}
	ran := 0
	for _, b := range all {
		if b.lang == "" {
			t.Errorf("%s: a fence without a language: write ```sh to run it, ```text if it is not shell (test/docs/docs_test.go)", b)
			continue
		}
		if !shellLangs[b.lang] {
			continue
		}
		if r, ok := b.attrs["norun"]; ok {
			if _, known := norunReasons[r]; !known {
				keys := make([]string, 0, len(norunReasons))
				for k := range norunReasons {
					keys = append(keys, k)
				}
				slices.Sort(keys)
				t.Errorf("%s: norun=%q is not a reason a block may skip for (one of %v; test/docs/docs_test.go)", b, r, keys)
			}
			continue
		}
		for k := range b.attrs {
			if k != "given" && k != "sim" && k != "server" && k != "repo" {
				t.Errorf("%s: unknown block attribute %q", b, k)
			}
		}
		ran++
		t.Run(strings.NewReplacer("/", "_", ".", "_").Replace(b.String()), func(t *testing.T) { runBlock(t, b) })
	}
	if ran == 0 {
		t.Fatal("no runnable shell block found: the test proved nothing")
	}
}

// runBlock runs one shell block per the rules.
func runBlock(t *testing.T, b block) {
	bin := binaries(t)
	dir := t.TempDir()
	if _, ok := b.attrs["repo"]; ok {
		dir = copyRepo(t)
	}
	for _, g := range strings.Split(b.attrs["given"], ",") {
		if g != "" {
			given(t, bin, dir, g)
		}
	}
	script := "set -euo pipefail\n"
	_, sim := b.attrs["sim"]
	if sim {
		given(t, bin, dir, "artifacts")
		script += simPrelude
	}
	if _, ok := b.attrs["server"]; ok {
		for _, c := range commands(b.body) {
			script += fmt.Sprintf("%s &\npid=$!\nsleep 2\nif ! kill -0 $pid 2>/dev/null; then wait $pid || true; echo 'server exited at once:' %q >&2; exit 1; fi\nkill -TERM $pid\nwait $pid\n", c, c)
		}
	} else {
		script += b.body
	}
	if sim {
		script += "kill -TERM $SIM\nwait $SIM\n"
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), netnsChild+"=1", "DOCS_SCRIPT="+script,
		"PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"), "GOBIN="+filepath.Join(t.TempDir(), "gobin"))
	cmd.SysProcAttr = namespaceAttr()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// A process group of its own: whatever the block starts (a server it forgot to stop, or one
	// a failing block left behind) is killed with it, and never outlives the test.
	cmd.SysProcAttr.Setpgid = true
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	defer func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) }()
	timer := time.AfterFunc(5*time.Minute, func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })
	err := cmd.Wait()
	timer.Stop()
	if err != nil {
		t.Fatalf("%s no longer runs as written: %v\n--- block ---\n%s--- output ---\n%s", b, err, b.body, out.String())
	}
}

// simPrelude starts the emulator on its default ports and waits for its control API.
const simPrelude = `fieldota sim --artifacts ./artifacts >sim.log 2>&1 &
SIM=$!
for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break; sleep 0.1; done
`

// commands splits a block into its commands: continuation lines joined, comments, blank and
// comment lines dropped.
func commands(body string) []string {
	var out []string
	cur := ""
	for _, line := range strings.Split(body, "\n") {
		trimmed := strings.TrimSpace(stripComment(line))
		if cur == "" && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur += strings.TrimSuffix(trimmed, "\\") + " "
			continue
		}
		out = append(out, cur+trimmed)
		cur = ""
	}
	return out
}

// stripComment drops a shell comment: a # that starts a word, outside quotes.
func stripComment(line string) string {
	var quote rune
	for i, r := range line {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '\'' || r == '"':
			quote = r
		case r == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return line[:i]
		}
	}
	return line
}

// copyRepo copies the working tree (not .git, not bin/) for blocks marked repo.
func copyRepo(t *testing.T) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "fieldota")
	src, err := filepath.Abs(repo)
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if fi.IsDir() && (rel == ".git" || rel == "bin") {
			return filepath.SkipDir
		}
		target := filepath.Join(dst, rel)
		switch {
		case fi.IsDir():
			return os.MkdirAll(target, 0o755)
		case fi.Mode()&os.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(target, b, fi.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// netnsChild marks the re-executed test binary that runs a block inside its network namespace.
const netnsChild = "FIELDOTA_DOCS_NETNS_CHILD"

// namespaceAttr puts the block in network and PID namespaces of its own (without root, inside a
// user namespace too, where it is root, mapped to the caller). The PID namespace ends every
// process of the block when its first process dies, and that one dies with the test
// (Pdeathsig): no server a block starts can outlive it, even when the test binary is killed.
func namespaceAttr() *syscall.SysProcAttr {
	if os.Geteuid() == 0 {
		return &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	}
	return &syscall.SysProcAttr{
		Pdeathsig:   syscall.SIGKILL,
		Cloneflags:  syscall.CLONE_NEWNET | syscall.CLONE_NEWPID | syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}},
	}
}

// inNetns brings the namespace's loopback up and replaces itself with bash running the block.
func inNetns() int {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err == nil {
		var ifr *unix.Ifreq
		if ifr, err = unix.NewIfreq("lo"); err == nil {
			if err = unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err == nil {
				ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
				err = unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
			}
		}
		_ = unix.Close(fd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "docs: loopback up in the block's network namespace:", err)
		return 1
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		fmt.Fprintln(os.Stderr, "docs: bash is needed:", err)
		return 1
	}
	env := slices.DeleteFunc(os.Environ(), func(e string) bool {
		return strings.HasPrefix(e, netnsChild+"=") || strings.HasPrefix(e, "DOCS_SCRIPT=")
	})
	err = syscall.Exec(bash, []string{"bash", "-c", os.Getenv("DOCS_SCRIPT")}, env)
	fmt.Fprintln(os.Stderr, "docs: exec bash:", err)
	return 1
}
