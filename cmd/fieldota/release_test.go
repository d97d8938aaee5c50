package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/fieldota/fieldota/test/fleet"
	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/fieldota/fieldota/test/jobsim/packages"
)

// fakeAWS points the SDK's standard chain at made-up credentials and nothing else on the machine.
func fakeAWS(t *testing.T) {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
	t.Setenv("AWS_REGION", "eu-west-1")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_PROFILE", "")
	os.Unsetenv("AWS_PROFILE") // t.Setenv restores it afterwards
}

// runCLI runs a fieldota command in-process and returns its output and exit status.
func runCLI(t *testing.T, ctx context.Context, args ...string) (string, int) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	code := 0
	if err != nil {
		code = exitCode(err)
		out.WriteString("error: " + err.Error() + "\n")
	}
	return out.String(), code
}

// rolloutEnv is an emulator, a versioned bucket, a release key and a thing group of n things.
type rolloutEnv struct {
	sim      *jobsim.Sim
	dir, key string
	s3       *awss3.Client
	mu       sync.Mutex
	events   []jobsim.Event
}

func newRolloutEnv(t *testing.T, things int, minute time.Duration) *rolloutEnv {
	t.Helper()
	fakeAWS(t)
	e := &rolloutEnv{dir: t.TempDir()}
	arts := filepath.Join(e.dir, "artifacts")
	if err := os.MkdirAll(arts, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sim, err := jobsim.Start(ctx, jobsim.Config{MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0",
		ArtifactDir: arts, Minute: minute, OnEvent: func(ev jobsim.Event) {
			e.mu.Lock()
			e.events = append(e.events, ev)
			e.mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	e.sim = sim
	e.s3 = awss3.New(awss3.Options{Region: "eu-west-1", BaseEndpoint: aws.String(sim.S3URL()), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider("AKIAIOSFODNN7EXAMPLE", "secret", "")})
	if _, err := e.s3.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: aws.String("releases")}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s3.PutBucketVersioning(ctx, &awss3.PutBucketVersioningInput{Bucket: aws.String("releases"),
		VersioningConfiguration: &s3types.VersioningConfiguration{Status: s3types.BucketVersioningStatusEnabled}}); err != nil {
		t.Fatal(err)
	}
	reg := sim.Registry()
	if _, err := reg.CreateThingGroup("fleet", ""); err != nil {
		t.Fatal(err)
	}
	for i := range things {
		name := fleet.Options{}.Name(i)
		if _, err := reg.CreateThing(name, nil); err != nil {
			t.Fatal(err)
		}
		if err := reg.AddThingToThingGroup("fleet", "", name, ""); err != nil {
			t.Fatal(err)
		}
	}
	e.key = filepath.Join(e.dir, "release")
	if out, code := runCLI(t, ctx, "keygen", "--out", e.key); code != 0 {
		t.Fatal(out)
	}
	return e
}

func (e *rolloutEnv) startFleet(t *testing.T, n int, fail func(int) bool) *fleet.Fleet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f, err := fleet.Start(ctx, fleet.Options{Devices: n, Dir: filepath.Join(e.dir, "fleet"), MQTT: e.sim.MQTTURL(),
		S3Host: strings.TrimPrefix(e.sim.S3URL(), "http://"), ReleaseKey: e.key + ".pub", Fail: fail})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Stop(); err != nil {
			t.Errorf("agents: %v", err)
		}
	})
	return f
}

func (e *rolloutEnv) payload(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(e.dir, "payload", "app")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *rolloutEnv) releaseArgs(file, jobID string, extra ...string) []string {
	return append([]string{"release", "--key", e.key + ".key", "--file", file, "--target", "binary", "--binary", "app", "--version", "2.0.0",
		"--bucket", "releases", "--job-id", jobID, "--thing-group", "fleet",
		"--role-arn", "arn:aws:iam::123456789012:role/iot-s3-presign", "--url-expires", "600",
		"--endpoint-url", e.sim.HTTPURL(), "--s3-endpoint-url", e.sim.S3URL()}, extra...)
}

func (e *rolloutEnv) statusArgs(jobID string, extra ...string) []string {
	return append([]string{"rollout", "status", jobID, "--endpoint-url", e.sim.HTTPURL()}, extra...)
}

