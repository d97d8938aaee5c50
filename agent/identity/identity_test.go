package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldota/fieldota/test/swtpm"
)

func TestParseReferences(t *testing.T) {
	dir := t.TempDir()
	tss := filepath.Join(dir, "dev.tss2")
	if err := os.WriteFile(tss, []byte("-----BEGIN TSS2 PRIVATE KEY-----\nAAAA\n-----END TSS2 PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mod := "/usr/lib/softhsm/libsofthsm2.so"
	for _, tc := range []struct {
		spec string
		kind Kind
		err  error
	}{
		{"/etc/fieldota/private.pem.key", KindFile, nil},
		{tss, KindTPMKeyFile, nil}, // a plain path holding a TSS2 key goes through the TPM
		{"tpm:0x81000001", KindTPMHandle, nil},
		{"tpm:" + tss, KindTPMKeyFile, nil},
		{"pkcs11:token=fieldota;object=device?module-path=" + mod + "&pin-source=file:/etc/fieldota/pin", KindPKCS11, nil},
		// pin-source in the path (the spelling) is moved to the query.
		{"pkcs11:token=fieldota;object=device;pin-source=file:/etc/fieldota/pin?module-path=" + mod, KindPKCS11, nil},
		{"pkcs11:serial=1234;id=%01%02?module-path=" + mod, KindPKCS11, nil},
		{"", "", ErrBadRef},
		{"private.pem.key", "", ErrBadRef},                          // relative
		{"tpm:0x80000001", "", ErrBadRef},                           // transient, not persistent
		{"tpm:0x82000000", "", ErrBadRef},                           // past the persistent range
		{"tpm:relative/key", "", ErrBadRef},                         // neither a handle nor an absolute path
		{"pkcs11:object=device?module-path=" + mod, "", ErrBadRef},  // no token
		{"pkcs11:token=fieldota?module-path=" + mod, "", ErrBadRef}, // no object
		{"pkcs11:token=fieldota;object=device", "", ErrBadRef},      // no module
		{"pkcs11:token=fieldota;object=device;type=cert?module-path=" + mod, "", ErrBadRef},
		{"pkcs11:token=a;object=b?module-path=relative.so", "", ErrBadRef},
		{"pkcs11:token=a;object=b?module-path=/nonexistent/x.so&pin-value=1&pin-source=file:/p", "", ErrBadRef},
	} {
		r, err := Parse(tc.spec, "")
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("Parse(%q) = %v, want %v", tc.spec, err, tc.err)
			}
			continue
		}
		if err != nil || r.Kind != tc.kind {
			t.Errorf("Parse(%q) = %v %v, want kind %s", tc.spec, r.Kind, err, tc.kind)
		}
	}
}

// TestStatusNeverShowsThePIN: `status` and every log line use String and Describe; a PIN written
// into the URI must not come out of either.
func TestStatusNeverShowsThePIN(t *testing.T) {
	r, err := Parse("pkcs11:token=fieldota;object=device?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=s3cr3t-991", "")
	if err != nil {
		t.Fatal(err)
	}
	out := r.String()
	for k, v := range r.Describe() {
		out += " " + k + "=" + v
	}
	if strings.Contains(out, "s3cr3t-991") {
		t.Fatalf("PIN leaked: %s", out)
	}
	if d := r.Describe(); d["token"] != "fieldota" || d["object"] != "device" || d["pin"] != "value" {
		t.Fatalf("describe: %v", d)
	}
	if s := redactURI("pkcs11:token=a?pin-value=s3cr3t-991&module-path=/x"); strings.Contains(s, "s3cr3t") {
		t.Fatal(s)
	}
}

