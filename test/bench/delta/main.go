// Command delta measures compressed and delta slot updates (issue 13, docs/delta-updates.md) on
// real Debian image pairs built by test/bench/delta-images.sh, side by side with the tools other
// updaters use on the same pair, and writes its section of BENCHMARKS.md. `make bench` runs it
// after test/bench; results are cached per image pair (a rerun only reprints them).
//
// Device-side figures come from child processes (this binary re-executed) that install into a
// file-backed slot from the emulator's artifact server on loopback, each reporting its own
// peak RSS (VmHWM).
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fieldota/fieldota/download"
	"github.com/fieldota/fieldota/ota/compressed"
	"github.com/fieldota/fieldota/ota/delta"
	"github.com/fieldota/fieldota/ota/zimage"
	"github.com/fieldota/fieldota/test/jobsim/s3"
)

const childEnv = "FIELDOTA_DELTA_BENCH_CHILD"

var onlySweep bool

func main() {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(child(mode))
	}
	cacheDir := filepath.Join(or(os.Getenv("XDG_CACHE_HOME"), filepath.Join(os.Getenv("HOME"), ".cache")), "fieldota-bench")
	cache := flag.String("cache", cacheDir, "images, objects and results")
	out := flag.String("out", "BENCHMARKS.md", "report file whose delta section is replaced")
	sweep := flag.Bool("sweep", true, "also measure delta bytes against frame and block sizes")
	sweepOnly := flag.Bool("sweep-only", false, "only the frame-size sweep (printed, no report)")
	flag.Parse()
	if *sweepOnly {
		onlySweep = true
	}
	if err := run(*cache, *out, *sweep); err != nil {
		fmt.Fprintln(os.Stderr, "bench delta:", err)
		os.Exit(1)
	}
}

type pair struct{ Name, Old, New, Kind string }

// result is one pair's numbers (cached as JSON).
type result struct {
	Pair                 pair
	RawSize, NonZero     int64
	Solid                int64 // zstd -19 --long=27
	Full, DeltaPart, Idx int64 // our object's parts
	Stored               int64
	BuildSec             float64
	Match4K, Match64K    float64 // share of the new image's non-zero blocks found anywhere in the old
	MissingZstd          int64   // the lower bound: missing 4 KiB blocks as one zstd -19 stream
	Xdelta, PatchFrom    int64
	XdeltaRSS, PatchRSS  int64 // KiB, of the applying side (decoder)
	CasyncMissing        int64
	CasyncChunks         int
	ZckDelta, ZckSize    int64
	Delta                childResult
	FullInstall, RawDown childResult
}

type childResult struct {
	Wall     float64
	HWMKiB   int64
	Report   delta.Report
	Error    string
	Fetched  int64
	Requests int
}

func run(cache, out string, sweep bool) error {
	here, _ := os.Getwd()
	imgDir := filepath.Join(cache, "images")
	script := filepath.Join(here, "test/bench/delta-images.sh")
	if err := runTool(60*time.Minute, nil, script, imgDir); err != nil {
		return fmt.Errorf("building the images: %w", err)
	}
	pairs := []pair{
		{"added", "old", "added", "one package added (less), one upgraded (perl-base)"},
		{"upgraded", "old", "upgraded", "every pending security upgrade (files replaced, names kept)"},
		{"added-stable", "old-stable", "added-stable", "as `added`, images with stable metadata"},
		{"upgraded-stable", "old-stable", "upgraded-stable", "as `upgraded`, images with stable metadata"},
	}
	if err := deviceImages(here, imgDir); err != nil {
		fmt.Fprintf(os.Stderr, "bench delta: no device-in-a-box pair: %v\n", err)
	} else {
		pairs = append(pairs, pair{"device", "device-v1", "device-v2", "device-in-a-box slot (24 MiB): the agent rebuilt as another version"})
	}
	srvDir := filepath.Join(cache, "srv")
	if err := os.MkdirAll(filepath.Join(srvDir, "bucket"), 0o755); err != nil {
		return err
	}
	p := &s3.Presigner{Secret: []byte("bench")}
	srv := s3.NewServer(srvDir, p)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	p.Base = "http://" + ln.Addr().String()
	hs := &http.Server{Handler: srv}
	go hs.Serve(ln)
	defer hs.Close()

	if onlySweep {
		sw, err := frameSweep(cache, imgDir, srvDir, p)
		b, _ := json.MarshalIndent(sw, "", " ")
		fmt.Println(string(b))
		return err
	}
	var results []result
	for _, pr := range pairs {
		r, err := measurePair(cache, imgDir, srvDir, p, pr, !strings.HasSuffix(pr.Name, "-stable"))
		if err != nil {
			return fmt.Errorf("%s: %w", pr.Name, err)
		}
		results = append(results, r)
	}
	var sw []sweepRow
	if sweep {
		if sw, err = frameSweep(cache, imgDir, srvDir, p); err != nil {
			return fmt.Errorf("sweep: %w", err)
		}
	}
	return writeReport(out, results, sw)
}

