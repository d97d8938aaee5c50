package download

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/fieldota/fieldota/ota/durable"
)

// checkpoint is the durable record of a download in progress. It is written only after the sink
// is synced, so its offset never runs ahead of the bytes that survive a power cut.
type checkpoint struct {
	Version  int    `json:"version"`
	Object   string `json:"object"` // the URL without its query
	Size     int64  `json:"size"`
	ETag     string `json:"etag"`
	Offset   int64  `json:"offset"`
	State    []byte `json:"sha256State"`              // encoding.BinaryMarshaler of the SHA-256 at Offset
	Expected string `json:"expectedSha256,omitempty"` // hex, when the request named a digest
}

const (
	checkpointVersion = 1
	maxCheckpointSize = 64 << 10
	// A slow link cut every few seconds never reached a byte threshold alone (8 MiB at 500 KB/s
	// is 16 s): the time bound makes every kill cost at most about a second of the link.
	defaultCheckpointInterval = time.Second
)

// checkpointDue tells whether the bytes or the time since the last checkpoint call for one.
func (d *downloader) checkpointDue(st *state) bool {
	now := d.clock.Now()
	if st.lastAt.IsZero() {
		st.lastAt = now // the first chunk of this run starts the clock
	}
	return st.offset-st.lastCP >= d.req.CheckpointEvery || now.Sub(st.lastAt) >= d.req.CheckpointInterval
}

// CheckpointOffset returns the offset a checkpoint records (0 when there is none). It is a
// measure of durable progress for callers (the loop breaker), not a proof: the downloader
// still validates the checkpoint before resuming from it.
func CheckpointOffset(path string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	var cp checkpoint
	if b, err := io.ReadAll(io.LimitReader(f, maxCheckpointSize)); err != nil || json.Unmarshal(b, &cp) != nil || cp.Offset < 0 {
		return 0
	}
	return cp.Offset
}

// RemoveCheckpoint deletes a download's checkpoint once the caller no longer needs to resume it.
func RemoveCheckpoint(path string) error { return durable.Remove(path) }

func (d *downloader) loadCheckpoint() (checkpoint, bool) {
	var cp checkpoint
	if d.req.CheckpointPath == "" {
		return cp, false
	}
	f, err := os.Open(d.req.CheckpointPath)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			d.log.Warn("download: cannot read checkpoint", "path", d.req.CheckpointPath, "err", err)
		}
		return cp, false
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCheckpointSize))
	if err == nil {
		err = json.Unmarshal(b, &cp)
	}
	if err != nil {
		d.log.Warn("download: unreadable checkpoint ignored", "path", d.req.CheckpointPath, "err", err)
		return checkpoint{}, true // present but bad: adopt will refuse it and it gets dropped
	}
	return cp, true
}

// adopt validates a checkpoint against the request and the sink and loads it into st.
func (d *downloader) adopt(cp checkpoint, st *state) error {
	want := ""
	if d.req.SHA256 != nil {
		want = hex.EncodeToString(d.req.SHA256)
	}
	switch {
	case cp.Version != checkpointVersion:
		return fmt.Errorf("checkpoint version %d", cp.Version)
	case cp.Object != d.obj:
		return fmt.Errorf("checkpoint is for %s", cp.Object)
	case cp.Size != d.req.Size:
		return fmt.Errorf("checkpoint size %d, expected %d", cp.Size, d.req.Size)
	case cp.Expected != "" && want != "" && cp.Expected != want:
		return errors.New("checkpoint was for another expected digest")
	case cp.Offset < 0 || cp.Offset > cp.Size:
		return fmt.Errorf("checkpoint offset %d out of range", cp.Offset)
	case cp.Offset > 0 && strongETag(cp.ETag) == "":
		return errors.New("checkpoint has no strong ETag")
	}
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(cp.State); err != nil {
		return fmt.Errorf("checkpoint hash state: %w", err)
	}
	if err := d.verifySink(cp.Offset, cp.State); err != nil {
		return err
	}
	st.offset, st.etag, st.h, st.lastCP = cp.Offset, cp.ETag, h, cp.Offset
	return nil
}

// verifySink re-hashes the sink's first offset bytes when it can be read back, and otherwise
// checks that it is at least that long, so a temp file that was truncated or altered while we were
// down is not trusted.
func (d *downloader) verifySink(offset int64, state []byte) error {
	switch s := d.req.Sink.(type) {
	case io.ReaderAt:
		h := sha256.New()
		if d.buf == nil {
			d.buf = make([]byte, bufSize)
		}
		n, err := io.CopyBuffer(h, io.NewSectionReader(s, 0, offset), d.buf)
		if err != nil || n != offset {
			return fmt.Errorf("sink holds %d of the checkpointed %d bytes: %v", n, offset, err)
		}
		got, err := marshalState(h)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, state) {
			return errors.New("sink content does not match the checkpoint's hash")
		}
	case io.Seeker:
		end, err := s.Seek(0, io.SeekEnd)
		if err != nil {
			return fmt.Errorf("sink length: %w", err)
		}
		if end < offset {
			return fmt.Errorf("sink holds %d of the checkpointed %d bytes", end, offset)
		}
	}
	return nil
}

// checkpoint syncs the sink and records st, unless nothing was gained since the last one.
func (d *downloader) checkpoint(st *state) error {
	if d.req.CheckpointPath == "" || st.offset == st.lastCP || st.etag == "" {
		return nil
	}
	if err := d.req.Sink.Sync(); err != nil {
		return fmt.Errorf("sync sink: %w", err)
	}
	return d.writeCheckpoint(st)
}

func (d *downloader) writeCheckpoint(st *state) error {
	if d.req.CheckpointPath == "" {
		return nil
	}
	state, err := marshalState(st.h)
	if err != nil {
		return err
	}
	cp := checkpoint{Version: checkpointVersion, Object: d.obj, Size: d.req.Size, ETag: st.etag, Offset: st.offset, State: state}
	if d.req.SHA256 != nil {
		cp.Expected = hex.EncodeToString(d.req.SHA256)
	}
	b, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	if err := durable.WriteFile(d.req.CheckpointPath, b, 0o600); err != nil {
		return err
	}
	st.lastCP, st.lastAt = st.offset, d.clock.Now()
	return nil
}

func (d *downloader) dropCheckpoint() error {
	if d.req.CheckpointPath == "" {
		return nil
	}
	if err := durable.Remove(d.req.CheckpointPath); err != nil {
		return fmt.Errorf("drop checkpoint: %w", err)
	}
	return nil
}

// SeekSink adapts a sink that can only Write and Seek (a character device, a stream wrapper) to
// Sink. Each WriteAt seeks first, so it suits the downloader's strictly sequential writes.
func SeekSink(w interface {
	io.WriteSeeker
	Sync() error
}) Sink {
	return seekSink{w}
}

type seekSink struct {
	w interface {
		io.WriteSeeker
		Sync() error
	}
}

func (s seekSink) WriteAt(p []byte, off int64) (int, error) {
	if _, err := s.w.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	return s.w.Write(p)
}

func (s seekSink) Sync() error { return s.w.Sync() }
