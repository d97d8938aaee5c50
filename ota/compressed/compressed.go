// Package compressed installs a zstd-compressed payload (ota/zimage) into any sink — a temp
// file for files and binaries, the inactive slot — decompressing while it downloads: no
// compressed copy, never the payload in memory (one frame's window at most).
//
// It reads the object's full part with one ranged GET (download.Ranges: a cut continues from the
// byte reached, an expired URL is refreshed). The part is independent frames, so after a kill or
// a power cut the install resumes at the last frame boundary it made durable: the checkpoint
// holds that boundary's object and raw offsets and both SHA-256 states, written through
// ota/durable after the sink is synced. Every frame must decode to exactly its share of the
// signed raw size; a frame that would go past it is refused before the byte is written
// (DECOMPRESSION_BOMB); a frame that does not decode is DIGEST_MISMATCH; at the end the object's
// bytes and the raw bytes must match their signed digests.
package compressed

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"math/bits"
	"os"
	"path/filepath"
	"syscall"

	"github.com/klauspost/compress/zstd"

	"github.com/fieldota/fieldota/download"
	"github.com/fieldota/fieldota/ota/durable"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/zimage"
)

// Sink is where the raw bytes go (download.Sink). One that also has ReadAt is re-hashed before
// a checkpoint is trusted; a regular file is truncated to the raw size at the end.
type Sink = download.Sink

// Request describes one install. Manifest comes from the verified release statement.
type Request struct {
	Manifest zimage.Manifest
	Object   download.RangesConfig // URL, Refresh, retries…; Size and ETag are set here
	Sink     Sink

	// CheckpointPath, if set, makes the install survive a kill or a reboot (a frame boundary at
	// least every CheckpointEvery raw bytes, default every frame).
	CheckpointPath  string
	CheckpointEvery int64

	Progress func(done, total int64) // raw bytes written
	Logger   *slog.Logger
}

// Result describes a completed install.
type Result struct {
	RawSHA256   []byte
	BytesOnWire int64
	Requests    int
	Refreshes   int
	Resumed     bool
	ResumedFrom int64 // raw offset of the checkpoint resumed from
}

type checkpoint struct {
	Version   int    `json:"version"`
	Stored    string `json:"storedSha256"` // the release's identity: the signed object digest
	Raw       string `json:"rawSha256"`
	ETag      string `json:"etag"`
	Frame     int64  `json:"frame"` // frames done
	StoredOff int64  `json:"storedOffset"`
	RawOff    int64  `json:"rawOffset"`
	StoredSt  []byte `json:"storedState"`
	RawSt     []byte `json:"rawState"`
	Complete  bool   `json:"complete,omitempty"`
}

const (
	checkpointVersion = 1
	bufSize           = 256 << 10
)

// Install streams the full part of req.Manifest's object into req.Sink. When ctx ends the error
// wraps ctx.Err() and the last frame boundary reached stays checkpointed.
func Install(ctx context.Context, req Request) (Result, error) {
	m := req.Manifest
	if err := m.Validate(); err != nil {
		return Result{}, err
	}
	if req.Sink == nil {
		return Result{}, reason.Errorf(reason.Internal, "compressed install needs a sink")
	}
	log := req.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	in := &installer{req: req, m: m, log: log, buf: make([]byte, bufSize)}
	res, err := in.run(ctx)
	if errors.Is(err, download.ErrObjectChanged) && in.cp.Frame > 0 {
		// The object was replaced since the checkpoint: its digests will decide, from zero.
		log.Warn("compressed: the object changed since the checkpoint, starting again from zero", "err", err)
		if derr := in.drop(); derr != nil {
			return res, derr
		}
		in = &installer{req: req, m: m, log: log, buf: in.buf, fresh: true}
		res, err = in.run(ctx)
	}
	return res, err
}

type installer struct {
	req   Request
	m     zimage.Manifest
	log   *slog.Logger
	buf   []byte
	cp    checkpoint
	fresh bool // ignore any checkpoint
}

