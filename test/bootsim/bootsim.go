// Package bootsim plays the bootloader and the board for A/B tests: it keeps a real U-Boot
// environment (a file-backed env described by an fw_env.config, read and written with
// fw_printenv/fw_setenv) or a real grubenv (grub-editenv), applies the trial-boot protocol of
// docs/ab-slots.md on every boot (bootcount, bootlimit, fallback, bad marks), and "boots" a
// slot by writing the identity the agent then finds: a kernel command line naming the slot,
// and the version and health marker read from the slot image. Test images can be made to fail
// their health check or to never boot (a kernel that panics: the board resets and the
// bootloader counts another trial).
package bootsim

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/fieldota/fieldota/ota/slot"
)

// imageMagic starts every test slot image (test/fixtures/artifacts/rootfs.img too).
const imageMagic = "FIELDOTA-TEST-SLOT-IMAGE"

// ImageOpts describes a test slot image.
type ImageOpts struct {
	FailHealth bool // the system comes up but its health check fails
	NeverBoots bool // the kernel panics before user space: the agent never starts
	Size       int  // total size; the header is followed by deterministic filler (default 64 KiB)
}

// Image builds a slot image carrying version.
func Image(version string, o ImageOpts) []byte {
	head := imageMagic + " version=" + version
	if o.FailHealth {
		head += " health=fail"
	}
	if o.NeverBoots {
		head += " boot=never"
	}
	head += "\n"
	size := o.Size
	if size == 0 {
		size = 64 << 10
	}
	b := make([]byte, max(size, len(head)))
	copy(b, head)
	// Filler that differs per version, so images never share their bytes by accident.
	seed := sha256.Sum256([]byte(head))
	for i := len(head); i < len(b); i++ {
		b[i] = seed[i%len(seed)] ^ byte(i>>8)
	}
	return b
}

// Info is what a slot image says about itself.
type Info struct {
	Version    string
	FailHealth bool
	NeverBoots bool
}

// ReadImage reads the header of the image in a slot; anything else is not bootable.
func ReadImage(path string) (Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return Info{}, err
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, imageMagic+" ") {
		return Info{}, fmt.Errorf("slot %s holds no bootable image", path)
	}
	var in Info
	for _, kv := range strings.Fields(strings.TrimPrefix(line, imageMagic)) {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "version":
			in.Version = v
		case "health":
			in.FailHealth = v == "fail"
		case "boot":
			in.NeverBoots = v == "never"
		}
	}
	return in, nil
}

// EnvSize is the U-Boot environment size used by NewUBoot (CONFIG_ENV_SIZE on the "board").
const EnvSize = 0x4000

// NewUBoot creates a file-backed U-Boot environment in dir (two copies when redundant, like
// CONFIG_SYS_REDUNDAND_ENVIRONMENT), initialised through fw_setenv itself with vars, and
// returns the backend pointing at its fw_env.config.
func NewUBoot(ctx context.Context, dir string, redundant bool, vars slot.Env) (slot.UBoot, error) {
	files := []string{filepath.Join(dir, "uboot.env")}
	if redundant {
		files = append(files, filepath.Join(dir, "uboot-redund.env"))
	}
	var cfg strings.Builder
	for _, f := range files {
		// An erased flash reads as 0xff; the CRC then fails until the first write.
		if err := os.WriteFile(f, bytes.Repeat([]byte{0xff}, EnvSize), 0o644); err != nil {
			return slot.UBoot{}, err
		}
		fmt.Fprintf(&cfg, "%s 0x0 0x%x\n", f, EnvSize)
	}
	config := filepath.Join(dir, "fw_env.config")
	if err := os.WriteFile(config, []byte(cfg.String()), 0o644); err != nil {
		return slot.UBoot{}, err
	}
	// The board's built-in default environment, as U-Boot would save it on first boot.
	defaults := filepath.Join(dir, "uboot-default.env")
	var def strings.Builder
	for k, v := range vars {
		fmt.Fprintf(&def, "%s=%s\n", k, v)
	}
	if err := os.WriteFile(defaults, []byte(def.String()), 0o644); err != nil {
		return slot.UBoot{}, err
	}
	cmd := exec.CommandContext(ctx, "fw_setenv", "-c", config, "-f", defaults, slot.VarCanary, "init")
	if out, err := cmd.CombinedOutput(); err != nil {
		return slot.UBoot{}, fmt.Errorf("fw_setenv: initialising the environment: %v: %s", err, out)
	}
	return slot.UBoot{Config: config}, nil
}