func measurePair(cache, imgDir, srvDir string, p *s3.Presigner, pr pair, anchors bool) (result, error) {
	oldPath, newPath := filepath.Join(imgDir, pr.Old+".img"), filepath.Join(imgDir, pr.New+".img")
	key, err := fileKey(oldPath, newPath)
	if err != nil {
		return result{}, err
	}
	resPath := filepath.Join(cache, "results", pr.Name+"-"+key+".json")
	var r result
	if b, err := os.ReadFile(resPath); err == nil && json.Unmarshal(b, &r) == nil {
		fmt.Fprintf(os.Stderr, "bench delta: %s cached\n", pr.Name)
		return r, nil
	}
	// a pair interrupted half way keeps the steps it finished
	partial := resPath + ".partial"
	if b, err := os.ReadFile(partial); err == nil {
		_ = json.Unmarshal(b, &r)
	}
	save := func() {
		b, _ := json.Marshal(r)
		_ = os.MkdirAll(filepath.Dir(partial), 0o755)
		_ = os.WriteFile(partial, b, 0o644)
	}
	r.Pair = pr
	work := filepath.Join(cache, "work", pr.Name)
	_ = os.RemoveAll(work)
	if err := os.MkdirAll(work, 0o755); err != nil {
		return r, err
	}
	fi, err := os.Stat(newPath)
	if err != nil {
		return r, err
	}
	r.RawSize = fi.Size()
	step := func(s string) { fmt.Fprintf(os.Stderr, "bench delta: %s: %s\n", pr.Name, s) }

	if r.Match64K == 0 {
		step("block matches")
		if r.NonZero, r.Match4K, err = matchFraction(oldPath, newPath, 4096); err != nil {
			return r, err
		}
		if _, r.Match64K, err = matchFraction(oldPath, newPath, 64<<10); err != nil {
			return r, err
		}
		save()
	}
	if r.Solid == 0 {
		step("solid zstd -19 --long=27")
		if r.Solid, err = toolSize(newPath, filepath.Join(work, "solid.zst"), "zstd", "-q", "-19", "--long=27", "-T0", "-f", "-o", filepath.Join(work, "solid.zst"), newPath); err != nil {
			return r, err
		}
		save()
	}

	step("our object (libzstd -19 frames)")
	objName := pr.Name + ".zst"
	objPath := filepath.Join(srvDir, "bucket", objName)
	t0 := time.Now()
	m, err := buildObject(newPath, objPath, zimage.Options{Delta: true, Encoder: zimage.CLIEncoder{Level: 19}})
	if err != nil {
		return r, err
	}
	r.BuildSec = time.Since(t0).Seconds()
	r.Full, r.Stored, r.Idx = m.Full.Size, m.Stored.Size, m.Delta.Index.Size
	r.DeltaPart = m.Delta.Index.Offset - m.Full.Size
	rawName := pr.Name + ".img"
	if err := linkOrCopy(newPath, filepath.Join(srvDir, "bucket", rawName)); err != nil {
		return r, err
	}

	if r.RawDown.Wall == 0 {
		step("device: delta, full compressed, raw (loopback)")
		mj, _ := json.Marshal(m)
		target := filepath.Join(work, "slot-b")
		state := filepath.Join(work, "state")
		for _, c := range []struct {
			mode string
			dst  *childResult
			obj  string
		}{{"delta", &r.Delta, objName}, {"full", &r.FullInstall, objName}, {"raw", &r.RawDown, rawName}} {
			_ = os.RemoveAll(state)
			_ = os.MkdirAll(state, 0o700)
			// the inactive slot holds nothing reusable: a sparse file of the image's size
			_ = os.Remove(target)
			if f, err := os.Create(target); err == nil {
				_ = f.Truncate(r.RawSize)
				f.Close()
			}
			env := []string{childEnv + "=" + c.mode, "B_URL=" + p.Sign("bucket/"+c.obj, time.Hour), "B_MANIFEST=" + string(mj),
				"B_TARGET=" + target, "B_ACTIVE=" + oldPath, "B_STATE=" + state, "B_SIZE=" + strconv.FormatInt(r.RawSize, 10)}
			*c.dst, err = runChild(env)
			if err != nil {
				return r, fmt.Errorf("%s install: %w", c.mode, err)
			}
			if got, err := sha256File(target); err != nil || got != m.Raw.SHA256 {
				return r, fmt.Errorf("%s install left a slot that is not the image (%v)", c.mode, err)
			}
		}
		_ = os.Remove(target)
		save()
	}

	if r.MissingZstd == 0 {
		step("lower bound: missing 4 KiB blocks as one zstd -19 stream")
		if r.MissingZstd, err = missingBlocksZstd(oldPath, newPath, work); err != nil {
			return r, err
		}
		save()
	}
	if anchors && r.XdeltaRSS == 0 {
		step("xdelta3 -e -9 -s")
		xd := filepath.Join(work, "x.vcdiff")
		if r.Xdelta, err = toolSize(newPath, "", "xdelta3", "-e", "-9", "-f", "-s", oldPath, newPath, xd); err != nil {
			return r, err
		}
		if r.Xdelta, err = fileSize(xd); err != nil {
			return r, err
		}
		if r.XdeltaRSS, err = toolRSS("xdelta3", "-d", "-f", "-s", oldPath, xd, filepath.Join(work, "x.out")); err != nil {
			return r, err
		}
		_ = os.Remove(filepath.Join(work, "x.out"))
		save()
	}
	if anchors && r.PatchRSS == 0 {
		step("zstd --patch-from -19")
		pf := filepath.Join(work, "p.zst")
		if _, err = toolSize(newPath, "", "zstd", "-q", "-19", "-T0", "-f", "--patch-from="+oldPath, newPath, "-o", pf); err != nil {
			return r, err
		}
		if r.PatchFrom, err = fileSize(pf); err != nil {
			return r, err
		}
		if r.PatchRSS, err = toolRSS("zstd", "-q", "-d", "-f", "--long=31", "--patch-from="+oldPath, pf, "-o", filepath.Join(work, "p.out")); err != nil {
			return r, err
		}
		_ = os.Remove(filepath.Join(work, "p.out"))
		save()
	}
	if anchors && r.CasyncMissing == 0 {
		step("casync make")
		if r.CasyncMissing, r.CasyncChunks, err = casyncMissing(oldPath, newPath, work); err != nil {
			return r, err
		}
		save()
	}
	if anchors && r.ZckDelta == 0 {
		step("zck + zck_delta_size")
		if r.ZckDelta, r.ZckSize, err = zckDelta(oldPath, newPath, work); err != nil {
			return r, err
		}
		save()
	}
	_ = os.RemoveAll(work)
	b, _ := json.MarshalIndent(r, "", " ")
	_ = os.MkdirAll(filepath.Dir(resPath), 0o755)
	return r, os.WriteFile(resPath, b, 0o644)
}