func checkSigns(t *testing.T, s crypto.Signer) {
	t.Helper()
	d := sha256.Sum256([]byte("handshake transcript"))
	sig, err := s.Sign(nil, d[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok || !ecdsa.VerifyASN1(pub, d[:], sig) {
		t.Fatalf("signature does not verify with %T", s.Public())
	}
}

// TestTPMHandleKeySurvivesPowerCycle: provisioning twice keeps the first key (a repeated
// provisioning run must not lock the device out), and the key is still there after the TPM
// restarts on its state.
func TestTPMHandleKeySurvivesPowerCycle(t *testing.T) {
	tp := swtpm.Start(t, "")
	r, err := Parse("tpm:0x81000001", tp.Socket)
	if err != nil {
		t.Fatal(err)
	}
	k, created, err := Create(r)
	if err != nil || !created {
		t.Fatalf("create: %v created=%v", err, created)
	}
	checkSigns(t, k)
	pub := k.Public().(*ecdsa.PublicKey)
	k.Close()
	k2, created, err := Create(r)
	if err != nil || created || !pub.Equal(k2.Public()) {
		t.Fatalf("second provisioning: created=%v err=%v (must reuse the key)", created, err)
	}
	k2.Close()
	tp.Stop()
	tp = swtpm.Start(t, tp.StateDir)
	r.TPMDevice = tp.Socket
	k3, err := Open(r)
	if err != nil {
		t.Fatalf("after power cycle: %v", err)
	}
	defer k3.Close()
	if !pub.Equal(k3.Public()) {
		t.Fatal("a different key after the power cycle")
	}
	checkSigns(t, k3)
}

// TestTPMKeyFileUselessOnAnotherTPM: the TSS2 file is a blob wrapped by this TPM's storage key:
// copied next to another TPM (a thief's), it does not load.
func TestTPMKeyFileUselessOnAnotherTPM(t *testing.T) {
	tp := swtpm.Start(t, "")
	path := filepath.Join(t.TempDir(), "device.tss2")
	r, err := Parse("tpm:"+path, tp.Socket)
	if err != nil {
		t.Fatal(err)
	}
	k, created, err := Create(r)
	if err != nil || !created {
		t.Fatalf("create: %v %v", err, created)
	}
	checkSigns(t, k)
	k.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), "-----BEGIN TSS2 PRIVATE KEY-----") {
		t.Fatalf("key file:\n%s", b)
	}
	if _, err := parsePEMKey(b); err == nil {
		t.Fatal("the TSS2 file parsed as a plain private key")
	}
	// The plain path form finds the same key through the TPM.
	r2, err := Parse(path, tp.Socket)
	if err != nil || r2.Kind != KindTPMKeyFile {
		t.Fatalf("plain path: %v %v", r2.Kind, err)
	}
	k2, err := Open(r2)
	if err != nil {
		t.Fatal(err)
	}
	checkSigns(t, k2)
	k2.Close()

	other := swtpm.Start(t, "")
	r.TPMDevice = other.Socket
	if k, err := Open(r); !errors.Is(err, ErrTPM) {
		k.Close()
		t.Fatalf("another TPM opened the key file: %v", err)
	}
}

func TestTPMFailuresAreClearErrors(t *testing.T) {
	tp := swtpm.Start(t, "")
	dir := t.TempDir()
	corrupt := filepath.Join(dir, "corrupt.tss2")
	if err := os.WriteFile(corrupt, []byte("-----BEGIN TSS2 PRIVATE KEY-----\nMAMCAQA=\n-----END TSS2 PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, spec, device string
		want               error
	}{
		{"empty handle", "tpm:0x81000009", tp.Socket, ErrNoKey},
		{"no TPM there", "tpm:0x81000001", filepath.Join(dir, "no-such-tpm"), ErrTPM},
		{"a file that is not a TPM", "tpm:0x81000001", corrupt, ErrTPM},
		{"missing key file", "tpm:" + filepath.Join(dir, "missing.tss2"), tp.Socket, ErrNoKey},
		{"missing PEM file", filepath.Join(dir, "missing.pem"), "", ErrNoKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Parse(tc.spec, tc.device)
			if err != nil {
				t.Fatal(err)
			}
			k, err := Open(r)
			if !errors.Is(err, tc.want) {
				k.Close()
				t.Fatalf("Open = %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("corrupt key file", func(t *testing.T) {
		r, _ := Parse("tpm:"+corrupt, tp.Socket)
		if k, err := Open(r); err == nil {
			k.Close()
			t.Fatal("a corrupt key file opened")
		}
	})
	t.Run("provisioning a file key", func(t *testing.T) {
		r, _ := Parse(filepath.Join(dir, "k.pem"), "")
		if _, _, err := Create(r); !errors.Is(err, ErrFileKey) {
			t.Fatalf("Create(file) = %v", err)
		}
	})
}
