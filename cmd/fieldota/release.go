package main

// release.go: `fieldota release` ships a release to AWS IoT in one command: sign (through the
// same buildJobDocument as `fieldota job`), upload to a versioned S3 bucket, pin the document to
// those object versions, and create the job with its targets and rollout, abort, timeout, retry
// and scheduling configuration. Re-running it with the same job id creates nothing new.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	iottypes "github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
)

func init() { register(newReleaseCmd) }

// awsFlags select the account, region and endpoints (the SDK's standard credential chain).
type awsFlags struct {
	region, profile, endpoint, s3Endpoint string
}

func (f *awsFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.region, "region", "", "AWS region (default: AWS_REGION or the profile's)")
	fs.StringVar(&f.profile, "profile", "", "shared config profile (default: AWS_PROFILE or default)")
	fs.StringVar(&f.endpoint, "endpoint-url", "", "send the IoT (and S3) API calls here: 'fieldota sim', moto_server, any AWS-compatible server")
	fs.StringVar(&f.s3Endpoint, "s3-endpoint-url", "", "S3 endpoint when it differs from --endpoint-url ('fieldota sim' serves S3 on its own port)")
}

// clients builds the IoT and S3 clients from the standard chain (env, shared files, SSO, IMDS…).
func (f *awsFlags) clients(ctx context.Context) (*iot.Client, *s3.Client, string, error) {
	var opts []func(*config.LoadOptions) error
	if f.region != "" {
		opts = append(opts, config.WithRegion(f.region))
	}
	if f.profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(f.profile))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, nil, "", err
	}
	if cfg.Region == "" {
		return nil, nil, "", usageErr(errors.New("no AWS region: give --region or set AWS_REGION"))
	}
	s3End := f.s3Endpoint
	if s3End == "" {
		s3End = f.endpoint
	}
	ic := iot.NewFromConfig(cfg, func(o *iot.Options) {
		if f.endpoint != "" {
			o.BaseEndpoint = aws.String(f.endpoint)
		}
	})
	sc := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if s3End != "" {
			o.BaseEndpoint = aws.String(s3End)
			o.UsePathStyle = true // local servers have no per-bucket host names
		}
	})
	return ic, sc, cfg.Region, nil
}

// objectStore and jobService are the parts of S3 and IoT that release uses.
type objectStore interface {
	GetBucketVersioning(context.Context, *s3.GetBucketVersioningInput, ...func(*s3.Options)) (*s3.GetBucketVersioningOutput, error)
	HeadObject(context.Context, *s3.HeadObjectInput, ...func(*s3.Options)) (*s3.HeadObjectOutput, error)
	PutObject(context.Context, *s3.PutObjectInput, ...func(*s3.Options)) (*s3.PutObjectOutput, error)
}

type jobService interface {
	DescribeJob(context.Context, *iot.DescribeJobInput, ...func(*iot.Options)) (*iot.DescribeJobOutput, error)
	GetJobDocument(context.Context, *iot.GetJobDocumentInput, ...func(*iot.Options)) (*iot.GetJobDocumentOutput, error)
	CreateJob(context.Context, *iot.CreateJobInput, ...func(*iot.Options)) (*iot.CreateJobOutput, error)
	DescribeThing(context.Context, *iot.DescribeThingInput, ...func(*iot.Options)) (*iot.DescribeThingOutput, error)
	DescribeThingGroup(context.Context, *iot.DescribeThingGroupInput, ...func(*iot.Options)) (*iot.DescribeThingGroupOutput, error)
	CreatePackage(context.Context, *iot.CreatePackageInput, ...func(*iot.Options)) (*iot.CreatePackageOutput, error)
	CreatePackageVersion(context.Context, *iot.CreatePackageVersionInput, ...func(*iot.Options)) (*iot.CreatePackageVersionOutput, error)
	UpdatePackageVersion(context.Context, *iot.UpdatePackageVersionInput, ...func(*iot.Options)) (*iot.UpdatePackageVersionOutput, error)
	GetPackageVersion(context.Context, *iot.GetPackageVersionInput, ...func(*iot.Options)) (*iot.GetPackageVersionOutput, error)
}

