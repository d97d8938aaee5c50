package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldota/fieldota/test/testdoc"
)

// TestUploadURLJobLeavesItsLogInTheBucketWithNoPresignedURL: the document's uploadLogs is AWS's
// per-device upload placeholder; after the job the execution's log is in the emulator's bucket
// under the thing's and the execution's name, and no URL in it keeps its query string.
func TestUploadURLJobLeavesItsLogInTheBucketWithNoPresignedURL(t *testing.T) {
	h := newHarness(t)
	content := []byte("#!/bin/sh\necho hello from the installer\n")
	h.publish("run.sh", content)
	d := testdoc.For("run.sh", content, "1.0.0")
	d.WorkDir, d.AutoStart = filepath.Join(h.appRoot, "up"), true
	d.Plain = map[string]any{"uploadLogs": "${aws:iot:s3-presigned-url-upload:https://s3.eu-west-1.amazonaws.com/bucket/logs/${thingName}/${jobId}-${executionNumber}.log}"}
	h.createJob("up", h.doc(d))
	h.run()
	if ex := h.waitTerminal("up"); ex.Status != "SUCCEEDED" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	path := filepath.Join(h.artifacts, "bucket", "logs", thing, "up-1.log")
	var log string
	h.waitFor("the uploaded log", func() bool {
		b, err := os.ReadFile(path)
		log = string(b)
		return err == nil
	})
	for _, want := range []string{"job up execution 1 on dev1", "result SUCCEEDED", "downloaded", "hello from the installer"} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %q:\n%s", want, log)
		}
	}
	for _, secret := range []string{"X-Amz-Signature", "X-Amz-Date", "?X-Amz"} {
		if strings.Contains(log, secret) {
			t.Fatalf("the log holds a presigned URL (%s):\n%s", secret, log)
		}
	}
}
