package s3

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// SigV4 as S3 receives it: the Authorization header (SDKs, the AWS CLI) or a presigned query
// string. The emulator accepts any credentials; it checks that a request carries a well-formed
// signature that has not expired (and, for its own presigned URLs, that the signature is right).

// credential is the parsed "<key id>/<yyyymmdd>/<region>/<service>/aws4_request" scope.
type credential struct {
	keyID, day, region, service string
}

var (
	keyIDPattern     = regexp.MustCompile(`^[A-Z0-9]{16,128}$`)
	dayPattern       = regexp.MustCompile(`^[0-9]{8}$`)
	signaturePattern = regexp.MustCompile(`^[0-9a-f]{64}$`)
	headerNamePat    = regexp.MustCompile(`^[a-z0-9-]+(;[a-z0-9-]+)*$`)
)

func parseCredential(s string) (credential, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 5 || parts[4] != "aws4_request" {
		return credential{}, errors.New("credential must be <key id>/<date>/<region>/s3/aws4_request")
	}
	c := credential{keyID: parts[0], day: parts[1], region: parts[2], service: parts[3]}
	switch {
	case !keyIDPattern.MatchString(c.keyID):
		return c, fmt.Errorf("access key id %q is malformed", c.keyID)
	case !dayPattern.MatchString(c.day):
		return c, fmt.Errorf("credential date %q is not yyyymmdd", c.day)
	case c.region == "":
		return c, errors.New("credential has no region")
	case c.service != "s3":
		return c, fmt.Errorf("credential is for service %q, not s3", c.service)
	}
	return c, nil
}

// queryAuth is a presigned URL's authentication.
type queryAuth struct {
	cred      credential
	date      time.Time
	expires   time.Duration
	signature string
}

// S3's limit on X-Amz-Expires: seven days.
const maxPresignExpiry = 7 * 24 * time.Hour

func parseQueryAuth(q url.Values) (queryAuth, error) {
	var a queryAuth
	if q.Get(ParamAlgorithm) != algorithm {
		return a, fmt.Errorf("%s must be %s", ParamAlgorithm, algorithm)
	}
	c, err := parseCredential(q.Get(ParamCredential))
	if err != nil {
		return a, err
	}
	a.cred = c
	if a.date, err = time.Parse(amzDateLayout, q.Get(ParamDate)); err != nil {
		return a, fmt.Errorf("%s must be yyyymmddThhmmssZ", ParamDate)
	}
	if a.date.Format("20060102") != c.day {
		return a, errors.New("the credential's date is not the day of X-Amz-Date")
	}
	secs, err := strconv.ParseInt(q.Get(ParamExpires), 10, 64)
	if err != nil || secs < 1 || time.Duration(secs)*time.Second > maxPresignExpiry {
		return a, fmt.Errorf("%s must be 1 to 604800 seconds", ParamExpires)
	}
	a.expires = time.Duration(secs) * time.Second
	if sh := q.Get(ParamSignedHeaders); !headerNamePat.MatchString(sh) || !hasHost(sh) {
		return a, fmt.Errorf("%s must list host", ParamSignedHeaders)
	}
	a.signature = q.Get(ParamSignature)
	if !signaturePattern.MatchString(a.signature) {
		return a, fmt.Errorf("%s must be 64 hex digits", ParamSignature)
	}
	return a, nil
}

func hasHost(signedHeaders string) bool {
	for _, h := range strings.Split(signedHeaders, ";") {
		if h == "host" {
			return true
		}
	}
	return false
}

// headerAuth is an Authorization: AWS4-HMAC-SHA256 header's authentication.
type headerAuth struct {
	cred        credential
	date        time.Time
	payloadHash string
}

// S3 refuses a request whose X-Amz-Date is more than 15 minutes off (RequestTimeTooSkewed).
const maxSkew = 15 * time.Minute

var errSkewed = errors.New("the difference between the request time and the current time is too large")

func parseHeaderAuth(h http.Header, now time.Time) (headerAuth, error) {
	var a headerAuth
	v, ok := strings.CutPrefix(h.Get("Authorization"), algorithm+" ")
	if !ok {
		return a, errors.New("authorization must be " + algorithm)
	}
	fields := map[string]string{}
	for _, part := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return a, fmt.Errorf("authorization component %q is not key=value", part)
		}
		fields[k] = val
	}
	c, err := parseCredential(fields["Credential"])
	if err != nil {
		return a, err
	}
	a.cred = c
	if sh := fields["SignedHeaders"]; !headerNamePat.MatchString(sh) || !hasHost(sh) {
		return a, errors.New("SignedHeaders must list host")
	}
	if !signaturePattern.MatchString(fields["Signature"]) {
		return a, errors.New("signature must be 64 hex digits")
	}
	if a.date, err = time.Parse(amzDateLayout, h.Get("X-Amz-Date")); err != nil {
		return a, errors.New("X-Amz-Date must be yyyymmddThhmmssZ")
	}
	if a.date.Format("20060102") != c.day {
		return a, errors.New("the credential's date is not the day of X-Amz-Date")
	}
	if d := now.Sub(a.date); d > maxSkew || d < -maxSkew {
		return a, errSkewed
	}
	a.payloadHash = h.Get("X-Amz-Content-Sha256")
	if a.payloadHash == "" {
		return a, errors.New("x-amz-content-sha256 is required")
	}
	return a, nil
}
