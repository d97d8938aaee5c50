package sigsubset_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/json"
	"math/big"
	"testing"

	sigstore "github.com/sigstore/sigstore/pkg/signature"
	sigstoredsse "github.com/sigstore/sigstore/pkg/signature/dsse"
	sigstoreopts "github.com/sigstore/sigstore/pkg/signature/options"

	"github.com/fieldota/fieldota/internal/sigsubset/signature"
	"github.com/fieldota/fieldota/internal/sigsubset/signature/dsse"
	"github.com/fieldota/fieldota/internal/sigsubset/signature/options"
)

// pair is a key sigstore signs with and the subset verifier for its public half.
type pair struct {
	name   string
	signer sigstore.SignerVerifier
	ours   func(pub crypto.PublicKey) (signature.Verifier, error)
	hash   crypto.Hash
}

func pairs(t *testing.T) []pair {
	t.Helper()
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, ek, _ := ed25519.GenerateKey(rand.Reader)
	must := func(sv sigstore.SignerVerifier, err error) sigstore.SignerVerifier {
		if err != nil {
			t.Fatal(err)
		}
		return sv
	}
	return []pair{
		{"ecdsa-p256", must(sigstore.LoadECDSASignerVerifier(p256, crypto.SHA256)), func(p crypto.PublicKey) (signature.Verifier, error) {
			return signature.LoadECDSAVerifier(p.(*ecdsa.PublicKey), crypto.SHA256)
		}, crypto.SHA256},
		{"ecdsa-p384", must(sigstore.LoadECDSASignerVerifier(p384, crypto.SHA384)), func(p crypto.PublicKey) (signature.Verifier, error) {
			return signature.LoadECDSAVerifier(p.(*ecdsa.PublicKey), crypto.SHA384)
		}, crypto.SHA384},
		{"rsa-pkcs1v15", must(sigstore.LoadRSAPKCS1v15SignerVerifier(rk, crypto.SHA256)), func(p crypto.PublicKey) (signature.Verifier, error) {
			return signature.LoadRSAPKCS1v15Verifier(p.(*rsa.PublicKey), crypto.SHA256)
		}, crypto.SHA256},
		{"rsa-pss", must(sigstore.LoadRSAPSSSignerVerifier(rk, crypto.SHA256, nil)), func(p crypto.PublicKey) (signature.Verifier, error) {
			return signature.LoadRSAPSSVerifier(p.(*rsa.PublicKey), crypto.SHA256, nil)
		}, crypto.SHA256},
		{"ed25519", must(sigstore.LoadED25519SignerVerifier(ek)), func(p crypto.PublicKey) (signature.Verifier, error) {
			return signature.LoadED25519Verifier(p.(ed25519.PublicKey))
		}, 0},
	}
}

// TestSubsetAgreesWithSigstoreOnEverySignature: the device checks signatures with the subset,
// release tooling makes them with sigstore. For every key type, both accept what sigstore
// signed — over the message and, where a hash is used, over a precomputed digest — and both
// refuse a tampered message, a tampered signature and another key's signature.
func TestSubsetAgreesWithSigstoreOnEverySignature(t *testing.T) {
	msg := []byte("fieldota release payload")
	other := pairs(t)
	for i, p := range pairs(t) {
		t.Run(p.name, func(t *testing.T) {
			sig, err := p.signer.SignMessage(bytes.NewReader(msg))
			if err != nil {
				t.Fatal(err)
			}
			pub, _ := p.signer.PublicKey()
			ours, err := p.ours(pub)
			if err != nil {
				t.Fatal(err)
			}
			bad := append([]byte(nil), sig...)
			bad[len(bad)/2] ^= 1
			otherSig, _ := other[i].signer.SignMessage(bytes.NewReader(msg))
			cases := []struct {
				name    string
				sig     []byte
				msg     []byte
				digest  bool
				accepts bool
			}{
				{"signed message", sig, msg, false, true},
				{"tampered message", sig, []byte("fieldota release payloaD"), false, false},
				{"tampered signature", bad, msg, false, false},
				{"another key's signature", otherSig, msg, false, false},
				{"over its digest", sig, msg, true, true},
			}
			for _, c := range cases {
				if c.digest && p.hash == 0 {
					continue
				}
				var oursErr, theirsErr error
				if c.digest {
					h := p.hash.New()
					h.Write(c.msg)
					d := h.Sum(nil)
					oursErr = ours.VerifySignature(bytes.NewReader(c.sig), nil, options.WithDigest(d), options.WithCryptoSignerOpts(p.hash))
					theirsErr = p.signer.VerifySignature(bytes.NewReader(c.sig), nil, sigstoreopts.WithDigest(d), sigstoreopts.WithCryptoSignerOpts(p.hash))
				} else {
					oursErr = ours.VerifySignature(bytes.NewReader(c.sig), bytes.NewReader(c.msg))
					theirsErr = p.signer.VerifySignature(bytes.NewReader(c.sig), bytes.NewReader(c.msg))
				}
				if (oursErr == nil) != c.accepts || (theirsErr == nil) != c.accepts {
					t.Errorf("%s: subset %v, sigstore %v, want accepted=%v", c.name, oursErr, theirsErr, c.accepts)
				}
			}
		})
	}
}

