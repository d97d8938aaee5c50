package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	keyfile "github.com/foxboron/go-tpm-keyfiles"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/fieldota/fieldota/ota/durable"
)

// tss2PEMType is the PEM type of the TPM 2.0 key file format that tpm2-tools, OpenSSL's tpm2
// provider and go-tpm-keyfiles write (draft-bottomley-tpm2-keys).
const tss2PEMType = "TSS2 PRIVATE KEY"

// dialTPM opens the TPM: a character device (/dev/tpmrm0: the kernel's resource manager, which
// flushes our transient objects if we die) or a unix socket (swtpm's `--server type=unixio`).
func dialTPM(path string) (transport.TPMCloser, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrTPM, path, err)
	}
	var t transport.TPMCloser
	if fi.Mode()&os.ModeSocket != 0 {
		t, err = linuxudstpm.Open(path)
	} else {
		t, err = linuxtpm.Open(path)
	}
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrTPM, path, err)
	}
	// A first command proves the TPM answers (a socket nobody serves, a TPM in failure mode).
	if _, err := (tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTManufacturer), PropertyCount: 1}).Execute(t); err != nil {
		t.Close()
		return nil, fmt.Errorf("%w %s does not answer: %w", ErrTPM, path, err)
	}
	return &lockedTPM{t: t}, nil
}

// lockedTPM serialises commands: a TPM connection carries one command at a time, and a TLS
// handshake may sign while `status`-like readers use the same connection.
type lockedTPM struct {
	mu sync.Mutex
	t  transport.TPMCloser
}

func (l *lockedTPM) Send(cmd []byte) ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.t.Send(cmd)
}

func (l *lockedTPM) Close() error { return l.t.Close() }

func openTPM(r Ref) (*Key, error) {
	t, err := dialTPM(r.TPMDevice)
	if err != nil {
		return nil, err
	}
	k, err := tpmKey(t, r)
	if err != nil {
		t.Close()
		return nil, err
	}
	return k, nil
}

// tpmKey wraps the key at r on the open TPM t; closing the Key closes t.
func tpmKey(t transport.TPMCloser, r Ref) (*Key, error) {
	var s crypto.Signer
	var err error
	if r.Kind == KindTPMHandle {
		s, err = handleSigner(t, r.Handle)
	} else {
		s, err = keyFileSigner(t, r.Path)
	}
	if err != nil {
		return nil, err
	}
	return &Key{Signer: s, Ref: r, close: t.Close}, nil
}

// handleSigner signs with the persistent object at h.
func handleSigner(t transport.TPMCloser, h uint32) (crypto.Signer, error) {
	ah, pub, err := keyfile.ReadPublic(t, tpm2.TPMHandle(h))
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, fmt.Errorf("%w: no TPM object at persistent handle 0x%08x (run `fieldota-agent provision`)", ErrNoKey, h)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: reading handle 0x%08x: %w", ErrTPM, h, err)
	}
	pk, size, err := signingKey(pub)
	if err != nil {
		return nil, fmt.Errorf("identity: TPM handle 0x%08x: %w", h, err)
	}
	ah.Auth = tpm2.PasswordAuth(nil)
	hs := keyfile.NewTPMHandleSigner(t, pk, pub.Type, size, *ah)
	return &hs, nil
}

// keyFileSigner loads the TSS2 key file's blob under the storage key for each signature (the
// file is useless without this very TPM).
func keyFileSigner(t transport.TPMCloser, path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s: %w", ErrNoKey, path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("identity: TPM key file %s: %w", path, err)
	}
	k, err := keyfile.Decode(b)
	if err != nil {
		return nil, fmt.Errorf("identity: TPM key file %s: %w", path, err)
	}
	// go-tpm-keyfiles panics on a public area it cannot decode: check it here first.
	pub, err := k.Pubkey.Contents()
	if err != nil {
		return nil, fmt.Errorf("identity: TPM key file %s: public area: %w", path, err)
	}
	if _, _, err := signingKey(pub); err != nil {
		return nil, fmt.Errorf("identity: TPM key file %s: %w", path, err)
	}
	if !k.EmptyAuth {
		return nil, fmt.Errorf("identity: TPM key file %s: the key has a password (a secret on the same disk protects nothing); create it without one", path)
	}
	s, err := k.Signer(t, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("identity: TPM key file %s: %w", path, err)
	}
	// Load it once now: a blob from another TPM, or a TPM whose owner seed changed, fails here.
	sess := keyfile.NewTPMSession(t)
	kh, ph, err := keyfile.LoadKey(sess, k, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: loading key file %s (made by another TPM, or the TPM was cleared?): %w", ErrTPM, path, err)
	}
	keyfile.FlushHandle(t, kh)
	keyfile.FlushHandle(t, ph)
	return s, nil
}

