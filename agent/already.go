package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/fieldota/fieldota/verify"
)

// alreadyRuns tells whether the release is exactly what runs at its place: the installed record
// holds the same signed version and per-file digests, and the bytes on the disk are still those
// (a file edited or removed since, a slot the bootloader left, is not "installed"). A signed
// force skips this; nothing else can.
func (a *Agent) alreadyRuns(ctx context.Context, jb *job) bool {
	if jb.rel.Force || !isInstalled(a.cfg.StateDir, jb.key, jb.rel) {
		return false
	}
	fl, err := a.flowOf(string(jb.rel.Target))
	if err != nil || fl.runs == nil {
		return false
	}
	return fl.runs(ctx, jb.rel)
}

// sameBytes tells whether path holds exactly size bytes hashing to sum (its first size bytes
// for a block device). It only reads, never follows a final symlink, never blocks on a FIFO,
// and reads at most size+1 bytes: the place may be one a user can write.
func sameBytes(ctx context.Context, path string, size int64, sum []byte) bool {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	device := fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0
	if !fi.Mode().IsRegular() && !device {
		return false
	}
	limit := size + 1
	if device {
		limit = size
	}
	// In chunks, so that a shutdown does not wait for a whole slot image to be read.
	h := sha256.New()
	var n int64
	for n < limit {
		if ctx.Err() != nil {
			return false
		}
		m, err := io.CopyN(h, f, min(limit-n, 4<<20))
		n += m
		if err == io.EOF {
			break
		}
		if err != nil {
			return false
		}
	}
	return n == size && bytes.Equal(h.Sum(nil), sum)
}

// filesRun: every file of the release is in its working directory, as signed.
func (a *Agent) filesRun(ctx context.Context, r *verify.Release) bool {
	dir, err := a.filesDir(r)
	if err != nil {
		return false
	}
	for _, f := range r.Files {
		if !sameBytes(ctx, filepath.Join(dir.Path, f.Name), f.RawSize(), f.RawSHA256()) {
			return false
		}
	}
	return true
}

// binaryRuns: the managed binary is the release's.
func (a *Agent) binaryRuns(ctx context.Context, r *verify.Release) bool {
	target, _, err := a.swapTarget()
	return err == nil && len(r.Files) == 1 && sameBytes(ctx, target, r.Files[0].RawSize(), r.Files[0].RawSHA256())
}
