package verify_test

import (
	"testing"

	"github.com/fieldota/fieldota/verify"
)

func TestVersionPrecedence(t *testing.T) {
	// Ascending, per semver §11 (with "1.0" meaning 1.0.0 and a leading "v" allowed).
	order := []string{"0.9.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
		"1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-beta.99999999999999999999", "1.0.0-beta.100000000000000000000", "1.0.0-rc.1", "1.0", "1.0.1", "v1.1", "1.10.0", "2"}
	for i := range order {
		for j := range order {
			a, err := verify.ParseVersion(order[i])
			if err != nil {
				t.Fatal(err)
			}
			b, _ := verify.ParseVersion(order[j])
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := a.Compare(b); got != want {
				t.Errorf("Compare(%s, %s) = %d, want %d", order[i], order[j], got, want)
			}
		}
	}
	a, _ := verify.ParseVersion("1.0.0+build.1")
	b, _ := verify.ParseVersion("1.0.0+build.2")
	if a.Compare(b) != 0 {
		t.Error("build metadata must not affect precedence")
	}
}

func TestParseVersionRefuses(t *testing.T) {
	for _, s := range []string{"", "1.", ".1", "1.2.3.4", "01.2", "1.02", "1.0.0-", "1.0.0-01", "1.0.0-a..b",
		"1.0.0+", "latest", "1.0 ", "-1.0", "1.0.0-é"} {
		if _, err := verify.ParseVersion(s); err == nil {
			t.Errorf("ParseVersion(%q) accepted", s)
		}
	}
}