// child is one device-side install, measured on its own.
func child(mode string) int {
	var m zimage.Manifest
	_ = json.Unmarshal([]byte(os.Getenv("B_MANIFEST")), &m)
	obj := download.RangesConfig{URL: os.Getenv("B_URL")}
	t0 := time.Now()
	var res childResult
	var err error
	switch mode {
	case "delta":
		res.Report, err = delta.Install(context.Background(), delta.Request{Manifest: m, Object: obj, Target: os.Getenv("B_TARGET"),
			Active: delta.Source{Path: os.Getenv("B_ACTIVE")}, StateDir: os.Getenv("B_STATE")})
		res.Fetched, res.Requests = res.Report.Fetched, res.Report.Requests
	case "full":
		f, ferr := os.OpenFile(os.Getenv("B_TARGET"), os.O_RDWR, 0)
		if ferr != nil {
			err = ferr
			break
		}
		var cr compressed.Result
		cr, err = compressed.Install(context.Background(), compressed.Request{Manifest: m, Object: obj, Sink: f})
		f.Close()
		res.Fetched, res.Requests = cr.BytesOnWire, cr.Requests
	case "raw":
		f, ferr := os.OpenFile(os.Getenv("B_TARGET"), os.O_RDWR, 0)
		if ferr != nil {
			err = ferr
			break
		}
		size, _ := strconv.ParseInt(os.Getenv("B_SIZE"), 10, 64)
		sum, _ := hex.DecodeString(m.Raw.SHA256)
		var dr download.Result
		dr, err = download.Download(context.Background(), download.Request{URL: os.Getenv("B_URL"), Size: size, SHA256: sum, Sink: f})
		f.Close()
		res.Fetched, res.Requests = dr.BytesOnWire, 1
	}
	res.Wall = time.Since(t0).Seconds()
	res.HWMKiB = selfHWM()
	if err != nil {
		res.Error = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	if err != nil {
		return 1
	}
	return 0
}

func runChild(env []string) (childResult, error) {
	var res childResult
	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	outb, err := cmd.Output()
	if jerr := json.Unmarshal(outb, &res); jerr != nil {
		return res, fmt.Errorf("child: %v (%w)", jerr, err)
	}
	if res.Error != "" {
		return res, fmt.Errorf("child: %s", res.Error)
	}
	return res, err
}

func selfHWM() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

func buildObject(raw, dst string, opt zimage.Options) (zimage.Manifest, error) {
	mpath := dst + ".manifest.json"
	var m zimage.Manifest
	if b, err := os.ReadFile(mpath); err == nil && json.Unmarshal(b, &m) == nil {
		if fi, err := os.Stat(dst); err == nil && fi.Size() == m.Stored.Size {
			return m, nil
		}
	}
	in, err := os.Open(raw)
	if err != nil {
		return m, err
	}
	defer in.Close()
	fi, _ := in.Stat()
	out, err := os.Create(dst)
	if err != nil {
		return m, err
	}
	m, err = zimage.Build(context.Background(), in, fi.Size(), out, opt)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return m, err
	}
	b, _ := json.Marshal(m)
	return m, os.WriteFile(mpath, b, 0o644)
}