func (in *installer) run(ctx context.Context) (res Result, err error) {
	m := in.m
	storedH, rawH := sha256.New(), sha256.New()
	cp := checkpoint{Version: checkpointVersion, Stored: m.Stored.SHA256, Raw: m.Raw.SHA256}
	if got, ok := in.load(); ok && !in.fresh {
		if err := in.adopt(got, storedH, rawH); err != nil {
			in.log.Warn("compressed: checkpoint not usable, starting from zero", "err", err)
			if err := in.drop(); err != nil {
				return res, err
			}
			storedH, rawH = sha256.New(), sha256.New()
		} else {
			cp = got
			res.Resumed, res.ResumedFrom = cp.RawOff > 0, cp.RawOff
			in.log.Info("compressed: resuming at a frame boundary", "frame", cp.Frame, "raw", cp.RawOff, "stored", cp.StoredOff)
		}
	}
	in.cp = cp
	if cp.Complete {
		res.RawSHA256 = m.Raw.Sum()
		return res, nil
	}
	if err := checkSpace(in.req.Sink, m.Raw.Size); err != nil {
		return res, err
	}
	cfg := in.req.Object
	cfg.Size, cfg.ETag = m.Stored.Size, cp.ETag
	ranges, err := download.NewRanges(cfg)
	if err != nil {
		return res, err
	}
	defer ranges.Close()
	defer func() {
		st := ranges.Stats()
		res.BytesOnWire, res.Requests, res.Refreshes = st.BytesOnWire, st.Requests, st.Refreshes
	}()

	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(uint64(windowCap(m.FullFrameSize))), zstd.WithDecoderMaxMemory(uint64(windowCap(m.FullFrameSize))))
	if err != nil {
		return res, reason.Wrap(reason.Internal, err)
	}
	defer dec.Close()

	body := ranges.Open(ctx, cp.StoredOff, m.Full.Size-cp.StoredOff)
	defer body.Close()
	counted := &countReader{r: bufio.NewReaderSize(body, 64<<10)}
	fr := zimage.NewFrameReader(io.TeeReader(counted, storedH))
	every := max(in.req.CheckpointEvery, 1)
	lastCP := cp.RawOff
	frames := m.Frames()
	for cp.Frame < frames {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("compressed install: stopped at frame %d of %d: %w", cp.Frame, frames, err)
		}
		want := min(m.FullFrameSize, m.Raw.Size-cp.RawOff)
		if err := in.frame(ctx, fr, dec, &cp, rawH, want); err != nil {
			if ctx.Err() != nil {
				return res, fmt.Errorf("compressed install: stopped in frame %d of %d: %w", cp.Frame, frames, ctx.Err())
			}
			if c := reason.Of(err); c == reason.DigestMismatch || c == reason.DecompressionBomb || c == reason.SizeMismatch {
				_ = in.drop() // what failed verification must not be resumed from
			}
			return res, err
		}
		cp.Frame++
		cp.StoredOff += counted.n
		counted.n = 0
		cp.ETag = ranges.ETag()
		if cp.RawOff-lastCP >= every && cp.Frame < frames {
			if err := in.save(&cp, storedH, rawH, true); err != nil {
				return res, err
			}
			lastCP = cp.RawOff
		}
	}
	if cp.StoredOff != m.Full.Size {
		_ = in.drop()
		return res, reason.Errorf(reason.SizeMismatch, "compressed install: the %d frames take %d bytes, the signed full part is %d", frames, cp.StoredOff, m.Full.Size)
	}
	if got := storedH.Sum(nil); subtle.ConstantTimeCompare(got, m.Full.Sum()) != 1 {
		_ = in.drop()
		return res, reason.Errorf(reason.DigestMismatch, "compressed install: object bytes sha256 %x, signed %s", got, m.Full.SHA256)
	}
	got := rawH.Sum(nil)
	if subtle.ConstantTimeCompare(got, m.Raw.Sum()) != 1 {
		_ = in.drop()
		return res, reason.Errorf(reason.DigestMismatch, "compressed install: decompressed sha256 %x, signed %s", got, m.Raw.SHA256)
	}
	if t, ok := in.req.Sink.(interface {
		Truncate(int64) error
		Stat() (os.FileInfo, error)
	}); ok {
		if fi, err := t.Stat(); err == nil && fi.Mode().IsRegular() {
			if err := t.Truncate(m.Raw.Size); err != nil {
				return res, reason.Errorf(reason.InstallFailed, "compressed install: truncate: %w", err)
			}
		}
	}
	cp.Complete = true
	if err := in.save(&cp, storedH, rawH, true); err != nil {
		return res, err
	}
	res.RawSHA256 = got
	in.log.Info("compressed: complete", "raw", m.Raw.Size, "stored", m.Full.Size)
	return res, nil
}

