// Package uploads emulates the per-device upload URLs of AWS IoT Jobs:
// `${aws:iot:s3-presigned-url-upload:https://s3.<region>.amazonaws.com/<bucket>/<key>}` whose key may
// hold `${thingName}`, `${jobId}` and `${executionNumber}` (at most two of each, never in the
// bucket), expanded for each execution into a presigned PUT URL, and the PUT that stores the
// object in the emulator's bucket directory.
package uploads

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// MaxObject bounds one upload (S3's single PUT limit is 5 GB; logs are small).
const MaxObject = 64 << 20

const (
	paramAlgorithm = "X-Amz-Algorithm"
	paramDate      = "X-Amz-Date"
	paramExpires   = "X-Amz-Expires"
	paramSignature = "X-Amz-Signature"
	algorithm      = "FIELDOTA-HMAC-SHA256-PUT"
	dateLayout     = "20060102T150405Z"
)

// Service mints upload URLs under Base and stores what is PUT to them under Dir/<bucket>/<key>.
type Service struct {
	Base   string // the artifact server's URL
	Dir    string
	Secret []byte
	Now    func() time.Time
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

var placeholder = regexp.MustCompile(`\$\{aws:iot:s3-presigned-url-upload:((?:[^}$]|\$[^{]|\$\{(?:thingName|jobId|executionNumber)\})*)\}`)

// Expand replaces every upload placeholder of a document with a URL for this execution.
func (s *Service) Expand(doc, thing, jobID string, executionNumber int64, expires time.Duration) (string, error) {
	var firstErr error
	out := placeholder.ReplaceAllStringFunc(doc, func(m string) string {
		inner := placeholder.FindStringSubmatch(m)[1]
		u, err := url.Parse(inner)
		if err != nil || u.Scheme != "https" || !strings.HasPrefix(u.Host, "s3.") {
			firstErr = errors.Join(firstErr, fmt.Errorf("upload placeholder: %q is not https://s3.<region>.amazonaws.com/<bucket>/<key>", inner))
			return m
		}
		bucket, key, ok := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
		if !ok || bucket == "" || key == "" || strings.Contains(bucket, "${") {
			firstErr = errors.Join(firstErr, errors.New("upload placeholder: local placeholders are only valid in the key"))
			return m
		}
		for _, v := range []string{"${thingName}", "${jobId}", "${executionNumber}"} {
			if strings.Count(key, v) > 2 {
				firstErr = errors.Join(firstErr, fmt.Errorf("upload placeholder: %s more than twice", v))
				return m
			}
		}
		key = strings.NewReplacer("${thingName}", thing, "${jobId}", jobID, "${executionNumber}", strconv.FormatInt(executionNumber, 10)).Replace(key)
		return s.Sign(bucket+"/"+key, expires)
	})
	if strings.Contains(out, "${thingName}") || strings.Contains(out, "${jobId}") || strings.Contains(out, "${executionNumber}") {
		firstErr = errors.Join(firstErr, errors.New("Local placeholder ... only valid inside of presign url upload"))
	}
	return out, firstErr
}

// Sign returns a presigned PUT URL for objectPath ("bucket/key").
func (s *Service) Sign(objectPath string, expires time.Duration) string {
	secs := max(60, min(3600, int64(expires/time.Second)))
	date := s.now().UTC().Format(dateLayout)
	path := "/" + strings.TrimPrefix(objectPath, "/")
	q := url.Values{}
	q.Set(paramAlgorithm, algorithm)
	q.Set(paramDate, date)
	q.Set(paramExpires, strconv.FormatInt(secs, 10))
	q.Set(paramSignature, s.mac(path, date, secs))
	return s.Base + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

func (s *Service) mac(path, date string, secs int64) string {
	m := hmac.New(sha256.New, s.Secret)
	fmt.Fprintf(m, "PUT\n%s\n%s\n%d", path, date, secs)
	return hex.EncodeToString(m.Sum(nil))
}

// Handles reports whether r is a presigned upload (the artifact server serves the rest).
func Handles(r *http.Request) bool {
	return r.Method == http.MethodPut && r.URL.Query().Get(paramAlgorithm) == algorithm
}

// ServeHTTP stores a presigned PUT.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	secs, err := strconv.ParseInt(q.Get(paramExpires), 10, 64)
	date := q.Get(paramDate)
	if err != nil || r.Method != http.MethodPut || !hmac.Equal([]byte(s.mac(r.URL.Path, date, secs)), []byte(q.Get(paramSignature))) {
		http.Error(w, "<Error><Code>AccessDenied</Code><Message>The request signature we calculated does not match the signature you provided.</Message></Error>", http.StatusForbidden)
		return
	}
	if t, err := time.Parse(dateLayout, date); err != nil || !s.now().Before(t.Add(time.Duration(secs)*time.Second)) {
		http.Error(w, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", http.StatusForbidden)
		return
	}
	obj := strings.TrimPrefix(r.URL.Path, "/")
	dst := filepath.Join(s.Dir, filepath.FromSlash(obj))
	if rel, err := filepath.Rel(s.Dir, dst); err != nil || strings.HasPrefix(rel, "..") || !strings.Contains(obj, "/") {
		http.Error(w, "<Error><Code>InvalidArgument</Code></Error>", http.StatusBadRequest)
		return
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		http.Error(w, "<Error><Code>InternalError</Code></Error>", http.StatusInternalServerError)
		return
	}
	tmp := dst + ".upload"
	f, err := os.Create(tmp)
	if err == nil {
		var n int64
		n, err = io.Copy(f, io.LimitReader(r.Body, MaxObject+1))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil && n > MaxObject {
			err = errors.New("too large")
		}
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		_ = os.Remove(tmp)
		http.Error(w, "<Error><Code>EntityTooLarge</Code></Error>", http.StatusBadRequest)
		return
	}
	w.Header().Set("ETag", `"`+hex.EncodeToString([]byte(obj))[:16]+`"`)
	w.WriteHeader(http.StatusOK)
}
