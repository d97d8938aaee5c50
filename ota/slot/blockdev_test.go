package slot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"testing"

	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/test/artifact"
)

// loopDevice attaches a 4 MiB image as a loop block device so that the slot code meets a real
// block device: no truncation, stat size 0, a capacity found by seeking.
func loopDevice(t *testing.T) string {
	t.Helper()
	return artifact.LoopDevice(t, bytes.Repeat([]byte{0xee}, 4<<20))
}

// TestBlockDeviceSlotIsWrittenReadBackAndChecked: a payload larger than the partition is
// refused before a byte is written; a payload that fits is written, synced and re-read past the
// page cache; a byte flipped on the device is caught; the bytes after the payload (old data)
// are not part of the check.
func TestBlockDeviceSlotIsWrittenReadBackAndChecked(t *testing.T) {
	ctx := context.Background()
	dev := loopDevice(t)
	if _, err := OpenTarget(dev, 5<<20); !errors.Is(err, reason.InsufficientSpace) {
		t.Fatalf("5 MiB into a 4 MiB slot: %v", err)
	}
	payload := bytes.Repeat([]byte("slot-b! "), (1<<20)/8+3)
	sum := sha256.Sum256(payload)
	f, err := OpenTarget(dev, int64(len(payload)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(payload, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if n, err := Size(dev, int64(len(payload))); err != nil || n != int64(len(payload)) {
		t.Fatalf("Size of a block device slot: %d %v", n, err)
	}
	if err := ReadBack(ctx, dev, int64(len(payload)), hex.EncodeToString(sum[:])); err != nil {
		t.Fatal(err)
	}
	g, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.WriteAt([]byte{'X'}, 777); err != nil {
		t.Fatal(err)
	}
	g.Close()
	if err := ReadBack(ctx, dev, int64(len(payload)), hex.EncodeToString(sum[:])); !errors.Is(err, reason.InstallFailed) {
		t.Fatalf("flipped byte on the device: %v", err)
	}
}