// matchFraction is RAUC adaptive's measure: the share of the new image's non-zero bs-blocks
// whose hash appears anywhere in the old image (at a bs-aligned offset).
func matchFraction(oldPath, newPath string, bs int) (nonZero int64, frac float64, err error) {
	have := map[[32]byte]struct{}{}
	if err := eachBlock(oldPath, bs, func(b []byte) { have[sha256.Sum256(b)] = struct{}{} }); err != nil {
		return 0, 0, err
	}
	var n, hit int64
	err = eachBlock(newPath, bs, func(b []byte) {
		n++
		if _, ok := have[sha256.Sum256(b)]; ok {
			hit++
		}
	})
	if n == 0 {
		return 0, 0, err
	}
	return n * int64(bs), float64(hit) / float64(n), err
}

// eachBlock calls fn with every non-zero block.
func eachBlock(path string, bs int, fn func([]byte)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, bs)
	for {
		_, err := io.ReadFull(f, buf)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return err
		}
		if !zimage.IsZero(buf) {
			fn(buf)
		}
	}
}

func missingBlocksZstd(oldPath, newPath, work string) (int64, error) {
	have := map[[32]byte]struct{}{}
	if err := eachBlock(oldPath, 4096, func(b []byte) { have[sha256.Sum256(b)] = struct{}{} }); err != nil {
		return 0, err
	}
	miss := filepath.Join(work, "missing.bin")
	f, err := os.Create(miss)
	if err != nil {
		return 0, err
	}
	err = eachBlock(newPath, 4096, func(b []byte) {
		if _, ok := have[sha256.Sum256(b)]; !ok {
			_, _ = f.Write(b)
		}
	})
	f.Close()
	if err != nil {
		return 0, err
	}
	return toolSize(miss, miss+".zst", "zstd", "-q", "-19", "--long=27", "-T0", "-f", "-o", miss+".zst", miss)
}

