package verify_test

import (
	"testing"

	"github.com/fieldota/fieldota/verify"
)

func FuzzParseSignature(f *testing.F) {
	for _, s := range []string{"MEUCIQ==", "", "!!", " TUVVQ0lR\n", "TUVVQ0lR="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sig, err := verify.ParseSignature(s)
		if err == nil && (len(sig) == 0 || len(sig) > 1024) {
			t.Fatalf("accepted a %d-byte signature", len(sig))
		}
	})
}

func FuzzParseEnvelope(f *testing.F) {
	k := getKeys(f)
	f.Add(attest(f, k.p256, digestOf(payload), release("1.0")))
	f.Add([]byte(`{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[{"keyid":"","sig":"MEUCIQ=="}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := verify.ParseEnvelope(b)
		if err == nil && (env.PayloadType != verify.PayloadType || len(env.Signatures) == 0) {
			t.Fatalf("accepted %q", b)
		}
		// Statements are only parsed after verification, but must never panic either.
		_, _ = verify.ParseStatement(b)
	})
}

func FuzzParseVersion(f *testing.F) {
	for _, s := range []string{"1.0", "v1.2.3-rc.1+b", "01", ""} {
		f.Add(s, "1.0.0")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		va, errA := verify.ParseVersion(a)
		vb, errB := verify.ParseVersion(b)
		if errA == nil && errB == nil && va.Compare(vb) != -vb.Compare(va) {
			t.Fatalf("Compare not antisymmetric for %q, %q", a, b)
		}
		if errA == nil && va.Compare(va) != 0 {
			t.Fatalf("%q does not equal itself", a)
		}
	})
}
