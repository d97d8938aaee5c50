package main

// statement.go: the flags that say what a release is — everything the signed release statement
// binds (docs/signing.md) — shared by `fieldota job` and `fieldota sign`.

import (
	"crypto"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fieldota/fieldota/ota/names"
	"github.com/fieldota/fieldota/ota/zimage"
	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
	"github.com/spf13/cobra"
)

// releaseFlags are the install intent the release statement signs.
type releaseFlags struct {
	target         string
	version        string
	compatible     []string
	allowDowngrade bool
	force          bool
	expires        string
	workDir        string
	packageName    string
	autoStart      bool
	rerunnable     bool
	mode           string
	binary         string
	pkg            string
}

func (r *releaseFlags) add(cmd *cobra.Command, versionHelp string) {
	f := cmd.Flags()
	f.StringVar(&r.target, "target", "files", "installer: files, slot or binary")
	f.StringVar(&r.version, "version", "", versionHelp)
	f.StringSliceVar(&r.compatible, "compatible", nil, "device compatibility names (signed)")
	f.BoolVar(&r.allowDowngrade, "allow-downgrade", false, "sign allowDowngrade=true: devices accept this older version")
	f.BoolVar(&r.force, "force", false, "sign force=true: devices reinstall this release even when it is already what runs")
	f.StringVar(&r.expires, "expires", "", "devices refuse the release after this time: RFC 3339 (2027-06-01T00:00:00Z) or a duration from now (720h)")
	f.StringVar(&r.workDir, "working-directory", "", "target files: directory on the device (under its allowed roots)")
	f.StringVar(&r.packageName, "package-name", "", "target files: with --auto-start, the file to run")
	f.BoolVar(&r.autoStart, "auto-start", false, "target files: run --package-name after placing the files")
	f.BoolVar(&r.rerunnable, "auto-start-rerunnable", false, "target files: the program may run again if an agent restart lost its outcome")
	f.StringVar(&r.mode, "mode", "", "target files: permission bits of every file, e.g. 0755 (default 0644, 0755 for the program)")
	f.StringVar(&r.binary, "binary", "", "target binary: the managed binary's name on the device (its swap.name)")
	f.StringVar(&r.pkg, "package", "", "the Software Package Catalog name devices report this release under in their $package shadow (signed)")
}

// releaseFile is one file of a release, as signed: the file itself, or its compressed object
// (compress.go) with the manifest the statement signs.
type releaseFile struct {
	path     string // what is uploaded
	name     string // what is installed
	size     int64
	digest   []byte
	manifest *zimage.Manifest
}

func digestFiles(paths []string) ([]releaseFile, error) {
	var out []releaseFile
	for _, p := range paths {
		d, n, err := sign.DigestFile(p)
		if err != nil {
			return nil, ioErr(err)
		}
		out = append(out, releaseFile{path: p, name: filepath.Base(p), size: n, digest: d})
	}
	return out, nil
}

// predicate is the signed release of files, with the flags' install intent.
func (r *releaseFlags) predicate(files []releaseFile, now time.Time) (verify.Predicate, error) {
	p := verify.Predicate{
		Target: r.target, Version: r.version, Compatible: r.compatible, AllowDowngrade: r.allowDowngrade, Force: r.force,
		WorkingDirectory: r.workDir, PackageName: r.packageName, AutoStart: r.autoStart,
		AutoStartRerunnable: r.rerunnable, Binary: r.binary, Package: r.pkg, Files: map[string]verify.PredicateFile{},
	}
	if r.expires != "" {
		t, err := time.Parse(time.RFC3339, r.expires)
		if err != nil {
			d, derr := time.ParseDuration(r.expires)
			if derr != nil || d <= 0 {
				return p, fmt.Errorf("--expires %q: want an RFC 3339 time or a positive duration", r.expires)
			}
			t = now.Add(d)
		}
		p.Expires = t.UTC().Format(time.RFC3339)
	}
	var mode string
	if r.mode != "" {
		m, err := names.ParseMode(r.mode)
		if err != nil {
			return p, fmt.Errorf("--mode: %w", err)
		}
		mode = names.FormatMode(m)
	}
	for _, f := range files {
		if _, dup := p.Files[f.name]; dup {
			return p, fmt.Errorf("two files are named %s", f.name)
		}
		pf := verify.PredicateFile{Size: f.size}
		if f.manifest != nil {
			pf = verify.PredicateFileOf(*f.manifest)
		}
		pf.Mode = mode
		p.Files[f.name] = pf
	}
	return p, nil
}

func subjects(files []releaseFile) []verify.Subject {
	out := make([]verify.Subject, len(files))
	for i, f := range files {
		out[i] = sign.Subject(f.name, f.digest)
	}
	return out
}

// attest signs the release statement and proves it reads back as the intended release, as a
// device would read it (every rule a device applies, checked before anything is published).
func attest(key crypto.Signer, files []releaseFile, p verify.Predicate) ([]byte, *verify.Release, error) {
	env, err := sign.AttestRelease(key, subjects(files), p)
	if err != nil {
		return nil, nil, err
	}
	ts, err := verify.NewTrustStore([]crypto.PublicKey{key.Public()}, nil)
	if err != nil {
		return nil, nil, err
	}
	c := verify.Claims{Statement: env}
	for _, f := range files {
		c.Files = append(c.Files, verify.FileClaim{Name: f.name, Size: -1})
	}
	rel, err := ts.Release(c, verify.Policy{RequireStatement: true})
	if err != nil {
		return nil, nil, fmt.Errorf("the release is not one a device would accept: %w", err)
	}
	return env, rel, nil
}
