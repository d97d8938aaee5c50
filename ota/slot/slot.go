package slot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/fieldota/fieldota/ota/reason"
)

// Names are the two slots, as the protocol and statusDetails spell them.
var Names = []string{"a", "b"}

// Other returns the slot that is not name.
func Other(name string) string {
	if name == "a" {
		return "b"
	}
	return "a"
}

// Pair is the two slots' devices (block devices, or plain files for tests and images).
type Pair struct{ A, B string }

// Path returns the device of slot name.
func (p Pair) Path(name string) string {
	if name == "a" {
		return p.A
	}
	return p.B
}

// Detect finds the slot the running system booted from.
type Detect struct {
	Pair
	// Mode is "cmdline" (default: `fieldota.slot=a|b`, else `root=` resolved against the slot
	// devices) or "root" (the device holding Root is one of the slots).
	Mode    string
	Cmdline string // default /proc/cmdline; tests point it at a file
	Root    string // default "/"
}

// Booted returns the booted slot's name.
func (d Detect) Booted() (string, error) {
	switch d.Mode {
	case "", "cmdline":
		return d.fromCmdline()
	case "root":
		return d.fromRoot()
	}
	return "", fmt.Errorf("slot.detect %q: want cmdline or root", d.Mode)
}

func (d Detect) fromCmdline() (string, error) {
	path := or(d.Cmdline, "/proc/cmdline")
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("booted slot: %w", err)
	}
	var root string
	for _, f := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "fieldota.slot":
			if v != "a" && v != "b" {
				return "", fmt.Errorf("booted slot: %s says fieldota.slot=%q", path, v)
			}
			return v, nil
		case "root":
			root = v
		}
	}
	if root == "" {
		return "", fmt.Errorf("booted slot: %s has neither fieldota.slot= nor root=", path)
	}
	dev := root
	for prefix, dir := range map[string]string{"PARTUUID=": "by-partuuid", "PARTLABEL=": "by-partlabel", "UUID=": "by-uuid", "LABEL=": "by-label"} {
		if strings.HasPrefix(root, prefix) {
			dev = filepath.Join("/dev/disk", dir, strings.TrimPrefix(root, prefix))
		}
	}
	for _, n := range Names {
		if same(dev, d.Path(n)) {
			return n, nil
		}
	}
	return "", fmt.Errorf("booted slot: root=%s is neither slot a (%s) nor b (%s)", root, d.A, d.B)
}

func same(x, y string) bool {
	if x == y {
		return true
	}
	rx, err1 := filepath.EvalSymlinks(x)
	ry, err2 := filepath.EvalSymlinks(y)
	return err1 == nil && err2 == nil && rx == ry
}

func (d Detect) fromRoot() (string, error) {
	root := or(d.Root, "/")
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		return "", fmt.Errorf("booted slot: %w", err)
	}
	for _, n := range Names {
		var ds unix.Stat_t
		if err := unix.Stat(d.Path(n), &ds); err == nil && ds.Mode&unix.S_IFMT == unix.S_IFBLK && ds.Rdev == st.Dev {
			return n, nil
		}
	}
	return "", fmt.Errorf("booted slot: %s is mounted from neither slot a (%s) nor b (%s)", root, d.A, d.B)
}

// CheckBooted cross-checks the booted slot with the environment before an install: the
// bootloader must boot what runs, with no trial pending. A mismatch means the environment is
// not the one the bootloader uses (or a trial is in flight): writing a slot then is unsafe.
func CheckBooted(st Status, booted string) error {
	if st.Slot != booted {
		return reason.Errorf(reason.InstallFailed, "the bootloader environment says %s=%q but the device booted slot %s", VarSlot, st.Slot, booted)
	}
	if st.Try {
		return reason.Errorf(reason.InstallFailed, "a trial boot of slot %s is pending in the bootloader environment", st.Slot)
	}
	return nil
}

// OpenTarget opens the inactive slot for the download to stream into. The slot must exist (a
// partition, or a file made beforehand); a block device smaller than size is refused.
func OpenTarget(path string, size int64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, reason.Wrap(reason.InstallFailed, fmt.Errorf("opening slot: %w", err))
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, reason.Wrap(reason.InstallFailed, err)
	}
	if fi.Mode()&os.ModeDevice != 0 {
		capacity, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, reason.Wrap(reason.InstallFailed, err)
		}
		if capacity < size {
			f.Close()
			return nil, reason.Errorf(reason.InsufficientSpace, "slot %s holds %d bytes, the payload is %d", path, capacity, size)
		}
	}
	return f, nil
}

// Size is how many bytes of the payload the slot holds for verification: the file's size for
// a plain file, the payload size for a block device (whose stat size says nothing).
func Size(path string, payload int64) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if fi.Mode().IsRegular() {
		return fi.Size(), nil
	}
	return payload, nil
}

// ReadBack syncs the slot, then reads its first size bytes through a fresh descriptor and
// compares their SHA-256 with wantHex. The cached pages are dropped first
// (POSIX_FADV_DONTNEED after fsync), so the read comes from the device for a block device and
// from disk for a file whose pages were clean; a driver or medium that acknowledges writes it
// then loses is caught here, before the bootloader is ever pointed at the slot. A volatile
// disk cache below the kernel can still answer from its own cache: that is the limit.
func ReadBack(ctx context.Context, path string, size int64, wantHex string) error {
	want, err := hex.DecodeString(wantHex)
	if err != nil || len(want) != sha256.Size {
		return reason.Errorf(reason.Internal, "read-back: bad expected digest %q", wantHex)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return reason.Wrap(reason.InstallFailed, fmt.Errorf("read-back: %w", err))
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return reason.Wrap(reason.InstallFailed, fmt.Errorf("read-back: sync: %w", err))
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil && !errors.Is(err, syscall.ESPIPE) {
		return reason.Wrap(reason.InstallFailed, fmt.Errorf("read-back: dropping cached pages: %w", err))
	}
	h := sha256.New()
	n, err := io.Copy(h, &ctxReader{ctx: ctx, r: io.NewSectionReader(f, 0, size)})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return reason.Wrap(reason.InstallFailed, fmt.Errorf("read-back of slot %s: %w", path, err))
	}
	if n != size {
		return reason.Errorf(reason.InstallFailed, "read-back of slot %s: %d of %d bytes", path, n, size)
	}
	if got := h.Sum(nil); hex.EncodeToString(got) != hex.EncodeToString(want) {
		return reason.Errorf(reason.InstallFailed, "read-back of slot %s: sha256 %x, the verified payload is %s: the slot does not hold what was downloaded", path, got, wantHex)
	}
	return nil
}

// ctxReader stops a long read-back when the agent shuts down.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
