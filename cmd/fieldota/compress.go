package main

// compress.go: --compress and --delta for `fieldota job` and `fieldota release`: each file is
// stored as one zstd object (ota/zimage, docs/delta-updates.md) whose manifest the release
// statement signs beside the object's own size and digest.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/fieldota/fieldota/ota/durable"
	"github.com/fieldota/fieldota/ota/zimage"
)

// compressFlags say how the release's files are stored.
type compressFlags struct {
	compress   string
	delta      bool
	objectsDir string
}

func (c *compressFlags) add(cmd *cobra.Command, objectsHelp string) {
	f := cmd.Flags()
	f.StringVar(&c.compress, "compress", "", "store each file as a zstd object (zstd): devices decompress it while downloading; the document's URL must serve the object")
	f.BoolVar(&c.delta, "delta", false, "target slot: the object also carries a block index and small frames, so devices fetch only the blocks they lack (implies --compress zstd)")
	f.StringVar(&c.objectsDir, "objects-dir", "", objectsHelp)
}

func (c compressFlags) on() bool { return c.compress != "" || c.delta }

// encoder is the reference zstd at level 19 when it is installed (Debian's zstd package), the
// pure-Go encoder otherwise; which one is said on w.
func encoder(w io.Writer) zimage.Encoder {
	if p, err := exec.LookPath("zstd"); err == nil {
		fmt.Fprintf(w, "compressing with %s -19\n", p)
		return zimage.CLIEncoder{Path: p, Level: 19}
	}
	fmt.Fprintln(w, "zstd not found: compressing with the pure-Go encoder (objects about 10 % larger than zstd -19; install Debian's zstd package)")
	return zimage.GoEncoder{}
}

// prepare returns the release's files as they are stored: the files themselves, or with
// compression the objects written to dir (default beside each file, as FILE.zst), each with the
// manifest to sign. Progress and the encoder used are reported on w.
func (c compressFlags) prepare(ctx context.Context, w io.Writer, paths []string, target, dir string) ([]releaseFile, error) {
	if !c.on() {
		return digestFiles(paths)
	}
	if c.compress != "" && c.compress != zimage.CompressionZstd {
		return nil, usageErr(fmt.Errorf("--compress %q: only zstd", c.compress))
	}
	if c.delta && target != "slot" {
		return nil, usageErr(errors.New("--delta is for slot images (--target slot): files and binaries are compressed only"))
	}
	enc := encoder(w)
	var out []releaseFile
	for _, p := range paths {
		obj := p + ".zst"
		if dir != "" {
			obj = filepath.Join(dir, filepath.Base(p)+".zst")
		}
		m, err := buildObject(ctx, p, obj, zimage.Options{Delta: c.delta, Encoder: enc})
		if err != nil {
			return nil, err
		}
		desc := fmt.Sprintf("%s: %d bytes as a %d-byte object (full part %d bytes, %d frames of %d)", obj, m.Raw.Size, m.Stored.Size, m.Full.Size, m.Frames(), m.FullFrameSize)
		if d := m.Delta; d != nil {
			desc += fmt.Sprintf("; delta: %d-byte blocks in %d-byte frames, index %d bytes", d.BlockSize, d.FrameSize, d.Index.Size)
		}
		fmt.Fprintln(w, desc)
		mm := m
		out = append(out, releaseFile{path: obj, name: filepath.Base(p), size: m.Stored.Size, digest: m.Stored.Sum(), manifest: &mm})
	}
	return out, nil
}

// buildObject writes the object of file src to dst (whole or not at all) and returns its manifest.
func buildObject(ctx context.Context, src, dst string, opt zimage.Options) (zimage.Manifest, error) {
	f, err := os.Open(src)
	if err != nil {
		return zimage.Manifest{}, ioErr(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return zimage.Manifest{}, ioErr(err)
	}
	var m zimage.Manifest
	err = durable.Write(dst, 0o644, func(w io.Writer) error {
		var err error
		m, err = zimage.Build(ctx, f, fi.Size(), w, opt)
		return err
	})
	if err != nil {
		return zimage.Manifest{}, ioErr(fmt.Errorf("%s: %w", src, err))
	}
	return m, nil
}