func casyncMissing(oldPath, newPath, work string) (int64, int, error) {
	so, sn := filepath.Join(work, "store-old"), filepath.Join(work, "store-new")
	if err := runTool(30*time.Minute, nil, "casync", "make", "--store="+so, filepath.Join(work, "old.caibx"), oldPath); err != nil {
		return 0, 0, err
	}
	if err := runTool(30*time.Minute, nil, "casync", "make", "--store="+sn, filepath.Join(work, "new.caibx"), newPath); err != nil {
		return 0, 0, err
	}
	old := map[string]bool{}
	_ = filepath.WalkDir(so, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			old[d.Name()] = true
		}
		return nil
	})
	var size int64
	n := 0
	err := filepath.WalkDir(sn, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || old[d.Name()] {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		size += fi.Size()
		n++
		return nil
	})
	return size, n, err
}

var zckRe = regexp.MustCompile(`Would download (\d+) of (\d+) bytes`)

func zckDelta(oldPath, newPath, work string) (int64, int64, error) {
	oz, nz := filepath.Join(work, "old.zck"), filepath.Join(work, "new.zck")
	if err := runTool(30*time.Minute, nil, "zck", "-o", oz, oldPath); err != nil {
		return 0, 0, err
	}
	if err := runTool(30*time.Minute, nil, "zck", "-o", nz, newPath); err != nil {
		return 0, 0, err
	}
	var out bytes.Buffer
	if err := runTool(10*time.Minute, &out, "zck_delta_size", oz, nz); err != nil {
		return 0, 0, err
	}
	mm := zckRe.FindStringSubmatch(out.String())
	if mm == nil {
		return 0, 0, fmt.Errorf("zck_delta_size said %q", out.String())
	}
	d, _ := strconv.ParseInt(mm[1], 10, 64)
	fi, err := os.Stat(nz)
	if err != nil {
		return 0, 0, err
	}
	return d, fi.Size(), nil
}

func fileSize(p string) (int64, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// toolSize runs a tool and returns the size of outPath, which it then removes ("" = keep all).
func toolSize(_ string, outPath string, name string, args ...string) (int64, error) {
	if err := runTool(60*time.Minute, nil, name, args...); err != nil {
		return 0, err
	}
	if outPath == "" {
		return 0, nil
	}
	fi, err := os.Stat(outPath)
	if err != nil {
		return 0, err
	}
	n := fi.Size()
	_ = os.Remove(outPath)
	return n, nil
}

// toolRSS runs a tool and returns its peak RSS in KiB (ru_maxrss; the child is exec'd from a
// process far smaller than the tools measured).
func toolRSS(name string, args ...string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss, nil
	}
	return 0, nil
}

