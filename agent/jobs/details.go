package jobs

import (
	"fmt"
	"sort"
	"unicode"
	"unicode/utf8"
)

// Limits of statusDetails enforced by AWS IoT Jobs.
const (
	MaxStatusDetailsKeyLen   = 128
	MaxStatusDetailsValueLen = 1024
)

// ValidateStatusDetails checks a statusDetails map as the service does: keys 1–128 characters of
// [a-zA-Z0-9:_-], values 1–1024 characters with no Unicode "Other" (control, format, unassigned)
// characters. The error wraps ErrInvalidStatusDetails. Update does not call it, so that a caller
// gets the service's own InvalidRequest for what it sends; an agent should check before sending.
func ValidateStatusDetails(d map[string]string) error {
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic error for the same map
	for _, k := range keys {
		if n := utf8.RuneCountInString(k); n < 1 || n > MaxStatusDetailsKeyLen {
			return fmt.Errorf("%w: key %.40q has %d characters (1–%d)", ErrInvalidStatusDetails, k, n, MaxStatusDetailsKeyLen)
		}
		for _, r := range k {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == ':' || r == '_' || r == '-') {
				return fmt.Errorf("%w: key %.40q has character %q", ErrInvalidStatusDetails, k, r)
			}
		}
		v := d[k]
		if !utf8.ValidString(v) {
			return fmt.Errorf("%w: value of %q is not UTF-8", ErrInvalidStatusDetails, k)
		}
		if n := utf8.RuneCountInString(v); n < 1 || n > MaxStatusDetailsValueLen {
			return fmt.Errorf("%w: value of %q has %d characters (1–%d)", ErrInvalidStatusDetails, k, n, MaxStatusDetailsValueLen)
		}
		for _, r := range v {
			if !isAssigned(r) {
				return fmt.Errorf("%w: value of %q has control or unassigned character %U", ErrInvalidStatusDetails, k, r)
			}
		}
	}
	return nil
}

// isAssigned reports whether r is in a Unicode category other than Other: \p{C} includes unassigned
// code points (Cn), which package unicode has no table for, so test the positive categories.
func isAssigned(r rune) bool {
	return unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z)
}
