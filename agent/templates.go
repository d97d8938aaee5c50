package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/download"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/confine"
	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/names"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/run"
	"github.com/fieldota/fieldota/verify"
)

// AWS's managed job templates (docs/aws-device-management.md): documents of version 1.0 whose
// steps[].action runs a handler (runHandler) or a command (runCommand). fieldota runs each one
// natively — no handler script, no shell — and only where templates.* enables it; anything else
// is REJECTED UNSUPPORTED_OPERATION while QUEUED, naming the template. A template job is
// journaled from the install state (the target "template"): a kill resumes the download from
// its checkpoint, and a reboot asked for is not asked for again.

const targetTemplate = jobdoc.Target("template")

// template is one managed-template document, recognised by its handler.
type template struct {
	Name string   // AWS-Reboot, AWS-Download-File, …
	Args []string // the handler's args (runHandler) or the command's argv (runCommand)
}

var handlerTemplates = map[string]string{
	"reboot.sh":           "AWS-Reboot",
	"download-file.sh":    "AWS-Download-File",
	"install-packages.sh": "AWS-Install-Application",
	"remove-packages.sh":  "AWS-Remove-Application",
	"start-services.sh":   "AWS-Start-Application",
	"stop-services.sh":    "AWS-Stop-Application",
	"restart-services.sh": "AWS-Restart-Application",
}

// parseTemplate recognises a managed-template document; ok is false for anything else.
func parseTemplate(raw []byte) (tpl template, ok bool, err error) {
	var doc struct {
		Version string            `json:"version"`
		Steps   []json.RawMessage `json:"steps"`
		Op      *string           `json:"operation"`
	}
	if json.Unmarshal(raw, &doc) != nil || doc.Steps == nil || doc.Op != nil {
		return tpl, false, nil
	}
	bad := func(f string, a ...any) (template, bool, error) {
		return tpl, true, reason.Errorf(reason.InvalidDocument, "managed template: "+f, a...)
	}
	if doc.Version != "1.0" {
		return bad("version %q, want 1.0", names.Clip(doc.Version))
	}
	if len(doc.Steps) != 1 {
		return bad("%d steps; AWS's managed templates have one", len(doc.Steps))
	}
	var step struct {
		Action struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Input struct {
				Handler string   `json:"handler"`
				Args    []string `json:"args"`
				Command string   `json:"command"`
			} `json:"input"`
		} `json:"action"`
	}
	if err := json.Unmarshal(doc.Steps[0], &step); err != nil {
		return bad("steps[0]: %v", err)
	}
	in := step.Action.Input
	switch step.Action.Type {
	case "runHandler":
		name, known := handlerTemplates[in.Handler]
		if !known {
			return tpl, true, reason.Errorf(reason.UnsupportedOperation, "managed template handler %q is not one of AWS's", names.Clip(in.Handler))
		}
		return template{Name: name, Args: in.Args}, true, nil
	case "runCommand":
		if in.Command == "" {
			return bad("runCommand without input.command")
		}
		return template{Name: "AWS-Run-Command", Args: strings.Split(in.Command, ",")}, true, nil
	}
	return bad("steps[0].action.type %q, want runHandler or runCommand", names.Clip(step.Action.Type))
}

var serviceName = regexp.MustCompile(`^[a-zA-Z0-9@._:-]{1,128}$`)