// frame decodes one frame into the sink, refusing output past its share of the raw size.
func (in *installer) frame(ctx context.Context, fr *zimage.FrameReader, dec *zstd.Decoder, cp *checkpoint, rawH hash.Hash, want int64) error {
	h, body, err := fr.Next()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, zimage.ErrFrame) || errors.Is(err, io.EOF) {
			return reason.Errorf(reason.DigestMismatch, "frame %d at object offset %d: %w", cp.Frame, cp.StoredOff, err)
		}
		return err // the download's own failure, with its reason
	}
	switch {
	case h.Skippable():
		return reason.Errorf(reason.DigestMismatch, "frame %d: a skippable frame inside the full part", cp.Frame)
	case h.HasDictionary:
		return reason.Errorf(reason.DigestMismatch, "frame %d: needs a dictionary", cp.Frame)
	case h.ContentSize > want:
		return reason.Errorf(reason.DecompressionBomb, "frame %d declares %d raw bytes, %d are left of the signed %d", cp.Frame, h.ContentSize, want, in.m.Raw.Size)
	case h.ContentSize != want:
		return reason.Errorf(reason.SizeMismatch, "frame %d declares %d raw bytes, want %d", cp.Frame, h.ContentSize, want)
	case h.WindowSize > windowCap(in.m.FullFrameSize):
		return reason.Errorf(reason.DigestMismatch, "frame %d asks for a %d-byte window, the frames are %d bytes", cp.Frame, h.WindowSize, in.m.FullFrameSize)
	}
	if err := dec.Reset(body); err != nil {
		return reason.Errorf(reason.DigestMismatch, "frame %d: %w", cp.Frame, err)
	}
	end := cp.RawOff + want
	for {
		n, rerr := dec.Read(in.buf)
		if n > 0 {
			if cp.RawOff+int64(n) > end {
				return reason.Errorf(reason.DecompressionBomb, "frame %d decompresses past its %d bytes (the signed raw size is %d): refused before writing them", cp.Frame, want, in.m.Raw.Size)
			}
			if _, err := in.req.Sink.WriteAt(in.buf[:n], cp.RawOff); err != nil {
				return reason.Errorf(reason.InstallFailed, "writing raw bytes at %d: %w", cp.RawOff, err)
			}
			rawH.Write(in.buf[:n])
			cp.RawOff += int64(n)
			if in.req.Progress != nil {
				in.req.Progress(cp.RawOff, in.m.Raw.Size)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var re *reason.Error
			if errors.As(rerr, &re) { // the download failed underneath the decoder
				return rerr
			}
			if errors.Is(rerr, zstd.ErrFrameSizeExceeded) || errors.Is(rerr, zstd.ErrDecoderSizeExceeded) {
				return reason.Errorf(reason.DecompressionBomb, "frame %d decompresses past the %d bytes it declares (its share of the signed raw size): %w", cp.Frame, want, rerr)
			}
			return reason.Errorf(reason.DigestMismatch, "frame %d at object offset %d does not decode: %w", cp.Frame, cp.StoredOff, rerr)
		}
	}
	// The decoder may stop before the frame's checksum: the checkpoint's object offset and hash
	// must sit exactly at the frame's end.
	if _, err := io.Copy(io.Discard, body); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	if cp.RawOff != end {
		return reason.Errorf(reason.SizeMismatch, "frame %d gave %d raw bytes, it declares %d", cp.Frame, want-(end-cp.RawOff), want)
	}
	return nil
}

// windowCap is the decoder memory a frame may ask for: its raw size, to the next power of two.
func windowCap(frame int64) int64 { return 1 << bits.Len64(uint64(frame-1)) }

func (in *installer) load() (checkpoint, bool) {
	var cp checkpoint
	if in.req.CheckpointPath == "" {
		return cp, false
	}
	b, err := readSmall(in.req.CheckpointPath)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			in.log.Warn("compressed: unreadable checkpoint ignored", "path", in.req.CheckpointPath, "err", err)
			return cp, true
		}
		return cp, false
	}
	if err := json.Unmarshal(b, &cp); err != nil {
		in.log.Warn("compressed: unreadable checkpoint ignored", "path", in.req.CheckpointPath, "err", err)
		return checkpoint{}, true
	}
	return cp, true
}

