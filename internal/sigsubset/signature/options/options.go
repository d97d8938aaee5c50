// Package options mirrors the verify options of github.com/sigstore/sigstore/pkg/signature/options
// that the device uses (see package sigsubset).
package options

import "crypto"

// NoOpOptionImpl is embedded by every option so that each implements all the Apply methods.
type NoOpOptionImpl struct{}

// ApplyDigest does nothing unless the option overrides it.
func (NoOpOptionImpl) ApplyDigest(*[]byte) {}

// ApplyCryptoSignerOpts does nothing unless the option overrides it.
func (NoOpOptionImpl) ApplyCryptoSignerOpts(*crypto.SignerOpts) {}

// RequestDigest supplies a precomputed digest instead of the message.
type RequestDigest struct {
	NoOpOptionImpl
	digest []byte
}

// ApplyDigest sets the digest.
func (r RequestDigest) ApplyDigest(d *[]byte) { *d = r.digest }

// WithDigest verifies over digest (the message reader is then ignored).
func WithDigest(digest []byte) RequestDigest { return RequestDigest{digest: digest} }

// RequestCryptoSignerOpts names the hash the digest was made with.
type RequestCryptoSignerOpts struct {
	NoOpOptionImpl
	opts crypto.SignerOpts
}

// ApplyCryptoSignerOpts sets the signer options.
func (r RequestCryptoSignerOpts) ApplyCryptoSignerOpts(o *crypto.SignerOpts) { *o = r.opts }

// WithCryptoSignerOpts names the hash function of a WithDigest digest.
func WithCryptoSignerOpts(opts crypto.SignerOpts) RequestCryptoSignerOpts {
	return RequestCryptoSignerOpts{opts: opts}
}