// signingKey checks that the TPM object is a key TLS can use and that the TPM will never let it
// out, and returns its public half.
func signingKey(pub *tpm2.TPMTPublic) (crypto.PublicKey, int, error) {
	a := pub.ObjectAttributes
	if !a.SignEncrypt || a.Restricted {
		return nil, 0, errors.New("not an unrestricted signing key")
	}
	if !a.FixedTPM || !a.FixedParent {
		return nil, 0, errors.New("the key may be duplicated out of the TPM (fixedTPM/fixedParent not set)")
	}
	pk, err := tpm2.Pub(*pub)
	if err != nil {
		return nil, 0, err
	}
	switch k := pk.(type) {
	case *ecdsa.PublicKey:
		return k, 0, nil
	case *rsa.PublicKey:
		return k, k.Size(), nil
	default:
		return nil, 0, fmt.Errorf("unsupported key type %T", pk)
	}
}

func createTPM(r Ref) (*Key, bool, error) {
	t, err := dialTPM(r.TPMDevice)
	if err != nil {
		return nil, false, err
	}
	created, err := ensureTPMKey(t, r)
	if err != nil {
		t.Close()
		return nil, false, err
	}
	k, err := tpmKey(t, r)
	if err != nil {
		t.Close()
		return nil, false, err
	}
	return k, created, nil
}

// ensureTPMKey creates an ECDSA P-256 key under the owner hierarchy's storage key (the TCG
// template every TSS2 tool derives the same way) unless r already holds one. For a handle the
// key is made persistent; for a file only the TPM-wrapped blob is written.
func ensureTPMKey(t transport.TPMCloser, r Ref) (bool, error) {
	switch r.Kind {
	case KindTPMHandle:
		_, _, err := keyfile.ReadPublic(t, tpm2.TPMHandle(r.Handle))
		if err == nil {
			return false, nil
		}
		if !errors.Is(err, tpm2.TPMRCHandle) {
			return false, fmt.Errorf("%w: reading handle 0x%08x: %w", ErrTPM, r.Handle, err)
		}
	case KindTPMKeyFile:
		if _, err := os.Stat(r.Path); err == nil {
			return false, nil
		}
	}
	k, err := keyfile.NewLoadableKey(t, tpm2.TPMAlgECC, 256, nil, keyfile.WithDescription("fieldota device identity"))
	if err != nil {
		return false, fmt.Errorf("%w: creating a key: %w", ErrTPM, err)
	}
	if r.Kind == KindTPMKeyFile {
		if err := durable.Write(r.Path, 0o600, func(w io.Writer) error { return keyfile.Encode(w, k) }); err != nil {
			return false, fmt.Errorf("identity: writing TPM key file %s: %w", r.Path, err)
		}
		return true, nil
	}
	sess := keyfile.NewTPMSession(t)
	kh, ph, err := keyfile.LoadKey(sess, k, nil)
	if err != nil {
		return false, fmt.Errorf("%w: loading the new key: %w", ErrTPM, err)
	}
	defer keyfile.FlushHandle(t, ph)
	defer keyfile.FlushHandle(t, kh)
	_, err = tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     tpm2.NamedHandle{Handle: kh.Handle, Name: kh.Name},
		PersistentHandle: tpm2.TPMHandle(r.Handle),
	}.Execute(t)
	if err != nil {
		return false, fmt.Errorf("%w: making the key persistent at 0x%08x: %w", ErrTPM, r.Handle, err)
	}
	return true, nil
}
