package jobsim

import (
	"regexp"
	"strings"
	"unicode/utf8"
)

// AWS's field rules (API reference patterns and lengths).
var (
	thingNamePattern = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)
	jobIDPattern     = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)
	detailKeyPattern = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)
	// A statusDetails value: 1–1024 characters, none of Unicode category C (control, format,
	// private use, surrogate): AWS's [^\p{C}]+.
	detailValueBad = regexp.MustCompile(`\p{C}`)
)

const (
	maxClientToken    = 64
	maxDetailValue    = 1024
	maxStepTimeout    = 10080
	maxDocumentLength = 32768
)

// validDetails checks a statusDetails map by AWS's rules; the message names the first offence.
func validDetails(d map[string]string) (string, bool) {
	for k, v := range d {
		if !detailKeyPattern.MatchString(k) {
			return "statusDetails key " + quote(k) + " must match [a-zA-Z0-9:_-]{1,128}", false
		}
		if !utf8.ValidString(v) {
			return "statusDetails value for " + quote(k) + " is not valid UTF-8", false
		}
		if n := utf8.RuneCountInString(v); n < 1 || n > maxDetailValue {
			return "statusDetails value for " + quote(k) + " must be 1 to 1024 characters", false
		}
		if detailValueBad.MatchString(v) {
			return "statusDetails value for " + quote(k) + " must match [^\\p{C}]+", false
		}
	}
	return "", true
}

func quote(s string) string {
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return `"` + s + `"`
}

// thingFromTarget accepts a thing name or a thing ARN, as CreateJob's targets do.
func thingFromTarget(t string) (string, bool) {
	if strings.HasPrefix(t, "arn:") {
		i := strings.Index(t, ":thing/")
		if i < 0 {
			return "", false // thing groups are not modelled
		}
		t = t[i+len(":thing/"):]
	}
	return t, thingNamePattern.MatchString(t)
}