// NewGrub creates a grubenv in dir with grub-editenv and sets vars.
func NewGrub(ctx context.Context, dir string, vars slot.Env) (slot.Grub, error) {
	g := slot.Grub{File: filepath.Join(dir, "grubenv")}
	if out, err := exec.CommandContext(ctx, "grub-editenv", g.File, "create").CombinedOutput(); err != nil {
		return g, fmt.Errorf("grub-editenv create: %v: %s", err, out)
	}
	return g, g.Set(ctx, vars)
}

// Board is one simulated device: two slots, a bootloader environment, and the directory
// where the booted system's identity is written for the agent to find.
type Board struct {
	Env   slot.Bootloader
	Slots slot.Pair
	// Root receives cmdline (the kernel command line), version (from the slot image) and
	// health ("ok" or "fail") for the booted slot.
	Root string
	// MaxResets bounds the panics in a row before Boot gives up (default 8).
	MaxResets int
}

// Boot is the outcome of one power-on.
type Boot struct {
	Slot    string
	Version string
	Resets  int      // kernel panics (never-booting images) on the way
	Tried   []string // slots the bootloader started, in order
}

// ErrNoBootableSlot means the board reset MaxResets times without reaching user space.
var ErrNoBootableSlot = errors.New("bootsim: no bootable slot")

// CmdlineFile, VersionFile and HealthFile are the names Boot writes under Root.
const (
	CmdlineFile = "cmdline"
	VersionFile = "version"
	HealthFile  = "health"
)

// Boot powers the board on: the bootloader logic of docs/ab-slots.md over the real
// environment, then user space of the chosen slot, or a panic and another round.
func (b *Board) Boot(ctx context.Context) (Boot, error) {
	var res Boot
	limit := b.MaxResets
	if limit == 0 {
		limit = 8
	}
	for ; res.Resets <= limit; res.Resets++ {
		name, err := b.bootloader(ctx)
		if err != nil {
			return res, err
		}
		res.Tried = append(res.Tried, name)
		info, err := ReadImage(b.Slots.Path(name))
		if err != nil || info.NeverBoots {
			continue // the kernel panics; the watchdog resets the board
		}
		res.Slot, res.Version = name, info.Version
		health := "ok"
		if info.FailHealth {
			health = "fail"
		}
		files := map[string]string{
			CmdlineFile: fmt.Sprintf("console=ttyS0 root=%s fieldota.slot=%s rootwait ro\n", b.Slots.Path(name), name),
			VersionFile: info.Version + "\n",
			HealthFile:  health + "\n",
		}
		for f, c := range files {
			if err := os.WriteFile(filepath.Join(b.Root, f), []byte(c), 0o644); err != nil {
				return res, err
			}
		}
		return res, nil
	}
	return res, fmt.Errorf("%w after %d resets (tried %v)", ErrNoBootableSlot, res.Resets, res.Tried)
}

// bootloader is the boot script: during a trial count the boot; past bootlimit mark the slot
// bad and fall back to the other one. Only trial boots write the environment.
func (b *Board) bootloader(ctx context.Context) (string, error) {
	env, err := b.Env.Get(ctx)
	if err != nil {
		return "", fmt.Errorf("bootsim: bootloader cannot read its environment: %w", err)
	}
	st := slot.StatusOf(env)
	name := st.Slot
	if name != "a" && name != "b" {
		name = "a"
	}
	if !st.Try {
		return name, nil
	}
	count := st.BootCount + 1
	limit := st.BootLimit
	if limit < 1 {
		limit = 1
	}
	if count > limit {
		other := slot.Other(name)
		err := b.Env.Set(ctx, slot.Env{slot.VarBadPrefix + name: "1", slot.VarSlot: other, slot.VarTry: "0", slot.VarBootCount: "0"})
		return other, err
	}
	return name, b.Env.Set(ctx, slot.Env{slot.VarBootCount: strconv.Itoa(count)})
}