// TestECDSAInP1363EncodingAndWrongDigestLengthsAgreeWithSigstore: sigstore also accepts r‖s
// (IEEE P1363) ECDSA signatures, as some HSMs and KMSes produce them, and refuses a digest whose
// length does not match the hash: the subset does the same.
func TestECDSAInP1363EncodingAndWrongDigestLengthsAgreeWithSigstore(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d := sha256.Sum256([]byte("payload"))
	r, s, err := ecdsa.Sign(rand.Reader, k, d[:])
	if err != nil {
		t.Fatal(err)
	}
	p1363 := append(leftPad(r, 32), leftPad(s, 32)...)
	ours, _ := signature.LoadECDSAVerifier(&k.PublicKey, crypto.SHA256)
	theirs, _ := sigstore.LoadECDSAVerifier(&k.PublicKey, crypto.SHA256)
	if err := ours.VerifySignature(bytes.NewReader(p1363), nil, options.WithDigest(d[:])); err != nil {
		t.Fatalf("subset refuses a P1363 signature: %v", err)
	}
	if err := theirs.VerifySignature(bytes.NewReader(p1363), nil, sigstoreopts.WithDigest(d[:])); err != nil {
		t.Fatalf("sigstore refuses it too (the test is wrong): %v", err)
	}
	short := sha512.Sum384([]byte("payload"))
	oErr := ours.VerifySignature(bytes.NewReader(p1363), nil, options.WithDigest(short[:]))
	tErr := theirs.VerifySignature(bytes.NewReader(p1363), nil, sigstoreopts.WithDigest(short[:]))
	if oErr == nil || tErr == nil {
		t.Fatalf("a SHA-384-sized digest for a SHA-256 verifier: subset %v, sigstore %v", oErr, tErr)
	}
}

func leftPad(n *big.Int, size int) []byte {
	b := n.Bytes()
	return append(make([]byte, size-len(b)), b...)
}

// TestDSSEEnvelopesSignedBySigstoreVerifyTheSameWay: sigstore's WrapSigner makes the envelope
// cosign attest-blob makes; the subset's WrapVerifier accepts it, returns the payload, and
// refuses another payload type, a tampered payload and another key — like sigstore's.
func TestDSSEEnvelopesSignedBySigstoreVerifyTheSameWay(t *testing.T) {
	const payloadType = "application/vnd.in-toto+json"
	payload := []byte(`{"_type":"https://in-toto.io/Statement/v1"}`)
	ps, others := pairs(t), pairs(t)
	for i, p := range ps {
		t.Run(p.name, func(t *testing.T) {
			env, err := sigstoredsse.WrapSigner(p.signer, payloadType).SignMessage(bytes.NewReader(payload))
			if err != nil {
				t.Fatal(err)
			}
			var e map[string]any
			_ = json.Unmarshal(env, &e)
			e["payload"] = "eyJfdHlwZSI6Im90aGVyIn0=" // {"_type":"other"}
			tampered, _ := json.Marshal(e)
			pub, _ := p.signer.PublicKey()
			otherPub, _ := others[i].signer.PublicKey()
			cases := []struct {
				name    string
				env     []byte
				pub     crypto.PublicKey
				want    string
				accepts bool
			}{
				{"as signed", env, pub, payloadType, true},
				{"another payload type expected", env, pub, "text/plain", false},
				{"tampered payload", tampered, pub, payloadType, false},
				{"another key", env, otherPub, payloadType, false},
			}
			for _, c := range cases {
				v, err := p.ours(c.pub)
				if err != nil {
					t.Fatal(err)
				}
				var got []byte
				oursErr := dsse.WrapVerifier(v, dsse.WithExpectedPayloadType(c.want), dsse.WithDecodedPayload(&got)).VerifySignature(bytes.NewReader(c.env), nil)
				sv, _ := sigstore.LoadVerifier(c.pub, p.hash)
				if p.name == "rsa-pss" {
					sv, _ = sigstore.LoadRSAPSSVerifier(c.pub.(*rsa.PublicKey), p.hash, nil)
				}
				theirsErr := sigstoredsse.WrapVerifier(sv, sigstoredsse.WithExpectedPayloadType(c.want)).VerifySignature(bytes.NewReader(c.env), nil)
				if (oursErr == nil) != c.accepts || (theirsErr == nil) != c.accepts {
					t.Errorf("%s: subset %v, sigstore %v, want accepted=%v", c.name, oursErr, theirsErr, c.accepts)
				}
				if c.accepts && !bytes.Equal(got, payload) {
					t.Errorf("%s: decoded payload %q", c.name, got)
				}
			}
		})
	}
}
