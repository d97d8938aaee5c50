package packages

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func catalog(t *testing.T) *Catalog {
	t.Helper()
	c := &Catalog{Region: "eu-west-1", Account: "123456789012"}
	if _, err := c.CreatePackage("rootfs", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreatePackageVersion("rootfs", "2.0.0", CreateVersionInput{
		Attributes: map[string]string{"sha256": "ab\"cd", "board": "rev-c"},
		Artifact:   &Artifact{S3Location: S3Location{Bucket: "bucket", Key: "rootfs-2.img", Version: "v1"}},
	}); err != nil {
		t.Fatal(err)
	}
	return c
}

func code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// TestOnlyPublishedVersionsDeployAndPublishedAttributesAreFrozen: a draft cannot be a job's
// destination; once published its attributes cannot change; $default and $null resolve.
func TestOnlyPublishedVersionsDeployAndPublishedAttributesAreFrozen(t *testing.T) {
	c := catalog(t)
	arn := c.VersionArn("rootfs", "2.0.0")
	if _, err := c.Resolve([]string{arn}); code(err) != "ValidationException" {
		t.Fatalf("a draft deployed: %v", err)
	}
	if _, err := c.UpdatePackageVersion("rootfs", "2.0.0", UpdateVersionInput{Action: "PUBLISH"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdatePackageVersion("rootfs", "2.0.0", UpdateVersionInput{Attributes: map[string]string{"x": "y"}}); code(err) != "ValidationException" {
		t.Fatalf("published attributes changed: %v", err)
	}
	if err := c.SetDefaultVersion("rootfs", "2.0.0"); err != nil {
		t.Fatal(err)
	}
	d, err := c.Resolve([]string{c.VersionArn("rootfs", VersionDefault)})
	if err != nil || d[0].Version != "2.0.0" {
		t.Fatalf("$default: %+v %v", d, err)
	}
	if d, err = c.Resolve([]string{c.VersionArn("rootfs", VersionNull)}); err != nil || !d[0].Remove {
		t.Fatalf("$null: %+v %v", d, err)
	}
	var upd map[string]map[string]map[string]any
	_ = json.Unmarshal(ShadowUpdate(d), &upd)
	if v, ok := upd["state"]["reported"]["rootfs"]; !ok || v != nil {
		t.Fatalf("$null writes %v", upd)
	}
	for _, bad := range []string{"arn:aws:iot:us-east-1:123456789012:package/rootfs/version/2.0.0", c.VersionArn("nope", "1"), c.VersionArn("rootfs", "9")} {
		if _, err := c.Resolve([]string{bad}); err == nil {
			t.Errorf("%s resolved", bad)
		}
	}
	if _, err := c.CreatePackageVersion("rootfs", "a/b", CreateVersionInput{}); code(err) != "ValidationException" {
		t.Fatalf("bad version name: %v", err)
	}
	if _, err := c.CreatePackageVersion("rootfs", "3", CreateVersionInput{Attributes: map[string]string{"k": strings.Repeat("x", MaxAttributeBytes)}}); code(err) != "ValidationException" {
		t.Fatalf("attributes over 3 KB: %v", err)
	}
}

// TestSubstituteResolvesAttributesMapsArtifactsAndRefusesAmbiguity.
func TestSubstituteResolvesAttributesMapsArtifactsAndRefusesAmbiguity(t *testing.T) {
	c := catalog(t)
	if _, err := c.UpdatePackageVersion("rootfs", "2.0.0", UpdateVersionInput{Action: "PUBLISH"}); err != nil {
		t.Fatal(err)
	}
	dest, err := c.Resolve([]string{c.VersionArn("rootfs", "2.0.0")})
	if err != nil {
		t.Fatal(err)
	}
	doc := `{"sha":"${aws:iot:package:rootfs:version:2.0.0:attributes:sha256}","all":${aws:iot:package::version::attributes},` +
		`"url":"${aws:iot:package:rootfs:version:2.0.0:artifact-location:s3-presigned-url}"}`
	out, err := c.Substitute(doc, dest)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatal(err)
	}
	if m["sha"] != `ab"cd` || m["all"].(map[string]any)["board"] != "rev-c" || m["url"] != "${aws:iot:s3-presigned-url:https://s3.eu-west-1.amazonaws.com/bucket/rootfs-2.img}" {
		t.Fatalf("substituted: %s", out)
	}
	if _, err := c.CreatePackage("app", ""); err != nil {
		t.Fatal(err)
	}
	_, _ = c.CreatePackageVersion("app", "1", CreateVersionInput{})
	_, _ = c.UpdatePackageVersion("app", "1", UpdateVersionInput{Action: "PUBLISH"})
	two, _ := c.Resolve([]string{c.VersionArn("rootfs", "2.0.0"), c.VersionArn("app", "1")})
	for name, d := range map[string]string{
		"ambiguous empty": `{"a":"${aws:iot:package::version::attributes:board}"}`,
		"$null":           `{"a":"${aws:iot:package:rootfs:version:$null:attributes:board}"}`,
		"missing key":     `{"a":"${aws:iot:package:rootfs:version:2.0.0:attributes:nope}"}`,
		"map in string":   `{"a":"${aws:iot:package:rootfs:version:2.0.0:attributes}"}`,
	} {
		if _, err := c.Substitute(d, two); err == nil {
			t.Errorf("%s: substituted", name)
		} else if name == "ambiguous empty" && !strings.Contains(err.Error(), "Cannot resolve empty package name and version name given multiple elements") {
			t.Errorf("%s: %v", name, err)
		}
	}
}
