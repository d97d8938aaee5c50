// Package s3 is the emulator's stand-in for Amazon S3: SigV4 request authentication (headers and
// presigned query strings), buckets with versioning, PutObject/GetObject/HeadObject/ListObjectsV2,
// the presigned URLs the Jobs service puts into job documents, and fault injection.
package s3

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// The emulator's presigned URLs are real SigV4 query-string presigned URLs, as AWS IoT mints them
// for a job's presignedUrlConfig role:
//
//	<base>/<bucket>/<key>?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=<key id>/<date>/<region>/s3/aws4_request
//	    &X-Amz-Date=20261125T120000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=<hex>
//
// signed with the Presigner's own credentials (Secret is the secret access key). The server checks
// these fully (any change to path, query, date or expiry breaks them); URLs presigned by someone
// else (the AWS SDKs, `aws s3 presign`) are checked for shape and expiry only.
const (
	ParamAlgorithm     = "X-Amz-Algorithm"
	ParamCredential    = "X-Amz-Credential"
	ParamDate          = "X-Amz-Date"
	ParamExpires       = "X-Amz-Expires"
	ParamSignedHeaders = "X-Amz-SignedHeaders"
	ParamSignature     = "X-Amz-Signature"
	algorithm          = "AWS4-HMAC-SHA256"
	amzDateLayout      = "20060102T150405Z"
	// DefaultAccessKeyID is the key id of the Jobs service's presigning role in the emulator.
	DefaultAccessKeyID = "ASIAFIELDOTAJOBSIM01"
	// DefaultRegion is the region URLs are signed for when the Presigner names none.
	DefaultRegion = "us-east-1"
)

// Errors a presigned URL check returns; the artifact server maps both to 403.
var (
	ErrURLExpired   = errors.New("request has expired")
	ErrURLSignature = errors.New("the request signature we calculated does not match the signature you provided")
)

// Presigner mints and checks presigned URLs for objects under Base.
type Presigner struct {
	Base        string           // e.g. http://127.0.0.1:8080, no trailing slash
	Secret      []byte           // the secret access key of AccessKeyID
	AccessKeyID string           // "" = DefaultAccessKeyID
	Region      string           // "" = DefaultRegion
	Now         func() time.Time // injectable for expiry tests; nil means time.Now
}

func (p *Presigner) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Presigner) keyID() string {
	if p.AccessKeyID != "" {
		return p.AccessKeyID
	}
	return DefaultAccessKeyID
}

func (p *Presigner) region() string {
	if p.Region != "" {
		return p.Region
	}
	return DefaultRegion
}

// Sign returns a URL for objectPath ("bucket/key") valid for expires (clamped to AWS's 60–3600 s).
func (p *Presigner) Sign(objectPath string, expires time.Duration) string {
	return p.SignVersion(objectPath, "", expires)
}

// SignVersion is Sign for one version of the object (versionId in the signed query); "" = current.
func (p *Presigner) SignVersion(objectPath, versionID string, expires time.Duration) string {
	secs := max(60, min(3600, int64(expires/time.Second)))
	return p.signAt(objectPath, versionID, p.now(), secs)
}

// SignShort mints a URL that expires after d even when d is under AWS's 60 s floor, so tests can
// make a URL expire mid-download. It backdates X-Amz-Date, which keeps the URL well formed.
func (p *Presigner) SignShort(objectPath string, d time.Duration) string {
	return p.signAt(objectPath, "", p.now().Add(d-60*time.Second), 60)
}

func (p *Presigner) signAt(objectPath, versionID string, at time.Time, secs int64) string {
	u, err := url.Parse(p.Base)
	if err != nil {
		panic("s3: bad presigner base " + p.Base) // a programming error: Base comes from our own listener
	}
	u.Path = "/" + strings.TrimPrefix(objectPath, "/")
	u.RawPath = ""
	q := url.Values{}
	if versionID != "" {
		q.Set("versionId", versionID)
	}
	q.Set(ParamExpires, strconv.FormatInt(secs, 10))
	u.RawQuery = q.Encode()
	signed, err := p.presign(http.MethodGet, u, at)
	if err != nil {
		panic("s3: presign: " + err.Error()) // the signer fails only on a malformed request
	}
	return signed
}

// presign signs u (its query holding X-Amz-Expires) for method at time at with p's credentials.
func (p *Presigner) presign(method string, u *url.URL, at time.Time) (string, error) {
	req := &http.Request{Method: method, URL: u, Host: u.Host, Header: http.Header{}}
	creds := aws.Credentials{AccessKeyID: p.keyID(), SecretAccessKey: string(p.Secret)}
	signed, _, err := v4.NewSigner(func(o *v4.SignerOptions) { o.DisableURIPathEscaping = true }).
		PresignHTTP(context.Background(), creds, req, "UNSIGNED-PAYLOAD", "s3", p.region(), at)
	return signed, err
}

// Check validates a request URL presigned by p and returns the object path it grants ("bucket/key").
// A URL presigned with other credentials is ErrURLSignature here; the server accepts those by shape.
func (p *Presigner) Check(u *url.URL) (string, error) {
	return p.check(http.MethodGet, u)
}

