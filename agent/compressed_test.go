package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/slot"
	"github.com/fieldota/fieldota/ota/zimage"
	"github.com/fieldota/fieldota/test/artifact"
	"github.com/fieldota/fieldota/test/bootsim"
	"github.com/fieldota/fieldota/test/jobsim/s3"
	"github.com/fieldota/fieldota/test/testdoc"
)

// zobject builds raw as a release object (ota/zimage): 64 KiB full-part frames, so that even
// small payloads have several, and the delta part and block index when withDelta.
func zobject(t *testing.T, raw []byte, withDelta bool) ([]byte, zimage.Manifest) {
	t.Helper()
	var out bytes.Buffer
	m, err := zimage.Build(context.Background(), bytes.NewReader(raw), int64(len(raw)), &out,
		zimage.Options{FullFrameSize: 64 << 10, Delta: withDelta, Encoder: zimage.GoEncoder{Level: zstd.SpeedDefault}})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), m
}

// otherDigest is a well-formed SHA-256 that is not b's.
func otherDigest(b []byte) string {
	s := sha256.Sum256(append(append([]byte(nil), b...), 1))
	return hex.EncodeToString(s[:])
}

// slotImages are two releases of a slot image as ext4 would make them: a bootsim header block
// (the version) and a filesystem-like body, the second with blocks rewritten, inserted, shifted.
func slotImages(size int) (old, nw []byte) {
	body := artifact.Image(size, 21)
	old = append(bootsim.Image("1.0.0", bootsim.ImageOpts{Size: 4096}), body...)
	nw = append(bootsim.Image("2.0.0", bootsim.ImageOpts{Size: 4096}), artifact.Edit(body, 22)...)
	return old, nw
}

// compressedJob signs m (the object published as name) for the rig's slot.
func (r *slotRig) compressedJob(id, name string, obj []byte, m zimage.Manifest) {
	r.h.t.Helper()
	r.h.publish(name, obj)
	d := testdoc.ForCompressed(name, m, "2.0.0")
	d.Target = "slot"
	r.h.createJob(id, r.h.doc(d))
}

