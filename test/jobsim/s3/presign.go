// Package s3 is the emulator's stand-in for Amazon S3: presigned URLs and the artifact server.
package s3

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// The emulator's presigned URLs follow S3's query-string scheme in spirit:
//
//	<base>/<bucket>/<key>?X-Amz-Algorithm=FIELDOTA-HMAC-SHA256&X-Amz-Date=20261125T120000Z
//	    &X-Amz-Expires=3600&X-Amz-Signature=<hex HMAC-SHA256>
//
// The signature is HMAC-SHA256(secret, "GET\n/<bucket>/<key>\n<date>\n<expires>"). Any change to the
// path, date or expiry breaks it; a URL is good from its date for its expiry, like S3's.
const (
	ParamAlgorithm = "X-Amz-Algorithm"
	ParamDate      = "X-Amz-Date"
	ParamExpires   = "X-Amz-Expires"
	ParamSignature = "X-Amz-Signature"
	algorithm      = "FIELDOTA-HMAC-SHA256"
	amzDateLayout  = "20060102T150405Z"
)

// Errors a presigned URL check returns; the artifact server maps both to 403 AccessDenied.
var (
	ErrURLExpired   = errors.New("request has expired")
	ErrURLSignature = errors.New("the request signature we calculated does not match the signature you provided")
)

// Presigner mints and checks presigned URLs for objects under Base.
type Presigner struct {
	Base   string // e.g. http://127.0.0.1:8080, no trailing slash
	Secret []byte
	Now    func() time.Time // injectable for expiry tests; nil means time.Now
}

func (p *Presigner) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// Sign returns a URL for objectPath ("bucket/key") valid for expires (clamped to AWS's 60–3600 s).
func (p *Presigner) Sign(objectPath string, expires time.Duration) string {
	secs := max(60, min(3600, int64(expires/time.Second)))
	return p.signAt(objectPath, p.now(), secs)
}

// SignShort mints a URL that expires after d even when d is under AWS's 60 s floor, so tests can
// make a URL expire mid-download. It backdates X-Amz-Date, which keeps the URL well formed.
func (p *Presigner) SignShort(objectPath string, d time.Duration) string {
	return p.signAt(objectPath, p.now().Add(d-60*time.Second), 60)
}

func (p *Presigner) signAt(objectPath string, at time.Time, secs int64) string {
	date := at.UTC().Format(amzDateLayout)
	path := "/" + strings.TrimPrefix(objectPath, "/")
	q := url.Values{}
	q.Set(ParamAlgorithm, algorithm)
	q.Set(ParamDate, date)
	q.Set(ParamExpires, strconv.FormatInt(secs, 10))
	q.Set(ParamSignature, p.mac(path, date, secs))
	return p.Base + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

// Check validates a request URL and returns the object path it grants ("bucket/key").
func (p *Presigner) Check(u *url.URL) (string, error) {
	q := u.Query()
	if q.Get(ParamAlgorithm) != algorithm {
		return "", ErrURLSignature
	}
	date, expStr, sig := q.Get(ParamDate), q.Get(ParamExpires), q.Get(ParamSignature)
	secs, err := strconv.ParseInt(expStr, 10, 64)
	if err != nil || secs <= 0 {
		return "", ErrURLSignature
	}
	want := p.mac(u.Path, date, secs)
	if !hmac.Equal([]byte(want), []byte(sig)) {
		return "", ErrURLSignature
	}
	t, err := time.Parse(amzDateLayout, date)
	if err != nil {
		return "", ErrURLSignature
	}
	if !p.now().Before(t.Add(time.Duration(secs) * time.Second)) {
		return "", ErrURLExpired
	}
	return strings.TrimPrefix(u.Path, "/"), nil
}

func (p *Presigner) mac(path, date string, secs int64) string {
	m := hmac.New(sha256.New, p.Secret)
	fmt.Fprintf(m, "GET\n%s\n%s\n%d", path, date, secs)
	return hex.EncodeToString(m.Sum(nil))
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

// ObjectPath turns the S3 URL inside a placeholder into "bucket/key": path-style
// https://s3.<region>.amazonaws.com/<bucket>/<key>, virtual-hosted https://<bucket>.s3.<region>.amazonaws.com/<key>,
// or the old scheme-less <bucket>/<key>. v2 URLs arrive URL-encoded and are decoded first.
func ObjectPath(s3url string, v2 bool) (string, error) {
	if v2 {
		dec, err := url.QueryUnescape(s3url)
		if err != nil {
			return "", fmt.Errorf("v2 presigned placeholder: %w", err)
		}
		s3url = dec
	}
	if !strings.Contains(s3url, "://") {
		return strings.TrimPrefix(s3url, "/"), nil
	}
	u, err := url.Parse(s3url)
	if err != nil {
		return "", err
	}
	key := strings.TrimPrefix(u.Path, "/")
	host := u.Hostname()
	if i := strings.Index(host, ".s3."); i > 0 { // virtual-hosted style
		return host[:i] + "/" + key, nil
	}
	if key == "" {
		return "", fmt.Errorf("no bucket/key in %q", s3url)
	}
	return key, nil
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
		obj, err := ObjectPath(s3url, v2)
		if err != nil {
			return doc, err
		}
		b.WriteString(doc[from:start])
		b.WriteString(p.Sign(obj, expires))
		from = end
	}
	b.WriteString(doc[from:])
	return b.String(), nil
}
