package units

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/fieldota/fieldota/agent/config"
)

const repo = "../.."

// dropin is an ini block of docs/systemd.md marked "dropin=NAME writable=P,… hidden=P,…".
type dropin struct {
	name             string
	body             string
	writable, hidden []string
}

var fence = regexp.MustCompile("(?ms)^```ini ([^\n]*)\n(.*?)^```")

func documentedDropins(t *testing.T) []dropin {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "docs/systemd.md"))
	if err != nil {
		t.Fatal(err)
	}
	var out []dropin
	for _, m := range fence.FindAllStringSubmatch(string(b), -1) {
		d := dropin{body: m[2]}
		for _, attr := range strings.Fields(m[1]) {
			k, v, _ := strings.Cut(attr, "=")
			switch k {
			case "dropin":
				d.name = v
			case "writable":
				d.writable = strings.Split(v, ",")
			case "hidden":
				d.hidden = strings.Split(v, ",")
			}
		}
		if d.name == "" {
			t.Fatalf("docs/systemd.md: an ini block without dropin=NAME: %q", m[1])
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		t.Fatal("docs/systemd.md documents no drop-in")
	}
	return out
}

// root is a file system root for systemd-analyze: the shipped units in /etc/systemd/system,
// the agent (freshly built) where their ExecStart lines expect it, and the given drop-ins.
func root(t *testing.T, agent string, dropins ...dropin) string {
	t.Helper()
	r := t.TempDir()
	units := filepath.Join(r, "etc/systemd/system")
	bin := filepath.Join(r, "usr/bin")
	for _, d := range []string{units, bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	shipped, _ := filepath.Glob(filepath.Join(repo, "scripts/*.service"))
	timers, _ := filepath.Glob(filepath.Join(repo, "scripts/*.timer"))
	for _, u := range append(shipped, timers...) {
		copyFile(t, u, filepath.Join(units, filepath.Base(u)), 0o644)
	}
	for _, name := range []string{"fieldota-agent", ".fieldota-agent.prev"} {
		copyFile(t, agent, filepath.Join(bin, name), 0o755)
	}
	for _, d := range dropins {
		p := filepath.Join(units, d.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(d.body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

func buildAgent(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "fieldota-agent")
	cmd := exec.Command("go", "build", "-o", out, "github.com/fieldota/fieldota/cmd/fieldota-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// TestShippedUnitsAndDocumentedDropinsPassSystemdAnalyzeVerify: every shipped unit, alone and
// with each drop-in docs/systemd.md documents, passes systemd-analyze verify (unknown keys, bad
// values and missing executables are errors).
func TestShippedUnitsAndDocumentedDropinsPassSystemdAnalyzeVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatalf("systemd-analyze is needed (Debian package systemd; scripts/deps.sh installs it): %v", err)
	}
	agent := buildAgent(t)
	sets := [][]dropin{nil}
	for _, d := range documentedDropins(t) {
		sets = append(sets, []dropin{d})
	}
	shipped, _ := filepath.Glob(filepath.Join(repo, "scripts/*.service"))
	timers, _ := filepath.Glob(filepath.Join(repo, "scripts/*.timer"))
	for _, set := range sets {
		r := root(t, agent, set...)
		for _, u := range append(shipped, timers...) {
			args := []string{"verify", "--man=no", "--recursive-errors=no", "--root=" + r, "/etc/systemd/system/" + filepath.Base(u)}
			out, err := exec.Command("systemd-analyze", args...).CombinedOutput()
			if err != nil || len(strings.TrimSpace(string(out))) > 0 {
				t.Errorf("systemd-analyze %s (drop-ins %v): %v\n%s", strings.Join(args, " "), names(set), err, out)
			}
		}
	}
}

func names(ds []dropin) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.name)
	}
	return out
}

// TestDocumentedDirectoriesAreWritableUnderTheSandbox: the shipped unit's ProtectHome=true made
// the seed's /home/ec2-user/JobSampleTesting impossible under systemd while the docs showed it.
// Each directory the documented examples write to must be writable under the unit's settings:
// the example configuration's with the unit as shipped, the seed's job document's with the
// drop-in docs/systemd.md gives for it — and that drop-in must keep other homes hidden.
func TestDocumentedDirectoriesAreWritableUnderTheSandbox(t *testing.T) {
	unit := readSettings(t, filepath.Join(repo, "scripts/fieldota-agent.service"))
	cfg, err := config.Load(filepath.Join(repo, "scripts/agent.example.toml"))
	if err != nil {
		t.Fatal(err)
	}
	asShipped := append([]string{cfg.StateDir, filepath.Dir(cfg.Swap.Target), filepath.Dir(cfg.Slot.FwEnvConfig)}, cfg.Files.AllowedRoots...)
	for _, p := range asShipped {
		if !unit.writable(p) {
			t.Errorf("scripts/agent.example.toml writes %s, which the shipped unit does not let it write", p)
		}
	}

	seed := seedWorkingDirectory(t)
	if unit.writable(seed) {
		t.Fatalf("the sandbox model says the shipped unit can write %s: it cannot (ProtectHome=true)", seed)
	}
	covered := false
	for _, d := range documentedDropins(t) {
		s := unit.with(t, d.body)
		for _, p := range d.writable {
			if !s.writable(p) {
				t.Errorf("docs/systemd.md %s claims %s writable; under the unit plus the drop-in it is not", d.name, p)
			}
			covered = covered || p == seed
		}
		for _, p := range d.hidden {
			if s.accessible(p) {
				t.Errorf("docs/systemd.md %s claims %s hidden; under the unit plus the drop-in it is visible", d.name, p)
			}
		}
	}
	if !covered {
		t.Errorf("no drop-in in docs/systemd.md makes the seed's workingDirectory %s writable", seed)
	}
}

// seedWorkingDirectory is the workingDirectory of docs/job-document.md's seed example.
func seedWorkingDirectory(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "docs/job-document.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`"workingDirectory":\s*"([^"]+)"`).FindSubmatch(b)
	if m == nil {
		t.Fatal("docs/job-document.md shows no workingDirectory")
	}
	return string(m[1])
}

// settings are the [Service] file-system settings of a unit and its drop-ins, in order.
type settings struct {
	protectHome, protectSystem string
	rw, ro, inaccessible, bind []string
	stateDirs                  []string
}

func readSettings(t *testing.T, path string) settings {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s settings
	s.apply(string(b))
	return s
}

func (s settings) with(t *testing.T, dropin string) settings {
	c := s
	c.rw, c.ro = append([]string(nil), s.rw...), append([]string(nil), s.ro...)
	c.inaccessible, c.bind = append([]string(nil), s.inaccessible...), append([]string(nil), s.bind...)
	c.apply(dropin)
	return c
}

// apply reads unit-file lines: later assignments override booleans, lists accumulate, and an
// empty assignment resets a list (systemd's rules).
func (s *settings) apply(text string) {
	sc := bufio.NewScanner(strings.NewReader(text))
	section := ""
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			section = line
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section != "[Service]" {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		list := func(l *[]string) {
			if v == "" {
				*l = nil
				return
			}
			for _, p := range strings.Fields(v) {
				p = strings.TrimLeft(p, "-+")
				if i := strings.Index(p, ":"); k == "BindPaths" && i > 0 {
					p = p[i+1:] // SOURCE:DEST binds at DEST
				}
				*l = append(*l, filepath.Clean(p))
			}
		}
		switch k {
		case "ProtectHome":
			s.protectHome = v
		case "ProtectSystem":
			s.protectSystem = v
		case "ReadWritePaths":
			list(&s.rw)
		case "ReadOnlyPaths":
			list(&s.ro)
		case "InaccessiblePaths":
			list(&s.inaccessible)
		case "BindPaths":
			list(&s.bind)
		case "StateDirectory":
			for _, d := range strings.Fields(v) {
				s.stateDirs = append(s.stateDirs, filepath.Join("/var/lib", d))
			}
		}
	}
}

func under(p, root string) bool {
	return p == root || strings.HasPrefix(p, strings.TrimSuffix(root, "/")+"/")
}

func anyUnder(p string, roots []string) bool {
	for _, r := range roots {
		if under(p, r) {
			return true
		}
	}
	return false
}

var homes = []string{"/home", "/root", "/run/user"}

// accessible and writable follow systemd.exec(5): ProtectHome=yes (like InaccessiblePaths=)
// hides the homes with nothing nestable below; tmpfs shows an empty read-only tree in which
// only BindPaths= appear (writable); read-only is like ReadOnlyPaths=; ProtectSystem= makes
// /usr and /boot (yes), /etc too (full) or everything (strict) read-only; the deepest
// ReadWritePaths=/ReadOnlyPaths= entry above a path decides, and StateDirectory= is writable.
func (s settings) accessible(p string) bool {
	p = filepath.Clean(p)
	if anyUnder(p, s.inaccessible) {
		return false
	}
	if anyUnder(p, homes) {
		switch s.protectHome {
		case "yes", "true", "1", "on":
			return false
		case "tmpfs":
			return anyUnder(p, s.bind)
		}
	}
	return true
}

func (s settings) writable(p string) bool {
	p = filepath.Clean(p)
	if !s.accessible(p) {
		return false
	}
	if anyUnder(p, s.bind) || anyUnder(p, s.stateDirs) {
		return true
	}
	if anyUnder(p, homes) && s.protectHome == "read-only" && !anyUnder(p, s.rw) {
		return false
	}
	ro := append([]string(nil), s.ro...)
	switch s.protectSystem {
	case "yes", "true":
		ro = append(ro, "/usr", "/boot", "/efi")
	case "full":
		ro = append(ro, "/usr", "/boot", "/efi", "/etc")
	case "strict":
		ro = append(ro, "/")
	}
	deepRO, deepRW := deepest(p, ro), deepest(p, s.rw)
	return deepRO == "" || len(deepRW) >= len(deepRO)
}

func deepest(p string, roots []string) string {
	best := ""
	for _, r := range roots {
		if under(p, r) && len(r) > len(best) {
			best = r
		}
	}
	return best
}
