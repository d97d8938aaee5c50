//go:build pkcs11 && cgo

package identity

import (
	"crypto/ecdsa"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldota/fieldota/test/softhsm"
)

func softhsmRef(t *testing.T, token, object, pinFile string) Ref {
	t.Helper()
	r, err := Parse("pkcs11:token="+token+";object="+object+"?module-path="+softhsm.Module+"&pin-source=file:"+pinFile, "")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func pinFile(t *testing.T, pin string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(p, []byte(pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPKCS11KeyCreatedOnTokenAndReused: provisioning makes the pair on the token, a second run
// reuses it, and the agent's Open finds it.
func TestPKCS11KeyCreatedOnTokenAndReused(t *testing.T) {
	h := softhsm.New(t)
	t.Setenv("SOFTHSM2_CONF", h.Conf)
	h.InitToken(t, "fieldota", "4711")
	r := softhsmRef(t, "fieldota", "device", pinFile(t, "4711"))
	k, created, err := Create(r)
	if err != nil || !created {
		t.Fatalf("create: %v %v", err, created)
	}
	checkSigns(t, k)
	pub := k.Public().(*ecdsa.PublicKey)
	k.Close()
	k2, created, err := Create(r)
	if err != nil || created || !pub.Equal(k2.Public()) {
		t.Fatalf("second provisioning: created=%v %v", created, err)
	}
	k2.Close()
	k3, err := Open(r)
	if err != nil {
		t.Fatal(err)
	}
	defer k3.Close()
	checkSigns(t, k3)
	// Nothing but SoftHSM's own object store holds the key.
	filepath.Walk(filepath.Dir(h.Conf), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			b, _ := os.ReadFile(p)
			if strings.Contains(string(b), "PRIVATE KEY") {
				t.Errorf("%s holds a PEM private key", p)
			}
		}
		return nil
	})
}

// TestPKCS11StartFailuresNameTheCause: a wrong PIN, a missing token, a missing object and a
// missing module each fail with their own error, never a panic.
func TestPKCS11StartFailuresNameTheCause(t *testing.T) {
	h := softhsm.New(t)
	t.Setenv("SOFTHSM2_CONF", h.Conf)
	h.InitToken(t, "fieldota", "4711")
	good := pinFile(t, "4711")
	if k, _, err := Create(softhsmRef(t, "fieldota", "device", good)); err != nil {
		t.Fatal(err)
	} else {
		k.Close()
	}
	for _, tc := range []struct {
		name string
		ref  Ref
		want error
		says string
	}{
		{"wrong PIN", softhsmRef(t, "fieldota", "device", pinFile(t, "0000")), ErrPIN, "refused the PIN"},
		{"PIN file missing", softhsmRef(t, "fieldota", "device", "/nonexistent/pin"), ErrPIN, "PIN"},
		{"missing token", softhsmRef(t, "no-such-token", "device", good), ErrToken, `"no-such-token"`},
		{"missing object", softhsmRef(t, "fieldota", "other", good), ErrNoKey, `"other"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := Open(tc.ref)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				k.Close()
				t.Fatalf("Open = %v, want %v saying %q", err, tc.want, tc.says)
			}
			t.Log(err)
		})
	}
}
