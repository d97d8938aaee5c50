package jobsim

import (
	"context"
	"testing"
	"time"

	"github.com/fieldota/fieldota/test/jobsim/packages"
)

// TestReleaseRegistrationOverTheControlAPIIsIdempotentAndFeedsCreateJob: RegisterPackageVersion
// (what `fieldota release --package` calls) creates and publishes the version once, a re-run is
// a no-op, and CreateJob accepts its ARN as a destination while an unpublished one is refused.
func TestReleaseRegistrationOverTheControlAPIIsIdempotentAndFeedsCreateJob(t *testing.T) {
	s, err := Start(context.Background(), Config{HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := &Client{BaseURL: s.HTTPURL()}
	ctx := context.Background()
	in := packages.CreateVersionInput{Attributes: map[string]string{"sha256": "ab"}}
	arn, err := c.RegisterPackageVersion(ctx, "rootfs", "2.0.0", in)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := c.RegisterPackageVersion(ctx, "rootfs", "2.0.0", in); err != nil || again != arn {
		t.Fatalf("re-run: %s %v", again, err)
	}
	if err := c.UpdatePackageConfiguration(ctx, packages.VersionUpdateByJobsConfig{Enabled: true, RoleArn: "arn:aws:iam::1:role/x"}); err != nil {
		t.Fatal(err)
	}
	doc := `{"sha":"${aws:iot:package:rootfs:version:2.0.0:attributes:sha256}"}`
	if _, err := c.CreateJob(ctx, CreateJobInput{JobID: "j", Targets: []string{"dev1"}, Document: doc, DestinationPackageVersions: []string{arn}}); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.GetJobDocument("j"); d != `{"sha":"ab"}` {
		t.Fatalf("stored document %s", d)
	}
	if _, err := c.CreatePackageVersion(ctx, "rootfs", "3.0.0", packages.CreateVersionInput{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateJob(ctx, CreateJobInput{JobID: "k", Targets: []string{"dev1"}, Document: `{}`,
		DestinationPackageVersions: []string{s.Catalog().VersionArn("rootfs", "3.0.0")}}); err == nil {
		t.Fatal("a draft version was accepted as a destination")
	}
	if err := c.CreateCommand(ctx, "reboot", []byte(`{"command":"reboot"}`)); err != nil {
		t.Fatal(err)
	}
	id, err := c.StartCommandExecution(ctx, "reboot", "dev1", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ex, err := c.GetCommandExecution(ctx, id); err != nil || ex.Status != "CREATED" {
		t.Fatalf("execution %+v %v", ex, err)
	}
	if _, err := c.GetThingShadow(ctx, "dev1", "$package"); err == nil {
		t.Fatal("a shadow nobody wrote exists")
	}
}
