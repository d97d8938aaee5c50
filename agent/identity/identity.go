// Package identity holds the device's MQTT identity key: a PEM file, a key inside a TPM 2.0
// (a persistent handle or a TSS2 key file, through go-tpm), or a key on a PKCS#11 token (an
// RFC 7512 URI, through crypto11; only in builds with -tags pkcs11 and cgo). Whatever holds it,
// the key is a crypto.Signer: TLS asks it to sign the handshake and never sees the key itself.
//
// docs/device-identity.md explains the choices, provisioning with AWS IoT and rotation.
package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Kind says where a key lives.
type Kind string

const (
	KindFile       Kind = "file"        // a PEM private key on disk
	KindTPMHandle  Kind = "tpm"         // a persistent TPM object, e.g. 0x81000001
	KindTPMKeyFile Kind = "tpm-keyfile" // a TSS2 PRIVATE KEY file: a blob only this TPM can load
	KindPKCS11     Kind = "pkcs11"      // an object on a PKCS#11 token
)

// DefaultTPMDevice is the kernel's TPM resource manager.
const DefaultTPMDevice = "/dev/tpmrm0"

// Sentinel errors; every error names the key reference too.
var (
	// ErrBadRef: the reference cannot be parsed.
	ErrBadRef = errors.New("identity: bad key reference")
	// ErrNoKey: nothing at the reference (no file, no TPM object, no token object).
	ErrNoKey = errors.New("identity: no key there")
	// ErrTPM: the TPM cannot be reached or refused a command.
	ErrTPM = errors.New("identity: TPM")
	// ErrToken: the PKCS#11 module or token cannot be used (missing token, bad module).
	ErrToken = errors.New("identity: PKCS#11 token")
	// ErrPIN: the token refused the PIN, or the PIN cannot be read.
	ErrPIN = errors.New("identity: PKCS#11 PIN")
	// ErrNoPKCS11: this binary was built without PKCS#11 support.
	ErrNoPKCS11 = errors.New("identity: this fieldota-agent was built without PKCS#11 support (use the fieldota-agent-pkcs11 build: make build-pkcs11)")
	// ErrFileKey: a key on disk cannot be created here; that is what TPMs and tokens avoid.
	ErrFileKey = errors.New("identity: provisioning creates keys only inside a TPM or a token")
	// ErrMismatch: a certificate does not belong to the key.
	ErrMismatch = errors.New("identity: certificate does not match the key")
)

// Ref names a key without opening it.
type Ref struct {
	Kind      Kind
	Path      string // KindFile, KindTPMKeyFile
	Handle    uint32 // KindTPMHandle
	TPMDevice string // TPM kinds: the character device or a simulator's unix socket
	PKCS11    *PKCS11Ref
}

// PKCS11Ref is the part of an RFC 7512 URI the agent uses.
type PKCS11Ref struct {
	Module  string // module-path, or module-name resolved in the usual directories
	Token   string // token label
	Serial  string // token serial
	SlotID  *int   // slot-id
	Object  string // object label (CKA_LABEL)
	ID      []byte // object id (CKA_ID)
	pin     pinSource
	pinKind string // "file", "value" or "" (no login), for Describe
	pinFile string
}

// pinSource returns the PIN when the token is opened, so that it is held no longer than needed.
type pinSource func() (string, error)

// Persistent TPM handles live in 0x81000000–0x81FFFFFF (TPM 2.0 Part 2, 7.3 and TCG's registry).
const (
	persistentFirst = 0x81000000
	persistentLast  = 0x81FFFFFF
)

// Parse reads a key reference as written in mqtt.key:
//
//	/etc/fieldota/private.pem.key   a PEM file (a plain key, or a TSS2 PRIVATE KEY: then the TPM)
//	tpm:0x81000001                  a persistent TPM handle
//	tpm:/etc/fieldota/device.tss2   a TSS2 key file (loadable only by this TPM)
//	pkcs11:token=fieldota;object=device?module-path=/usr/lib/…/libsofthsm2.so&pin-source=file:/etc/fieldota/pin
//
// tpmDevice is the TPM to use for tpm references ("" = /dev/tpmrm0).
func Parse(spec, tpmDevice string) (Ref, error) {
	if tpmDevice == "" {
		tpmDevice = DefaultTPMDevice
	}
	switch {
	case spec == "":
		return Ref{}, fmt.Errorf("%w: empty", ErrBadRef)
	case strings.HasPrefix(spec, "pkcs11:"):
		p, err := parsePKCS11(spec)
		if err != nil {
			return Ref{}, err
		}
		return Ref{Kind: KindPKCS11, PKCS11: p}, nil
	case strings.HasPrefix(spec, "tpm:"):
		rest := strings.TrimPrefix(spec, "tpm:")
		if strings.HasPrefix(rest, "/") {
			return Ref{Kind: KindTPMKeyFile, Path: rest, TPMDevice: tpmDevice}, nil
		}
		h, err := strconv.ParseUint(rest, 0, 32)
		if err != nil || h < persistentFirst || h > persistentLast {
			return Ref{}, fmt.Errorf("%w: %q: a TPM key is tpm:0x81000000–0x81FFFFFF (a persistent handle) or tpm:/absolute/path (a TSS2 key file)", ErrBadRef, spec)
		}
		return Ref{Kind: KindTPMHandle, Handle: uint32(h), TPMDevice: tpmDevice}, nil
	case strings.HasPrefix(spec, "/"):
		r := Ref{Kind: KindFile, Path: spec, TPMDevice: tpmDevice}
		if isTSS2File(spec) {
			r.Kind = KindTPMKeyFile
		}
		return r, nil
	default:
		return Ref{}, fmt.Errorf("%w: %q is not an absolute path, tpm:… or pkcs11:…", ErrBadRef, spec)
	}
}

