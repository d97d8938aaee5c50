package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fieldota/fieldota/ota/slot"
	"github.com/fieldota/fieldota/test/bootsim"
	"github.com/fieldota/fieldota/test/jobsim"
)

// abChapter shows A/B slot updates on a simulated board (test/bootsim): a real U-Boot
// environment read and written with fw_printenv/fw_setenv (a key=value file when
// libubootenv-tool is missing), two slot image files, and a "reboot" that stops the agent, runs
// the bootloader's trial/fallback logic and starts the agent again in the slot it chose.
// Three images: a good one (committed), one whose health check fails (rolled back by the agent),
// one that never boots (rolled back by the bootloader).
func (d *demo) abChapter(ctx context.Context) error {
	fmt.Fprintln(d.out, "\nChapter 3 — A/B slots on a simulated board: try-boot, commit, and two kinds of rollback:")
	dir := filepath.Join(d.dir, "ab-device")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	prefix := filepath.Join(dir, "release")
	if err := d.cli(ctx, "keygen", "--out", prefix); err != nil {
		return err
	}
	b, err := newDemoBoard(ctx, dir)
	if err != nil {
		return err
	}
	if err := b.writeConfig(d.mqtt, prefix+".pub"); err != nil {
		return err
	}
	// The A/B device is its own thing, so the files device of the earlier chapters keeps its own.
	files := d.thing
	d.thing = "demo-ab-device"
	defer func() { d.thing = files }()
	b.say = d.say
	if err := b.powerOn(ctx, d.agent); err != nil {
		return err
	}
	defer b.shutdown()

	steps := []struct {
		id, version, want, story string
		opts                     bootsim.ImageOpts
	}{
		{"ab-good", "2.0.0", "SUCCEEDED", "a good image: streamed into slot b, read back, tried, healthy, committed", bootsim.ImageOpts{}},
		{"ab-unhealthy", "2.1.0", "FAILED", "an image whose health check fails: the agent marks the new slot bad, switches the bootloader back and reboots", bootsim.ImageOpts{FailHealth: true}},
		{"ab-no-boot", "2.2.0", "FAILED", "an image whose kernel never starts: the bootloader spends the trial and falls back on its own", bootsim.ImageOpts{NeverBoots: true}},
	}
	for _, s := range steps {
		fmt.Fprintf(d.out, "\n  %s\n", s.story)
		img := bootsim.Image(s.version, s.opts)
		rel := filepath.Join(dir, "release-"+s.version)
		if err := os.MkdirAll(rel, 0o755); err != nil {
			return err
		}
		p := filepath.Join(rel, "rootfs.img")
		if err := os.WriteFile(p, img, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d.bucket, "rootfs-"+s.version+".img"), img, 0o644); err != nil {
			return err
		}
		doc := filepath.Join(rel, "job.json")
		if err := d.cli(ctx, "job", "--key", prefix+".key", "--file", p, "--presign",
			"https://s3."+demoRegion+".amazonaws.com/fieldota-demo/rootfs-"+s.version+".img",
			"--target", "slot", "--version", s.version, "--compatible", "demo-board", "--out", doc); err != nil {
			return err
		}
		body, err := os.ReadFile(doc)
		if err != nil {
			return err
		}
		if _, err := d.api.CreateJob(ctx, jobsim.CreateJobInput{JobID: s.id, Targets: []string{d.thing}, Document: string(body)}); err != nil {
			return err
		}
		d.say("operator", "create-job %s → %s (slot image %s, %d bytes)", s.id, d.thing, s.version, len(img))
		if err := d.follow(ctx, s.id, s.want); err != nil {
			return err
		}
		if err := b.showEnv(ctx); err != nil {
			return err
		}
	}
	return nil
}

// demoBoard runs the A/B device of the demo: the board, its agent, and the reboots.
type demoBoard struct {
	dir, cfgPath, marker, envCfg string
	board                        *bootsim.Board
	say                          func(who, format string, args ...any)

	mu    sync.Mutex
	agent string
	proc  *exec.Cmd
	done  chan struct{}
	stop  chan struct{}
	ended chan struct{}
}

