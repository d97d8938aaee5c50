package slot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldota/fieldota/ota/reason"
)

// newUBootEnv makes a file-backed redundant U-Boot environment with the real fw_setenv.
func newUBootEnv(t *testing.T, vars string) UBoot {
	t.Helper()
	dir := t.TempDir()
	var cfg strings.Builder
	for _, n := range []string{"env1", "env2"} {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, bytes.Repeat([]byte{0xff}, 0x4000), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg.WriteString(p + " 0x0 0x4000\n")
	}
	config := filepath.Join(dir, "fw_env.config")
	def := filepath.Join(dir, "default")
	if err := os.WriteFile(config, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(def, []byte(vars), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("fw_setenv", "-c", config, "-f", def, "init", "1").CombinedOutput(); err != nil {
		t.Fatalf("fw_setenv (libubootenv-tool must be installed: scripts/deps.sh): %v %s", err, out)
	}
	return UBoot{Config: config}
}

func newGrubEnv(t *testing.T) Grub {
	t.Helper()
	g := Grub{File: filepath.Join(t.TempDir(), "grubenv")}
	if out, err := exec.Command("grub-editenv", g.File, "create").CombinedOutput(); err != nil {
		t.Fatalf("grub-editenv (grub-common must be installed: scripts/deps.sh): %v %s", err, out)
	}
	return g
}

// TestEveryBackendRoundTripsTheProtocol runs the protocol's steps through each backend and
// its real tool: canary, trial, commit, revert, as the bootloader would read them.
func TestEveryBackendRoundTripsTheProtocol(t *testing.T) {
	ctx := context.Background()
	fileEnv := filepath.Join(t.TempDir(), "env")
	cmdEnv := filepath.Join(t.TempDir(), "env")
	if err := os.WriteFile(cmdEnv, []byte("fieldota_slot=a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	backends := map[string]Bootloader{
		"uboot": newUBootEnv(t, "fieldota_slot=a\nbootlimit=1\n"),
		"grub":  newGrubEnv(t),
		"file":  File{Path: fileEnv},
		// The user hooks: print the file; append the batch (later lines win when read).
		"command": Command{GetArgv: []string{"cat", cmdEnv}, SetArgv: []string{"tee", "-a", cmdEnv}},
	}
	for name, bl := range backends {
		t.Run(name, func(t *testing.T) {
			if err := bl.Set(ctx, Env{VarSlot: "a", VarTry: "0"}); err != nil {
				t.Fatal(err)
			}
			if err := Canary(ctx, bl, "b"); err != nil {
				t.Fatal(err)
			}
			if err := TryBoot(ctx, bl, "b", 2); err != nil {
				t.Fatal(err)
			}
			st, err := ReadStatus(ctx, bl)
			if err != nil || st.Slot != "b" || !st.Try || st.BootLimit != 2 || st.BootCount != 0 || st.Bad["b"] {
				t.Fatalf("after TryBoot: %+v %v", st, err)
			}
			if err := Revert(ctx, bl, "a", "b"); err != nil {
				t.Fatal(err)
			}
			if st, _ := ReadStatus(ctx, bl); st.Slot != "a" || st.Try || !st.Bad["b"] {
				t.Fatalf("after Revert: %+v", st)
			}
			if err := Canary(ctx, bl, "b"); err != nil { // a new install clears the mark
				t.Fatal(err)
			}
			if err := TryBoot(ctx, bl, "b", 1); err != nil {
				t.Fatal(err)
			}
			if err := Commit(ctx, bl, "b"); err != nil {
				t.Fatal(err)
			}
			if st, _ := ReadStatus(ctx, bl); st.Slot != "b" || st.Try || st.Bad["b"] || st.BootCount != 0 {
				t.Fatalf("after Commit: %+v", st)
			}
		})
	}
}

// TestCanaryRefusesAnEnvironmentThatFailsItsCRC: the env trap — libubootenv would fall back to
// a default environment; the canary must refuse to start an install instead.
func TestCanaryRefusesAnEnvironmentThatFailsItsCRC(t *testing.T) {
	ctx := context.Background()
	u := newUBootEnv(t, "fieldota_slot=a\n")
	cfg, _ := os.ReadFile(u.Config)
	for _, line := range strings.Split(strings.TrimSpace(string(cfg)), "\n") {
		p := strings.Fields(line)[0]
		b, _ := os.ReadFile(p)
		b[10] ^= 0xff // a flipped bit in both copies
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	err := Canary(ctx, u, "b")
	if !errors.Is(err, reason.InstallFailed) {
		t.Fatalf("canary over a corrupt environment: %v", err)
	}
}

func TestCanaryRefusesAMissingGrubenv(t *testing.T) {
	err := Canary(context.Background(), Grub{File: filepath.Join(t.TempDir(), "grubenv")}, "b")
	if !errors.Is(err, reason.InstallFailed) {
		t.Fatalf("canary over a missing grubenv: %v", err)
	}
}

// TestCanaryCatchesWritesThatDoNotStick: a set hook that exits 0 but changes nothing (a
// read-only mount, the old "name value" syntax libubootenv ignores) fails the canary.
func TestCanaryCatchesWritesThatDoNotStick(t *testing.T) {
	env := filepath.Join(t.TempDir(), "env")
	if err := os.WriteFile(env, []byte("fieldota_slot=a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bl := Command{GetArgv: []string{"cat", env}, SetArgv: []string{"true"}}
	if err := Canary(context.Background(), bl, "b"); !errors.Is(err, reason.InstallFailed) {
		t.Fatalf("canary with writes lost: %v", err)
	}
}

// TestUBootBatchIsOneWrite: all variables of a change land in one fw_setenv run, so a
// redundant environment holds either all of them or none (the other copy is the old one).
func TestUBootBatchIsOneWrite(t *testing.T) {
	ctx := context.Background()
	u := newUBootEnv(t, "fieldota_slot=a\n")
	cfg, _ := os.ReadFile(u.Config)
	copies := []string{}
	for _, line := range strings.Split(strings.TrimSpace(string(cfg)), "\n") {
		copies = append(copies, strings.Fields(line)[0])
	}
	snapshot := func() [2][]byte {
		a, _ := os.ReadFile(copies[0])
		b, _ := os.ReadFile(copies[1])
		return [2][]byte{a, b}
	}
	before := snapshot()
	if err := TryBoot(ctx, u, "b", 1); err != nil {
		t.Fatal(err)
	}
	after := snapshot()
	changed := 0
	for i := range 2 {
		if !bytes.Equal(before[i], after[i]) {
			changed++
			if !bytes.Contains(after[i], []byte("fieldota_slot=b\x00")) || !bytes.Contains(after[i], []byte("fieldota_try=1\x00")) {
				t.Fatalf("copy %d changed without the whole batch", i)
			}
		}
	}
	if changed != 1 {
		t.Fatalf("%d copies changed; a redundant env writes exactly the inactive copy", changed)
	}
}

func TestVariablesThatCannotRoundTripAreRefused(t *testing.T) {
	f := File{Path: filepath.Join(t.TempDir(), "env")}
	for _, vars := range []Env{{"a b": "1"}, {"x": "1\nfieldota_slot=b"}, {"": "1"}} {
		if err := f.Set(context.Background(), vars); err == nil {
			t.Fatalf("%q accepted", vars)
		}
	}
}

func TestBootedSlotFromTheKernelCommandLine(t *testing.T) {
	dir := t.TempDir()
	pair := Pair{A: filepath.Join(dir, "p2"), B: filepath.Join(dir, "p3")}
	for _, p := range []string{pair.A, pair.B} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(pair.B, filepath.Join(dir, "by-label-rootB")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		cmdline, want string
		ok            bool
	}{
		{"console=ttyS0 fieldota.slot=b ro", "b", true},
		{"root=" + pair.A + " rootwait", "a", true},
		{"root=" + filepath.Join(dir, "by-label-rootB"), "b", true}, // a symlink to the device
		{"fieldota.slot=c", "", false},
		{"root=/dev/sda9", "", false},
		{"quiet", "", false},
	}
	for _, c := range cases {
		f := filepath.Join(dir, "cmdline")
		if err := os.WriteFile(f, []byte(c.cmdline+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := Detect{Pair: pair, Cmdline: f}.Booted()
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("%q: %q %v, want %q ok=%t", c.cmdline, got, err, c.want, c.ok)
		}
	}
}

func TestBootedSlotFromTheMountedRootRefusesPlainFiles(t *testing.T) {
	dir := t.TempDir()
	pair := Pair{A: filepath.Join(dir, "a"), B: filepath.Join(dir, "b")}
	_ = os.WriteFile(pair.A, nil, 0o644)
	_ = os.WriteFile(pair.B, nil, 0o644)
	if got, err := (Detect{Pair: pair, Mode: "root", Root: dir}).Booted(); err == nil {
		t.Fatalf("a directory on neither slot detected as %s", got)
	}
}

func TestEnvironmentThatDisagreesWithTheBootedSlotIsRefused(t *testing.T) {
	for _, st := range []Status{{Slot: "b"}, {Slot: "a", Try: true}, {Slot: ""}} {
		if err := CheckBooted(st, "a"); !errors.Is(err, reason.InstallFailed) {
			t.Errorf("%+v accepted while a runs", st)
		}
	}
	if err := CheckBooted(Status{Slot: "a"}, "a"); err != nil {
		t.Fatal(err)
	}
}

// TestReadBackCatchesAFlippedByte: the slot holds one flipped byte after a "successful"
// write: the re-hash through a fresh descriptor catches it.
func TestReadBackCatchesAFlippedByte(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "slot")
	data := bytes.Repeat([]byte("fieldota"), 1<<15)
	sum := sha256.Sum256(data)
	// The slot is bigger than the payload: only the payload's bytes count.
	if err := os.WriteFile(p, append(append([]byte{}, data...), 0xAA, 0xBB), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ReadBack(ctx, p, int64(len(data)), hex.EncodeToString(sum[:])); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(p, os.O_RDWR, 0)
	_, _ = f.WriteAt([]byte{'X'}, 12345)
	f.Close()
	if err := ReadBack(ctx, p, int64(len(data)), hex.EncodeToString(sum[:])); !errors.Is(err, reason.InstallFailed) {
		t.Fatalf("flipped byte: %v", err)
	}
	if err := ReadBack(ctx, p, int64(len(data))+100, hex.EncodeToString(sum[:])); !errors.Is(err, reason.InstallFailed) {
		t.Fatalf("short slot: %v", err)
	}
}

func TestOpenTargetNeedsAnExistingSlot(t *testing.T) {
	if _, err := OpenTarget(filepath.Join(t.TempDir(), "missing"), 10); !errors.Is(err, reason.InstallFailed) {
		t.Fatalf("missing slot: %v", err)
	}
}