// releaseOpts are release's flags beyond the document's.
type releaseOpts struct {
	aws                   awsFlags
	bucket, prefix, jobID string
	description           string
	things, groups        []string
	continuous            bool
	roleArn               string
	expires               int64
	progressTimeout       int64
	retries, aborts       []string
	maxPerMinute          int
	exponential           string
	schedStart, schedEnd  string
	endBehavior           string
	windows               []string
	dryRun                bool
}

func newReleaseCmd() *cobra.Command {
	var (
		spec releaseInput
		o    releaseOpts
	)
	cmd := &cobra.Command{
		Use:   "release --key KEY --file FILE --version V --bucket B --job-id ID (--thing T | --thing-group G) [flags]",
		Short: "Sign, upload to a versioned S3 bucket and create the AWS IoT job, in one command",
		Long: `release ships a release to AWS IoT Jobs:

  1. signs each --file and writes the job document (the same document as 'fieldota job');
  2. uploads each file to s3://BUCKET/PREFIX<name> (the bucket must have versioning enabled) and
     pins the document to that object version with ${aws:iot:s3-presigned-url-v2:…%3FversionId%3D…},
     so that a later overwrite of the key cannot change what devices fetch;
  3. creates the job: targets (--thing, --thing-group; --continuous for group members added later),
     presignedUrlConfig (--role-arn, --url-expires), timeoutConfig, jobExecutionsRetryConfig,
     jobExecutionsRolloutConfig, abortConfig and schedulingConfig; and prints the job's ARN.

Credentials, region and profile come from the AWS SDK's standard chain (environment, shared
config and credentials files, SSO, instance roles); --endpoint-url points it at 'fieldota sim',
moto_server or another AWS-compatible server. Re-running with the same --job-id uploads nothing
and creates nothing (it checks that the existing job carries this release). --dry-run prints every
API call it would make, as JSON lines, and makes none.

Examples of the rollout flags:
  --max-per-minute 50
  --exponential 10:2:succeeded=20      base 10/min, ×2 after every 20 more successes
  --abort FAILED:20:5                  cancel the rest when ≥ 20 % of ≥ 5 notified things FAILED
  --window 'cron(0 2 * * ? *),120'     roll out only 02:00–04:00 UTC (with --schedule-start)

Exit status: 0 created (or already there), 1 refused by AWS, 2 usage or connection error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			spec.log = cmd.ErrOrStderr()
			return runRelease(cmd.Context(), cmd.OutOrStdout(), spec, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.keyPath, "key", "", "private signing key (PEM)")
	f.StringVar(&spec.alg, "algorithm", "", "signature algorithm (default from the key)")
	f.StringArrayVar(&spec.files, "file", nil, "payload file (repeatable)")
	f.StringVar(&spec.sigFormat, "signature-format", "codesign", "detached signature per file: codesign (AWS object), freertos (sig-sha256-ecdsa) or none")
	spec.rel.add(cmd, "release version (required)")
	spec.comp.add(cmd, "with --compress: keep the uploaded objects here (default: a temporary directory)")
	o.aws.bind(f)
	f.StringVar(&o.bucket, "bucket", "", "versioned S3 bucket for the payloads")
	f.StringVar(&o.prefix, "prefix", "", "key prefix in the bucket (default JOB_ID/)")
	f.StringVar(&o.jobID, "job-id", "", "job id ([a-zA-Z0-9_-]{1,64}); the same id makes a re-run a no-op")
	f.StringVar(&o.description, "description", "", "job description")
	f.StringArrayVar(&o.things, "thing", nil, "target thing name or ARN (repeatable)")
	f.StringArrayVar(&o.groups, "thing-group", nil, "target thing group name or ARN (repeatable)")
	f.BoolVar(&o.continuous, "continuous", false, "targetSelection CONTINUOUS: things added to the groups later get the job too")
	f.StringVar(&o.roleArn, "role-arn", "", "presignedUrlConfig.roleArn: the IAM role AWS IoT presigns the S3 URLs with (required by AWS)")
	f.Int64Var(&o.expires, "url-expires", 3600, "presignedUrlConfig.expiresInSec (60–3600)")
	f.Int64Var(&o.progressTimeout, "in-progress-timeout", 0, "timeoutConfig.inProgressTimeoutInMinutes (1–10080)")
	f.StringArrayVar(&o.retries, "retry", nil, "jobExecutionsRetryConfig criterion TYPE:N (FAILED, TIMED_OUT or ALL), repeatable")
	f.IntVar(&o.maxPerMinute, "max-per-minute", 0, "jobExecutionsRolloutConfig.maximumPerMinute (1–1000)")
	f.StringVar(&o.exponential, "exponential", "", "exponentialRate BASE:FACTOR:notified=N or BASE:FACTOR:succeeded=N")
	f.StringArrayVar(&o.aborts, "abort", nil, "abortConfig criterion TYPE:PERCENT:MIN_EXECUTED (TYPE FAILED, REJECTED, TIMED_OUT or ALL), repeatable")
	f.StringVar(&o.schedStart, "schedule-start", "", "schedulingConfig.startTime YYYY-MM-DDTHH:MM (UTC, ≥ 30 min ahead)")
	f.StringVar(&o.schedEnd, "schedule-end", "", "schedulingConfig.endTime YYYY-MM-DDTHH:MM (UTC)")
	f.StringVar(&o.endBehavior, "end-behavior", "", "schedulingConfig.endBehavior: STOP_ROLLOUT, CANCEL or FORCE_CANCEL")
	f.StringArrayVar(&o.windows, "window", nil, "maintenance window 'cron(…),MINUTES' (repeatable)")
	f.BoolVar(&o.dryRun, "dry-run", false, "print the API calls as JSON lines and make none")
	for _, req := range []string{"key", "version", "bucket", "job-id"} {
		_ = cmd.MarkFlagRequired(req)
	}
	return cmd
}

// createJobRequest turns the flags into CreateJob's request, in AWS's wire names (jobsim's
// types mirror the API), with the document filled in later.
func (o releaseOpts) createJobRequest() (jobsim.CreateJobInput, error) {
	in := jobsim.CreateJobInput{JobID: o.jobID, Description: o.description,
		PresignedURLConfig: &jobsim.PresignedURLConfig{RoleArn: o.roleArn, ExpiresInSec: o.expires}}
	if len(o.things)+len(o.groups) == 0 {
		return in, errors.New("give at least one --thing or --thing-group")
	}
	if o.continuous && len(o.groups) == 0 {
		return in, errors.New("--continuous needs a --thing-group")
	}
	if o.continuous {
		in.TargetSelection = "CONTINUOUS"
	}
	if o.progressTimeout > 0 {
		in.TimeoutConfig = &jobsim.TimeoutConfig{InProgressTimeoutInMinutes: o.progressTimeout}
	}
	for _, r := range o.retries {
		typ, n, ok := strings.Cut(r, ":")
		count, err := strconv.Atoi(n)
		if !ok || err != nil {
			return in, fmt.Errorf("--retry %q: want TYPE:N, e.g. FAILED:2", r)
		}
		if in.JobExecutionsRetryConfig == nil {
			in.JobExecutionsRetryConfig = &jobsim.RetryConfig{}
		}
		in.JobExecutionsRetryConfig.CriteriaList = append(in.JobExecutionsRetryConfig.CriteriaList,
			jobsim.RetryCriteria{FailureType: typ, NumberOfRetries: count})
	}
	if o.maxPerMinute > 0 || o.exponential != "" {
		in.JobExecutionsRolloutConfig = &jobsim.RolloutConfig{MaximumPerMinute: o.maxPerMinute}
	}
	if o.exponential != "" {
		parts := strings.Split(o.exponential, ":")
		if len(parts) != 3 {
			return in, fmt.Errorf("--exponential %q: want BASE:FACTOR:notified=N or BASE:FACTOR:succeeded=N", o.exponential)
		}
		base, err1 := strconv.Atoi(parts[0])
		factor, err2 := strconv.ParseFloat(parts[1], 64)
		kind, n, ok := strings.Cut(parts[2], "=")
		count, err3 := strconv.Atoi(n)
		if err := errors.Join(err1, err2, err3); err != nil || !ok || (kind != "notified" && kind != "succeeded") {
			return in, fmt.Errorf("--exponential %q: want BASE:FACTOR:notified=N or BASE:FACTOR:succeeded=N", o.exponential)
		}
		e := &jobsim.ExponentialRate{BaseRatePerMinute: base, IncrementFactor: factor}
		if kind == "notified" {
			e.RateIncreaseCriteria.NumberOfNotifiedThings = count
		} else {
			e.RateIncreaseCriteria.NumberOfSucceededThings = count
		}
		in.JobExecutionsRolloutConfig.ExponentialRate = e
	}
	for _, a := range o.aborts {
		parts := strings.Split(a, ":")
		if len(parts) != 3 {
			return in, fmt.Errorf("--abort %q: want TYPE:PERCENT:MIN_EXECUTED, e.g. FAILED:20:5", a)
		}
		pct, err1 := strconv.ParseFloat(parts[1], 64)
		minN, err2 := strconv.Atoi(parts[2])
		if err := errors.Join(err1, err2); err != nil {
			return in, fmt.Errorf("--abort %q: %w", a, err)
		}
		if in.AbortConfig == nil {
			in.AbortConfig = &jobsim.AbortConfig{}
		}
		in.AbortConfig.CriteriaList = append(in.AbortConfig.CriteriaList, jobsim.AbortCriteria{FailureType: parts[0],
			Action: "CANCEL", ThresholdPercentage: pct, MinNumberOfExecutedThings: minN})
	}
	if o.schedStart != "" || o.schedEnd != "" || len(o.windows) > 0 || o.endBehavior != "" {
		sc := &jobsim.SchedulingConfig{StartTime: o.schedStart, EndTime: o.schedEnd, EndBehavior: o.endBehavior}
		for _, w := range o.windows {
			i := strings.LastIndex(w, ",")
			mins, err := strconv.Atoi(strings.TrimSpace(w[i+1:]))
			if i < 0 || err != nil {
				return in, fmt.Errorf("--window %q: want 'cron(…),MINUTES'", w)
			}
			sc.MaintenanceWindows = append(sc.MaintenanceWindows, jobsim.MaintenanceWindow{StartTime: strings.TrimSpace(w[:i]), DurationInMinutes: mins})
		}
		in.SchedulingConfig = sc
	}
	return in, nil
}

// apiCall is one line of --dry-run: what would be sent, in AWS's wire names.
type apiCall struct {
	Service   string `json:"service"`
	Operation string `json:"operation"`
	Input     any    `json:"input"`
}

// pinnedURL is the version-pinned placeholder for s3://bucket/key at versionID.
func pinnedURL(region, bucket, key, versionID string) string {
	raw := "https://s3." + region + ".amazonaws.com/" + bucket + "/" + (&url.URL{Path: key}).EscapedPath() +
		"?versionId=" + url.QueryEscape(versionID)
	return "${aws:iot:s3-presigned-url-v2:" + url.QueryEscape(raw) + "}"
}

// releaseInput is what release signs: the files and the flags of the release statement
// (the same as `fieldota job`'s).
type releaseInput struct {
	keyPath, alg, sigFormat string
	files                   []string
	rel                     releaseFlags
	comp                    compressFlags
	log                     io.Writer // progress of the compression (stderr)
}

func runRelease(ctx context.Context, out io.Writer, spec releaseInput, o releaseOpts) error {
	if len(spec.files) == 0 {
		return usageErr(errors.New("give at least one --file"))
	}
	if o.prefix == "" {
		o.prefix = o.jobID + "/"
	}
	ic, sc, region, err := o.aws.clients(ctx)
	if err != nil {
		var ce *cliError
		if errors.As(err, &ce) {
			return err
		}
		return ioErr(err)
	}
	req, err := o.createJobRequest()
	if err != nil {
		return usageErr(err)
	}
	r := &releaser{out: out, s3: sc, iot: ic, region: region, dryRun: o.dryRun}
	return r.run(ctx, spec, o, req)
}

type releaser struct {
	out    io.Writer
	s3     objectStore
	iot    jobService
	region string
	dryRun bool
}

func (r *releaser) show(service, op string, in any) {
	b, _ := json.Marshal(apiCall{Service: service, Operation: op, Input: in})
	fmt.Fprintln(r.out, string(b))
}

// awsErr: a refusal by the service exits 1, anything else (network, credentials) 2.
func awsErr(what string, err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return &cliError{1, fmt.Errorf("%s: %s: %s", what, ae.ErrorCode(), ae.ErrorMessage())}
	}
	return ioErr(fmt.Errorf("%s: %w", what, err))
}

func isNotFound(err error) bool {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "ResourceNotFoundException", "NotFound", "NoSuchKey", "404":
			return true
		}
	}
	var re interface{ HTTPStatusCode() int }
	return errors.As(err, &re) && re.HTTPStatusCode() == 404
}

func (r *releaser) run(ctx context.Context, spec releaseInput, o releaseOpts, req jobsim.CreateJobInput) error {
	// What is uploaded: the files, or their compressed objects (built deterministically, so a
	// re-run finds them already uploaded).
	objDir := spec.comp.objectsDir
	if spec.comp.on() && objDir == "" {
		d, err := os.MkdirTemp("", "fieldota-release-")
		if err != nil {
			return ioErr(err)
		}
		defer os.RemoveAll(d)
		objDir = d
	}
	log := spec.log
	if log == nil {
		log = io.Discard
	}
	prepared, err := spec.comp.prepare(ctx, log, spec.files, spec.rel.target, objDir)
	if err != nil {
		return err
	}
	digests := map[string]string{}
	for _, f := range prepared {
		digests[f.name] = hex.EncodeToString(f.digest)
	}
	// 1. Idempotence: an existing job with this id must be this release; then nothing is done.
	if r.dryRun {
		r.show("iot", "DescribeJob", map[string]string{"jobId": o.jobID})
	} else {
		d, err := r.iot.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String(o.jobID)})
		switch {
		case err == nil:
			return r.existing(ctx, o.jobID, aws.ToString(d.Job.JobArn), digests)
		case !isNotFound(err):
			return awsErr("DescribeJob", err)
		}
	}
	// Targets are ARNs: names are looked up in the registry (which also proves they exist).
	targets, err := r.targets(ctx, o)
	if err != nil {
		return err
	}
	req.Targets = targets
	// 2. Upload to a versioned bucket, each file once.
	if r.dryRun {
		r.show("s3", "GetBucketVersioning", map[string]string{"Bucket": o.bucket})
	} else {
		v, err := r.s3.GetBucketVersioning(ctx, &s3.GetBucketVersioningInput{Bucket: aws.String(o.bucket)})
		if err != nil {
			return awsErr("GetBucketVersioning "+o.bucket, err)
		}
		if v.Status != s3types.BucketVersioningStatusEnabled {
			return usageErr(fmt.Errorf("bucket %s does not have versioning enabled: without it a later upload to the same key changes what devices fetch (aws s3api put-bucket-versioning --bucket %s --versioning-configuration Status=Enabled)", o.bucket, o.bucket))
		}
	}
	key, err := sign.LoadPrivateKey(spec.keyPath)
	if err != nil {
		return usageErr(err)
	}
	alg, err := verify.ParseAlgorithm(spec.alg)
	if err != nil {
		return usageErr(err)
	}
	s := jobSpec{Key: key, Algorithm: alg, SignatureFormat: spec.sigFormat, Files: spec.files, Prepared: prepared, Release: spec.rel}
	for _, f := range prepared {
		objKey := path.Join(o.prefix, filepath.Base(f.path)) // FILE, or FILE.zst
		version, err := r.upload(ctx, o.bucket, objKey, f.path, digests[f.name])
		if err != nil {
			return err
		}
		s.URLs = append(s.URLs, pinnedURL(r.region, o.bucket, objKey, version))
	}
	// 3. The signed document, pinned, then the job.
	doc, _, err := buildJobDocument(s)
	if err != nil {
		return err
	}
	req.Document = string(doc)
	if spec.rel.pkg != "" {
		arn, err := r.registerPackage(ctx, spec.rel.pkg, spec.rel.version, spec.files)
		if err != nil {
			return err
		}
		req.DestinationPackageVersions = []string{arn}
	}
	if r.dryRun {
		r.show("iot", "CreateJob", req)
		return nil
	}
	outJob, err := r.iot.CreateJob(ctx, toSDKCreateJob(req))
	if err != nil {
		return awsErr("CreateJob", err)
	}
	fmt.Fprintln(r.out, aws.ToString(outJob.JobArn))
	return nil
}

// targets turns --thing and --thing-group names into ARNs by asking the registry (which also
// proves that they exist); ARNs are taken as given.
func (r *releaser) targets(ctx context.Context, o releaseOpts) ([]string, error) {
	thing := func(name string) (string, error) {
		d, err := r.iot.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(name)})
		if err != nil {
			return "", err
		}
		return aws.ToString(d.ThingArn), nil
	}
	group := func(name string) (string, error) {
		d, err := r.iot.DescribeThingGroup(ctx, &iot.DescribeThingGroupInput{ThingGroupName: aws.String(name)})
		if err != nil {
			return "", err
		}
		return aws.ToString(d.ThingGroupArn), nil
	}
	var out []string
	for _, kind := range []struct {
		names     []string
		op, field string
		dryArn    string
		lookup    func(string) (string, error)
	}{
		{o.things, "DescribeThing", "thingName", "ARN_OF_THING_", thing},
		{o.groups, "DescribeThingGroup", "thingGroupName", "ARN_OF_THING_GROUP_", group},
	} {
		for _, n := range kind.names {
			switch {
			case strings.HasPrefix(n, "arn:"):
				out = append(out, n)
			case r.dryRun:
				r.show("iot", kind.op, map[string]string{kind.field: n})
				out = append(out, kind.dryArn+n)
			default:
				arn, err := kind.lookup(n)
				if err != nil {
					return nil, awsErr(kind.op+" "+n, err)
				}
				out = append(out, arn)
			}
		}
	}
	return out, nil
}

// upload puts the file at bucket/key unless the current object there already is this file (by the
// sha256 recorded in its metadata), and returns the version to pin.
func (r *releaser) upload(ctx context.Context, bucket, key, file, digest string) (string, error) {
	if r.dryRun {
		r.show("s3", "HeadObject", map[string]string{"Bucket": bucket, "Key": key})
		st, err := os.Stat(file)
		if err != nil {
			return "", ioErr(err)
		}
		r.show("s3", "PutObject", map[string]any{"Bucket": bucket, "Key": key, "Body": file, "ContentLength": st.Size(),
			"Metadata": map[string]string{"sha256": digest}})
		return "VERSION_ID_OF_" + strings.ToUpper(strings.NewReplacer("/", "_", ".", "_", "-", "_").Replace(key)), nil
	}
	h, err := r.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	switch {
	case err == nil && h.Metadata["sha256"] == digest && aws.ToString(h.VersionId) != "" && aws.ToString(h.VersionId) != "null":
		fmt.Fprintf(r.out, "s3://%s/%s: already uploaded (version %s)\n", bucket, key, aws.ToString(h.VersionId))
		return aws.ToString(h.VersionId), nil
	case err != nil && !isNotFound(err):
		return "", awsErr("HeadObject "+key, err)
	}
	f, err := os.Open(file)
	if err != nil {
		return "", ioErr(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", ioErr(err)
	}
	// A seekable body with a known length: the SDK streams it (and may sign it chunk by chunk).
	p, err := r.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: f,
		ContentLength: aws.Int64(st.Size()), Metadata: map[string]string{"sha256": digest}})
	if err != nil {
		return "", awsErr("PutObject "+key, err)
	}
	v := aws.ToString(p.VersionId)
	if v == "" || v == "null" {
		return "", &cliError{1, fmt.Errorf("PutObject %s answered no version id: is versioning enabled on %s?", key, bucket)}
	}
	fmt.Fprintf(r.out, "s3://%s/%s: uploaded version %s\n", bucket, key, v)
	return v, nil
}

// existing handles a re-run: the job must carry the same files (by digest), or the id is taken.
func (r *releaser) existing(ctx context.Context, jobID, arn string, digests map[string]string) error {
	d, err := r.iot.GetJobDocument(ctx, &iot.GetJobDocumentInput{JobId: aws.String(jobID)})
	if err != nil {
		return awsErr("GetJobDocument", err)
	}
	var doc struct {
		Files json.RawMessage `json:"files"`
	}
	var files []struct {
		FileName string `json:"fileName"`
		SHA256   string `json:"sha256"`
	}
	if err := json.Unmarshal([]byte(aws.ToString(d.Document)), &doc); err == nil {
		if json.Unmarshal(doc.Files, &files) != nil {
			var one struct {
				FileName string `json:"fileName"`
				SHA256   string `json:"sha256"`
			}
			if json.Unmarshal(doc.Files, &one) == nil {
				files = append(files, one)
			}
		}
	}
	same := len(files) == len(digests)
	for _, f := range files {
		same = same && digests[f.FileName] == f.SHA256
	}
	if !same {
		return &cliError{1, fmt.Errorf("job %s already exists with other files: choose another --job-id", jobID)}
	}
	fmt.Fprintf(r.out, "job %s already exists with this release: nothing to do\n", jobID)
	fmt.Fprintln(r.out, arn)
	return nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// toSDKCreateJob converts the wire-named request to the SDK's input.
func toSDKCreateJob(in jobsim.CreateJobInput) *iot.CreateJobInput {
	out := &iot.CreateJobInput{JobId: aws.String(in.JobID), Targets: in.Targets, Document: aws.String(in.Document)}
	if in.Description != "" {
		out.Description = aws.String(in.Description)
	}
	if in.TargetSelection != "" {
		out.TargetSelection = iottypes.TargetSelection(in.TargetSelection)
	}
	if c := in.PresignedURLConfig; c != nil {
		out.PresignedUrlConfig = &iottypes.PresignedUrlConfig{ExpiresInSec: aws.Int64(c.ExpiresInSec)}
		if c.RoleArn != "" {
			out.PresignedUrlConfig.RoleArn = aws.String(c.RoleArn)
		}
	}
	out.DestinationPackageVersions = in.DestinationPackageVersions
	if c := in.TimeoutConfig; c != nil {
		out.TimeoutConfig = &iottypes.TimeoutConfig{InProgressTimeoutInMinutes: aws.Int64(c.InProgressTimeoutInMinutes)}
	}
	if c := in.JobExecutionsRetryConfig; c != nil {
		out.JobExecutionsRetryConfig = &iottypes.JobExecutionsRetryConfig{}
		for _, r := range c.CriteriaList {
			out.JobExecutionsRetryConfig.CriteriaList = append(out.JobExecutionsRetryConfig.CriteriaList,
				iottypes.RetryCriteria{FailureType: iottypes.RetryableFailureType(r.FailureType), NumberOfRetries: aws.Int32(int32(r.NumberOfRetries))})
		}
	}
	if c := in.JobExecutionsRolloutConfig; c != nil {
		out.JobExecutionsRolloutConfig = &iottypes.JobExecutionsRolloutConfig{}
		if c.MaximumPerMinute > 0 {
			out.JobExecutionsRolloutConfig.MaximumPerMinute = aws.Int32(int32(c.MaximumPerMinute))
		}
		if e := c.ExponentialRate; e != nil {
			crit := &iottypes.RateIncreaseCriteria{}
			if e.RateIncreaseCriteria.NumberOfNotifiedThings > 0 {
				crit.NumberOfNotifiedThings = aws.Int32(int32(e.RateIncreaseCriteria.NumberOfNotifiedThings))
			}
			if e.RateIncreaseCriteria.NumberOfSucceededThings > 0 {
				crit.NumberOfSucceededThings = aws.Int32(int32(e.RateIncreaseCriteria.NumberOfSucceededThings))
			}
			out.JobExecutionsRolloutConfig.ExponentialRate = &iottypes.ExponentialRolloutRate{
				BaseRatePerMinute: aws.Int32(int32(e.BaseRatePerMinute)), IncrementFactor: aws.Float64(e.IncrementFactor), RateIncreaseCriteria: crit}
		}
	}
	if c := in.AbortConfig; c != nil {
		out.AbortConfig = &iottypes.AbortConfig{}
		for _, a := range c.CriteriaList {
			out.AbortConfig.CriteriaList = append(out.AbortConfig.CriteriaList, iottypes.AbortCriteria{
				Action: iottypes.AbortAction(a.Action), FailureType: iottypes.JobExecutionFailureType(a.FailureType),
				ThresholdPercentage: aws.Float64(a.ThresholdPercentage), MinNumberOfExecutedThings: aws.Int32(int32(a.MinNumberOfExecutedThings))})
		}
	}
	if c := in.SchedulingConfig; c != nil {
		sc := &iottypes.SchedulingConfig{EndBehavior: iottypes.JobEndBehavior(c.EndBehavior)}
		if c.StartTime != "" {
			sc.StartTime = aws.String(c.StartTime)
		}
		if c.EndTime != "" {
			sc.EndTime = aws.String(c.EndTime)
		}
		for _, w := range c.MaintenanceWindows {
			sc.MaintenanceWindows = append(sc.MaintenanceWindows, iottypes.MaintenanceWindow{StartTime: aws.String(w.StartTime), DurationInMinutes: aws.Int32(int32(w.DurationInMinutes))})
		}
		out.SchedulingConfig = sc
	}
	return out
}

// registerPackage makes the release a published version of its Software Package Catalog package
// (creating the package the first time) and returns the version's ARN, which the job names in
// destinationPackageVersions: AWS writes it into the devices' $package shadow at SUCCEEDED, and
// the agent corrects the shadow should a device roll back later. Re-running finds both there.
func (r *releaser) registerPackage(ctx context.Context, pkg, version string, files []string) (string, error) {
	attrs := map[string]string{"fieldotaFiles": strings.Join(baseNames(files), ",")}
	if r.dryRun {
		r.show("iot", "CreatePackage", map[string]string{"packageName": pkg})
		r.show("iot", "CreatePackageVersion", map[string]any{"packageName": pkg, "versionName": version, "attributes": attrs})
		r.show("iot", "UpdatePackageVersion", map[string]string{"packageName": pkg, "versionName": version, "action": "PUBLISH"})
		return "arn:aws:iot:" + r.region + ":000000000000:package/" + pkg + "/version/" + version, nil
	}
	if _, err := r.iot.CreatePackage(ctx, &iot.CreatePackageInput{PackageName: aws.String(pkg)}); err != nil && !isConflict(err) {
		return "", awsErr("CreatePackage "+pkg, err)
	}
	if _, err := r.iot.CreatePackageVersion(ctx, &iot.CreatePackageVersionInput{PackageName: aws.String(pkg),
		VersionName: aws.String(version), Attributes: attrs}); err != nil && !isConflict(err) {
		return "", awsErr("CreatePackageVersion "+pkg+"@"+version, err)
	}
	got, err := r.iot.GetPackageVersion(ctx, &iot.GetPackageVersionInput{PackageName: aws.String(pkg), VersionName: aws.String(version)})
	if err != nil {
		return "", awsErr("GetPackageVersion "+pkg+"@"+version, err)
	}
	if got.Status != iottypes.PackageVersionStatusPublished {
		if _, err := r.iot.UpdatePackageVersion(ctx, &iot.UpdatePackageVersionInput{PackageName: aws.String(pkg),
			VersionName: aws.String(version), Action: iottypes.PackageVersionActionPublish}); err != nil {
			return "", awsErr("UpdatePackageVersion "+pkg+"@"+version, err)
		}
	}
	return aws.ToString(got.PackageVersionArn), nil
}

func isConflict(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == "ConflictException"
}

func baseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	return out
}