// allowed checks the template against the device's configuration and its arguments.
func (a *Agent) allowTemplate(t template) error {
	c := a.cfg.Templates
	off := func(key string) error {
		return reason.Errorf(reason.UnsupportedOperation, "%s is not enabled on this device (templates.%s)", t.Name, key)
	}
	switch t.Name {
	case "AWS-Reboot":
		if !c.Reboot {
			return off("reboot")
		}
	case "AWS-Download-File":
		if !c.DownloadFile {
			return off("download_file")
		}
		if len(t.Args) != 2 {
			return reason.Errorf(reason.InvalidDocument, "%s takes [downloadUrl, filePath], got %d args", t.Name, len(t.Args))
		}
		if err := a.urlPolicy().Check(t.Args[0]); err != nil {
			return fmt.Errorf("%s downloadUrl: %w", t.Name, err)
		}
		if _, _, err := a.downloadTarget(t.Args[1]); err != nil {
			return err
		}
	case "AWS-Start-Application", "AWS-Stop-Application", "AWS-Restart-Application":
		if len(c.Services) == 0 {
			return off("services")
		}
		svcs, err := words(t)
		if err != nil {
			return err
		}
		for _, s := range svcs {
			if !slices.Contains(c.Services, s) {
				return reason.Errorf(reason.UnsupportedOperation, "%s: service %q is not in templates.services", t.Name, names.Clip(s))
			}
		}
	case "AWS-Install-Application", "AWS-Remove-Application":
		cmd := c.InstallCommand
		if t.Name == "AWS-Remove-Application" {
			cmd = c.RemoveCommand
		}
		if len(cmd) == 0 {
			return off(map[bool]string{true: "install_command", false: "remove_command"}[t.Name == "AWS-Install-Application"])
		}
		pkgs, err := words(t)
		if err != nil {
			return err
		}
		for _, p := range pkgs {
			if strings.HasPrefix(p, "-") || (len(c.Packages) > 0 && !slices.Contains(c.Packages, p)) {
				return reason.Errorf(reason.UnsupportedOperation, "%s: package %q is not allowed (templates.packages)", t.Name, names.Clip(p))
			}
		}
	case "AWS-Run-Command":
		if !c.RunCommand {
			return off("run_command")
		}
	}
	return nil
}

// words is the one space-separated argument of the services and packages templates.
func words(t template) ([]string, error) {
	if len(t.Args) != 1 {
		return nil, reason.Errorf(reason.InvalidDocument, "%s takes one argument, got %d", t.Name, len(t.Args))
	}
	w := strings.Fields(t.Args[0])
	if len(w) == 0 {
		return nil, reason.Errorf(reason.InvalidDocument, "%s: empty list", t.Name)
	}
	for _, s := range w {
		if !serviceName.MatchString(s) {
			return nil, reason.Errorf(reason.InvalidDocument, "%s: %q is not a service or package name", t.Name, names.Clip(s))
		}
	}
	return w, nil
}

// downloadTarget confines AWS-Download-File's filePath to templates.download_roots: it returns
// the resolved directory and the file's base name.
func (a *Agent) downloadTarget(p string) (dir, name string, err error) {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return "", "", reason.Errorf(reason.UnsafePath, "AWS-Download-File filePath %q must be a clean absolute path", names.Clip(p))
	}
	name = filepath.Base(p)
	if err := names.Name(name); err != nil {
		return "", "", reason.Errorf(reason.UnsafePath, "AWS-Download-File filePath: %w", err)
	}
	dir, err = confine.Resolve(filepath.Dir(p), a.cfg.Templates.DownloadRoots)
	return dir, name, err
}

// startTemplate admits a managed-template execution: refused while QUEUED unless allowed, else
// journaled at install.
func (a *Agent) startTemplate(ctx context.Context, exec *jobs.JobExecution, t template, perr error) error {
	j := &ota.Journal{JobID: exec.JobID, ExecutionNumber: exec.ExecutionNumber, VersionNumber: exec.VersionNumber}
	err := perr
	if err == nil {
		err = a.allowTemplate(t)
	}
	if err != nil {
		status := jobs.Rejected
		if exec.Status != jobs.Queued {
			status = jobs.Failed
		}
		a.log.Warn("managed template refused", "job", exec.JobID, "template", t.Name, "err", err)
		ota.Fail(j, err, map[string]string{"stage": "validate"})
		j.Report.Status = string(status)
		j.State = ota.StateReport
		return a.runJournal(ctx, j, false)
	}
	j.Document, j.Target, j.TargetKey, j.State = exec.JobDocument, string(targetTemplate), "template", ota.StateInstall
	j.Data = map[string]string{"template": t.Name}
	return a.runJournal(ctx, j, false)
}