// puts counts the PUT requests the emulator's S3 answered.
func (e *rolloutEnv) puts() int {
	n := 0
	for _, r := range e.sim.Artifacts().Requests() {
		if r.Method == "PUT" {
			n++
		}
	}
	return n
}

func (e *rolloutEnv) kinds(kind string) []jobsim.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []jobsim.Event
	for _, ev := range e.events {
		if ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

// TestReleaseToAThingGroupOf20AgentsAtFivePerMinute: one `fieldota release` signs, uploads and
// creates the job for a thing group of 20 real agents with maximumPerMinute 5; no emulator minute
// notifies more than five; every device ends SUCCEEDED with the new binary; `rollout status
// --watch` shows it and exits 0.
func TestReleaseToAThingGroupOf20AgentsAtFivePerMinute(t *testing.T) {
	const minute = 250 * time.Millisecond
	e := newRolloutEnv(t, 20, minute)
	f := e.startFleet(t, 20, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, code := runCLI(t, ctx, e.releaseArgs(e.payload(t, "release 2.0.0"), "fw-2-0-0", "--max-per-minute", "5")...)
	if code != 0 || !strings.Contains(out, jobsim.JobArn("fw-2-0-0")) || !strings.Contains(out, "uploaded version") {
		t.Fatalf("release (%d):\n%s", code, out)
	}
	out, code = runCLI(t, ctx, e.statusArgs("fw-2-0-0", "--watch", "--interval", "100ms")...)
	if code != 0 || !strings.Contains(out, "COMPLETED: 20 things: SUCCEEDED 20") {
		t.Fatalf("rollout status --watch (%d):\n%s", code, out)
	}
	for _, d := range f.Devices {
		if got, err := d.Installed(); err != nil || got != "release 2.0.0" {
			t.Fatalf("%s runs %q (%v)", d.Thing, got, err)
		}
	}
	notified := e.kinds(jobsim.EventNotified)
	if len(notified) != 20 {
		t.Fatalf("%d executions rolled out, want 20", len(notified))
	}
	for i := range notified {
		in := 0
		for _, o := range notified[i:] {
			if o.Time.Sub(notified[i].Time) < minute {
				in++
			}
		}
		if in > 5 {
			t.Fatalf("%d things notified within one emulator minute from %s", in, notified[i].Time.Format("15:04:05.000"))
		}
	}
	if span := notified[19].Time.Sub(notified[0].Time); span < 3*minute {
		t.Fatalf("20 things at 5 a minute rolled out in %v, under 3 minutes", span)
	}
	// A finished rollout read again without --watch: still 0.
	if out, code := runCLI(t, ctx, e.statusArgs("fw-2-0-0")...); code != 0 {
		t.Fatalf("rollout status (%d):\n%s", code, out)
	}
}

// TestAbortConfigStopsARolloutWithFailingDevices: devices 1, 4, 7… fail their health check; with
// FAILED ≥ 20 % after ≥ 5 executed the job is aborted: the executions still QUEUED end CANCELED,
// rollout status groups the failure reason and exits 1.
func TestAbortConfigStopsARolloutWithFailingDevices(t *testing.T) {
	// A long emulator minute: the first five are notified at once and dev-0001 fails well before
	// the next five are due, even on a loaded machine.
	e := newRolloutEnv(t, 20, 3*time.Second)
	e.startFleet(t, 20, func(i int) bool { return i%3 == 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, code := runCLI(t, ctx, e.releaseArgs(e.payload(t, "release 2.0.0"), "fw-abort", "--max-per-minute", "5", "--abort", "FAILED:20:5")...)
	if code != 0 {
		t.Fatalf("release (%d):\n%s", code, out)
	}
	out, code = runCLI(t, ctx, e.statusArgs("fw-abort", "--watch", "--interval", "100ms")...)
	if code != 1 || !strings.Contains(out, "CANCELED") || !strings.Contains(out, "FAILED HEALTH_CHECK_FAILED") || !strings.Contains(out, "AbortConfig") {
		t.Fatalf("rollout status --watch (%d):\n%s", code, out)
	}
	d, err := e.sim.DescribeJob("fw-abort")
	if err != nil {
		t.Fatal(err)
	}
	p := d.JobProcessDetails
	if d.Status != jobsim.JobCanceled || p.NumberOfQueuedThings != 0 || p.NumberOfCanceledThings < 10 || p.NumberOfFailedThings < 1 {
		t.Fatalf("job %s %+v", d.Status, p)
	}
	for _, x := range mustList(t, e.sim, "fw-abort") {
		if x.JobExecutionSummary.Status == jobsim.StatusCanceled && x.JobExecutionSummary.StartedAt != 0 {
			t.Fatalf("an execution that had started was canceled by the abort: %+v", x)
		}
	}
}

func mustList(t *testing.T, s *jobsim.Sim, job string) []jobsim.JobExecutionSummaryForJob {
	t.Helper()
	l, err := s.ListJobExecutionsForJob(job)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestReleaseRerunCreatesNothingAndTheVersionPinHolds: the same release run twice uploads once
// and creates one job; someone overwriting the S3 key afterwards changes nothing the devices fetch,
// because the document names the object version.
func TestReleaseRerunCreatesNothingAndTheVersionPinHolds(t *testing.T) {
	e := newRolloutEnv(t, 3, 200*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	file := e.payload(t, "release 2.0.0")
	args := e.releaseArgs(file, "fw-pinned")
	if out, code := runCLI(t, ctx, args...); code != 0 {
		t.Fatalf("first release (%d):\n%s", code, out)
	}
	puts := e.puts
	before := puts()
	out, code := runCLI(t, ctx, args...)
	if code != 0 || !strings.Contains(out, "already exists with this release") || puts() != before {
		t.Fatalf("second release (%d, %d PUTs, was %d):\n%s", code, puts(), before, out)
	}
	if jobs, _, _ := e.sim.ListJobs(jobsim.ListInput{}); len(jobs) != 1 {
		t.Fatalf("%d jobs after the re-run", len(jobs))
	}
	// Another release under the same job id is refused, not merged.
	if out, code := runCLI(t, ctx, e.releaseArgs(e.payload(t, "something else"), "fw-pinned")...); code != 1 || !strings.Contains(out, "other files") {
		t.Fatalf("a different release under the same id (%d):\n%s", code, out)
	}
	// The key is overwritten after the job was created…
	if _, err := e.s3.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String("releases"), Key: aws.String("fw-pinned/app"),
		Body: strings.NewReader("tampered after the release")}); err != nil {
		t.Fatal(err)
	}
	// …and the devices, which come online now, still fetch and install the signed version.
	f := e.startFleet(t, 3, nil)
	if out, code := runCLI(t, ctx, e.statusArgs("fw-pinned", "--watch", "--interval", "100ms")...); code != 0 {
		t.Fatalf("rollout status (%d):\n%s", code, out)
	}
	for _, d := range f.Devices {
		if got, _ := d.Installed(); got != "release 2.0.0" {
			t.Fatalf("%s installed %q", d.Thing, got)
		}
	}
	doc, _ := e.sim.GetJobDocument("fw-pinned")
	if !strings.Contains(doc, "${aws:iot:s3-presigned-url-v2:") || !strings.Contains(doc, "%3FversionId%3D") {
		t.Fatalf("document not version-pinned: %s", doc)
	}
}

// TestReleaseDryRunPrintsTheCallsAndMakesNone.
func TestReleaseDryRunPrintsTheCallsAndMakesNone(t *testing.T) {
	e := newRolloutEnv(t, 1, time.Second)
	ctx := context.Background()
	out, code := runCLI(t, ctx, e.releaseArgs(e.payload(t, "x"), "fw-dry", "--dry-run", "--exponential", "10:2:succeeded=20",
		"--abort", "FAILED:20:5", "--retry", "FAILED:1", "--in-progress-timeout", "60")...)
	if code != 0 {
		t.Fatalf("(%d) %s", code, out)
	}
	for _, want := range []string{`"operation":"DescribeJob"`, `"operation":"DescribeThingGroup"`, `"operation":"GetBucketVersioning"`,
		`"operation":"HeadObject"`, `"operation":"PutObject"`, `"operation":"CreateJob"`, `"exponentialRate":{"baseRatePerMinute":10,"incrementFactor":2,"rateIncreaseCriteria":{"numberOfSucceededThings":20}}`,
		`"abortConfig":{"criteriaList":[{"failureType":"FAILED","action":"CANCEL","thresholdPercentage":20,"minNumberOfExecutedThings":5}]}`,
		`"roleArn":"arn:aws:iam::123456789012:role/iot-s3-presign"`, `s3-presigned-url-v2`} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %s:\n%s", want, out)
		}
	}
	if jobs, _, _ := e.sim.ListJobs(jobsim.ListInput{}); len(jobs) != 0 {
		t.Fatal("the dry run created a job")
	}
	for _, r := range e.sim.Artifacts().Requests() {
		if r.Method == "PUT" && strings.Contains(r.Object, "fw-dry") {
			t.Fatal("the dry run uploaded")
		}
	}
}

// TestReleaseWithAPackageRegistersTheVersionAndJobsWritesPackage: `release --package NAME`
// makes the release a published version of its Software Package Catalog package and names it in
// the job's destinationPackageVersions; with versionUpdateByJobsConfig on, the emulator's Jobs
// writes it into each device's $package shadow at SUCCEEDED. Re-running registers nothing new.
func TestReleaseWithAPackageRegistersTheVersionAndJobsWritesPackage(t *testing.T) {
	e := newRolloutEnv(t, 2, 200*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := e.sim.Catalog().UpdatePackageConfiguration(packages.VersionUpdateByJobsConfig{Enabled: true, RoleArn: "arn:aws:iam::123456789012:role/pkg"}); err != nil {
		t.Fatal(err)
	}
	args := e.releaseArgs(e.payload(t, "release 2.0.0"), "fw-pkg", "--package", "app")
	for range 2 {
		if out, code := runCLI(t, ctx, args...); code != 0 {
			t.Fatalf("release (%d):\n%s", code, out)
		}
	}
	v, err := e.sim.Catalog().GetPackageVersion("app", "2.0.0")
	if err != nil || v.Status != "PUBLISHED" {
		t.Fatalf("package version %+v %v", v, err)
	}
	e.startFleet(t, 2, nil)
	if out, code := runCLI(t, ctx, e.statusArgs("fw-pkg", "--watch", "--interval", "100ms")...); code != 0 {
		t.Fatalf("rollout status (%d):\n%s", code, out)
	}
	doc, ok := e.sim.Shadows().Get(fleet.Options{}.Name(0), "$package")
	if !ok {
		t.Fatal("no $package shadow after SUCCEEDED")
	}
	if app, _ := doc.Reported["app"].(map[string]any); app["version"] != "2.0.0" {
		t.Fatalf("$package reported %v", doc.Reported)
	}
}

// TestReleaseCompressedUploadsTheObjectAndDevicesInstallTheRawBinary: `release --compress zstd`
// builds the object, uploads it (app.zst) instead of the file, signs its manifest; real agents
// decompress it into the binary; a re-run builds the same object and uploads nothing.
func TestReleaseCompressedUploadsTheObjectAndDevicesInstallTheRawBinary(t *testing.T) {
	e := newRolloutEnv(t, 2, 200*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	content := strings.Repeat("release 2.0.0, compressed\n", 4000)
	args := e.releaseArgs(e.payload(t, content), "fw-z", "--compress", "zstd")
	out, code := runCLI(t, ctx, args...)
	if code != 0 || !strings.Contains(out, "s3://releases/fw-z/app.zst: uploaded") {
		t.Fatalf("release (%d):\n%s", code, out)
	}
	puts := e.puts
	before := puts()
	if out, code := runCLI(t, ctx, args...); code != 0 || !strings.Contains(out, "already exists with this release") || puts() != before {
		t.Fatalf("re-run (%d, %d PUTs, was %d):\n%s", code, puts(), before, out)
	}
	f := e.startFleet(t, 2, nil)
	if out, code := runCLI(t, ctx, e.statusArgs("fw-z", "--watch", "--interval", "100ms")...); code != 0 {
		t.Fatalf("rollout status (%d):\n%s", code, out)
	}
	for _, d := range f.Devices {
		if got, _ := d.Installed(); got != strings.TrimSpace(content) {
			t.Fatalf("%s installed %d bytes, want the %d raw bytes", d.Thing, len(got), len(content))
		}
	}
	for _, r := range e.sim.Artifacts().Requests() {
		if r.Method == "GET" && r.Object != "" && r.Object != "releases/fw-z/app.zst" {
			t.Fatalf("devices fetched %s, want the object", r.Object)
		}
	}
}
