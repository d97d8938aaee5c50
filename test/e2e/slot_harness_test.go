package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/fieldota/fieldota/test/testdoc"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/slot"
	"github.com/fieldota/fieldota/test/bootsim"
)

// abBoard is a device with two slots driven by bootsim: the agent's reboot argv touches a
// marker; the board then cuts the agent down (SIGKILL, as a reboot does), runs the bootloader
// over the real environment and starts the agent again in the slot it chose.
type abBoard struct {
	e      *env
	board  *bootsim.Board
	root   string
	marker string

	mu       sync.Mutex
	boots    []bootsim.Boot
	deaths   int
	powerCut bool        // an agent that dies on its own: power cut (bootloader runs) or a process restart
	diedIn   []ota.State // the journal's state at each death
	onDeath  func()      // runs after an agent died on its own, before the board goes on
	// killEnv goes to every agent start: the kill marker makes the fault fire once, in
	// whichever boot reaches the state.
	killEnv []string
	proc    *exec.Cmd
	done    chan error
	stop    chan struct{}
	stopped chan struct{}
}

type abOpts struct {
	bootloader string // uboot | grub
	powerCut   bool
}

func newABBoard(t *testing.T, e *env, o abOpts) *abBoard {
	t.Helper()
	ctx := context.Background()
	b := &abBoard{e: e, root: filepath.Join(e.dir, "sysroot"), marker: filepath.Join(e.dir, "reboot-requested"), powerCut: o.powerCut}
	if err := os.MkdirAll(b.root, 0o755); err != nil {
		t.Fatal(err)
	}
	pair := slot.Pair{A: filepath.Join(e.dir, "slot-a.img"), B: filepath.Join(e.dir, "slot-b.img")}
	if err := os.WriteFile(pair.A, bootsim.Image("1.0.0", bootsim.ImageOpts{}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pair.B, make([]byte, 64<<10), 0o644); err != nil { // an erased partition
		t.Fatal(err)
	}
	vars := slot.Env{slot.VarSlot: "a", slot.VarTry: "0", slot.VarBootCount: "0", slot.VarBootLimit: "1"}
	var bl slot.Bootloader
	var blCfg string
	switch o.bootloader {
	case "uboot":
		u, err := bootsim.NewUBoot(ctx, e.dir, true, vars)
		if err != nil {
			t.Fatal(err)
		}
		bl, blCfg = u, fmt.Sprintf("bootloader = \"uboot\"\nfw_env_config = %q\n", u.Config)
	case "grub":
		g, err := bootsim.NewGrub(ctx, e.dir, vars)
		if err != nil {
			t.Fatal(err)
		}
		bl, blCfg = g, fmt.Sprintf("bootloader = \"grub\"\ngrubenv = %q\n", g.File)
	case "command":
		// The user-hook backend, played by envhook, which can also cut the agent down right
		// after a chosen environment write.
		hook := envhook(t)
		f := slot.File{Path: filepath.Join(e.dir, "fieldota.env")}
		if err := f.Set(ctx, vars); err != nil {
			t.Fatal(err)
		}
		bl, blCfg = f, fmt.Sprintf("bootloader = \"command\"\nenv_get = [%q, \"get\", %q]\nenv_set = [%q, \"set\", %q]\n", hook, f.Path, hook, f.Path)
	default:
		t.Fatalf("bootloader %q", o.bootloader)
	}
	b.board = &bootsim.Board{Env: bl, Slots: pair, Root: b.root}
	// The device runs 1.0.0 from slot a, as recorded by its last commit.
	if err := os.MkdirAll(e.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.stateDir, "installed.json"), []byte(`{"slot": {"version": "1.0.0", "signed": true}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(e.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "[slot]\n%sa = %q\nb = %q\nreboot = [\"touch\", %q]\ncmdline = %q\nreboot_timeout = \"1m\"\n",
		blCfg, pair.A, pair.B, b.marker, filepath.Join(b.root, bootsim.CmdlineFile))
	fmt.Fprintf(f, "[health]\ncommands = [[\"grep\", \"-qx\", \"ok\", %q]]\ntimeout = \"3s\"\ninterval = \"100ms\"\n",
		filepath.Join(b.root, bootsim.HealthFile))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return b
}

// powerOn boots the board and starts the agent (every start gets killEnv), then plays reboots
// and deaths until the test ends.
func (b *abBoard) powerOn(t *testing.T, killEnv ...string) {
	t.Helper()
	b.killEnv = killEnv
	b.bootAndStart(t)
	b.stop, b.stopped = make(chan struct{}), make(chan struct{})
	go b.loop(t)
	t.Cleanup(func() {
		close(b.stop)
		<-b.stopped
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.proc != nil {
			_ = b.proc.Process.Signal(syscall.SIGTERM)
			select {
			case <-b.done:
			case <-time.After(10 * time.Second):
				_ = b.proc.Process.Kill()
				<-b.done
			}
		}
	})
}

func (b *abBoard) bootAndStart(t *testing.T) {
	bt, err := b.board.Boot(context.Background())
	b.mu.Lock()
	defer b.mu.Unlock()
	b.boots = append(b.boots, bt)
	if err != nil {
		t.Errorf("boot: %v", err)
		b.proc = nil
		return
	}
	cmd := exec.Command(filepath.Join(bin, "fieldota-agent"), "run", "--config", b.e.cfgPath)
	cmd.Env = append(os.Environ(), b.killEnv...)
	cmd.Stdout, cmd.Stderr = b.e.agentLog, b.e.agentLog
	fmt.Fprintf(b.e.agentLog, "=== bootsim: booted slot %s (%s), tried %v\n", bt.Slot, bt.Version, bt.Tried)
	if err := cmd.Start(); err != nil {
		t.Errorf("start agent: %v", err)
		return
	}
	b.proc, b.done = cmd, make(chan error, 1)
	go func(done chan error) { done <- cmd.Wait() }(b.done)
}

func (b *abBoard) loop(t *testing.T) {
	defer close(b.stopped)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		b.mu.Lock()
		done := b.done
		b.mu.Unlock()
		select {
		case <-b.stop:
			return
		case err := <-done:
			// The agent died on its own (fault injection): a power cut, or systemd restarting it.
			var j ota.Journal
			if raw, err := os.ReadFile(filepath.Join(b.e.stateDir, ota.JournalFile)); err == nil {
				_ = json.Unmarshal(raw, &j)
			}
			b.mu.Lock()
			b.deaths++
			b.diedIn = append(b.diedIn, j.State)
			b.proc, b.done = nil, nil
			b.mu.Unlock()
			fmt.Fprintf(b.e.agentLog, "=== bootsim: agent died (%v); power cut=%t\n", err, b.powerCut)
			if b.onDeath != nil {
				b.onDeath()
			}
			if b.powerCut {
				b.bootAndStart(t)
			} else {
				b.restartSameBoot(t)
			}
		case <-tick.C:
			if _, err := os.Stat(b.marker); err != nil {
				continue
			}
			b.mu.Lock()
			if b.proc != nil {
				_ = b.proc.Process.Kill()
				<-b.done
				b.proc, b.done = nil, nil
			}
			b.mu.Unlock()
			_ = os.Remove(b.marker)
			fmt.Fprintf(b.e.agentLog, "=== bootsim: reboot requested\n")
			b.bootAndStart(t)
		}
	}
}

// restartSameBoot starts the agent again without a reboot (systemd Restart=always).
func (b *abBoard) restartSameBoot(t *testing.T) {
	b.mu.Lock()
	defer b.mu.Unlock()
	cmd := exec.Command(filepath.Join(bin, "fieldota-agent"), "run", "--config", b.e.cfgPath)
	cmd.Env = append(os.Environ(), b.killEnv...)
	cmd.Stdout, cmd.Stderr = b.e.agentLog, b.e.agentLog
	if err := cmd.Start(); err != nil {
		t.Errorf("restart agent: %v", err)
		return
	}
	b.proc, b.done = cmd, make(chan error, 1)
	go func(done chan error) { done <- cmd.Wait() }(b.done)
}

// powerCutNow kills the agent from outside and powers the board on again.
func (b *abBoard) powerCutNow(t *testing.T) {
	b.mu.Lock()
	p, done := b.proc, b.done
	b.mu.Unlock()
	if p == nil {
		t.Fatal("no agent to cut")
	}
	_ = p.Process.Kill() // the loop sees it die and, with powerCut, boots again
	_ = done
}

func (b *abBoard) lastBoot() bootsim.Boot {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.boots[len(b.boots)-1]
}

func (b *abBoard) env(t *testing.T) slot.Env {
	t.Helper()
	env, err := b.board.Env.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// slotDoc is a signed job document for an A/B image.
func (d *device) slotDoc(name string, content []byte, version string) string {
	d.t.Helper()
	td := testdoc.For(name, content, version)
	td.Target = "slot"
	return d.sign(td)
}

// installedSlot reads the version the agent recorded at its last commit.
func (d *device) installedSlot(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.stateDir, "installed.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]struct {
		Version string `json:"version"`
		Signed  bool   `json:"signed"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if e, ok := m["slot"]; ok && !e.Signed {
		t.Fatalf("slot version %s recorded as unsigned", e.Version)
	}
	return m["slot"].Version
}

var (
	envhookOnce sync.Once
	envhookErr  error
)

// envhook builds test/bootsim/cmd/envhook next to the agent binary, once.
func envhook(t *testing.T) string {
	t.Helper()
	p := filepath.Join(bin, "envhook")
	envhookOnce.Do(func() {
		cmd := exec.Command("go", "build", "-o", p, "github.com/fieldota/fieldota/test/bootsim/cmd/envhook")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			envhookErr = fmt.Errorf("go build envhook: %v\n%s", err, out)
		}
	})
	if envhookErr != nil {
		t.Fatal(envhookErr)
	}
	return p
}
