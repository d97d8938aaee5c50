package jobdoc_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
)

var (
	payload = []byte("print('hello from install.py')\n")
	sum     = sha256.Sum256(payload)
	device  = jobdoc.Options{AllowedRoots: []string{"/home/ec2-user", "/opt/app"}}
)

type signed struct {
	key  *ecdsa.PrivateKey
	sig  string // base64 DER over SHA-256(payload)
	att  string // base64 DSSE envelope
	ts   *verify.TrustStore
	kid  string
	hexd string
}

func newSigned(t *testing.T) signed {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sign.SignDigest(k, "", sum[:])
	if err != nil {
		t.Fatal(err)
	}
	env, err := sign.Attest(k, "install.py", sum[:], verify.Predicate{Version: "1.0", Compatible: []string{"board-rev-c"}})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := verify.NewTrustStore([]crypto.PublicKey{k.Public()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kid, _ := verify.KeyID(k.Public())
	return signed{k, base64.StdEncoding.EncodeToString(s), base64.StdEncoding.EncodeToString(env), ts, kid, hex.EncodeToString(sum[:])}
}

// seed is DESIGN.md's example, as written, with the signature and attestation filled in and
// the presigned URL as the device receives it.
func (s signed) seed(url string) string {
	return fmt.Sprintf(`{
  "operation": "install",
  "version": "1.0",
  "packageName": "install.py",
  "autoStart": "true",
  "workingDirectory": "/home/ec2-user/JobSampleTesting",
  "target": "files",
  "files": {
    "fileName": "install.py",
    "url": %q,
    "size": %d,
    "sha256": %q,
    "codesign": { "signature": %q, "signatureAlgorithm": "SHA256withECDSA", "rawPayloadSize": %d }
  },
  "attestation": %q,
  "compatible": ["board-rev-c"]
}`, url, len(payload), s.hexd, s.sig, len(payload), s.att)
}

const presigned = "https://bucket.s3.eu-west-1.amazonaws.com/install.py?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc"

func TestSeedExampleWorksOnceSigned(t *testing.T) {
	s := newSigned(t)
	d, err := jobdoc.Parse([]byte(s.seed(presigned)), device)
	if err != nil {
		t.Fatal(err)
	}
	if !d.AutoStart || d.Target != jobdoc.TargetFiles || len(d.Files) != 1 || d.Files[0].Size != int64(len(payload)) ||
		d.WorkingDirectory != "/home/ec2-user/JobSampleTesting" || d.Files[0].Codesign == nil || d.Attestation == nil {
		t.Fatalf("parsed %+v", d)
	}
	in := d.VerifyInput(0)
	in.Digest, in.Size = sum[:], int64(len(payload))
	vd, err := s.ts.Verify(in, verify.Policy{InstalledVersion: "0.9", DeviceCompatible: []string{"board-rev-c"}})
	if err != nil {
		t.Fatalf("seed example refused: %v", err)
	}
	if !vd.Attested || vd.KeyID != s.kid || vd.Version != "1.0" {
		t.Fatalf("verdict %+v", vd)
	}
	// The same document as created (placeholder unexpanded) is for operator tools only.
	placeholder := "${aws:iot:s3-presigned-url:https://s3.eu-west-1.amazonaws.com/bucket/install.py}"
	if _, err := jobdoc.Parse([]byte(s.seed(placeholder)), device); !errors.Is(err, reason.InvalidDocument) {
		t.Fatalf("placeholder on the device: %v", err)
	}
	if _, err := jobdoc.Parse([]byte(s.seed(placeholder)), jobdoc.Options{AllowedRoots: []string{"/"}, AllowPlaceholders: true}); err != nil {
		t.Fatalf("placeholder for operator tools: %v", err)
	}
}

func TestFilesArrayAndFreeRTOSSignature(t *testing.T) {
	s := newSigned(t)
	doc := fmt.Sprintf(`{"operation":"install","version":"2.0.0","autoStart":false,"workingDirectory":"/opt/app/bin",
	  "files":[{"fileName":"a.py","url":%q,"size":%d,"sha256":%q,"sig-sha256-ecdsa":%q,"mode":"0755","fileType":2},
	           {"fileName":"b.conf","url":%q,"size":%d,"sha256":%q,"sig-sha256-ecdsa":%q}],
	  "presign":"ignored"}`, presigned, len(payload), s.hexd, s.sig, presigned, len(payload), s.hexd, s.sig)
	d, err := jobdoc.Parse([]byte(doc), device)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Files) != 2 || d.Files[0].Mode != 0o755 || d.AutoStart {
		t.Fatalf("parsed %+v", d)
	}
	if strings.Join(d.Unknown, ",") != "files[0].fileType,presign" {
		t.Fatalf("unknown keys %v", d.Unknown)
	}
	for i := range d.Files {
		in := d.VerifyInput(i)
		in.Digest, in.Size = sum[:], int64(len(payload))
		if _, err := s.ts.Verify(in, verify.Policy{}); err != nil {
			t.Fatalf("file %d: %v", i, err)
		}
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	s := newSigned(t)
	d, err := jobdoc.Parse([]byte(s.seed(presigned)), device)
	if err != nil {
		t.Fatal(err)
	}
	b, err := jobdoc.Encode(d)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := jobdoc.Parse(b, device)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if d2.Version != d.Version || d2.Files[0].Codesign.Signature != d.Files[0].Codesign.Signature ||
		string(d2.Attestation) != string(d.Attestation) || d2.WorkingDirectory != d.WorkingDirectory || !d2.AutoStart {
		t.Fatalf("round trip changed the document:\n%+v\n%+v", d, d2)
	}
}

// TestRefusals: every malformed document is refused with a clear reason.
func TestRefusals(t *testing.T) {
	s := newSigned(t)
	good := s.seed(presigned)
	repl := func(old, new string) string {
		if !strings.Contains(good, old) {
			t.Fatalf("test bug: %q not in the seed", old)
		}
		return strings.Replace(good, old, new, 1)
	}
	file := func(extra string) string {
		return repl(`"fileName": "install.py",`, `"fileName": "install.py", `+extra+`,`)
	}
	cases := []struct {
		name string
		doc  string
		opt  *jobdoc.Options
		want reason.Code
		also reason.Code
	}{
		{"larger than the limit", good + strings.Repeat(" ", jobdoc.MaxDocumentSize), nil, reason.InvalidDocument, ""},
		{"not JSON", `{"operation":`, nil, reason.InvalidDocument, ""},
		{"not an object", `["install"]`, nil, reason.InvalidDocument, ""},
		{"two documents", good + `{}`, nil, reason.InvalidDocument, ""},
		{"duplicate key", repl(`"version": "1.0",`, `"version": "1.0", "version": "0.1",`), nil, reason.InvalidDocument, ""},
		{"duplicate nested key", repl(`"size": `, `"size": 1, "size": `), nil, reason.InvalidDocument, ""},
		{"too deep", repl(`"compatible": ["board-rev-c"]`, `"compatible": ["board-rev-c"], "x":`+strings.Repeat("[", 40)+strings.Repeat("]", 40)), nil, reason.InvalidDocument, ""},
		{"invalid UTF-8", repl(`"packageName": "install.py",`, "\"packageName\": \"install\xff.py\","), nil, reason.InvalidDocument, ""},
		{"operation missing", repl(`"operation": "install",`, ``), nil, reason.InvalidDocument, ""},
		{"unknown operation", repl(`"operation": "install"`, `"operation": "reboot"`), nil, reason.UnsupportedOperation, ""},
		{"operation not a string", repl(`"operation": "install"`, `"operation": 1`), nil, reason.InvalidDocument, ""},
		{"version as a number", repl(`"version": "1.0"`, `"version": 1.0`), nil, reason.InvalidDocument, ""},
		{"version not semantic", repl(`"version": "1.0"`, `"version": "latest"`), nil, reason.InvalidDocument, ""},
		{"version missing and no attestation", strings.Replace(repl(`"version": "1.0",`, ``), `"attestation": `+fmt.Sprintf("%q", s.att)+`,`, ``, 1), nil, reason.InvalidDocument, ""},
		{"autoStart yes", repl(`"autoStart": "true"`, `"autoStart": "yes"`), nil, reason.InvalidDocument, ""},
		{"autoStart 1", repl(`"autoStart": "true"`, `"autoStart": 1`), nil, reason.InvalidDocument, ""},
		{"autoStart null", repl(`"autoStart": "true"`, `"autoStart": null`), nil, reason.InvalidDocument, ""},
		{"unknown target", repl(`"target": "files"`, `"target": "firmware"`), nil, reason.InvalidDocument, ""},
		{"files missing", `{"operation":"install","version":"1.0","workingDirectory":"/opt/app"}`, nil, reason.InvalidDocument, ""},
		{"files empty", `{"operation":"install","version":"1.0","workingDirectory":"/opt/app","files":[]}`, nil, reason.InvalidDocument, ""},
		{"files a string", `{"operation":"install","version":"1.0","workingDirectory":"/opt/app","files":"install.py"}`, nil, reason.InvalidDocument, ""},
		{"too many files", `{"operation":"install","version":"1.0","workingDirectory":"/opt/app","files":[` + strings.TrimSuffix(strings.Repeat(`{},`, 17), ",") + `]}`, nil, reason.InvalidDocument, ""},
		{"fileName with ..", repl(`"fileName": "install.py"`, `"fileName": "../../etc/passwd"`), nil, reason.InvalidDocument, ""},
		{"fileName with a slash", repl(`"fileName": "install.py"`, `"fileName": "bin/install.py"`), nil, reason.InvalidDocument, ""},
		{"fileName dot-dot", repl(`"fileName": "install.py"`, `"fileName": ".."`), nil, reason.InvalidDocument, ""},
		{"fileName with a newline", repl(`"fileName": "install.py"`, `"fileName": "install\n.py"`), nil, reason.InvalidDocument, ""},
		{"url http without the flag", repl(presigned, strings.Replace(presigned, "https", "http", 1)), nil, reason.InvalidDocument, ""},
		{"url ftp", repl(presigned, "ftp://host/x"), nil, reason.InvalidDocument, ""},
		{"url file", repl(presigned, "file:///etc/shadow"), nil, reason.InvalidDocument, ""},
		{"url with user info", repl(presigned, "https://user:pw@host/x"), nil, reason.InvalidDocument, ""},
		{"url broken placeholder", repl(presigned, "${aws:iot:s3-presigned-url:x"), nil, reason.InvalidDocument, ""},
		{"size as a string", repl(fmt.Sprintf(`"size": %d`, len(payload)), `"size": "31"`), nil, reason.InvalidDocument, ""},
		{"size fractional", repl(fmt.Sprintf(`"size": %d`, len(payload)), `"size": 31.5`), nil, reason.InvalidDocument, ""},
		{"size exponent", repl(fmt.Sprintf(`"size": %d`, len(payload)), `"size": 3.1e1`), nil, reason.InvalidDocument, ""},
		{"size negative", repl(fmt.Sprintf(`"size": %d`, len(payload)), `"size": -1`), nil, reason.InvalidDocument, ""},
		{"sha256 short", repl(s.hexd, s.hexd[:60]), nil, reason.InvalidDocument, ""},
		{"sha256 not hex", repl(s.hexd, "zz"+s.hexd[2:]), nil, reason.InvalidDocument, ""},
		{"signature bad base64", repl(s.sig, "MEUC!!"+s.sig[6:]), nil, reason.InvalidDocument, reason.SignatureInvalid},
		{"signature algorithm SHA1withRSA", repl(`"SHA256withECDSA"`, `"SHA1withRSA"`), nil, reason.InvalidDocument, reason.SignatureInvalid},
		{"rawPayloadSize disagrees with size", repl(fmt.Sprintf(`"rawPayloadSize": %d`, len(payload)), `"rawPayloadSize": 1`), nil, reason.InvalidDocument, ""},
		{"codesign and sig-sha256-ecdsa both", file(fmt.Sprintf(`"sig-sha256-ecdsa": %q`, s.sig)), nil, reason.InvalidDocument, ""},
		{"codesign not an object", repl(`"codesign": {`, `"codesign": "x", "c": {`), nil, reason.InvalidDocument, ""},
		{"keyId not hex", repl(`"signatureAlgorithm"`, `"keyId": "abc", "signatureAlgorithm"`), nil, reason.InvalidDocument, ""},
		{"certificateChain not PEM", repl(`"signatureAlgorithm"`, `"certificateChain": "hello", "signatureAlgorithm"`), nil, reason.InvalidDocument, ""},
		{"mode setuid", file(`"mode": "4755"`), nil, reason.InvalidDocument, ""},
		{"mode not octal", file(`"mode": "rwx"`), nil, reason.InvalidDocument, ""},
		{"mode as a number", file(`"mode": 493`), nil, reason.InvalidDocument, ""},
		{"workingDirectory relative", repl(`"/home/ec2-user/JobSampleTesting"`, `"JobSampleTesting"`), nil, reason.InvalidDocument, ""},
		{"workingDirectory outside the roots", repl(`"/home/ec2-user/JobSampleTesting"`, `"/etc/cron.d"`), nil, reason.InvalidDocument, ""},
		{"workingDirectory escaping with ..", repl(`"/home/ec2-user/JobSampleTesting"`, `"/opt/app/../../etc"`), nil, reason.InvalidDocument, ""},
		{"workingDirectory sharing a prefix with a root", repl(`"/home/ec2-user/JobSampleTesting"`, `"/opt/application"`), nil, reason.InvalidDocument, ""},
		{"no allowed root configured", good, &jobdoc.Options{}, reason.InvalidDocument, ""},
		{"workingDirectory missing", repl(`"workingDirectory": "/home/ec2-user/JobSampleTesting",`, ``), nil, reason.InvalidDocument, ""},
		{"autoStart without packageName", repl(`"packageName": "install.py",`, ``), nil, reason.InvalidDocument, ""},
		{"autoStart of a file not in the job", repl(`"packageName": "install.py"`, `"packageName": "other.py"`), nil, reason.InvalidDocument, ""},
		{"packageName a path", repl(`"packageName": "install.py"`, `"packageName": "/bin/sh"`), nil, reason.InvalidDocument, ""},
		{"slot target with a working directory", repl(`"target": "files"`, `"target": "slot"`), nil, reason.InvalidDocument, ""},
		{"compatible not an array", repl(`"compatible": ["board-rev-c"]`, `"compatible": "board-rev-c"`), nil, reason.InvalidDocument, ""},
		{"compatible with a number", repl(`"compatible": ["board-rev-c"]`, `"compatible": ["board-rev-c", 3]`), nil, reason.InvalidDocument, ""},
		{"compatible with an empty name", repl(`"compatible": ["board-rev-c"]`, `"compatible": [""]`), nil, reason.InvalidDocument, ""},
		{"attestation not base64", repl(s.att, "!!"+s.att), nil, reason.InvalidDocument, reason.SignatureInvalid},
		{"attestation not an envelope", repl(fmt.Sprintf("%q", s.att), `{"payloadType":"text/plain"}`), nil, reason.InvalidDocument, reason.SignatureInvalid},
		{"attestation a number", repl(fmt.Sprintf("%q", s.att), `7`), nil, reason.InvalidDocument, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			opt := device
			if c.opt != nil {
				opt = *c.opt
			}
			d, err := jobdoc.Parse([]byte(c.doc), opt)
			if err == nil {
				t.Fatalf("accepted: %+v", d)
			}
			if !errors.Is(err, c.want) || reason.Of(err) != c.want {
				t.Fatalf("refused with %v (code %s), want %s", err, reason.Of(err), c.want)
			}
			if c.also != "" && !errors.Is(err, c.also) {
				t.Fatalf("cause %v does not match %s", err, c.also)
			}
			t.Logf("refused: %v", err)
		})
	}
}

func TestAcceptedVariants(t *testing.T) {
	s := newSigned(t)
	good := s.seed(presigned)
	for name, c := range map[string]struct {
		doc string
		opt jobdoc.Options
	}{
		"autoStart as a JSON bool":   {strings.Replace(good, `"autoStart": "true"`, `"autoStart": true`, 1), device},
		"http with the flag":         {strings.Replace(good, presigned, "http://127.0.0.1:8080/install.py", 1), jobdoc.Options{AllowedRoots: device.AllowedRoots, AllowInsecureHTTP: true}},
		"workingDirectory is a root": {strings.Replace(good, `"/home/ec2-user/JobSampleTesting"`, `"/opt/app/"`, 1), device},
		"attestation as an object": {strings.Replace(good, fmt.Sprintf("%q", s.att), func() string {
			b, _ := base64.StdEncoding.DecodeString(s.att)
			return string(b)
		}(), 1), device},
		"v2 placeholder for tools": {strings.Replace(good, presigned, "${aws:iot:s3-presigned-url-v2:https://s3.eu-west-1.amazonaws.com/b/k%3FversionId%3D1}", 1),
			jobdoc.Options{AllowedRoots: []string{"/"}, AllowPlaceholders: true}},
		"certificateChain AWS object": {strings.Replace(good, `"signatureAlgorithm"`, `"certificateChain": {"certificateName":"c","inlineDocument":"`+
			base64.StdEncoding.EncodeToString([]byte("-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n"))+`"}, "signatureAlgorithm"`, 1), device},
	} {
		if _, err := jobdoc.Parse([]byte(c.doc), c.opt); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestVersionMayComeFromTheDocumentAttestationOnly(t *testing.T) {
	s := newSigned(t)
	noVersion := strings.Replace(s.seed(presigned), `"version": "1.0",`, ``, 1)
	d, err := jobdoc.Parse([]byte(noVersion), device)
	if err != nil {
		t.Fatal(err)
	}
	in := d.VerifyInput(0)
	in.Digest, in.Size = sum[:], int64(len(payload))
	vd, err := s.ts.Verify(in, verify.Policy{InstalledVersion: "1.0", DeviceCompatible: []string{"board-rev-c"}})
	if err != nil || vd.Version != "1.0" {
		t.Fatalf("verdict %+v, %v", vd, err)
	}
	// Per-file attestations could disagree with each other: then the plain version is required.
	perFile := strings.Replace(noVersion, `"sha256":`, `"attestation": `+fmt.Sprintf("%q", s.att)+`, "sha256":`, 1)
	if _, err := jobdoc.Parse([]byte(perFile), device); !errors.Is(err, reason.InvalidDocument) {
		t.Fatalf("per-file attestation without a plain version: %v", err)
	}
}
