package jobdoc

import (
	"errors"
	"net/url"
	"regexp"
	"strings"
)

var placeholderRE = regexp.MustCompile(`^\$\{aws:iot:s3-presigned-url(?:-v2)?:([^{}]+)\}$`)

// IsPlaceholder tells whether u is an unexpanded presigned-URL placeholder.
func IsPlaceholder(u string) bool { return placeholderRE.MatchString(u) }

// checkURL checks the syntax of a payload URL: an absolute http(s) URL with a host and no user
// information, or (for operator tools) a presigned placeholder. Whether the device may fetch it
// — https only, the host on the allowlist — is the download policy's (download.Policy), applied
// to every URL the device is given and to every redirect.
func checkURL(s string, opt Options) error {
	if len(s) > MaxURLLength {
		return errors.New("longer than 8192 characters")
	}
	if IsPlaceholder(s) {
		if !opt.AllowPlaceholders {
			return errors.New("an unexpanded presigned-URL placeholder (was the job created with presignedUrlConfig?)")
		}
		return nil
	}
	if strings.Contains(s, "${") {
		return errors.New("malformed ${…} placeholder")
	}
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL") // the parse error would echo the query (a secret)
	}
	// url.Parse lowercases the scheme: HTTPS:// is https.
	if u.Scheme != "https" && u.Scheme != "http" {
		return errors.New("want an https URL")
	}
	if u.Host == "" || u.User != nil {
		return errors.New("want https://host/path with no user information")
	}
	return nil
}