func (p *Presigner) check(method string, u *url.URL) (string, error) {
	qa, err := parseQueryAuth(u.Query())
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrURLSignature, err)
	}
	if qa.cred.keyID != p.keyID() {
		return "", fmt.Errorf("%w: not presigned by the emulator", ErrURLSignature)
	}
	again := *u
	q := u.Query()
	q.Del(ParamSignature)
	again.RawQuery = q.Encode()
	signed, err := p.presign(method, &again, qa.date)
	if err != nil {
		return "", ErrURLSignature
	}
	su, err := url.Parse(signed)
	if err != nil || !hmac.Equal([]byte(su.Query().Get(ParamSignature)), []byte(qa.signature)) {
		return "", ErrURLSignature
	}
	if !p.now().Before(qa.date.Add(qa.expires)) {
		return "", ErrURLExpired
	}
	return strings.TrimPrefix(u.Path, "/"), nil
}

// placeholderStart opens every presigned-URL placeholder: ${aws:iot:s3-presigned-url:<S3 URL>} and
// the -v2 form (URL-encoded S3 URL).
const placeholderStart = "${aws:iot:s3-presigned-url"

// ErrPlaceholder is a malformed presigned-URL placeholder (unterminated, no kind, bad characters).
var ErrPlaceholder = errors.New("malformed presigned URL placeholder")

// nextPlaceholder finds the first placeholder in doc at or after from. It returns its bounds and
// parts, or ok=false when there is none; a placeholder that is not closed by '}' before a character
// no S3 URL holds (quote, backslash, brace, '$', space, control) is an error, so that it can never
// swallow the rest of a document.
func nextPlaceholder(doc string, from int) (start, end int, s3url string, v2, ok bool, err error) {
	i := strings.Index(doc[from:], placeholderStart)
	if i < 0 {
		return 0, 0, "", false, false, nil
	}
	start = from + i
	rest := doc[start+len(placeholderStart):]
	switch {
	case strings.HasPrefix(rest, "-upload:"):
		// A per-device upload URL: the uploads package expands and checks it (its key holds
		// ${thingName}-style placeholders this scanner would stop at).
		return nextPlaceholder(doc, start+len(placeholderStart))
	case strings.HasPrefix(rest, "-v2:"):
		v2, rest = true, rest[len("-v2:"):]
	case strings.HasPrefix(rest, ":"):
		rest = rest[1:]
	default:
		return 0, 0, "", false, false, fmt.Errorf("%w at offset %d: want %s: or %s-v2:", ErrPlaceholder, start, placeholderStart, placeholderStart)
	}
	body := len(doc) - len(rest)
	for j := 0; j < len(rest); j++ {
		c := rest[j]
		if c == '}' {
			if j == 0 {
				return 0, 0, "", false, false, fmt.Errorf("%w at offset %d: no S3 URL", ErrPlaceholder, start)
			}
			return start, body + j + 1, rest[:j], v2, true, nil
		}
		if c == '"' || c == '\\' || c == '{' || c == '$' || c <= ' ' || c == 0x7f {
			return 0, 0, "", false, false, fmt.Errorf("%w at offset %d: not closed by '}' before %q", ErrPlaceholder, start, c)
		}
	}
	return 0, 0, "", false, false, fmt.Errorf("%w at offset %d: not closed by '}'", ErrPlaceholder, start)
}

// ObjectPath turns the S3 URL inside a placeholder into "bucket/key" (see ObjectRef).
func ObjectPath(s3url string, v2 bool) (string, error) {
	obj, _, err := ObjectRef(s3url, v2)
	return obj, err
}

// ObjectRef turns the S3 URL inside a placeholder into "bucket/key" and the version it pins:
// path-style https://s3.<region>.amazonaws.com/<bucket>/<key>, virtual-hosted
// https://<bucket>.s3.<region>.amazonaws.com/<key>, or the old scheme-less <bucket>/<key>. v2 URLs
// arrive URL-encoded and are decoded first; only they may pin ?versionId= (AWS: v1 does not
// support versionId).
func ObjectRef(s3url string, v2 bool) (obj, versionID string, err error) {
	if v2 {
		dec, err := url.QueryUnescape(s3url)
		if err != nil {
			return "", "", fmt.Errorf("v2 presigned placeholder: %w", err)
		}
		s3url = dec
	}
	if !strings.Contains(s3url, "://") {
		return strings.TrimPrefix(s3url, "/"), "", nil
	}
	u, err := url.Parse(s3url)
	if err != nil {
		return "", "", err
	}
	if v2 {
		versionID = u.Query().Get("versionId")
	}
	key := strings.TrimPrefix(u.Path, "/")
	host := u.Hostname()
	if i := strings.Index(host, ".s3."); i > 0 { // virtual-hosted style
		return host[:i] + "/" + key, versionID, nil
	}
	if key == "" || !strings.Contains(key, "/") {
		return "", "", fmt.Errorf("no bucket/key in %q", s3url)
	}
	return key, versionID, nil
}

// ExpandPlaceholders replaces every presigned-URL placeholder in a JSON document with a fresh URL.
// It works on the raw text, so it must run on the document as stored (placeholders contain no
// characters that JSON escapes). A malformed placeholder is an error and the document comes back
// unchanged.
func (p *Presigner) ExpandPlaceholders(doc string, expires time.Duration) (string, error) {
	var b strings.Builder
	from := 0
	for {
		start, end, s3url, v2, ok, err := nextPlaceholder(doc, from)
		if err != nil {
			return doc, err
		}
		if !ok {
			break
		}
		obj, version, err := ObjectRef(s3url, v2)
		if err != nil {
			return doc, err
		}
		b.WriteString(doc[from:start])
		b.WriteString(p.SignVersion(obj, version, expires))
		from = end
	}
	b.WriteString(doc[from:])
	return b.String(), nil
}
