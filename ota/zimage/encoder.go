package zimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Encoder turns raw chunks into independent zstd frames, one per chunk, in order. Every frame
// carries its content size and a content checksum.
type Encoder interface {
	EncodeFrames(ctx context.Context, chunks [][]byte) ([][]byte, error)
}

// GoEncoder is klauspost/compress, at its best level by default: pure Go, no tool needed, but
// its frames are larger than libzstd's level 19 (measured in docs/delta-updates.md).
type GoEncoder struct {
	Level zstd.EncoderLevel // 0 = zstd.SpeedBestCompression
}

// EncodeFrames implements Encoder.
func (g GoEncoder) EncodeFrames(ctx context.Context, chunks [][]byte) ([][]byte, error) {
	out := make([][]byte, len(chunks))
	err := parallel(ctx, len(chunks), func(i int) error {
		f, err := encodeGoLevel(chunks[i], g.Level)
		out[i] = f
		return err
	})
	return out, err
}

func encodeGo(chunk []byte) ([]byte, error) { return encodeGoLevel(chunk, 0) }

type encKey struct {
	level  zstd.EncoderLevel
	window int
}

// encoders keeps one pool per level and window: a best-level encoder costs megabytes to set up.
var encoders sync.Map // encKey → *sync.Pool

func encodeGoLevel(chunk []byte, level zstd.EncoderLevel) ([]byte, error) {
	if level == 0 {
		level = zstd.SpeedBestCompression
	}
	k := encKey{level, windowFor(len(chunk))}
	pv, _ := encoders.LoadOrStore(k, &sync.Pool{})
	pool := pv.(*sync.Pool)
	enc, _ := pool.Get().(*zstd.Encoder)
	if enc == nil {
		var err error
		enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderCRC(true), zstd.WithWindowSize(k.window), zstd.WithSingleSegment(true))
		if err != nil {
			return nil, err
		}
	}
	out := enc.EncodeAll(chunk, nil)
	pool.Put(enc)
	return out, nil
}

// windowFor is the smallest power-of-two window (at least 1 KiB) that covers n bytes.
func windowFor(n int) int {
	if n <= 1<<10 {
		return 1 << 10
	}
	return 1 << bits.Len(uint(n-1))
}

// CLIEncoder runs the reference zstd (Debian's zstd package) at Level on temp files, Jobs at a
// time, each with a timeout. Chunks that are all zeros are encoded in Go: nothing to gain there.
type CLIEncoder struct {
	Path    string        // default "zstd"
	Level   int           // default 19
	Jobs    int           // parallel zstd processes, default the number of CPUs
	Timeout time.Duration // per zstd run, default 10 minutes
	TempDir string        // default os.TempDir()
}

// EncodeFrames implements Encoder.
func (c CLIEncoder) EncodeFrames(ctx context.Context, chunks [][]byte) ([][]byte, error) {
	out := make([][]byte, len(chunks))
	var dense []int
	for i, ch := range chunks {
		if IsZero(ch) {
			f, err := encodeGo(ch)
			if err != nil {
				return nil, err
			}
			out[i] = f
			continue
		}
		dense = append(dense, i)
	}
	if len(dense) == 0 {
		return out, nil
	}
	jobs := c.Jobs
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}
	jobs = min(jobs, len(dense))
	per := (len(dense) + jobs - 1) / jobs
	err := parallel(ctx, jobs, func(j int) error {
		part := dense[min(j*per, len(dense)):min((j+1)*per, len(dense))]
		if len(part) == 0 {
			return nil
		}
		frames, err := c.run(ctx, chunks, part)
		for k, i := range part {
			if err == nil {
				out[i] = frames[k]
			}
		}
		return err
	})
	return out, err
}

// run compresses chunks[idx...] with one zstd invocation: `zstd -c f1 f2 …` writes one frame per
// file, concatenated; the frames are split apart again by their framing.
func (c CLIEncoder) run(ctx context.Context, chunks [][]byte, idx []int) ([][]byte, error) {
	dir, err := os.MkdirTemp(c.TempDir, "fieldota-zstd-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	largest := 0
	args := []string{"-q", "-" + strconv.Itoa(or(c.Level, 19)), "--no-progress", "-c"}
	var files []string
	for k, i := range idx {
		name := filepath.Join(dir, strconv.Itoa(k))
		if err := os.WriteFile(name, chunks[i], 0o600); err != nil { // a scratch file, not state: no durability needed
			return nil, err
		}
		files = append(files, name)
		largest = max(largest, len(chunks[i]))
	}
	// The window covers a whole chunk (no more: it is the device's decoder memory).
	args = append(args, "--zstd=wlog="+strconv.Itoa(bits.Len(uint(windowFor(largest)))-1), "--")
	args = append(args, files...)
	tctx, cancel := context.WithTimeout(ctx, orDur(c.Timeout, 10*time.Minute))
	defer cancel()
	cmd := exec.CommandContext(tctx, orStr(c.Path, "zstd"), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("zstd: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	frames := make([][]byte, 0, len(idx))
	fr := NewFrameReader(bytes.NewReader(stdout.Bytes()))
	for {
		h, r, err := fr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("zstd output: %w", err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			return nil, fmt.Errorf("zstd output: %w", err)
		}
		if h.Skippable() {
			return nil, errors.New("zstd output: unexpected skippable frame")
		}
		frames = append(frames, b)
	}
	if len(frames) != len(idx) {
		return nil, fmt.Errorf("zstd wrote %d frames for %d files", len(frames), len(idx))
	}
	return frames, nil
}

func parallel(ctx context.Context, n int, fn func(i int) error) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	sem := make(chan struct{}, runtime.NumCPU())
	for i := range n {
		if err := ctx.Err(); err != nil {
			errs[i] = err
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

var zeros [64 << 10]byte

// IsZero reports whether b holds only zero bytes (memequal against a zero page: fast).
func IsZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

func or(v, d int) int {
	if v == 0 {
		return d
	}
	return v
}

func orStr(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

func orDur(v, d time.Duration) time.Duration {
	if v == 0 {
		return d
	}
	return v
}
