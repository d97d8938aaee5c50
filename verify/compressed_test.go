package verify_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/zimage"
	"github.com/fieldota/fieldota/verify"
)

// compressedSlot is a small slot image built as a delta-capable object, its manifest and the
// release predicate that signs it.
func compressedSlot(t *testing.T) (raw []byte, m zimage.Manifest) {
	t.Helper()
	raw = bytes.Repeat([]byte("fieldota slot image block "), 40000)
	var obj bytes.Buffer
	m, err := zimage.Build(context.Background(), bytes.NewReader(raw), int64(len(raw)), &obj,
		zimage.Options{FullFrameSize: 256 << 10, Delta: true, Encoder: zimage.GoEncoder{Level: zstd.SpeedFastest}})
	if err != nil {
		t.Fatal(err)
	}
	return raw, m
}

func slotPredicate(pf verify.PredicateFile) verify.Predicate {
	return verify.Predicate{Target: "slot", Version: "2.0.0", Files: map[string]verify.PredicateFile{"rootfs.img": pf}}
}

// TestCompressedReleaseAttacks: the compression manifest is part of the signed predicate and
// strictly checked while the job is QUEUED (INVALID_DOCUMENT, naming the field); the document's
// plain size and sha256 are copies of the stored object's, so a document that states the
// installed size or digest instead is DOCUMENT_MISMATCH.
func TestCompressedReleaseAttacks(t *testing.T) {
	w := newWorld(t)
	raw, m := compressedSlot(t)
	stored := m.Stored.Sum()
	edit := func(f func(pf *verify.PredicateFile)) verify.PredicateFile {
		pf := verify.PredicateFileOf(m)
		r, full := *pf.Raw, *pf.Full
		pf.Raw, pf.Full = &r, &full
		if pf.Delta != nil {
			d := *pf.Delta
			pf.Delta = &d
		}
		f(&pf)
		return pf
	}
	rawSum := sha256.Sum256(raw)
	cases := []struct {
		name  string
		pf    verify.PredicateFile
		plain verify.FileClaim
		field string // named in the refusal
		want  reason.Code
	}{
		{"compression other than zstd", edit(func(pf *verify.PredicateFile) { pf.Compression = "xz" }), verify.FileClaim{Size: -1}, "compression", reason.InvalidDocument},
		{"raw digest not a SHA-256", edit(func(pf *verify.PredicateFile) { pf.Raw.SHA256 = "ab" }), verify.FileClaim{Size: -1}, "raw.sha256", reason.InvalidDocument},
		{"raw size zero", edit(func(pf *verify.PredicateFile) { pf.Raw.Size = 0 }), verify.FileClaim{Size: -1}, "raw.size", reason.InvalidDocument},
		{"raw missing", edit(func(pf *verify.PredicateFile) { pf.Raw = nil }), verify.FileClaim{Size: -1}, "raw and full", reason.InvalidDocument},
		{"manifest without compression", edit(func(pf *verify.PredicateFile) { pf.Compression = "" }), verify.FileClaim{Size: -1}, "no compression", reason.InvalidDocument},
		{"full part longer than the object", edit(func(pf *verify.PredicateFile) { pf.Full.Size = m.Stored.Size + 1 }), verify.FileClaim{Size: -1}, "full.size", reason.InvalidDocument},
		{"frame size below the limit", edit(func(pf *verify.PredicateFile) { pf.FullFrameSize = 4096 }), verify.FileClaim{Size: -1}, "fullFrameSize", reason.InvalidDocument},
		{"frame size beyond the decoder's limit", edit(func(pf *verify.PredicateFile) { pf.FullFrameSize = 1 << 30 }), verify.FileClaim{Size: -1}, "fullFrameSize", reason.InvalidDocument},
		{"delta frames not a multiple of the block", edit(func(pf *verify.PredicateFile) { pf.Delta.FrameSize = pf.Delta.BlockSize + 1 }), verify.FileClaim{Size: -1}, "delta.frameSize", reason.InvalidDocument},
		{"block size not a power of two", edit(func(pf *verify.PredicateFile) { pf.Delta.BlockSize = 3000 }), verify.FileClaim{Size: -1}, "delta.blockSize", reason.InvalidDocument},
		{"index outside the object", edit(func(pf *verify.PredicateFile) { pf.Delta.Index.Offset = m.Stored.Size }), verify.FileClaim{Size: -1}, "delta.index", reason.InvalidDocument},
		{"index inside the full part", edit(func(pf *verify.PredicateFile) { pf.Delta.Index.Offset = 0 }), verify.FileClaim{Size: -1}, "delta.index", reason.InvalidDocument},
		{"index digest not a SHA-256", edit(func(pf *verify.PredicateFile) { pf.Delta.Index.SHA256 = strings.ToUpper(pf.Delta.Index.SHA256) }), verify.FileClaim{Size: -1}, "delta.index.sha256", reason.InvalidDocument},
		{"plain size is the installed size", verify.PredicateFileOf(m), verify.FileClaim{Size: int64(len(raw))}, "size", reason.DocumentMismatch},
		{"plain sha256 is the installed digest", verify.PredicateFileOf(m), verify.FileClaim{Size: -1, SHA256: rawSum[:]}, "sha256", reason.DocumentMismatch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.plain.Name = "rootfs.img"
			_, err := w.ts.Release(verify.Claims{Statement: attestAs(t, w.k.p256, "rootfs.img", stored, slotPredicate(c.pf)), Files: []verify.FileClaim{c.plain}}, w.policy)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.field) {
				t.Fatalf("got %v, want %s naming %s", err, c.want, c.field)
			}
			for _, other := range reason.All {
				if other != c.want && errors.Is(err, other) {
					t.Fatalf("error also matches %s: %v", other, err)
				}
			}
		})
	}

	// A block index on a file that is not a slot image, and keys the predicate does not know.
	files := verify.Predicate{Target: "files", Version: "2.0.0", WorkingDirectory: "/opt/app/x", Files: map[string]verify.PredicateFile{"rootfs.img": verify.PredicateFileOf(m)}}
	if _, err := w.ts.Release(verify.Claims{Statement: attestAs(t, w.k.p256, "rootfs.img", stored, files), Files: []verify.FileClaim{{Name: "rootfs.img", Size: -1}}}, w.policy); !errors.Is(err, reason.InvalidDocument) || !strings.Contains(err.Error(), "target slot only") {
		t.Fatalf("delta on target files: %v", err)
	}
	pj := `{"target":"slot","version":"2.0.0","files":{"rootfs.img":{"size":` + itoa(m.Stored.Size) + `,"compression":"zstd","raw":{"size":` + itoa(m.Raw.Size) + `,"sha256":"` + m.Raw.SHA256 +
		`"},"full":{"size":` + itoa(m.Full.Size) + `,"sha256":"` + m.Full.SHA256 + `"},"fullFrameSize":262144,"delta":{"blockSize":4096,"frameSize":16384,"offsets":[0],"index":{"offset":1,"size":1,"sha256":"` + m.Raw.SHA256 + `"}}}}}`
	if _, err := w.ts.Release(verify.Claims{Statement: statementOf(t, w.k.p256, verify.PredicateType, pj, stored), Files: []verify.FileClaim{{Name: "rootfs.img", Size: -1}}}, w.policy); !errors.Is(err, reason.InvalidDocument) || !strings.Contains(err.Error(), "offsets") {
		t.Fatalf("unknown key in delta: %v", err)
	}
}