// commit runs the rig through the download, the reboot into the new slot and the commit.
func (r *slotRig) commit(id string) map[string]string {
	r.h.t.Helper()
	stop := r.boot(nil)
	r.h.waitFor("the reboot request", r.rebootRequested)
	stop()
	r.boot(nil)
	ex := r.h.waitTerminal(id)
	if ex.Status != "SUCCEEDED" {
		r.h.t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	return ex.StatusDetails.DetailsMap
}

func newFileSlotRig(t *testing.T) (*slotRig, slot.File) {
	t.Helper()
	env := fileEnv(t, slot.Env{slot.VarSlot: "a", slot.VarTry: "0"})
	return newSlotRig(t, env, config.Slot{Bootloader: "file", EnvFile: env.Path}), env
}

// deltaRig is a file-slot rig running the old release of slotImages(size) from slot a, with the
// new one built as an object (delta-capable when withDelta).
func deltaRig(t *testing.T, size int, withDelta bool) (*slotRig, slot.File, []byte, []byte, zimage.Manifest) {
	t.Helper()
	r, env := newFileSlotRig(t)
	old, nw := slotImages(size)
	if err := os.WriteFile(r.board.Slots.A, old, 0o644); err != nil {
		t.Fatal(err)
	}
	obj, m := zobject(t, nw, withDelta)
	return r, env, nw, obj, m
}

// expectBootsA fails when the environment would boot anything but slot a, or try a slot.
func expectBootsA(t *testing.T, env slot.File) {
	t.Helper()
	if st, _ := slot.ReadStatus(context.Background(), env); st.Slot != "a" || st.Try {
		t.Fatalf("the environment would boot a refused image: %+v", st)
	}
}

// TestCompressedPayloadForEachTargetInstallsWithItsRawDigestEnforced: a compressed object is
// decompressed while it downloads into every target's sink — the staged file of a files and a
// binary job, the inactive slot (in full, and by delta) — and what is installed is exactly the
// raw image. The same object signed with another raw digest fails DIGEST_MISMATCH and installs
// nothing: the signed raw digest, not the object's, decides.
func TestCompressedPayloadForEachTargetInstallsWithItsRawDigestEnforced(t *testing.T) {
	for _, good := range []bool{true, false} {
		verdict := "installs"
		if !good {
			verdict = "signed raw digest differs"
		}
		tamper := func(m zimage.Manifest, raw []byte) zimage.Manifest {
			if !good {
				m.Raw.SHA256 = otherDigest(raw)
			}
			return m
		}
		t.Run("files/"+verdict, func(t *testing.T) {
			h := newHarness(t)
			raw := artifact.Image(300<<10, 1)
			obj, m := zobject(t, raw, false)
			h.publish("data.bin", obj)
			work := filepath.Join(h.appRoot, "w")
			d := testdoc.ForCompressed("data.bin", tamper(m, raw), "1.0")
			d.WorkDir = work
			h.createJob("z", h.doc(d))
			h.run()
			ex := h.waitTerminal("z")
			if good {
				if ex.Status != "SUCCEEDED" || !fileIs(t, filepath.Join(work, "data.bin"), raw) {
					t.Fatalf("%s %v; placed file is not the raw payload", ex.Status, ex.StatusDetails.DetailsMap)
				}
				return
			}
			if ex.Status != "FAILED" || ex.StatusDetails.DetailsMap["reason"] != "DIGEST_MISMATCH" {
				t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
			}
			if _, err := os.Stat(filepath.Join(work, "data.bin")); !os.IsNotExist(err) {
				t.Fatal("a payload that is not the signed raw image was placed")
			}
		})
		t.Run("binary/"+verdict, func(t *testing.T) {
			h := newHarness(t)
			m := newManagedApp(t, h)
			v1 := realBinary(t, "sleep")
			v2 := append(realBinary(t, "sleep"), []byte("\x00fieldota v2 compressed")...)
			obj, man := zobject(t, v2, false)
			h.publish("myapp", obj)
			d := testdoc.ForCompressed("myapp", tamper(man, v2), "2.0")
			d.Target, d.Binary = "binary", "myapp"
			h.createJob("z", h.doc(d))
			h.run()
			ex := h.waitTerminal("z")
			want, status := v2, "SUCCEEDED"
			if !good {
				want, status = v1, "FAILED"
			}
			if ex.Status != status || !good && ex.StatusDetails.DetailsMap["reason"] != "DIGEST_MISMATCH" || !fileIs(t, m.target, want) {
				t.Fatalf("%s %v (target is the expected binary: %v)", ex.Status, ex.StatusDetails.DetailsMap, fileIs(t, m.target, want))
			}
		})
		for _, withDelta := range []bool{false, true} {
			name := "slot full/"
			if withDelta {
				name = "slot delta/"
			}
			t.Run(name+verdict, func(t *testing.T) {
				r, env, nw, obj, m := deltaRig(t, 1<<20, withDelta)
				r.compressedJob("z", "rootfs.img", obj, tamper(m, nw))
				if good {
					d := r.commit("z")
					if got, _ := os.ReadFile(r.board.Slots.B); !bytes.Equal(got, nw) {
						t.Fatal("slot b does not hold the raw image")
					}
					if withDelta != strings.HasPrefix(d["delta"], "saved ") {
						t.Fatalf("delta detail %q (a delta: %v)", d["delta"], withDelta)
					}
					return
				}
				r.boot(nil)
				ex := r.h.waitTerminal("z")
				if ex.Status != "FAILED" || ex.StatusDetails.DetailsMap["reason"] != "DIGEST_MISMATCH" || r.rebootRequested() {
					t.Fatalf("%s %v (reboot requested: %v)", ex.Status, ex.StatusDetails.DetailsMap, r.rebootRequested())
				}
				expectBootsA(t, env)
			})
		}
	}
}

// TestDecompressionPastTheSignedRawSizeIsRefusedBeforeWritingPastIt: the object decompresses to
// more than the signed raw size (its last frame declares a full frame where the signed size
// leaves less): DECOMPRESSION_BOMB, and the slot never receives a byte past the signed size.
func TestDecompressionPastTheSignedRawSizeIsRefusedBeforeWritingPastIt(t *testing.T) {
	r, env := newFileSlotRig(t)
	raw := artifact.Image(256<<10, 2)
	obj, m := zobject(t, raw, false)
	m.Raw.Size -= 10000 // what the release signs: less than the object holds
	r.compressedJob("bomb", "rootfs.img", obj, m)
	r.boot(nil)
	ex := r.h.waitTerminal("bomb")
	if d := ex.StatusDetails.DetailsMap; ex.Status != "FAILED" || d["reason"] != "DECOMPRESSION_BOMB" || d["stage"] != "download" {
		t.Fatalf("%s %v", ex.Status, d)
	}
	if fi, err := os.Stat(r.board.Slots.B); err != nil || fi.Size() > m.Raw.Size {
		t.Fatalf("slot b holds %d bytes, the signed raw size is %d (%v)", fi.Size(), m.Raw.Size, err)
	}
	expectBootsA(t, env)
}

// TestDeltaIntoAFileBackedSlotCommitsTheExactImageAndReportsTheSaving: the slot job reads the
// running slot a, fetches only the frames it lacks from the emulator's S3, commits slot b with
// exactly the new image, and statusDetails `delta` says what it saved — which is what the
// object's server sent.
func TestDeltaIntoAFileBackedSlotCommitsTheExactImageAndReportsTheSaving(t *testing.T) {
	r, _, nw, obj, m := deltaRig(t, 4<<20, true)
	r.compressedJob("delta", "rootfs.img", obj, m)
	d := r.commit("delta")
	if got, _ := os.ReadFile(r.board.Slots.B); !bytes.Equal(got, nw) {
		t.Fatalf("slot b holds %d bytes that are not the new image", len(got))
	}
	sent := r.h.sim.Artifacts().Stats("bucket/rootfs.img").BytesSent
	if !strings.HasPrefix(d["delta"], "saved ") || !strings.Contains(d["delta"], " fetched "+itoa(sent)+" of "+itoa(m.Full.Size)+" bytes") {
		t.Fatalf("delta detail %q; the server sent %d of a %d-byte full part", d["delta"], sent, m.Full.Size)
	}
	if sent*2 > m.Full.Size {
		t.Fatalf("the delta fetched %d bytes of a %d-byte full download", sent, m.Full.Size)
	}
	if inst, _ := loadInstalled(r.h.cfg.StateDir); inst["slot"].Version != "2.0.0" || inst["slot"].Files["rootfs.img"] != m.Raw.SHA256 {
		t.Fatalf("installed %+v: want the raw digest recorded", inst["slot"])
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestDeltaOnAMeteredLinkKeepsToTheRateLimit: download.rate_limit_bytes_per_sec capped whole
// downloads only; a delta's (and a compressed payload's) ranged reads took the line rate. They are
// paced too: the frames the delta fetched take at least their size over the cap to arrive.
func TestDeltaOnAMeteredLinkKeepsToTheRateLimit(t *testing.T) {
	r, _, nw, obj, m := deltaRig(t, 4<<20, true)
	const rate = 256 << 10
	r.h.cfg.Download.RateLimit = rate
	r.compressedJob("metered", "rootfs.img", obj, m)
	t0 := time.Now()
	stop := r.boot(nil)
	r.h.waitFor("the reboot request", r.rebootRequested)
	took := time.Since(t0)
	stop()
	if got, _ := os.ReadFile(r.board.Slots.B); !bytes.Equal(got, nw) {
		t.Fatal("slot b is not the new image")
	}
	sent := r.h.sim.Artifacts().Stats("bucket/rootfs.img").BytesSent
	if floor := time.Duration(float64(sent) / rate * float64(time.Second) * 0.9); took < floor {
		t.Fatalf("the delta fetched %d bytes in %v; at %d bytes/s that takes at least %v", sent, took, rate, floor)
	}
}

// TestDeltaTamperedFrameOrIndexEntryIsRefused: a delta frame of the object changed in S3 (the
// block it yields fails its index hash), or a byte of the index (its signed digest fails):
// DIGEST_MISMATCH at the download, the environment untouched, no reboot. Neither is a reason to
// fall back to the full download.
func TestDeltaTamperedFrameOrIndexEntryIsRefused(t *testing.T) {
	for _, name := range []string{"delta frame", "index entry"} {
		t.Run(name, func(t *testing.T) {
			r, env, _, obj, m := deltaRig(t, 1<<20, true)
			at := map[string]int64{
				// the first delta frame holds the header block, which differs from the old image's
				"delta frame": m.Full.Size + 8 + 20,
				"index entry": m.Delta.Index.Offset + m.Delta.Index.Size/2,
			}[name]
			bad := append([]byte(nil), obj...)
			bad[at] ^= 0x40
			r.compressedJob("tampered", "rootfs.img", bad, m)
			r.boot(nil)
			ex := r.h.waitTerminal("tampered")
			d := ex.StatusDetails.DetailsMap
			if ex.Status != "FAILED" || d["reason"] != "DIGEST_MISMATCH" || d["stage"] != "download" || r.rebootRequested() {
				t.Fatalf("%s %v", ex.Status, d)
			}
			if strings.HasPrefix(d["delta"], "full download") {
				t.Fatalf("fell back to the full download: %v", d)
			}
			expectBootsA(t, env)
		})
	}
}

// TestDeltaURLExpiringMidwayIsRefreshedAndContinues: after the index and the first frames the
// presigned URL expires; the next range is refused 403, the agent describes the job again for a
// fresh URL and goes on from there: the delta completes and no frame is fetched twice.
func TestDeltaURLExpiringMidwayIsRefreshedAndContinues(t *testing.T) {
	r, _, nw, obj, m := deltaRig(t, 4<<20, true)
	r.h.sim.Artifacts().SetFaults("bucket/rootfs.img", s3.Faults{RateBytesPerSec: 256 << 10})
	r.compressedJob("expiring", "rootfs.img", obj, m)
	// The step timer outlasts the jump below: the job must not time out in the emulator meanwhile
	// (the agent's next update would otherwise race the emulator's timer loop).
	r.h.cfg.Jobs.StepTimeoutMinutes = 180
	stop := r.boot(nil)
	r.h.waitFor("the index and a first range of frames", func() bool { return len(served(r, http.StatusPartialContent)) >= 2 })
	r.h.advance(2 * time.Hour) // every URL minted so far is past its 3600 s; the job has not timed out
	r.h.waitFor("the reboot request", r.rebootRequested)
	stop()
	if len(served(r, http.StatusForbidden)) == 0 {
		t.Fatal("no range was refused as expired: the test proved nothing")
	}
	assertNoRangeTwice(t, served(r, http.StatusPartialContent))
	r.boot(nil)
	if ex := r.h.waitTerminal("expiring"); ex.Status != "SUCCEEDED" || !strings.HasPrefix(ex.StatusDetails.DetailsMap["delta"], "saved ") {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if got, _ := os.ReadFile(r.board.Slots.B); !bytes.Equal(got, nw) {
		t.Fatal("slot b is not the new image")
	}
}

// served lists the object's requests answered with status (a refused URL names no object).
func served(r *slotRig, status int) []s3.Request {
	var out []s3.Request
	for _, q := range r.h.sim.Artifacts().Requests() {
		if (q.Object == "bucket/rootfs.img" || q.Object == "") && q.Status == status {
			out = append(out, q)
		}
	}
	return out
}

// assertNoRangeTwice fails when a byte range was received whole and then asked for again.
func assertNoRangeTwice(t *testing.T, reqs []s3.Request) {
	t.Helper()
	type span struct{ a, b int64 }
	var done []span
	for _, q := range reqs {
		a, b, ok := parseRange(q.Range)
		if !ok {
			t.Fatalf("request %d without a single range: %q", q.N, q.Range)
		}
		for _, d := range done {
			if a < d.b && d.a < b {
				t.Fatalf("bytes %d-%d asked for again (request %d) after %d-%d was received whole", a, b-1, q.N, d.a, d.b-1)
			}
		}
		if q.Bytes == b-a {
			done = append(done, span{a, b})
		}
	}
}

func parseRange(h string) (a, b int64, ok bool) {
	v, found := strings.CutPrefix(h, "bytes=")
	first, last, found2 := strings.Cut(v, "-")
	if !found || !found2 {
		return 0, 0, false
	}
	x, err1 := strconv.ParseInt(first, 10, 64)
	y, err2 := strconv.ParseInt(last, 10, 64)
	return x, y + 1, err1 == nil && err2 == nil
}

// TestDeltaRebootMidwayResumesWhereItWas: the device goes down in the middle of a delta (the
// agent stopped as a reboot stops it) and comes up in the same slot: the new agent keeps the
// index it fetched and the frames already written, fetches only the rest, and commits.
func TestDeltaRebootMidwayResumesWhereItWas(t *testing.T) {
	r, _, nw, obj, m := deltaRig(t, 4<<20, true)
	r.h.sim.Artifacts().SetFaults("bucket/rootfs.img", s3.Faults{RateBytesPerSec: 256 << 10})
	r.compressedJob("resume", "rootfs.img", obj, m)
	stop := r.boot(nil)
	r.h.waitFor("the index and two ranges of frames", func() bool { return len(served(r, http.StatusPartialContent)) >= 3 })
	stop() // the reboot
	r.h.waitFor("the stopped agent's response to end", func() bool { return r.h.sim.Artifacts().InFlight() == 0 })
	first := served(r, http.StatusPartialContent)
	d := r.commit("resume") // boots the board again: same slot, no trial set yet
	if got, _ := os.ReadFile(r.board.Slots.B); !bytes.Equal(got, nw) {
		t.Fatal("slot b is not the new image")
	}
	all := served(r, http.StatusPartialContent)
	assertNoRangeTwice(t, all)
	for _, q := range all[len(first):] {
		if a, _, _ := parseRange(q.Range); a == m.Delta.Index.Offset {
			t.Fatal("the resumed agent fetched the index again")
		}
	}
	if !strings.HasPrefix(d["delta"], "saved ") || len(all) == len(first) {
		t.Fatalf("delta %q after %d of %d requests", d["delta"], len(first), len(all))
	}
}

// TestDeltaWithAnUnreadableActiveSlotFallsBackToTheFullDownloadAndSaysSo: the running slot's
// device is gone (it cannot be opened): the delta does not fit, the agent downloads the full
// part of the same object instead, commits, and statusDetails `delta` says why.
func TestDeltaWithAnUnreadableActiveSlotFallsBackToTheFullDownloadAndSaysSo(t *testing.T) {
	r, _, nw, obj, m := deltaRig(t, 1<<20, true)
	r.compressedJob("fallback", "rootfs.img", obj, m)
	stop := r.boot(func(j *ota.Journal) {
		if j.State == ota.StateDownload {
			// the running slot's device goes away under the running system
			if err := os.Remove(r.board.Slots.A); err != nil {
				t.Error(err)
			}
		}
	})
	r.h.waitFor("the reboot request", r.rebootRequested)
	stop()
	r.boot(nil) // into slot b, which commits
	ex := r.h.waitTerminal("fallback")
	d := ex.StatusDetails.DetailsMap
	if ex.Status != "SUCCEEDED" || !strings.HasPrefix(d["delta"], "full download") || !strings.Contains(d["delta"], "the active slot cannot be read") {
		t.Fatalf("%s, delta detail %q", ex.Status, d["delta"])
	}
	if got, _ := os.ReadFile(r.board.Slots.B); !bytes.Equal(got, nw) {
		t.Fatal("slot b is not the new image")
	}
	if sent := r.h.sim.Artifacts().Stats("bucket/rootfs.img").BytesSent; sent < m.Full.Size {
		t.Fatalf("the fallback fetched %d bytes, the full part is %d", sent, m.Full.Size)
	}
}
