package bootsim

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldota/fieldota/ota/slot"
)

func newBoard(t *testing.T, kind string, b slotB) *Board {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	vars := slot.Env{slot.VarSlot: "a", slot.VarBootLimit: "1"}
	var bl slot.Bootloader
	switch kind {
	case "uboot":
		u, err := NewUBoot(ctx, dir, true, vars)
		if err != nil {
			t.Fatal(err)
		}
		bl = u
	case "grub":
		g, err := NewGrub(ctx, dir, vars)
		if err != nil {
			t.Fatal(err)
		}
		bl = g
	}
	pair := slot.Pair{A: filepath.Join(dir, "a.img"), B: filepath.Join(dir, "b.img")}
	if err := os.WriteFile(pair.A, Image("1.0.0", ImageOpts{}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pair.B, Image(b.version, b.opts), 0o644); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	return &Board{Env: bl, Slots: pair, Root: root}
}

// slotB is the image slot b holds.
type slotB struct {
	version string
	opts    ImageOpts
}

// TestBootloaderProtocol plays the boot script over both real environments: a normal boot
// never writes; a trial counts; past bootlimit the bootloader marks the slot bad and falls
// back; a kernel that panics spends the trial.
func TestBootloaderProtocol(t *testing.T) {
	ctx := context.Background()
	for _, kind := range []string{"uboot", "grub"} {
		t.Run(kind+"/normal-boot-does-not-write", func(t *testing.T) {
			b := newBoard(t, kind, slotB{"2.0.0", ImageOpts{}})
			before, _ := b.Env.Get(ctx)
			bt, err := b.Boot(ctx)
			after, _ := b.Env.Get(ctx)
			if err != nil || bt.Slot != "a" || bt.Version != "1.0.0" || len(before) != len(after) || after[slot.VarBootCount] != before[slot.VarBootCount] {
				t.Fatalf("%+v %v; env %v → %v", bt, err, before, after)
			}
			cmdline, _ := os.ReadFile(filepath.Join(b.Root, CmdlineFile))
			if !strings.Contains(string(cmdline), "fieldota.slot=a") {
				t.Fatalf("cmdline %q", cmdline)
			}
		})
		t.Run(kind+"/trial-then-fallback", func(t *testing.T) {
			b := newBoard(t, kind, slotB{"2.0.0", ImageOpts{FailHealth: true}})
			if err := slot.TryBoot(ctx, b.Env, "b", 1); err != nil {
				t.Fatal(err)
			}
			bt, err := b.Boot(ctx)
			if err != nil || bt.Slot != "b" || bt.Version != "2.0.0" {
				t.Fatalf("trial boot: %+v %v", bt, err)
			}
			if h, _ := os.ReadFile(filepath.Join(b.Root, HealthFile)); string(h) != "fail\n" {
				t.Fatalf("health marker %q", h)
			}
			// Not committed: the next boot is past bootlimit.
			bt, err = b.Boot(ctx)
			st, _ := slot.ReadStatus(ctx, b.Env)
			if err != nil || bt.Slot != "a" || st.Slot != "a" || st.Try || !st.Bad["b"] {
				t.Fatalf("fallback: %+v %v %+v", bt, err, st)
			}
		})
		t.Run(kind+"/never-boots", func(t *testing.T) {
			b := newBoard(t, kind, slotB{"2.0.0", ImageOpts{NeverBoots: true}})
			if err := slot.TryBoot(ctx, b.Env, "b", 2); err != nil {
				t.Fatal(err)
			}
			bt, err := b.Boot(ctx)
			if err != nil || bt.Slot != "a" || bt.Resets != 2 || strings.Join(bt.Tried, "") != "bba" {
				t.Fatalf("%+v %v", bt, err)
			}
		})
	}
}

func TestBoardWithNoBootableSlotGivesUp(t *testing.T) {
	b := newBoard(t, "uboot", slotB{"2.0.0", ImageOpts{NeverBoots: true}})
	if err := os.WriteFile(b.Slots.A, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Boot(context.Background()); !errors.Is(err, ErrNoBootableSlot) {
		t.Fatalf("%v", err)
	}
}

func TestFixtureRootfsImageIsBootable(t *testing.T) {
	in, err := ReadImage(filepath.Join("..", "fixtures", "artifacts", "rootfs.img"))
	if err != nil || in.Version != "1.0.0" || in.FailHealth || in.NeverBoots {
		t.Fatalf("%+v %v", in, err)
	}
}
