package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/zimage"
	"github.com/fieldota/fieldota/test/artifact"
	"github.com/fieldota/fieldota/test/testdoc"
	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
)

// releaseOfDoc reads back the signed release of a document written by `fieldota job`.
func releaseOfDoc(t *testing.T, docPath, pub string) *verify.Release {
	t.Helper()
	b, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	d, err := jobdoc.Parse(b, jobdoc.Options{AllowPlaceholders: true})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := verify.LoadTrustStore([]string{pub}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ts.Release(d.Claims(), verify.Policy{RequireStatement: true})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestJobCompressDeltaWritesTheObjectAndSignsItsManifest: `fieldota job --target slot --delta`
// writes FILE.zst with the reference zstd -19, signs the object's size and digest as the file's
// and the manifest beside them, and `fieldota verify` accepts the object (every part checked)
// and the raw image (against the signed raw digest). The plain copies are the object's.
func TestJobCompressDeltaWritesTheObjectAndSignsItsManifest(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	cliMustRun(t, "keygen", "--out", key)
	img := filepath.Join(dir, "rootfs.img")
	raw := artifact.Image(2<<20, 31)
	if err := os.WriteFile(img, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	doc := filepath.Join(dir, "job.json")
	out := cliMustRun(t, "job", "--key", key+".key", "--file", img, "--presign", "https://s3.eu-west-1.amazonaws.com/b/rootfs.img.zst",
		"--version", "2.0.0", "--target", "slot", "--delta", "-o", doc)
	if !strings.Contains(out, "zstd -19") || !strings.Contains(out, "rootfs.img.zst: ") {
		t.Fatalf("job output does not say what it built and with which encoder:\n%s", out)
	}
	obj, err := os.ReadFile(img + ".zst")
	if err != nil {
		t.Fatal(err)
	}
	r := releaseOfDoc(t, doc, key+".pub")
	f := r.Files[0]
	objSum, rawSum := sha256.Sum256(obj), sha256.Sum256(raw)
	if f.Name != "rootfs.img" || f.Size != int64(len(obj)) || !bytes.Equal(f.SHA256, objSum[:]) || f.Compressed == nil ||
		f.Compressed.Delta == nil || f.RawSize() != int64(len(raw)) || !bytes.Equal(f.RawSHA256(), rawSum[:]) {
		t.Fatalf("signed file %+v, manifest %+v", f, f.Compressed)
	}
	var plain struct {
		Files struct {
			Size   int64  `json:"size"`
			SHA256 string `json:"sha256"`
		} `json:"files"`
	}
	b, _ := os.ReadFile(doc)
	if err := json.Unmarshal(b, &plain); err != nil || plain.Files.Size != int64(len(obj)) || plain.Files.SHA256 != hex.EncodeToString(objSum[:]) {
		t.Fatalf("plain copies %+v: want the object's size and digest (%v)", plain.Files, err)
	}
	if out := cliMustRun(t, "verify", "--key", key+".pub", "--job", doc, img+".zst"); !strings.Contains(out, "block index and ") {
		t.Fatalf("verify of the object: %s", out)
	}
	if out := cliMustRun(t, "verify", "--key", key+".pub", "--job", doc, "--file", "rootfs.img", img); !strings.Contains(out, "the decompressed image") {
		t.Fatalf("verify of the raw image: %s", out)
	}
	// --delta is for slot images only.
	if _, code, _ := cliRun(t, "job", "--key", key+".key", "--file", img, "--url", "https://x.amazonaws.com/o", "--version", "2.0.0",
		"--working-directory", "/opt/app/x", "--delta", "-o", filepath.Join(dir, "files.json")); code != 2 {
		t.Fatalf("--delta on target files: exit %d, want 2", code)
	}
}

// TestJobCompressWithoutTheZstdToolUsesTheGoEncoderAndSaysSo: on a machine without zstd the
// object is still written (pure Go), the output says so, and it verifies.
func TestJobCompressWithoutTheZstdToolUsesTheGoEncoderAndSaysSo(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	cliMustRun(t, "keygen", "--out", key)
	file := filepath.Join(dir, "app.bin")
	if err := os.WriteFile(file, artifact.Image(300<<10, 32), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", t.TempDir()) // no zstd here
	doc := filepath.Join(dir, "job.json")
	out := cliMustRun(t, "job", "--key", key+".key", "--file", file, "--url", "https://b.s3.amazonaws.com/app.bin.zst", "--version", "1.0",
		"--target", "binary", "--binary", "app", "--compress", "zstd", "--objects-dir", dir, "-o", doc)
	if !strings.Contains(out, "zstd not found") || !strings.Contains(out, "pure-Go encoder") {
		t.Fatalf("output does not say which encoder:\n%s", out)
	}
	if out := cliMustRun(t, "verify", "--key", key+".pub", "--job", doc, file+".zst"); !strings.Contains(out, "decompresses to 307200 bytes") {
		t.Fatalf("verify: %s", out)
	}
}

// TestVerifyCompressedObjectAttacks: `fieldota verify` refuses, offline and with the device's
// reason, an object that is not what its signed manifest says — a tampered frame or index, or a
// manifest whose index digest, raw digest or frame size disagrees with the object — and a
// document whose plain copy disagrees with the signed release.
func TestVerifyCompressedObjectAttacks(t *testing.T) {
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "release")
	cliMustRun(t, "keygen", "--out", keyPath)
	key, err := sign.LoadPrivateKey(keyPath + ".key")
	if err != nil {
		t.Fatal(err)
	}
	raw := artifact.Image(1<<20, 33)
	objPath := filepath.Join(dir, "rootfs.img.zst")
	m, err := buildObject(t.Context(), writeTemp(t, dir, "rootfs.img", raw), objPath, zimage.Options{FullFrameSize: 256 << 10, Delta: true, Encoder: zimage.GoEncoder{}})
	if err != nil {
		t.Fatal(err)
	}
	obj, _ := os.ReadFile(objPath)
	other := func(s string) string { x := sha256.Sum256([]byte(s)); return hex.EncodeToString(x[:]) }

	type tc struct {
		name   string
		object []byte                   // nil = the good object
		edit   func(m *zimage.Manifest) // the signed manifest, changed
		doc    func(d *testdoc.Doc)     // the document, changed
		want   reason.Code
	}
	flip := func(at int64) []byte { b := append([]byte(nil), obj...); b[at] ^= 0x20; return b }
	cases := []tc{
		{name: "full part byte flipped", object: flip(m.Full.Size / 3), want: reason.DigestMismatch},
		{name: "delta frame byte flipped", object: flip(m.Full.Size + 100), want: reason.DigestMismatch},
		{name: "index byte flipped", object: flip(m.Delta.Index.Offset + 20), want: reason.DigestMismatch},
		{name: "signed index digest disagrees", edit: func(m *zimage.Manifest) { d := *m.Delta; d.Index.SHA256 = other("index"); m.Delta = &d }, want: reason.DigestMismatch},
		{name: "signed raw digest disagrees", edit: func(m *zimage.Manifest) { m.Raw.SHA256 = other("raw") }, want: reason.DigestMismatch},
		{name: "signed frame size smaller than the object's", edit: func(m *zimage.Manifest) { m.FullFrameSize = 128 << 10 }, want: reason.DecompressionBomb},
		{name: "signed frame size larger than the object's", edit: func(m *zimage.Manifest) { m.FullFrameSize = 512 << 10 }, want: reason.SizeMismatch},
		{name: "plain size copies the raw size", doc: func(d *testdoc.Doc) { d.FilePlain = map[string]any{"size": m.Raw.Size} }, want: reason.DocumentMismatch},
		{name: "plain sha256 copies the raw digest", doc: func(d *testdoc.Doc) { d.FilePlain = map[string]any{"sha256": m.Raw.SHA256} }, want: reason.DocumentMismatch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mm := m
			if c.edit != nil {
				c.edit(&mm)
			}
			d := testdoc.ForCompressed("rootfs.img", mm, "2.0.0")
			d.Target = "slot"
			if c.doc != nil {
				c.doc(&d)
			}
			doc, err := d.Signed(key)
			if err != nil {
				t.Fatal(err)
			}
			docPath := writeTemp(t, t.TempDir(), "job.json", []byte(doc))
			o := obj
			if c.object != nil {
				o = c.object
				// the object's own digest signed as it now is: only the deeper checks can refuse it
				d := testdoc.ForCompressed("rootfs.img", withStored(mm, o), "2.0.0")
				d.Target = "slot"
				doc, err := d.Signed(key)
				if err != nil {
					t.Fatal(err)
				}
				docPath = writeTemp(t, t.TempDir(), "job.json", []byte(doc))
			}
			p := writeTemp(t, t.TempDir(), "rootfs.img.zst", o)
			out, code, err := cliRun(t, "verify", "--key", keyPath+".pub", "--job", docPath, "--file", "rootfs.img", p)
			if code != 1 || !errors.Is(err, c.want) || !strings.Contains(err.Error(), "REFUSED "+string(c.want)) {
				t.Fatalf("exit %d, %v, want 1 and %s\n%s", code, err, c.want, out)
			}
		})
	}
}

// withStored is m re-signed for obj: the object's size and digest, and the full part's when it
// changed there.
func withStored(m zimage.Manifest, obj []byte) zimage.Manifest {
	s := sha256.Sum256(obj)
	m.Stored.SHA256 = hex.EncodeToString(s[:])
	f := sha256.Sum256(obj[:m.Full.Size])
	m.Full.SHA256 = hex.EncodeToString(f[:])
	return m
}

func writeTemp(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
