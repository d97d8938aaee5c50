package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// startMoto runs moto_server (Python moto: S3 and the IoT control plane, an implementation no one
// here wrote) on a free loopback port until the test ends.
func startMoto(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("moto_server")
	if err != nil {
		t.Fatalf("moto_server is required (Python moto, 'pip install moto[server]'): %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-H", "127.0.0.1", "-p", fmt.Sprint(port))
	cmd.WaitDelay = 5 * time.Second
	for _, kv := range os.Environ() { // moto's boto3 reads AWS_* too: give it none
		if !strings.HasPrefix(kv, "AWS_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	log, err := os.Create(filepath.Join(t.TempDir(), "moto.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("moto_server's log:\n%s", b)
		}
	})
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get(url + "/moto-api/"); err == nil {
			resp.Body.Close()
			return url
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(log.Name())
			t.Fatalf("moto_server did not start:\n%s", b)
		}
	}
}

// TestReleaseAndStatusAgainstMotoServer runs the same release and status flow as the emulator
// tests against moto_server. Where moto, the emulator and AWS's documents disagree, the test says
// so and pins moto's behaviour (so that a change in either shows here):
//
//  1. moto runs no device side: its executions stay QUEUED forever, so status ends with exit 3
//     ("still rolling out") here, where the emulator's agents reach SUCCEEDED (exit 0).
//  2. moto does not expand ${aws:iot:s3-presigned-url-v2:…} (nothing asks it to: GetJobDocument
//     returns the document as created, which is what AWS documents too; the emulator expands it
//     only towards devices).
//  3. moto reports a new job's status as QUEUED, which is not one of AWS's JobStatus values
//     (IN_PROGRESS, CANCELED, COMPLETED, DELETION_IN_PROGRESS, SCHEDULED); the emulator says
//     IN_PROGRESS. status prints whatever the service says.
//  4. moto keeps jobExecutionsRolloutConfig and abortConfig and shows them in DescribeJob, but with
//     no device side it never applies them; the emulator applies them as AWS documents.
//
// They agree on: refusing an unversioned bucket, PutObject version ids and HeadObject metadata
// (so a re-run uploads nothing), thing group expansion in ListJobExecutionsForJob, the pinned
// document coming back unexpanded from GetJobDocument, CancelJob, and refusing an unsigned GET.
func TestReleaseAndStatusAgainstMotoServer(t *testing.T) {
	fakeAWS(t)
	endpoint := startMoto(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	creds := credentials.NewStaticCredentialsProvider("AKIAIOSFODNN7EXAMPLE", "secret", "")
	sc := awss3.New(awss3.Options{Region: "eu-west-1", BaseEndpoint: aws.String(endpoint), UsePathStyle: true, Credentials: creds})
	ic := iot.New(iot.Options{Region: "eu-west-1", BaseEndpoint: aws.String(endpoint), Credentials: creds})
	if _, err := sc.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: aws.String("releases"),
		CreateBucketConfiguration: &s3types.CreateBucketConfiguration{LocationConstraint: s3types.BucketLocationConstraintEuWest1}}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	if out, code := runCLI(t, ctx, "keygen", "--out", key); code != 0 {
		t.Fatal(out)
	}
	file := filepath.Join(dir, "app")
	if err := os.WriteFile(file, []byte("release 2.0.0"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := ic.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("fleet")}); err != nil {
		t.Fatal(err)
	}
	for _, th := range []string{"dev-0001", "dev-0002"} {
		if _, err := ic.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String(th)}); err != nil {
			t.Fatal(err)
		}
		if _, err := ic.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String("fleet"), ThingName: aws.String(th)}); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"release", "--key", key + ".key", "--file", file, "--target", "binary", "--binary", "app", "--version", "2.0.0",
		"--bucket", "releases", "--job-id", "fw-moto", "--thing", "dev-0001", "--thing-group", "fleet",
		"--role-arn", "arn:aws:iam::123456789012:role/iot-s3-presign", "--max-per-minute", "5", "--abort", "FAILED:20:5",
		"--endpoint-url", endpoint}
	// Both implementations refuse an unversioned bucket.
	if out, code := runCLI(t, ctx, args...); code != 2 || !strings.Contains(out, "versioning") {
		t.Fatalf("release to an unversioned bucket (%d):\n%s", code, out)
	}
	if _, err := sc.PutBucketVersioning(ctx, &awss3.PutBucketVersioningInput{Bucket: aws.String("releases"),
		VersioningConfiguration: &s3types.VersioningConfiguration{Status: s3types.BucketVersioningStatusEnabled}}); err != nil {
		t.Fatal(err)
	}
	out, code := runCLI(t, ctx, args...)
	if code != 0 || !strings.Contains(out, ":job/fw-moto") {
		t.Fatalf("release (%d):\n%s", code, out)
	}
	again, code := runCLI(t, ctx, args...)
	if code != 0 || !strings.Contains(again, "nothing to do") {
		t.Fatalf("re-run (%d):\n%s", code, again)
	}
	versions, err := sc.ListObjectVersions(ctx, &awss3.ListObjectVersionsInput{Bucket: aws.String("releases")})
	if err != nil || len(versions.Versions) != 1 {
		t.Fatalf("objects after two runs: %+v %v", versions, err)
	}
	d, err := ic.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("fw-moto")})
	if err != nil {
		t.Fatal(err)
	}
	if d.Job.JobExecutionsRolloutConfig == nil || aws.ToInt32(d.Job.JobExecutionsRolloutConfig.MaximumPerMinute) != 5 ||
		d.Job.AbortConfig == nil || len(d.Job.Targets) != 2 {
		t.Fatalf("DescribeJob on moto lost the configuration: %+v", d.Job)
	}
	doc, err := ic.GetJobDocument(ctx, &iot.GetJobDocumentInput{JobId: aws.String("fw-moto")})
	if err != nil || !strings.Contains(aws.ToString(doc.Document), "%3FversionId%3D"+aws.ToString(versions.Versions[0].VersionId)) {
		t.Fatalf("the document is not pinned to the uploaded version %s: %v\n%s", aws.ToString(versions.Versions[0].VersionId), err, aws.ToString(doc.Document))
	}
	if d.Job.Status != "QUEUED" { // disagreement 3
		t.Errorf("moto's job status is now %q: update disagreement 3", d.Job.Status)
	}
	// Both expand the group: dev-0001 (a thing target and a member) and dev-0002, once each.
	st, code := runCLI(t, ctx, "rollout", "status", "fw-moto", "--endpoint-url", endpoint)
	if code != exitStillRunning || !strings.Contains(st, "2 things: QUEUED 2") {
		t.Fatalf("rollout status on moto (%d):\n%s", code, st)
	}
	if resp, err := http.Get(endpoint + "/releases/fw-moto/app"); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("an unsigned GET on moto: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if out, code := runCLI(t, ctx, "rollout", "cancel", "fw-moto", "--endpoint-url", endpoint); code != 0 {
		t.Fatalf("cancel (%d): %s", code, out)
	}
	if st, code := runCLI(t, ctx, "rollout", "status", "fw-moto", "--endpoint-url", endpoint); code != 1 || !strings.Contains(st, "CANCELED") {
		t.Fatalf("status after cancel on moto (%d):\n%s", code, st)
	}
}
