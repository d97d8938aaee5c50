//go:build device

package device

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fieldota/fieldota/ota/zimage"
	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/fieldota/fieldota/test/testdoc"
)

// TestDeltaUpdateFetchesOnlyWhatTheActiveSlotLacks: the v2 image is released as one compressed
// object with a block index (ota/zimage, as `fieldota job --delta` writes it). The agent in slot
// a reads its own running partition (/dev/vda2) and the inactive one, fetches only the frames it
// lacks with ranged GETs from the emulator's S3, writes /dev/vda3, sets the trial boot, reboots
// for real into b and commits; the job reports what the delta saved, and slot b holds the image
// byte for byte.
func TestDeltaUpdateFetchesOnlyWhatTheActiveSlotLacks(t *testing.T) {
	s := newScenario(t)
	img := s.e.images["good-v2"]
	m := buildDeltaObject(t, img, img+".zst")
	s.powerOn()
	i := s.expectRunning("a", slotVersionA, 0)
	s.createCompressedJob(filepath.Base(img), m)
	i = s.expect(`msg="delta: plan"`, i, jobTimeout)
	i = s.expect(`msg="delta install done"`, i, jobTimeout)
	i = s.expect("trial boot set", i, jobTimeout)
	i = s.expect("fieldota: env slot=b try=1 bootcount=0", i, bootTimeout)
	s.expectRunning("b", slotVersionB, i)
	ex := s.waitTerminal(jobTimeout)
	s.expectDetails(ex, "SUCCEEDED", map[string]string{"slot": "b", "version": slotVersionB})
	s.expectReportedOnce()

	d := ex.StatusDetails.DetailsMap["delta"]
	got := regexp.MustCompile(`^saved (\d+)%: fetched (\d+) of (\d+) bytes in (\d+) requests, reused (\d+) bytes$`).FindStringSubmatch(d)
	if got == nil {
		t.Fatalf("statusDetails delta = %q: not a delta's saving", d)
	}
	fetched, _ := strconv.ParseInt(got[2], 10, 64)
	full, _ := strconv.ParseInt(got[3], 10, 64)
	reused, _ := strconv.ParseInt(got[5], 10, 64)
	if full != m.Full.Size || fetched <= 0 || fetched*2 > full || reused <= 0 {
		t.Fatalf("delta %q: fetched %d of a %d-byte full part (signed %d), reused %d", d, fetched, full, m.Full.Size, reused)
	}
	t.Logf("device delta: %s (object %d bytes, raw %d)", d, m.Stored.Size, m.Raw.Size)

	// Slot b on the disk, read from the host with the board off: exactly the v2 image.
	s.powerCut()
	want, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if part := s.readPartition(3, int64(len(want))); !bytes.Equal(part, want) {
		t.Fatal("partition 3 does not hold the v2 image")
	}
}

// buildDeltaObject writes the release object of the image at src to dst (in the emulator's
// bucket) and returns its manifest.
func buildDeltaObject(t *testing.T, src, dst string) zimage.Manifest {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	m, err := zimage.Build(context.Background(), f, fi.Size(), out, zimage.Options{Delta: true, Encoder: zimage.GoEncoder{}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// createCompressedJob queues a slot job for the object name.zst in the bucket, its manifest
// signed in the release statement with the release key.
func (s *scenario) createCompressedJob(name string, m zimage.Manifest) {
	s.t.Helper()
	td := testdoc.ForCompressed(name+".zst", m, slotVersionB)
	td.Target, td.Compatible = "slot", []string{}
	doc, err := td.Signed(s.e.key)
	if err != nil {
		s.t.Fatal(err)
	}
	s.job = "device-" + strings.ReplaceAll(s.t.Name(), "/", "-")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.api.CreateJob(ctx, jobsim.CreateJobInput{JobID: s.job, Targets: []string{thing}, Document: doc}); err != nil {
		s.t.Fatalf("CreateJob: %v", err)
	}
}

// readPartition reads the first n bytes of partition number p of the scenario's disk.
func (s *scenario) readPartition(p int, n int64) []byte {
	s.t.Helper()
	out, err := exec.Command("sfdisk", "--json", s.disk).Output()
	if err != nil {
		s.t.Fatalf("sfdisk --json: %v", err)
	}
	var pt struct {
		PartitionTable struct {
			SectorSize int64 `json:"sectorsize"`
			Partitions []struct {
				Start int64 `json:"start"`
				Size  int64 `json:"size"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &pt); err != nil || len(pt.PartitionTable.Partitions) < p {
		s.t.Fatalf("partition table %s: %v", out, err)
	}
	sector := pt.PartitionTable.SectorSize
	if sector == 0 {
		sector = 512
	}
	f, err := os.Open(s.disk)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, pt.PartitionTable.Partitions[p-1].Start*sector); err != nil && err != io.EOF {
		s.t.Fatal(err)
	}
	return b
}