func newDemoBoard(ctx context.Context, dir string) (*demoBoard, error) {
	b := &demoBoard{dir: dir, marker: filepath.Join(dir, "reboot-requested")}
	pair := slot.Pair{A: filepath.Join(dir, "slot-a.img"), B: filepath.Join(dir, "slot-b.img")}
	if err := os.WriteFile(pair.A, bootsim.Image("1.0.0", bootsim.ImageOpts{}), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(pair.B, make([]byte, 64<<10), 0o644); err != nil {
		return nil, err
	}
	root := filepath.Join(dir, "sysroot")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	vars := slot.Env{slot.VarSlot: "a", slot.VarTry: "0", slot.VarBootCount: "0", slot.VarBootLimit: "1"}
	var bl slot.Bootloader
	if _, err := exec.LookPath("fw_setenv"); err == nil {
		u, err := bootsim.NewUBoot(ctx, dir, true, vars)
		if err != nil {
			return nil, err
		}
		bl, b.envCfg = u, fmt.Sprintf("bootloader = \"uboot\"\nfw_env_config = %q\n", u.Config)
	} else {
		f := slot.File{Path: filepath.Join(dir, "fieldota.env")}
		if err := f.Set(ctx, vars); err != nil {
			return nil, err
		}
		bl, b.envCfg = f, fmt.Sprintf("bootloader = \"file\"\nenv_file = %q\n", f.Path)
	}
	b.board = &bootsim.Board{Env: bl, Slots: pair, Root: root}
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, err
	}
	// The board left the factory with 1.0.0 in slot a.
	return b, os.WriteFile(filepath.Join(state, "installed.json"), []byte(`{"slot": "1.0.0"}`+"\n"), 0o600)
}

func (b *demoBoard) writeConfig(mqtt, pub string) error {
	root := b.board.Root
	cfg := fmt.Sprintf(`thing_name = "demo-ab-device"
state_dir = %q
compatible = ["demo-board"]
[mqtt]
endpoint = %q
[jobs]
progress_min_interval = "1ms"
[verify]
keys = [%q]
[download]
allow_insecure_http = true
allowed_hosts = ["127.0.0.1"]
[slot]
%sa = %q
b = %q
# The demo's "reboot": bootsim watches this file, stops the agent and boots the board.
reboot = ["touch", %q]
cmdline = %q
[health]
commands = [["grep", "-qx", "ok", %q]]
timeout = "3s"
interval = "200ms"
`, filepath.Join(b.dir, "state"), mqtt, pub, b.envCfg, b.board.Slots.A, b.board.Slots.B, b.marker,
		filepath.Join(root, bootsim.CmdlineFile), filepath.Join(root, bootsim.HealthFile))
	b.cfgPath = filepath.Join(b.dir, "agent.toml")
	return os.WriteFile(b.cfgPath, []byte(cfg), 0o600)
}

// powerOn boots the board, starts the agent in the chosen slot and serves reboot requests.
func (b *demoBoard) powerOn(ctx context.Context, agent string) error {
	b.agent = agent
	if err := b.bootAndStart(ctx); err != nil {
		return err
	}
	b.stop, b.ended = make(chan struct{}), make(chan struct{})
	go b.serveReboots(ctx)
	return nil
}

func (b *demoBoard) bootAndStart(ctx context.Context) error {
	bt, err := b.board.Boot(ctx)
	if err != nil {
		return err
	}
	if bt.Resets > 0 {
		b.say("board", "slot %s did not boot (kernel panic, watchdog reset ×%d)", strings.Join(bt.Tried[:bt.Resets], ","), bt.Resets)
	}
	b.say("bootloader", "booted slot %s (version %s)", bt.Slot, bt.Version)
	log, err := os.OpenFile(filepath.Join(b.dir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(b.agent, "run", "--config", b.cfgPath)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); log.Close(); close(done) }()
	b.mu.Lock()
	b.proc, b.done = cmd, done
	b.mu.Unlock()
	return nil
}

func (b *demoBoard) serveReboots(ctx context.Context) {
	defer close(b.ended)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if _, err := os.Stat(b.marker); err != nil {
			continue
		}
		b.say("device", "reboot requested by the agent")
		b.kill()
		_ = os.Remove(b.marker)
		if err := b.bootAndStart(ctx); err != nil {
			b.say("board", "boot failed: %v", err)
			return
		}
	}
}

// kill cuts the agent down as a reboot does.
func (b *demoBoard) kill() {
	b.mu.Lock()
	p, done := b.proc, b.done
	b.proc = nil
	b.mu.Unlock()
	if p != nil {
		_ = p.Process.Kill()
		<-done
	}
}

func (b *demoBoard) shutdown() {
	if b.stop != nil {
		close(b.stop)
		<-b.ended
	}
	b.kill()
}

func (b *demoBoard) showEnv(ctx context.Context) error {
	env, err := b.board.Env.Get(ctx)
	if err != nil {
		return err
	}
	var kv []string
	for k, v := range env {
		if strings.HasPrefix(k, "fieldota_") && k != slot.VarCanary || k == slot.VarBootCount {
			kv = append(kv, k+"="+v)
		}
	}
	sort.Strings(kv)
	b.say("bootloader", "environment: %s", strings.Join(kv, " "))
	return nil
}
