// Command envhook is a `command` bootloader backend for tests (slot.env_get / slot.env_set):
// `envhook get FILE` prints the environment as key=value lines; `envhook set FILE` applies the
// key=value lines read on stdin in one atomic replacement of FILE (the format of the `file`
// backend, so bootsim reads the same environment through slot.File).
//
// With FIELDOTA_ENVHOOK_KILL="k=v,k=v" it SIGKILLs its parent — the agent — right after applying
// a batch that contains all those pairs, once if FIELDOTA_ENVHOOK_MARKER names a file it creates
// first: the deterministic way to cut the agent down between an environment write and the
// journal's next step.
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"syscall"

	"github.com/fieldota/fieldota/ota/slot"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: envhook get|set FILE")
		os.Exit(2)
	}
	f := slot.File{Path: os.Args[2]}
	ctx := context.Background()
	switch os.Args[1] {
	case "get":
		env, err := f.Get(ctx)
		if err != nil {
			fail(err)
		}
		keys := make([]string, 0, len(env))
		for k := range env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Printf("%s=%s\n", k, env[k])
		}
	case "set":
		batch := slot.Env{}
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), "="); ok {
				batch[k] = v
			}
		}
		if err := sc.Err(); err != nil {
			fail(err)
		}
		if err := f.Set(ctx, batch); err != nil {
			fail(err)
		}
		maybeKillParent(batch)
	default:
		fail(fmt.Errorf("unknown verb %q", os.Args[1]))
	}
}

func maybeKillParent(batch slot.Env) {
	spec := os.Getenv("FIELDOTA_ENVHOOK_KILL")
	if spec == "" {
		return
	}
	for _, kv := range strings.Split(spec, ",") {
		k, v, _ := strings.Cut(kv, "=")
		if got, ok := batch[k]; !ok || got != v {
			return
		}
	}
	if m := os.Getenv("FIELDOTA_ENVHOOK_MARKER"); m != "" {
		fh, err := os.OpenFile(m, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return // already fired once
		}
		_ = fh.Close()
	}
	_ = syscall.Kill(os.Getppid(), syscall.SIGKILL)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "envhook:", err)
	os.Exit(1)
}
