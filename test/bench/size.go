package main

// size.go: the agent binary's stripped size and what each module costs in it.

import (
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// sizeReport is the agent's stripped size and the bytes of its symbols per module.
type sizeReport struct {
	stripped int64
	modules  []moduleCost
	symbols  int64 // all text, rodata and data symbols
	// sigstore is what the stripped agent grows by when it links sigstore's signature and dsse
	// packages again (a blank import added with -overlay): what verify through sigstore cost.
	sigstore int64
	// http2 is what the stripped agent grows by when built without nethttpomithttp2.
	http2 int64
}

type moduleCost struct {
	module string
	bytes  int64
}

const agentPkg = "github.com/fieldota/fieldota/cmd/fieldota-agent"

// agentTags are the tags `make build` gives the agent (AGENT_TAGS in the Makefile).
const agentTags = "nethttpomithttp2"

func goBuild(ctx context.Context, out string, strip bool, tags string, extra ...string) (int64, error) {
	args := []string{"build", "-trimpath", "-tags", tags, "-o", out}
	if strip {
		args = append(args, "-ldflags", "-s -w")
	}
	args = append(append(args, extra...), agentPkg)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	fi, err := os.Stat(out)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// agentSize builds the agent as `make build` does and attributes the symbols of an unstripped
// build of the same code to the modules their packages belong to.
func agentSize(dir string) (sizeReport, error) {
	var r sizeReport
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var err error
	if r.stripped, err = goBuild(ctx, filepath.Join(dir, "agent-stripped"), true, agentTags); err != nil {
		return r, err
	}
	full := filepath.Join(dir, "agent-full")
	if _, err := goBuild(ctx, full, false, agentTags); err != nil {
		return r, err
	}
	// package → module, for every package the agent links
	list, err := exec.CommandContext(ctx, "go", "list", "-deps", "-f", "{{.ImportPath}}\t{{with .Module}}{{.Path}}{{end}}", agentPkg).Output()
	if err != nil {
		return r, fmt.Errorf("go list: %w", err)
	}
	modOf := map[string]string{}
	var pkgs []string
	for line := range strings.SplitSeq(strings.TrimSpace(string(list)), "\n") {
		pkg, mod, _ := strings.Cut(line, "\t")
		if mod == "" {
			mod = "standard library"
		}
		modOf[pkg] = mod
		pkgs = append(pkgs, pkg)
	}
	sort.Slice(pkgs, func(i, j int) bool { return len(pkgs[i]) > len(pkgs[j]) }) // longest prefix first
	ef, err := elf.Open(full)
	if err != nil {
		return r, err
	}
	syms, err := ef.Symbols()
	ef.Close()
	if err != nil {
		return r, err
	}
	cost := map[string]int64{}
	for _, sym := range syms {
		if sym.Size == 0 || int(sym.Section) <= 0 || int(sym.Section) >= len(ef.Sections) {
			continue
		}
		if ef.Sections[sym.Section].Type == elf.SHT_NOBITS {
			continue // .bss and .noptrbss take no room in the file
		}
		name := sym.Name
		for _, pre := range []string{"type:.eq.", "type:.hash.", "type:", "go:itab.", "go:info.", "go:string.", "*", "("} {
			name = strings.TrimPrefix(name, pre)
		}
		mod := "unattributed (runtime tables, string data)"
		for _, p := range pkgs {
			if strings.HasPrefix(name, p+".") {
				mod = modOf[p]
				break
			}
		}
		cost[mod] += int64(sym.Size)
		r.symbols += int64(sym.Size)
	}
	for m, n := range cost {
		r.modules = append(r.modules, moduleCost{m, n})
	}
	sort.Slice(r.modules, func(i, j int) bool { return r.modules[i].bytes > r.modules[j].bytes })

	// What linking sigstore again would cost: the same build plus a blank import of the two
	// sigstore packages verify used before, added through -overlay (the tree is not touched).
	probe := filepath.Join(dir, "sigstore_probe.go")
	if err := os.WriteFile(probe, []byte("package main\n\nimport (\n\t_ \"github.com/sigstore/sigstore/pkg/signature\"\n\t_ \"github.com/sigstore/sigstore/pkg/signature/dsse\"\n)\n"), 0o644); err != nil {
		return r, err
	}
	pkgDir, err := exec.CommandContext(ctx, "go", "list", "-f", "{{.Dir}}", agentPkg).Output()
	if err != nil {
		return r, err
	}
	ov, _ := json.Marshal(map[string]map[string]string{"Replace": {filepath.Join(strings.TrimSpace(string(pkgDir)), "zz_sigstore_probe.go"): probe}})
	overlay := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(overlay, ov, 0o644); err != nil {
		return r, err
	}
	with, err := goBuild(ctx, filepath.Join(dir, "agent-sigstore"), true, agentTags, "-overlay", overlay)
	if err != nil {
		return r, err
	}
	r.sigstore = with - r.stripped
	withHTTP2, err := goBuild(ctx, filepath.Join(dir, "agent-http2"), true, "")
	if err != nil {
		return r, err
	}
	r.http2 = withHTTP2 - r.stripped
	return r, nil
}

func (r sizeReport) render() string {
	var w strings.Builder
	w.WriteString("## Agent binary\n\n")
	fmt.Fprintf(&w, "`fieldota-agent` built as `make build` builds it (`CGO_ENABLED=0 go build -trimpath -tags nethttpomithttp2 -ldflags '-s -w'`): **%d bytes (%.2f MiB)** stripped.\n\n",
		r.stripped, float64(r.stripped)/(1<<20))
	w.WriteString("Cost of each module, as the bytes of its symbols (functions, read-only data, data) in an unstripped build of the same code:\n\n")
	w.WriteString("| module | bytes | share of symbols |\n|---|---|---|\n")
	for _, m := range r.modules {
		fmt.Fprintf(&w, "| %s | %d | %.1f %% |\n", m.module, m.bytes, 100*float64(m.bytes)/float64(r.symbols))
	}
	fmt.Fprintf(&w, "\nNot linked any more: `github.com/sigstore/sigstore/pkg/signature` and `…/dsse` (with them the protobuf runtime, genproto,\n"+
		"sigstore/protobuf-specs, go-containerregistry, youmark/pkcs8, x/term): **+%d bytes (%.2f MiB)** stripped if linked again.\n"+
		"The device verifies through `internal/sigsubset`, the verify-only subset of that API on the standard library and\n"+
		"go-securesystemslib/dsse; signing (the `fieldota` CLI) still uses sigstore. `github.com/gorilla/websocket` comes with\n"+
		"paho, which imports it unconditionally for ws:// brokers (unused here; only a fork of paho could drop it: 155,648 bytes\n"+
		"stripped, measured once with a patched copy of paho v1.5.1).\n\n", r.sigstore, float64(r.sigstore)/(1<<20))
	fmt.Fprintf(&w, "Left out by the `nethttpomithttp2` tag: net/http's bundled HTTP/2 (S3 serves presigned downloads over HTTP/1.1 and\n"+
		"paho dials MQTT itself, so no peer of the agent would speak it): **+%d bytes** stripped when built without the tag.\n\n", r.http2)
	w.WriteString("Method: the ELF symbol table of the unstripped build (what `go tool nm -size` lists); each sized symbol in a\n" +
		"section that occupies the file (not .bss/.noptrbss) is attributed to the\n" +
		"longest import path of the agent's packages (`go list -deps`) its name starts with (after `type:`, `go:itab.` and\n" +
		"similar prefixes), then to that package's module. The stripped file also holds tables no symbol names (pclntab,\n" +
		"type links, ELF headers), so the rows sum to less than the file. The sigstore row builds the agent again with\n" +
		"`-overlay` adding `import _` of both packages and takes the difference in stripped size; the HTTP/2 row builds it\n" +
		"without the tag. Command: `make bench`\n" +
		"(this section: `agentSize` in test/bench/size.go).\n\n")
	return w.String()
}
