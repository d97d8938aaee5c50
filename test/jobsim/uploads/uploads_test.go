package uploads

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestUploadURLIsPerExecutionAndStoresWhatIsPut: the key's local placeholders become the
// execution's; the PUT lands in the bucket; a URL edited to another key is refused.
func TestUploadURLIsPerExecutionAndStoresWhatIsPut(t *testing.T) {
	dir := t.TempDir()
	s := &Service{Dir: dir, Secret: []byte("k")}
	srv := httptest.NewServer(s)
	defer srv.Close()
	s.Base = srv.URL
	doc := `{"logs":"${aws:iot:s3-presigned-url-upload:https://s3.eu-west-1.amazonaws.com/bucket/logs/${thingName}/${jobId}-${executionNumber}.log}"}`
	out, err := s.Expand(doc, "dev1", "job7", 2, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	u := strings.TrimSuffix(strings.TrimPrefix(out, `{"logs":"`), `"}`)
	if !strings.Contains(u, "/bucket/logs/dev1/job7-2.log?") {
		t.Fatalf("url: %s", u)
	}
	put := func(u string) int {
		req, _ := http.NewRequest(http.MethodPut, u, strings.NewReader("hello"))
		if !Handles(req) {
			t.Fatal("not recognised as an upload")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := put(u); code != 200 {
		t.Fatalf("PUT: %d", code)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "bucket", "logs", "dev1", "job7-2.log")); string(b) != "hello" {
		t.Fatalf("stored %q", b)
	}
	if code := put(strings.Replace(u, "job7-2", "job7-3", 1)); code != 403 {
		t.Fatalf("edited key: %d", code)
	}
	for _, bad := range []string{
		`{"a":"${aws:iot:s3-presigned-url-upload:https://s3.eu-west-1.amazonaws.com/${thingName}/k}"}`,
		`{"a":"${thingName}"}`,
	} {
		if _, err := s.Expand(bad, "dev1", "j", 1, time.Hour); err == nil {
			t.Errorf("%s expanded", bad)
		}
	}
}
