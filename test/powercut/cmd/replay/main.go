// Command replay reads a write log recorded by the power-loss tests (QEMU blklogwrites, the
// dm-log-writes format) and rebuilds, judges or exports the disk at its power-cut points;
// docs/power-loss.md.
//
//	replay log LOG                       list the entries and the intervals between flushes
//	replay judge [flags] DIR             judge every point of the recording in DIR offline
//	replay disk [flags] DIR POINT OUT    write the disk at the point named POINT to OUT
//
// DIR is a recording directory (recording.json, base.img, writes.log), kept by the device tests
// with FIELDOTA_DEVICE_KEEP=1 or after a failure. POINT is a name as the verdict prints it
// (flush#812, between#0..1{0,1(torn:[1])}seed=14); the flags must be those of the run that
// printed it.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/fieldota/fieldota/test/powercut/judge"
	"github.com/fieldota/fieldota/test/powercut/replay"
	"github.com/fieldota/fieldota/test/powercut/wlog"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "replay:", err)
		os.Exit(1)
	}
}

func usage() error {
	return fmt.Errorf("usage: replay log LOG | replay judge [flags] DIR | replay disk [flags] DIR POINT OUT")
}

func run(args []string) error {
	if len(args) == 0 {
		return usage()
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	var o replay.Options
	fs.Uint64Var(&o.Seed, "seed", 14, "seed of the in-between samples")
	fs.IntVar(&o.Exhaustive, "exhaustive", 10, "intervals with at most this many writes get every subset")
	fs.IntVar(&o.PerInterval, "per-interval", 32, "samples in each bigger interval")
	fs.IntVar(&o.Tears, "tears", 2, "random torn-write samples per interval")
	fs.BoolVar(&o.Halves, "halves", true, "tear every multi-sector write in its middle, both ways")
	bootFsck := fs.Bool("boot-fsck", true, "the board checks its data partition before mounting it (slot-init)")
	classes := fs.Bool("classes", false, "print every class of states")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	rest := fs.Args()
	switch args[0] {
	case "log":
		if len(rest) != 1 {
			return usage()
		}
		return listLog(rest[0])
	case "judge":
		if len(rest) != 1 {
			return usage()
		}
		rec, base, l, err := load(rest[0], *bootFsck)
		if err != nil {
			return err
		}
		work, err := os.MkdirTemp("", "replay-judge-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(work)
		sum, err := judge.Run(rec, base, l, replay.NewPlan(l, o), o.Seed, work)
		if err != nil {
			return err
		}
		sum.Report(os.Stdout, true, *classes)
		if len(sum.Failures) > 0 {
			return fmt.Errorf("%d points fail", len(sum.Failures))
		}
		return nil
	case "disk":
		if len(rest) != 3 {
			return usage()
		}
		rec, base, l, err := load(rest[0], *bootFsck)
		if err != nil {
			return err
		}
		for _, p := range replay.NewPlan(l, o).Points {
			if p.Name() != rest[1] {
				continue
			}
			d := replay.NewDisk(base, l, rec.Layout.Regions())
			if _, err := d.At(p); err != nil {
				return err
			}
			return os.WriteFile(rest[2], d.Buf, 0o644)
		}
		return fmt.Errorf("no point %q in the plan of these flags", rest[1])
	}
	return usage()
}

func load(dir string, bootFsck bool) (*judge.Recording, []byte, *wlog.Log, error) {
	m, err := judge.LoadManifest(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	rec, err := m.Recording(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	rec.Layout.BootFsck = bootFsck
	base, err := os.ReadFile(judge.Path(dir, m.Base))
	if err != nil {
		return nil, nil, nil, err
	}
	l, err := wlog.Open(judge.Path(dir, m.Log), int64(len(base)))
	if err != nil {
		return nil, nil, nil, err
	}
	judge.Bind(rec.Events, l)
	return rec, base, l, nil
}

func listLog(path string) error {
	l, err := wlog.Open(path, 0)
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Printf("%s: sector size %d, %d entries (%d counted by the superblock)\n", filepath.Base(path), l.SectorSize, len(l.Entries), l.Counted)
	for _, e := range l.Entries {
		fmt.Println(e)
	}
	ivs := replay.Intervals(l)
	hist := map[int]int{}
	for _, iv := range ivs {
		hist[len(iv.Writes)]++
	}
	fmt.Printf("%d intervals between flushes; writes per interval: %v\n", len(ivs), hist)
	return nil
}
