package s3

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestPresignedURLLivesExactlyItsExpiry(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	p := &Presigner{Base: "http://127.0.0.1:9", Secret: []byte("k"), Now: func() time.Time { return now }}
	cases := []struct {
		name string
		url  string
		life time.Duration
	}{
		{"one hour", p.Sign("b/k with space.bin", time.Hour), time.Hour},
		{"clamped up to AWS's 60 s floor", p.Sign("b/k", time.Second), time.Minute},
		{"clamped down to AWS's 3600 s ceiling", p.Sign("b/k", 10*time.Hour), time.Hour},
		{"short, for tests", p.SignShort("b/k", 3*time.Second), 3 * time.Second},
	}
	start := now
	for _, c := range cases {
		u, err := url.Parse(c.url)
		if err != nil {
			t.Fatal(err)
		}
		now = start.Add(c.life - time.Second)
		if obj, err := p.Check(u); err != nil || !strings.HasPrefix(obj, "b/k") {
			t.Fatalf("%s: refused while valid: %q %v", c.name, obj, err)
		}
		now = start.Add(c.life)
		if _, err := p.Check(u); !errors.Is(err, ErrURLExpired) {
			t.Fatalf("%s: accepted at expiry: %v", c.name, err)
		}
		now = start
	}
	other := &Presigner{Base: p.Base, Secret: []byte("other"), Now: p.Now}
	u, _ := url.Parse(other.Sign("b/k", time.Hour))
	if _, err := p.Check(u); !errors.Is(err, ErrURLSignature) {
		t.Fatalf("foreign secret accepted: %v", err)
	}
}

func TestPlaceholderFormsExpandToTheSameObject(t *testing.T) {
	for _, c := range []struct {
		in  string
		v2  bool
		out string
	}{
		{"https://s3.eu-west-1.amazonaws.com/bkt/dir/app.bin", false, "bkt/dir/app.bin"},
		{"https://bkt.s3.eu-west-1.amazonaws.com/dir/app.bin", false, "bkt/dir/app.bin"},
		{"bkt/dir/app.bin", false, "bkt/dir/app.bin"},
		{"https%3A%2F%2Fs3.eu-west-1.amazonaws.com%2Fbkt%2Fdir%2Fapp.bin", true, "bkt/dir/app.bin"},
		{"https%3A%2F%2Fs3.eu-west-1.amazonaws.com%2Fbkt%2Fapp.bin%3FversionId%3D42", true, "bkt/app.bin"},
	} {
		got, err := ObjectPath(c.in, c.v2)
		if err != nil || got != c.out {
			t.Errorf("ObjectPath(%q, %v) = %q, %v", c.in, c.v2, got, err)
		}
	}
	p := &Presigner{Base: "http://h", Secret: []byte("k")}
	doc := `{"a":"${aws:iot:s3-presigned-url:https://s3.r.amazonaws.com/bkt/x.bin}","b":"${aws:iot:s3-presigned-url-v2:https%3A%2F%2Fbkt.s3.r.amazonaws.com%2Fy.bin}"}`
	out, err := p.ExpandPlaceholders(doc, time.Hour)
	if err != nil || strings.Contains(out, "${") || !strings.Contains(out, "http://h/bkt/x.bin?") || !strings.Contains(out, "http://h/bkt/y.bin?") {
		t.Fatalf("%s %v", out, err)
	}
}
