//go:build pkcs11 && cgo

package identity

import (
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// PKCS11Supported tells whether this build can open pkcs11: references.
const PKCS11Supported = true

// pinErrors are the token's answers that mean "this PIN will not do".
var pinErrors = []pkcs11.Error{pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE,
	pkcs11.CKR_PIN_EXPIRED, pkcs11.CKR_PIN_LOCKED}

// configure opens the module, finds the token and logs in (crypto11 does all three).
func configure(r Ref) (*crypto11.Context, error) {
	p := r.PKCS11
	cfg := &crypto11.Config{Path: p.Module}
	// crypto11 takes exactly one way to find the token; the most specific wins.
	switch {
	case p.Serial != "":
		cfg.TokenSerial = p.Serial
	case p.Token != "":
		cfg.TokenLabel = p.Token
	default:
		cfg.SlotNumber = p.SlotID
	}
	if p.pin == nil {
		// Without a PIN only public objects are visible; a token that needs a login says so below.
		cfg.LoginNotSupported = true
	} else {
		pin, err := p.pin()
		if err != nil {
			return nil, err
		}
		cfg.Pin = pin
	}
	ctx, err := crypto11.Configure(cfg)
	if err != nil {
		var pe pkcs11.Error
		if errors.As(err, &pe) {
			for _, e := range pinErrors {
				if pe == e {
					return nil, fmt.Errorf("%w: token %s refused the PIN: %w", ErrPIN, tokenName(p), err)
				}
			}
		}
		return nil, fmt.Errorf("%w: token %s through module %s: %w", ErrToken, tokenName(p), p.Module, err)
	}
	return ctx, nil
}

func tokenName(p *PKCS11Ref) string {
	switch {
	case p.Serial != "":
		return fmt.Sprintf("serial %q", p.Serial)
	case p.Token != "":
		return fmt.Sprintf("%q", p.Token)
	default:
		return fmt.Sprintf("in slot %d", *p.SlotID)
	}
}

func findPair(ctx *crypto11.Context, p *PKCS11Ref) (crypto11.Signer, error) {
	var label []byte
	if p.Object != "" {
		label = []byte(p.Object)
	}
	// FindKeyPairs, not FindKeyPair: "none" is nil there, not an error to tell apart by text.
	s, err := ctx.FindKeyPairs(p.ID, label)
	if err != nil {
		return nil, fmt.Errorf("%w: token %s: finding the key: %w", ErrToken, tokenName(p), err)
	}
	switch len(s) {
	case 0:
		return nil, nil
	case 1:
		return s[0], nil
	default:
		return nil, fmt.Errorf("%w: token %s holds %d key pairs %s: name one (id=)", ErrToken, tokenName(p), len(s), objectName(p))
	}
}

func openPKCS11(r Ref) (*Key, error) {
	ctx, err := configure(r)
	if err != nil {
		return nil, err
	}
	s, err := findPair(ctx, r.PKCS11)
	if err == nil && s == nil {
		hint := ""
		if r.PKCS11.pin == nil {
			hint = " (no PIN given: private keys stay hidden without a login)"
		}
		err = fmt.Errorf("%w: token %s holds no key pair %s%s (run `fieldota-agent provision`)", ErrNoKey, tokenName(r.PKCS11), objectName(r.PKCS11), hint)
	}
	if err != nil {
		ctx.Close()
		return nil, err
	}
	return &Key{Signer: s, Ref: r, close: ctx.Close}, nil
}

func objectName(p *PKCS11Ref) string {
	if p.Object != "" {
		return fmt.Sprintf("labelled %q", p.Object)
	}
	return fmt.Sprintf("with id %x", p.ID)
}

// createPKCS11 generates an ECDSA P-256 pair on the token (CKA_SENSITIVE, not CKA_EXTRACTABLE:
// crypto11's defaults) unless the token holds one at the reference already.
func createPKCS11(r Ref) (*Key, bool, error) {
	ctx, err := configure(r)
	if err != nil {
		return nil, false, err
	}
	p := r.PKCS11
	s, err := findPair(ctx, p)
	if err != nil {
		ctx.Close()
		return nil, false, err
	}
	if s != nil {
		return &Key{Signer: s, Ref: r, close: ctx.Close}, false, nil
	}
	if p.pin == nil {
		ctx.Close()
		return nil, false, fmt.Errorf("%w: creating a key on token %s needs a login: add ?pin-source=file:/path to the URI", ErrPIN, tokenName(p))
	}
	id := p.ID
	if len(id) == 0 {
		id = make([]byte, 8)
		if _, err := rand.Read(id); err != nil {
			ctx.Close()
			return nil, false, err
		}
	}
	var label []byte
	if p.Object != "" {
		label = []byte(p.Object)
	}
	s, err = ctx.GenerateECDSAKeyPairWithLabel(id, label, elliptic.P256())
	if err != nil {
		ctx.Close()
		return nil, false, fmt.Errorf("%w: token %s: generating the key: %w", ErrToken, tokenName(p), err)
	}
	return &Key{Signer: s, Ref: r, close: ctx.Close}, true, nil
}