func runTool(timeout time.Duration, stdout io.Writer, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	if stdout == nil {
		cmd.Stdout = os.Stderr
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func fileKey(paths ...string) (string, error) {
	h := sha256.New()
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d %d\n", filepath.Base(p), fi.Size(), fi.ModTime().UnixNano())
	}
	fmt.Fprintf(h, "%s\n", runtime.Version())
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

func sha256File(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func linkOrCopy(src, dst string) error {
	_ = os.Remove(dst)
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	return runTool(10*time.Minute, nil, "cp", "--sparse=always", src, dst)
}

func or(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

type sweepRow struct {
	FrameSize        int64
	DeltaPart        int64
	Fetched          int64
	Requests         int
	MergedNoLimitReq int
}

// frameSweep measures the added pair's delta at several frame sizes (Go encoder: the sweep is
// about the shape of the curve, the main table uses libzstd).
func frameSweep(cache, imgDir, srvDir string, p *s3.Presigner) ([]sweepRow, error) {
	oldPath, newPath := filepath.Join(imgDir, "old.img"), filepath.Join(imgDir, "added.img")
	key, err := fileKey(oldPath, newPath)
	if err != nil {
		return nil, err
	}
	resPath := filepath.Join(cache, "results", "sweep-"+key+".json")
	var rows []sweepRow
	if b, err := os.ReadFile(resPath); err == nil && json.Unmarshal(b, &rows) == nil {
		return rows, nil
	}
	for _, fs := range []int64{16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10} {
		fmt.Fprintf(os.Stderr, "bench delta: sweep: frames of %d KiB\n", fs>>10)
		name := fmt.Sprintf("sweep-%d.zst", fs>>10)
		m, err := buildObject(newPath, filepath.Join(srvDir, "bucket", name), zimage.Options{Delta: true, FrameSize: fs, Encoder: zimage.GoEncoder{}})
		if err != nil {
			return nil, err
		}
		row := sweepRow{FrameSize: fs, DeltaPart: m.Delta.Index.Offset - m.Full.Size}
		for _, limit := range []int{200, 1 << 30} {
			work := filepath.Join(cache, "work", "sweep")
			_ = os.RemoveAll(work)
			_ = os.MkdirAll(filepath.Join(work, "state"), 0o700)
			target := filepath.Join(work, "slot-b")
			f, err := os.Create(target)
			if err != nil {
				return nil, err
			}
			_ = f.Truncate(m.Raw.Size)
			f.Close()
			rep, err := delta.Install(context.Background(), delta.Request{Manifest: m, Object: download.RangesConfig{URL: p.Sign("bucket/"+name, time.Hour)},
				Target: target, Active: delta.Source{Path: oldPath}, StateDir: filepath.Join(work, "state"), MaxRequests: limit})
			if err != nil {
				return nil, err
			}
			if limit == 200 {
				row.Fetched, row.Requests = rep.Fetched, rep.Requests
			} else {
				row.MergedNoLimitReq = rep.Requests
			}
			_ = os.RemoveAll(work)
		}
		_ = os.Remove(filepath.Join(srvDir, "bucket", name))
		rows = append(rows, row)
	}
	b, _ := json.MarshalIndent(rows, "", " ")
	_ = os.MkdirAll(filepath.Dir(resPath), 0o755)
	return rows, os.WriteFile(resPath, b, 0o644)
}

const beginMark, endMark = "<!-- delta-bench:begin -->", "<!-- delta-bench:end -->"

func writeReport(out string, rs []result, sw []sweepRow) error {
	var b strings.Builder
	mb := func(n int64) string {
		if n < 1e6 {
			return fmt.Sprintf("%.3f", float64(n)/1e6)
		}
		return fmt.Sprintf("%.1f", float64(n)/1e6)
	}
	pct := func(n, of int64) string {
		if of == 0 {
			return "–"
		}
		return fmt.Sprintf("%.1f %%", 100*float64(n)/float64(of))
	}
	fmt.Fprintf(&b, "%s\n## Compressed and delta slot updates (`go run ./test/bench/delta`)\n\n", beginMark)
	fmt.Fprintf(&b, "Generated on %s. Images: Debian bookworm minbase (debootstrap, %s), `mkfs.ext4 -d`, %d MiB each, built by `test/bench/delta-images.sh`.\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.GOARCH, rs[0].RawSize>>20)
	b.WriteString("One run per pair on a shared 2-core machine (other work runs beside it): wall times move by up to 2× between runs; bytes and requests do not. ")
	b.WriteString("Sizes in MB (10^6 bytes); percentages are of the solid `zstd -19 --long=27` image of the new release. Device side: the emulator's artifact server on loopback, a file-backed target slot that holds nothing reusable (a sparse file), the old image as the active slot; each install is a child process reporting its own peak RSS (VmHWM).\n\n")
	b.WriteString("| pair | change | raw | non-zero | solid zstd -19 --long=27 | our full part | our object in S3 (full + delta frames + index) | index |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s (%.3f×) | %s | %s |\n", r.Pair.Name, r.Pair.Kind, mb(r.RawSize), mb(r.NonZero), mb(r.Solid), mb(r.Full), float64(r.Full)/float64(r.Solid), mb(r.Stored), mb(r.Idx))
	}
	b.WriteString("\n### Bytes on the wire for the update, same pair\n\n| pair | ours: delta (requests) | lower bound: missing 4 KiB blocks, one zstd -19 stream | zchunk (`zck_delta_size`) | casync: missing chunks (chunks = GETs) | xdelta3 -e -9 (per-pair artifact) | zstd --patch-from -19 (per-pair artifact) | 4 KiB blocks found in old | 64 KiB blocks found in old |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		anchor := func(n int64) string {
			if n == 0 {
				return "–"
			}
			return mb(n) + " (" + pct(n, r.Solid) + ")"
		}
		cas := "–"
		if r.CasyncMissing > 0 {
			cas = fmt.Sprintf("%s (%d)", anchor(r.CasyncMissing), r.CasyncChunks)
		}
		fmt.Fprintf(&b, "| %s | **%s (%d)** | %s | %s | %s | %s | %s | %.1f %% | %.1f %% |\n", r.Pair.Name, anchor(r.Delta.Fetched), r.Delta.Requests,
			anchor(r.MissingZstd), anchor(r.ZckDelta), cas, anchor(r.Xdelta), anchor(r.PatchFrom), 100*r.Match4K, 100*r.Match64K)
	}
	b.WriteString("\n### Device side (loopback, file-backed slot)\n\n| pair | install | wall (s) | peak RSS (MiB) | bytes fetched | requests | read from the old slots | written to the new slot |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		for _, c := range []struct {
			name string
			c    childResult
		}{{"delta", r.Delta}, {"full compressed", r.FullInstall}, {"raw download", r.RawDown}} {
			read, written := "0", mb(r.RawSize)
			if c.name == "delta" {
				read, written = mb(c.c.Report.ReadOld), mb(c.c.Report.Written)
			}
			fmt.Fprintf(&b, "| %s | %s | %.2f | %.1f | %s | %d | %s | %s |\n", r.Pair.Name, c.name, c.c.Wall, float64(c.c.HWMKiB)/1024, mb(c.c.Fetched), c.c.Requests, read, written)
		}
	}
	b.WriteString("\nApplying side of the per-pair tools (peak RSS, MiB): ")
	for _, r := range rs {
		if r.XdeltaRSS > 0 {
			fmt.Fprintf(&b, "%s: xdelta3 -d %.0f, zstd -d --patch-from %.0f; ", r.Pair.Name, float64(r.XdeltaRSS)/1024, float64(r.PatchRSS)/1024)
		}
	}
	b.WriteString("\n")
	if len(sw) > 0 {
		b.WriteString("\n### Frame size (added pair, Go encoder, 4 KiB blocks)\n\n| delta frame | delta part in S3 | delta bytes fetched (≤ 200 requests) | requests | requests without the limit (64 KiB gaps merged) |\n|---|---|---|---|---|\n")
		for _, s := range sw {
			fmt.Fprintf(&b, "| %d KiB | %s | %s | %d | %d |\n", s.FrameSize>>10, mb(s.DeltaPart), mb(s.Fetched), s.Requests, s.MergedNoLimitReq)
		}
	}
	b.WriteString("\n### Goals (issue 13; not enforced by CI)\n\n| goal | pair | measured | met |\n|---|---|---|---|\n")
	yes := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	for _, r := range rs {
		fmt.Fprintf(&b, "| full download ≤ 1.05× solid zstd -19 --long=27 | %s | %.3f× | %s |\n", r.Pair.Name, float64(r.Full)/float64(r.Solid), yes(float64(r.Full) <= 1.05*float64(r.Solid)))
		if r.ZckDelta > 0 {
			fmt.Fprintf(&b, "| delta ≤ zchunk's | %s | %s vs %s | %s |\n", r.Pair.Name, mb(r.Delta.Fetched), mb(r.ZckDelta), yes(r.Delta.Fetched <= r.ZckDelta))
			fmt.Fprintf(&b, "| delta ≤ casync's | %s | %s vs %s | %s |\n", r.Pair.Name, mb(r.Delta.Fetched), mb(r.CasyncMissing), yes(r.Delta.Fetched <= r.CasyncMissing))
		}
		fmt.Fprintf(&b, "| ≤ 200 requests | %s | %d | %s |\n", r.Pair.Name, r.Delta.Requests, yes(r.Delta.Requests <= 200))
		fmt.Fprintf(&b, "| ≤ 32 MiB peak RSS (delta, %d MiB image) | %s | %.1f MiB | %s |\n", r.RawSize>>20, r.Pair.Name, float64(r.Delta.HWMKiB)/1024, yes(r.Delta.HWMKiB <= 32<<10))
		fmt.Fprintf(&b, "| delta wall ≤ 1.5× full compressed | %s | %.2f× | %s |\n", r.Pair.Name, r.Delta.Wall/r.FullInstall.Wall, yes(r.Delta.Wall <= 1.5*r.FullInstall.Wall))
		if strings.HasPrefix(r.Pair.Name, "added") {
			fmt.Fprintf(&b, "| stretch: delta ≤ 20 %% of solid | %s | %s | %s |\n", r.Pair.Name, pct(r.Delta.Fetched, r.Solid), yes(float64(r.Delta.Fetched) <= 0.2*float64(r.Solid)))
		}
	}
	fmt.Fprintf(&b, "\n%s\n", endMark)

	old, _ := os.ReadFile(out)
	s := string(old)
	if i, j := strings.Index(s, beginMark), strings.Index(s, endMark); i >= 0 && j > i {
		s = s[:i] + b.String() + strings.TrimPrefix(s[j+len(endMark):], "\n")
	} else {
		s = strings.TrimRight(s, "\n") + "\n\n" + b.String()
	}
	fmt.Print(b.String())
	return os.WriteFile(out, []byte(s), 0o644)
}

// deviceImages builds two device-in-a-box root slots (test/device/build-image.sh, its cached
// arm64 base) that differ as two releases of the agent do: the agent binary rebuilt with another
// version, and the version file.
func deviceImages(repo, imgDir string) error {
	v1, v2 := filepath.Join(imgDir, "device-v1.img"), filepath.Join(imgDir, "device-v2.img")
	if _, err := os.Stat(v2); err == nil {
		return nil
	}
	script := filepath.Join(repo, "test/device/build-image.sh")
	if err := runTool(30*time.Minute, io.Discard, script, "base"); err != nil {
		return err
	}
	for v, out := range map[string]string{"1.0": v1, "2.0": v2} {
		extra, err := os.MkdirTemp("", "fieldota-bench-extra-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(extra)
		_ = os.MkdirAll(filepath.Join(extra, "usr/bin"), 0o755)
		_ = os.MkdirAll(filepath.Join(extra, "etc"), 0o755)
		if err := os.WriteFile(filepath.Join(extra, "etc/fieldota-version"), []byte(v+"\n"), 0o644); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-tags", "nethttpomithttp2", "-ldflags", "-s -w -X main.version="+v, "-o", filepath.Join(extra, "usr/bin/fieldota-agent"), "./cmd/fieldota-agent")
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0")
		out2, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			return fmt.Errorf("go build: %v %s", err, out2)
		}
		if err := runTool(10*time.Minute, io.Discard, script, "slot", out, extra, "normal"); err != nil {
			return err
		}
	}
	return nil
}