func init() {
	registerFlow(targetTemplate, func(a *Agent) flow {
		return flow{
			handlers: map[ota.State]ota.Handler{ota.StateInstall: a.runTemplate},
			key:      func(*verify.Release) (string, error) { return "template", nil },
		}
	})
}

// runTemplate runs the template's one step (the journal is untrusted: it is checked again).
func (a *Agent) runTemplate(ctx context.Context, j *ota.Journal) (ota.Event, error) {
	t, _, err := parseTemplate(j.Document)
	if err == nil {
		err = a.allowTemplate(t)
	}
	stage := map[string]string{"stage": "install", "template": t.Name}
	if err != nil {
		return ota.Fail(j, err, stage), nil
	}
	if ev, err := a.inProgress(ctx, j, details(j, "install", map[string]string{"template": t.Name})); ev != "" || err != nil {
		return ev, err
	}
	c := a.cfg.Templates
	var argv []string
	switch t.Name {
	case "AWS-Reboot":
		if j.Data["rebootRequested"] != "" {
			// The reboot was asked for before this start: it happened (or the agent was killed
			// right after asking; a second reboot is not what the job asked for).
			break
		}
		j.Data["rebootRequested"] = a.now().UTC().Format(time.RFC3339)
		j.Report = &ota.Report{Status: string(jobs.Succeeded), Details: details(j, "done", map[string]string{"template": t.Name})}
		if err := a.store.Save(j); err != nil {
			return "", err
		}
		// Tell the service before going down: the step ends with the reboot.
		if err := a.upd.terminal(ctx, j); err != nil {
			return "", err
		}
		argv = c.RebootCommand
	case "AWS-Download-File":
		if err := a.templateDownload(ctx, j, t); err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			return ota.Fail(j, err, stage), nil
		}
	case "AWS-Start-Application", "AWS-Stop-Application", "AWS-Restart-Application":
		svcs, _ := words(t)
		verb := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(t.Name, "AWS-"), "-Application"))
		for _, s := range svcs {
			if err := a.runStep(ctx, append(slices.Clone(c.ServiceCommand), verb, s)); err != nil {
				return ota.Fail(j, err, stage), nil
			}
		}
	case "AWS-Install-Application", "AWS-Remove-Application":
		pkgs, _ := words(t)
		cmd := c.InstallCommand
		if t.Name == "AWS-Remove-Application" {
			cmd = c.RemoveCommand
		}
		argv = append(slices.Clone(cmd), pkgs...)
	case "AWS-Run-Command":
		argv = t.Args
	}
	if argv != nil {
		if err := a.runStep(ctx, argv); err != nil {
			if t.Name == "AWS-Reboot" {
				a.log.Error("reboot failed", "argv", argv, "err", err)
				return ota.EvOK, nil
			}
			return ota.Fail(j, err, stage), nil
		}
	}
	if j.Report == nil {
		j.Report = &ota.Report{Status: string(jobs.Succeeded), Details: details(j, "done", map[string]string{"template": t.Name})}
	}
	return ota.EvOK, nil
}

func (a *Agent) runStep(ctx context.Context, argv []string) error {
	res, err := run.Run(ctx, run.Spec{Argv: argv, Timeout: a.cfg.Templates.Timeout.Duration})
	if err == nil && res.ExitCode != 0 {
		err = fmt.Errorf("%s exited %d: %s", argv[0], res.ExitCode, res.Tail)
	}
	if err != nil {
		return reason.Errorf(reason.InstallFailed, "%w", err)
	}
	return nil
}

