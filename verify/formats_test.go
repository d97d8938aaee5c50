package verify_test

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
)

// TestAttestationIsCosignFormat checks the bytes against cosign attest-blob's construction,
// independently of sigstore: the statement layout cosign marshals, the DSSE envelope keys, and
// an ECDSA signature over SHA-256(PAE) with an empty keyid.
func TestAttestationIsCosignFormat(t *testing.T) {
	k := getKeys(t)
	d := digestOf(payload)
	env, err := sign.Attest(k.p256, "dist/install.py", d, verify.Predicate{Target: "files", Version: "1.0", Compatible: []string{"board-rev-c"},
		WorkingDirectory: "/opt/app/x", Files: map[string]verify.PredicateFile{"install.py": {Size: 1 << 42}}})
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(env, &raw); err != nil {
		t.Fatal(err)
	}
	if len(raw) != 3 || raw["payloadType"] == nil || raw["payload"] == nil || raw["signatures"] == nil {
		t.Fatalf("envelope keys: %s", env)
	}
	var e struct {
		PayloadType string
		Payload     string
		Signatures  []map[string]string
	}
	_ = json.Unmarshal(env, &e)
	if e.PayloadType != "application/vnd.in-toto+json" || len(e.Signatures) != 1 || e.Signatures[0]["keyid"] != "" {
		t.Fatalf("envelope: %s", env)
	}
	stmt, err := base64.StdEncoding.DecodeString(e.Payload)
	if err != nil {
		t.Fatal(err)
	}
	// Sizes stay exact integers however large (cosign reads the predicate file as JSON too).
	want := fmt.Sprintf(`{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://fieldota.dev/release/v2",`+
		`"subject":[{"name":"install.py","digest":{"sha256":"%s"}}],`+
		`"predicate":{"compatible":["board-rev-c"],"files":{"install.py":{"size":4398046511104}},"target":"files","version":"1.0","workingDirectory":"/opt/app/x"}}`, hex.EncodeToString(d))
	if string(stmt) != want {
		t.Fatalf("statement\n got %s\nwant %s", stmt, want)
	}
	pae := fmt.Sprintf("DSSEv1 %d %s %d %s", len(e.PayloadType), e.PayloadType, len(stmt), stmt)
	h := sha256.Sum256([]byte(pae))
	sig, _ := base64.StdEncoding.DecodeString(e.Signatures[0]["sig"])
	if !ecdsa.VerifyASN1(&k.p256.PublicKey, h[:], sig) {
		t.Fatal("envelope signature is not ECDSA-SHA256 over PAE(payloadType, statement)")
	}
}

// TestDetachedSignatureIsCosignFormat: cosign sign-blob writes base64(DER ECDSA over SHA-256(file)).
func TestDetachedSignatureIsCosignFormat(t *testing.T) {
	k := getKeys(t)
	d := digestOf(payload)
	s, err := sign.SignDigest(k.p256, "", d)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(&k.p256.PublicKey, d, s) {
		t.Fatal("not an ASN.1 DER ECDSA signature over SHA-256(file)")
	}
}

func TestParseSignature(t *testing.T) {
	for _, c := range []struct {
		in string
		ok bool
	}{
		{"MEUCIQ==", true},
		{"  TUVVQ0lR\n", true},
		{"", false},
		{"!!!!", false},
		{"TUVVQ0lR=", false}, // bad padding
		{string(make([]byte, 4000)), false},
	} {
		_, err := verify.ParseSignature(c.in)
		if (err == nil) != c.ok {
			t.Errorf("ParseSignature(%q): err=%v, want ok=%v", c.in, err, c.ok)
		}
	}
}

func TestParseEnvelopeRefusesMalformed(t *testing.T) {
	k := getKeys(t)
	good := attest(t, k.p256, digestOf(payload), release("1"))
	if _, err := verify.ParseEnvelope(good); err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string]string{
		"empty":           ``,
		"not json":        `{{`,
		"wrong type":      `{"payloadType":"text/plain","payload":"e30=","signatures":[{"keyid":"","sig":"MEUCIQ=="}]}`,
		"no signatures":   `{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[]}`,
		"payload not b64": `{"payloadType":"application/vnd.in-toto+json","payload":"%%%","signatures":[{"keyid":"","sig":"MEUCIQ=="}]}`,
		"trailing data":   string(good) + `{}`,
	} {
		if _, err := verify.ParseEnvelope([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