// isTSS2File peeks at the PEM type only: a TSS2 key file is opened through the TPM.
func isTSS2File(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	blk, _ := pem.Decode(b)
	return blk != nil && blk.Type == tss2PEMType
}

// String is the reference with nothing secret in it (a pin-value never appears).
func (r Ref) String() string {
	switch r.Kind {
	case KindTPMHandle:
		return fmt.Sprintf("tpm:0x%08x", r.Handle)
	case KindTPMKeyFile:
		return "tpm:" + r.Path
	case KindPKCS11:
		return r.PKCS11.String()
	default:
		return r.Path
	}
}

// Describe says where the key lives, for `fieldota-agent status`: never a PIN, never key material.
func (r Ref) Describe() map[string]string {
	d := map[string]string{"kind": string(r.Kind), "ref": r.String()}
	switch r.Kind {
	case KindFile:
		d["path"] = r.Path
	case KindTPMHandle:
		d["handle"] = fmt.Sprintf("0x%08x", r.Handle)
		d["tpm"] = r.TPMDevice
	case KindTPMKeyFile:
		d["path"] = r.Path
		d["tpm"] = r.TPMDevice
	case KindPKCS11:
		p := r.PKCS11
		d["module"] = p.Module
		if p.Token != "" {
			d["token"] = p.Token
		}
		if p.Serial != "" {
			d["serial"] = p.Serial
		}
		if p.SlotID != nil {
			d["slotId"] = strconv.Itoa(*p.SlotID)
		}
		if p.Object != "" {
			d["object"] = p.Object
		}
		if len(p.ID) > 0 {
			d["id"] = fmt.Sprintf("%x", p.ID)
		}
		if p.pinKind != "" {
			d["pin"] = p.pinKind
			if p.pinFile != "" {
				d["pinFile"] = p.pinFile
			}
		}
	}
	return d
}

// Key is an opened identity key. Close releases the TPM or the token session.
type Key struct {
	crypto.Signer
	Ref   Ref
	close func() error
}

// Close releases what Open or Create acquired.
func (k *Key) Close() error {
	if k == nil || k.close == nil {
		return nil
	}
	c := k.close
	k.close = nil
	return c()
}

// Open opens the key at r. It fails, naming r and the reason, if the key is not there, the TPM or
// token is unreachable or the PIN is wrong: the agent checks this at start, not at the first
// reconnect.
func Open(r Ref) (*Key, error) {
	switch r.Kind {
	case KindFile:
		return openFile(r)
	case KindTPMHandle, KindTPMKeyFile:
		return openTPM(r)
	case KindPKCS11:
		return openPKCS11(r)
	default:
		return nil, fmt.Errorf("%w: kind %q", ErrBadRef, r.Kind)
	}
}

// Create creates a new key inside the TPM or on the token at r (ECDSA P-256), unless one is
// there already: then it opens that one (created reports which). A file reference is refused.
func Create(r Ref) (k *Key, created bool, err error) {
	switch r.Kind {
	case KindTPMHandle, KindTPMKeyFile:
		return createTPM(r)
	case KindPKCS11:
		return createPKCS11(r)
	case KindFile:
		return nil, false, fmt.Errorf("%w: %s is a file; name tpm:0x81000001, tpm:/path or a pkcs11: URI", ErrFileKey, r.Path)
	default:
		return nil, false, fmt.Errorf("%w: kind %q", ErrBadRef, r.Kind)
	}
}

func openFile(r Ref) (*Key, error) {
	b, err := os.ReadFile(r.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s: %w", ErrNoKey, r.Path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("identity: key %s: %w", r.Path, err)
	}
	s, err := parsePEMKey(b)
	if err != nil {
		return nil, fmt.Errorf("identity: key %s: %w", r.Path, err)
	}
	return &Key{Signer: s, Ref: r}, nil
}

// parsePEMKey reads the first private key block (PKCS#8, SEC 1 EC or PKCS#1 RSA).
func parsePEMKey(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key block")
		}
		var k any
		var err error
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		case tss2PEMType:
			return nil, errors.New("a TSS2 key file: name it tpm:/path (it is opened through the TPM)")
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		switch s := k.(type) {
		case *ecdsa.PrivateKey, *rsa.PrivateKey, ed25519.PrivateKey:
			return s.(crypto.Signer), nil
		default:
			return nil, fmt.Errorf("unsupported key type %T", k)
		}
	}
}