// templateDownload is AWS-Download-File through the downloader: its size learned first (a
// one-byte range) and bounded, resumable from a checkpoint, its URL refreshed by describing the
// execution again, staged, then placed into the allowed root through os.Root.
func (a *Agent) templateDownload(ctx context.Context, j *ota.Journal, t template) error {
	dir, name, err := a.downloadTarget(t.Args[1])
	if err != nil {
		return err
	}
	staging := a.stagingDir(j)
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	staged := filepath.Join(staging, "0.payload")
	size, err := a.probeSize(ctx, t.Args[0])
	if err != nil {
		return err
	}
	if size > a.cfg.Templates.MaxDownloadSize {
		return reason.Errorf(reason.SizeMismatch, "AWS-Download-File: %d bytes, more than templates.max_download_bytes %d", size, a.cfg.Templates.MaxDownloadSize)
	}
	f, err := os.OpenFile(staged, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return reason.Wrap(reason.DownloadFailed, err)
	}
	dc := a.cfg.Download
	res, err := download.Download(ctx, download.Request{
		URL: t.Args[0], Size: size, Sink: f, CheckpointPath: filepath.Join(staging, "0.checkpoint"),
		Refresh: func(ctx context.Context) (string, error) {
			exec, err := a.api.Describe(ctx, jobs.DescribeInput{JobID: j.JobID, ExecutionNumber: j.ExecutionNumber, IncludeJobDocument: true})
			if err != nil {
				return "", err
			}
			if exec == nil || exec.Status.Terminal() {
				return "", errCanceled
			}
			nt, _, err := parseTemplate(exec.JobDocument)
			if err != nil || nt.Name != t.Name || len(nt.Args) != 2 || nt.Args[1] != t.Args[1] {
				return "", reason.Errorf(reason.InvalidDocument, "the document changed during the download")
			}
			return nt.Args[0], nil
		},
		MaxRefreshes: dc.MaxRefreshes, Stall: dc.StallTimeout.Duration, RateLimit: dc.RateLimit,
		MinSpeed: dc.MinSpeed, MinSpeedWindow: dc.MinSpeedWindow.Duration, MaxSlow: dc.MaxSlowWindows,
		Policy: a.urlPolicy(), Logger: a.log,
	})
	f.Close()
	if err != nil {
		return err
	}
	a.log.Info("AWS-Download-File downloaded", "job", j.JobID, "bytes", res.Size, "resumed", res.Resumed, "refreshes", res.Refreshes)
	root, err := os.OpenRoot(dir)
	if err != nil {
		return reason.Errorf(reason.UnsafePath, "open %s: %w", dir, err)
	}
	defer root.Close()
	src, err := os.Open(staged)
	if err != nil {
		return reason.Wrap(reason.InstallFailed, err)
	}
	defer src.Close()
	tmp := "." + name + ".fieldota-tmp"
	_ = root.Remove(tmp)
	dst, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return reason.Errorf(reason.InstallFailed, "%s: %w", filepath.Join(dir, name), err)
	}
	_, err = io.Copy(dst, src)
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Rename(tmp, name)
	}
	if err != nil {
		_ = root.Remove(tmp)
		return reason.Errorf(reason.InstallFailed, "placing %s: %w", filepath.Join(dir, name), err)
	}
	return nil
}

// probeSize asks for the first byte to learn the object's size from Content-Range, through the
// download policy's checks (allowed hosts; no redirects followed).
func (a *Agent) probeSize(ctx context.Context, u string) (int64, error) {
	if err := a.urlPolicy().Check(u); err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, reason.Wrap(reason.DownloadFailed, err)
	}
	req.Header.Set("Range", "bytes=0-0")
	hc := &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, reason.Errorf(reason.DownloadFailed, "AWS-Download-File: %s", redactURL(err.Error()))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1))
	if resp.StatusCode != http.StatusPartialContent {
		return 0, reason.Errorf(reason.DownloadFailed, "AWS-Download-File: the size probe answered %s", resp.Status)
	}
	cr := resp.Header.Get("Content-Range")
	i := strings.LastIndexByte(cr, '/')
	n, err := strconv.ParseInt(cr[i+1:], 10, 64)
	if i < 0 || err != nil || n <= 0 {
		return 0, reason.Errorf(reason.DownloadFailed, "AWS-Download-File: Content-Range %q", names.Clip(cr))
	}
	return n, nil
}

// redactURL cuts the query strings out of a message (presigned URLs carry credentials).
func redactURL(s string) string {
	return queryRE.ReplaceAllString(s, "?REDACTED")
}

var queryRE = regexp.MustCompile(`\?[^\s"']*`)