// adopt checks a checkpoint (hostile input: the state directory may have been edited) against
// the signed manifest and the sink, and loads its hash states.
func (in *installer) adopt(cp checkpoint, storedH, rawH hash.Hash) error {
	m := in.m
	switch {
	case cp.Version != checkpointVersion:
		return fmt.Errorf("checkpoint version %d", cp.Version)
	case cp.Stored != m.Stored.SHA256 || cp.Raw != m.Raw.SHA256:
		return errors.New("checkpoint is for another release")
	case cp.Frame < 0 || cp.Frame > m.Frames() || cp.RawOff != min(cp.Frame*m.FullFrameSize, m.Raw.Size):
		return fmt.Errorf("checkpoint frame %d does not sit at raw offset %d", cp.Frame, cp.RawOff)
	case cp.StoredOff < 0 || cp.StoredOff > m.Full.Size || (cp.Frame > 0) != (cp.StoredOff > 0):
		return fmt.Errorf("checkpoint object offset %d out of range", cp.StoredOff)
	case cp.Complete && cp.Frame != m.Frames():
		return errors.New("checkpoint says complete before the last frame")
	}
	if err := storedH.(encoding.BinaryUnmarshaler).UnmarshalBinary(cp.StoredSt); err != nil {
		return fmt.Errorf("checkpoint object hash: %w", err)
	}
	if err := rawH.(encoding.BinaryUnmarshaler).UnmarshalBinary(cp.RawSt); err != nil {
		return fmt.Errorf("checkpoint raw hash: %w", err)
	}
	if cp.Complete {
		if s := rawH.Sum(nil); subtle.ConstantTimeCompare(s, m.Raw.Sum()) != 1 {
			return errors.New("checkpoint says complete but its raw hash is not the signed one")
		}
	}
	// The raw bytes already in the sink must be the ones the hash state covers.
	if ra, ok := in.req.Sink.(io.ReaderAt); ok {
		h := sha256.New()
		n, err := io.CopyBuffer(h, io.NewSectionReader(ra, 0, cp.RawOff), in.buf)
		if err != nil || n != cp.RawOff {
			return fmt.Errorf("sink holds %d of the checkpointed %d bytes: %v", n, cp.RawOff, err)
		}
		got, _ := h.(encoding.BinaryMarshaler).MarshalBinary()
		if !bytes.Equal(got, cp.RawSt) {
			return errors.New("sink content does not match the checkpoint's hash")
		}
	}
	return nil
}

func (in *installer) save(cp *checkpoint, storedH, rawH hash.Hash, sync bool) error {
	if in.req.CheckpointPath == "" {
		return nil
	}
	if sync {
		if err := in.req.Sink.Sync(); err != nil {
			return reason.Errorf(reason.InstallFailed, "compressed install: sync sink: %w", err)
		}
	}
	var err error
	if cp.StoredSt, err = storedH.(encoding.BinaryMarshaler).MarshalBinary(); err != nil {
		return reason.Wrap(reason.Internal, err)
	}
	if cp.RawSt, err = rawH.(encoding.BinaryMarshaler).MarshalBinary(); err != nil {
		return reason.Wrap(reason.Internal, err)
	}
	b, err := json.Marshal(cp)
	if err != nil {
		return reason.Wrap(reason.Internal, err)
	}
	if err := durable.WriteFile(in.req.CheckpointPath, b, 0o600); err != nil {
		return reason.Errorf(reason.InstallFailed, "compressed install: checkpoint: %w", err)
	}
	return nil
}

func (in *installer) drop() error {
	if in.req.CheckpointPath == "" {
		return nil
	}
	if err := durable.Remove(in.req.CheckpointPath); err != nil {
		return reason.Errorf(reason.InstallFailed, "compressed install: drop checkpoint: %w", err)
	}
	return nil
}

// checkSpace refuses, before any request, a file sink whose filesystem cannot hold the rest of
// the raw image (a slot device was sized by ota/slot.OpenTarget).
func checkSpace(sink Sink, total int64) error {
	named, ok := sink.(interface {
		Name() string
		Stat() (os.FileInfo, error)
	})
	if !ok {
		return nil
	}
	fi, err := named.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	var st syscall.Statfs_t
	dir := filepath.Dir(named.Name())
	if err := syscall.Statfs(dir, &st); err != nil {
		return reason.Errorf(reason.InstallFailed, "free space of %s: %w", dir, err)
	}
	const margin = 1 << 20 // checkpoints and their temp files
	need := total - fi.Size()
	if free := int64(st.Bavail) * int64(st.Bsize); free < need+margin {
		return reason.Errorf(reason.InsufficientSpace, "the image needs %d more bytes, %s has %d free", need, dir, free)
	}
	return nil
}

// RemoveCheckpoint deletes an install's checkpoint once the caller has moved on.
func RemoveCheckpoint(path string) error { return durable.Remove(path) }

func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 64<<10))
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
