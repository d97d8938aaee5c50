package agent

import (
	"context"
	"fmt"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/download"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify"
)

// job is what the device may do for one execution: the document (for its URLs only), the
// verified release (everything else), and the key its target is recorded under.
type job struct {
	doc *jobdoc.Document
	rel *verify.Release
	key string
}

// parseDoc reads a document as delivered (presigned URLs expanded).
func parseDoc(raw []byte) (*jobdoc.Document, error) { return jobdoc.Parse(raw, jobdoc.Options{}) }

// urlPolicy is where the device may download from.
func (a *Agent) urlPolicy() *download.Policy {
	return &download.Policy{Hosts: a.cfg.Download.AllowedHosts, AllowHTTP: a.cfg.Download.AllowInsecureHTTP}
}

// trustPolicy is the device's verification policy, before the installed version is known.
func (a *Agent) trustPolicy() verify.Policy {
	return verify.Policy{
		AllowUnsigned:    a.cfg.Verify.AllowUnsigned,
		RequireStatement: a.cfg.Verify.RequireStatement(),
		DeviceCompatible: a.cfg.Compatible,
		Now:              a.now(),
	}
}

// admit decides, before a byte is downloaded, everything no download can change: the release
// statement verified (trusted key, plain fields only copies), the target supported and set up
// here, every URL allowed, the install location safe, and the policy (expiry, anti-rollback
// against the signed record of the resolved target, compatibility). A refusal here is REJECTED
// while the execution is QUEUED; after the download only the payload's digest is left to check.
func (a *Agent) admit(raw []byte) (*job, error) {
	jb, pol, err := a.verified(raw, a.flowFor)
	if err != nil {
		return nil, err
	}
	for i, f := range jb.doc.Files {
		if err := a.urlPolicy().Check(f.URL); err != nil {
			return nil, fmt.Errorf("files[%d].url: %w", i, err)
		}
	}
	if err := a.admitCompressed(jb.rel); err != nil {
		return nil, err
	}
	inst, err := loadInstalled(a.cfg.StateDir)
	if err != nil {
		return nil, reason.Wrap(reason.Internal, err)
	}
	pol.Installed = inst[jb.key].policy()
	if err := verify.CheckPolicy(jb.rel, pol); err != nil {
		return nil, err
	}
	return jb, nil
}

// verified parses a document, verifies its release and resolves where it installs, with the
// flow lookup of the caller (flowFor checks the device is set up for the target; flowOf, for a
// job under way, does not).
func (a *Agent) verified(raw []byte, flowOf func(string) (flow, error)) (*job, verify.Policy, error) {
	pol := a.trustPolicy()
	doc, err := parseDoc(raw)
	if err != nil {
		return nil, pol, err
	}
	claims := doc.Claims()
	if doc.AFROTA {
		if claims, err = a.afrClaims(claims); err != nil {
			return nil, pol, err
		}
	}
	rel, err := a.verifier().Release(claims, pol)
	if err != nil {
		return nil, pol, err
	}
	fl, err := flowOf(string(rel.Target))
	if err != nil {
		return nil, pol, err
	}
	key, err := fl.key(rel)
	if err != nil {
		return nil, pol, err
	}
	return &job{doc: doc, rel: rel, key: key}, pol, nil
}

// jobOf re-derives the release of a journaled job at its point of use. The journal is input an
// offline edit could have changed: its document is verified again as on arrival (but for the
// expiry: a release accepted in time may finish), and a journal whose own copies disagree with
// that document is an INTERNAL failure — nothing is installed from it.
func (a *Agent) jobOf(j *ota.Journal) (*job, error) {
	jb, _, err := a.verified(j.Document, a.flowOf)
	if err != nil {
		return nil, err
	}
	rel, key := jb.rel, jb.key
	if jb.doc.AFROTA {
		afrDigests(rel, j)
	}
	mismatch := func(what string, journal, signed any) error {
		return reason.Errorf(reason.Internal, "the journal does not match its document: %s %v, the signed release says %v", what, journal, signed)
	}
	switch {
	case j.Target != string(rel.Target):
		return nil, mismatch("target", j.Target, rel.Target)
	case j.Version != rel.Version:
		return nil, mismatch("version", j.Version, rel.Version)
	case j.TargetKey != key:
		return nil, mismatch("target", j.TargetKey, key)
	case j.Staged != nil && len(j.Staged) != len(rel.Files):
		return nil, mismatch("file count", len(j.Staged), len(rel.Files))
	}
	for i, st := range j.Staged {
		if f := rel.Files[i]; st.Name != f.Name || st.Size != f.RawSize() {
			return nil, mismatch(fmt.Sprintf("files[%d]", i), fmt.Sprintf("%s (%d bytes)", st.Name, st.Size), fmt.Sprintf("%s (%d bytes)", f.Name, f.RawSize()))
		}
	}
	return jb, nil
}

// startJob admits a new execution before anything else happens. A document that can never
// succeed is REJECTED while the execution is still QUEUED (AWS refuses REJECTED once started;
// then it is FAILED); a good one is journaled and run.
func (a *Agent) startJob(ctx context.Context, exec *jobs.JobExecution) error {
	j := &ota.Journal{JobID: exec.JobID, ExecutionNumber: exec.ExecutionNumber, VersionNumber: exec.VersionNumber}
	a.log.Info("job received", "job", exec.JobID, "execution", exec.ExecutionNumber, "status", exec.Status)
	if tpl, ok, err := parseTemplate(exec.JobDocument); ok {
		return a.startTemplate(ctx, exec, tpl, err) // AWS's managed templates (templates.go)
	}
	jb, err := a.admit(exec.JobDocument)
	if err != nil {
		status := jobs.Rejected
		if exec.Status != jobs.Queued {
			status = jobs.Failed
		}
		a.log.Warn("job refused before it started", "job", exec.JobID, "status", status, "err", err)
		ota.Fail(j, err, map[string]string{"stage": "validate"})
		j.Report.Status = string(status)
		j.State = ota.StateReport
		return a.runJournal(ctx, j, false)
	}
	inst, _ := loadInstalled(a.cfg.StateDir)
	j.Document = exec.JobDocument
	j.Target = string(jb.rel.Target)
	j.TargetKey = jb.key
	j.Version = jb.rel.Version
	j.PreviousVersion = inst[jb.key].Version
	if a.alreadyRuns(ctx, jb) {
		// Nothing to download, install or reboot: done at once (a signed force reinstalls).
		a.log.Info("release already installed", "job", exec.JobID, "version", jb.rel.Version)
		j.Report = &ota.Report{Status: string(jobs.Succeeded), Details: details(j, "done", map[string]string{"alreadyInstalled": "true"})}
		j.State = ota.StateReport
		return a.runJournal(ctx, j, false)
	}
	if exec.Status != jobs.Queued {
		j.Data = map[string]string{dataStartedBefore: "true"}
	}
	return a.runJournal(ctx, j, false)
}

// verifier returns the trust store; a device configured without keys (allow_unsigned, for
// development) gets one that trusts nothing, so a signed document still fails closed.
func (a *Agent) verifier() *verify.TrustStore {
	if a.trust != nil {
		return a.trust
	}
	return emptyTrust
}

var emptyTrust = &verify.TrustStore{}
