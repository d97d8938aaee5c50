package agent

import (
	"context"

	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify"
)

// parseJob parses and validates a document with the device's limits (allowed roots, http).
func parseJob(raw []byte, cfg *config.Config) (*jobdoc.Document, error) {
	return jobdoc.Parse(raw, jobdoc.Options{AllowedRoots: cfg.Files.AllowedRoots, AllowInsecureHTTP: cfg.Download.AllowInsecureHTTP})
}

// targetKey is what installed.json records a target's version under: the directory of a files
// job, the swapped binary's path, or the device's slots.
func (a *Agent) targetKey(d *jobdoc.Document) string {
	switch d.Target {
	case jobdoc.TargetFiles:
		return "files:" + d.WorkingDirectory
	case jobdoc.TargetBinary:
		return "binary:" + a.cfg.Swap.Target
	}
	return string(d.Target)
}

// startJob validates a new execution before anything else happens. A document that can never
// succeed is REJECTED while the execution is still QUEUED (AWS refuses REJECTED once started;
// then it is FAILED); a good one is journaled and run.
func (a *Agent) startJob(ctx context.Context, exec *jobs.JobExecution) error {
	j := &ota.Journal{JobID: exec.JobID, ExecutionNumber: exec.ExecutionNumber, VersionNumber: exec.VersionNumber}
	a.log.Info("job received", "job", exec.JobID, "execution", exec.ExecutionNumber, "status", exec.Status)
	spec, err := parseJob(exec.JobDocument, a.cfg)
	if err == nil {
		err = a.preflight(spec, j)
	}
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
	j.Document = exec.JobDocument
	j.Target = string(spec.Target)
	j.Version = spec.Version
	return a.runJournal(ctx, j, false)
}

// preflight applies everything that can be decided before a byte is downloaded and that no
// download can change: a supported target, an allowed URL scheme, a signature present at all,
// and the policy over the document's plain claims. Signatures themselves are checked over the
// downloaded bytes (a bad one ends the job FAILED SIGNATURE_INVALID).
func (a *Agent) preflight(spec *jobdoc.Document, j *ota.Journal) error {
	if _, err := a.flowFor(string(spec.Target)); err != nil {
		return err
	}
	pol, err := a.policy(spec)
	if err != nil {
		return err
	}
	j.PreviousVersion = pol.InstalledVersion
	for i, f := range spec.Files {
		if err := a.checkURL(f.URL); err != nil {
			return err
		}
		if err := a.verifier().Precheck(spec.VerifyInput(i), pol); err != nil {
			return err
		}
	}
	return nil
}

func (a *Agent) policy(spec *jobdoc.Document) (verify.Policy, error) {
	inst, err := loadInstalled(a.cfg.StateDir)
	if err != nil {
		return verify.Policy{}, reason.Wrap(reason.Internal, err)
	}
	return verify.Policy{
		AllowUnsigned:    a.cfg.Verify.AllowUnsigned,
		InstalledVersion: inst[a.targetKey(spec)],
		DeviceCompatible: a.cfg.Compatible,
		Now:              a.now(),
	}, nil
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
