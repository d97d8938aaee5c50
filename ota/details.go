package ota

import (
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// AWS IoT Jobs limits for statusDetails (reference §2.8): keys match [a-zA-Z0-9:_-]{1,128};
// values are 1–1024 characters with no Unicode "Other" characters (control, format, unassigned).
const (
	MaxDetailKey   = 128
	MaxDetailValue = 1024
)

var detailKey = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)

// SanitizeDetails returns a copy of d that the service will accept: invalid keys dropped,
// control characters replaced by spaces, values cut to 1024 characters (output tails are cut by
// their producer, which knows which end matters), empty values dropped.
func SanitizeDetails(d map[string]string) map[string]string {
	out := make(map[string]string, len(d))
	for k, v := range d {
		if !detailKey.MatchString(k) {
			continue
		}
		v = CleanValue(v)
		if v == "" {
			continue
		}
		out[k] = v
	}
	return out
}

// CleanValue replaces characters AWS refuses (\p{C}) with spaces, trims, and keeps at most
// MaxDetailValue characters.
func CleanValue(v string) string {
	if !utf8.ValidString(v) {
		v = strings.ToValidUTF8(v, "?")
	}
	v = strings.Map(func(r rune) rune {
		if unicode.Is(unicode.C, r) || !unicode.IsPrint(r) && !unicode.IsSpace(r) {
			return ' '
		}
		if unicode.IsSpace(r) && r != ' ' {
			return ' '
		}
		return r
	}, v)
	v = strings.TrimSpace(v)
	if utf8.RuneCountInString(v) > MaxDetailValue {
		v = string([]rune(v)[:MaxDetailValue])
	}
	return v
}

// Tail keeps the last n characters of s: program output is most useful at its end.
func Tail(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[len(r)-n:])
}
