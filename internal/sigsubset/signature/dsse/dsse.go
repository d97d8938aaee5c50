// Package dsse mirrors the envelope verifier of github.com/sigstore/sigstore/pkg/signature/dsse
// that the device uses, on go-securesystemslib/dsse like sigstore's (see package sigsubset).
package dsse

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"io"

	ssldsse "github.com/secure-systems-lab/go-securesystemslib/dsse"

	"github.com/fieldota/fieldota/internal/sigsubset/signature"
)

// Option configures WrapVerifier.
type Option func(*config)

type config struct {
	payloadType string
	decoded     *[]byte
}

// WithExpectedPayloadType refuses envelopes of another payload type.
func WithExpectedPayloadType(t string) Option { return func(c *config) { c.payloadType = t } }

// WithDecodedPayload stores the verified, decoded payload in *p.
func WithDecodedPayload(p *[]byte) Option { return func(c *config) { c.decoded = p } }

// WrapVerifier returns a verifier whose VerifySignature takes a DSSE envelope (JSON) as the
// signature and checks it with v over the envelope's PAE; the message argument is ignored.
func WrapVerifier(v signature.Verifier, opts ...Option) signature.Verifier {
	w := &wrapped{v: v}
	for _, o := range opts {
		o(&w.cfg)
	}
	return w
}

type wrapped struct {
	v   signature.Verifier
	cfg config
}

func (w *wrapped) PublicKey() (crypto.PublicKey, error) { return w.v.PublicKey() }

func (w *wrapped) VerifySignature(s, _ io.Reader, _ ...signature.VerifyOption) error {
	raw, err := io.ReadAll(s)
	if err != nil {
		return err
	}
	var env ssldsse.Envelope
	if err := json.Unmarshal(raw, &env); err != nil {
		return err
	}
	if w.cfg.payloadType != "" && env.PayloadType != w.cfg.payloadType {
		return fmt.Errorf("dsse: unexpected payload type: got %q, want %q", env.PayloadType, w.cfg.payloadType)
	}
	pub, err := w.v.PublicKey()
	if err != nil {
		return err
	}
	ev, err := ssldsse.NewEnvelopeVerifier(adapter{v: w.v, pub: pub})
	if err != nil {
		return err
	}
	_, payload, err := ev.VerifyAndDecode(context.Background(), &env)
	if err != nil {
		return err
	}
	if w.cfg.decoded != nil {
		*w.cfg.decoded = payload
	}
	return nil
}

// adapter is a go-securesystemslib dsse.Verifier over a signature.Verifier. Its key id is empty,
// so that no envelope keyid limits which key is tried (as in sigstore).
type adapter struct {
	v   signature.Verifier
	pub crypto.PublicKey
}

func (a adapter) Verify(_ context.Context, data, sig []byte) error {
	return a.v.VerifySignature(bytes.NewReader(sig), bytes.NewReader(data))
}
func (a adapter) Public() crypto.PublicKey { return a.pub }
func (a adapter) KeyID() (string, error)   { return "", nil }