// TestCompressedReleaseCarriesItsManifestAndInstalledDigest: an accepted compressed release
// hands installers the signed manifest, the stored object's size and digest (what is
// downloaded) and the raw ones (what is installed); CheckInstalled enforces the raw digest and
// size, and a detached signature over the stored object.
func TestCompressedReleaseCarriesItsManifestAndInstalledDigest(t *testing.T) {
	w := newWorld(t)
	raw, m := compressedSlot(t)
	stored := m.Stored.Sum()
	sig := &verify.Signature{Algorithm: verify.ECDSASHA256, Value: sigB64(t, w.k.p256, verify.ECDSASHA256, stored), RawPayloadSize: m.Stored.Size}
	r, err := w.ts.Release(verify.Claims{Statement: attestAs(t, w.k.p256, "rootfs.img", stored, slotPredicate(verify.PredicateFileOf(m))),
		Files: []verify.FileClaim{{Name: "rootfs.img", Size: m.Stored.Size, SHA256: stored, Signature: sig}}}, w.policy)
	if err != nil {
		t.Fatal(err)
	}
	f := r.Files[0]
	rawSum := sha256.Sum256(raw)
	if f.Compressed == nil || *f.Compressed.Delta != *m.Delta || f.Size != m.Stored.Size || !bytes.Equal(f.SHA256, stored) ||
		f.RawSize() != int64(len(raw)) || !bytes.Equal(f.RawSHA256(), rawSum[:]) {
		t.Fatalf("release file %+v (manifest %+v)", f, f.Compressed)
	}
	now := w.policy.Now
	if _, err := w.ts.CheckInstalled(r, 0, rawSum[:], int64(len(raw)), now); err != nil {
		t.Fatalf("the installed image: %v", err)
	}
	other := sha256.Sum256(append(raw, 0))
	for _, c := range []struct {
		name   string
		digest []byte
		size   int64
		sig    *verify.Signature
		want   reason.Code
	}{
		{"installed bytes are not the signed raw image", other[:], int64(len(raw)), nil, reason.DigestMismatch},
		{"installed bytes are the stored object", stored, m.Stored.Size, nil, reason.SizeMismatch},
		{"installed one byte longer", rawSum[:], int64(len(raw)) + 1, nil, reason.SizeMismatch},
		{"detached signature over another object", rawSum[:], int64(len(raw)), &verify.Signature{Algorithm: verify.ECDSASHA256, Value: sigB64(t, w.k.p256, verify.ECDSASHA256, rawSum[:])}, reason.SignatureInvalid},
	} {
		rr := *r
		rr.Files = []verify.File{f}
		if c.sig != nil {
			rr.Files[0].Signature = c.sig
		}
		if _, err := w.ts.CheckInstalled(&rr, 0, c.digest, c.size, now); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %s", c.name, err, c.want)
		}
	}
	if hex.EncodeToString(f.RawSHA256()) != m.Raw.SHA256 {
		t.Fatal("raw digest")
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
