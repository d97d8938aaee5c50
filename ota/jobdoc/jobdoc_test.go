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
	"time"

	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
)

var (
	payload = []byte("print('hello from install.py')\n")
	sum     = sha256.Sum256(payload)
	device  = jobdoc.Options{}
	// policy is a device that requires the release statement (the default).
	policy = verify.Policy{RequireStatement: true, DeviceCompatible: []string{"board-rev-c"}}
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
	env, err := sign.Attest(k, "install.py", sum[:], seedRelease)
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

// seedRelease is what the seed's document says, signed.
var seedRelease = verify.Predicate{Target: "files", Version: "1.0", Compatible: []string{"board-rev-c"},
	WorkingDirectory: "/home/ec2-user/JobSampleTesting", PackageName: "install.py", AutoStart: true,
	Files: map[string]verify.PredicateFile{"install.py": {Size: int64(len(payload))}}}

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
	if !d.AutoStartValue() || d.Target != jobdoc.TargetFiles || len(d.Files) != 1 || d.Files[0].Size != int64(len(payload)) ||
		d.WorkingDirectory != "/home/ec2-user/JobSampleTesting" || d.Files[0].Codesign == nil || d.Attestation == nil {
		t.Fatalf("parsed %+v", d)
	}
	r, err := s.ts.Release(d.Claims(), policy)
	if err != nil {
		t.Fatalf("seed example refused: %v", err)
	}
	if !r.Signed || r.KeyID != s.kid || r.Version != "1.0" || r.PackageName != "install.py" || !r.AutoStart || r.Files[0].Mode != 0o755 {
		t.Fatalf("release %+v", r)
	}
	if _, err := s.ts.CheckPayload(r, 0, sum[:], int64(len(payload)), time.Time{}); err != nil {
		t.Fatalf("payload refused: %v", err)
	}
	// The same document as created (placeholder unexpanded) is for operator tools only.
	placeholder := "${aws:iot:s3-presigned-url:https://s3.eu-west-1.amazonaws.com/bucket/install.py}"
	if _, err := jobdoc.Parse([]byte(s.seed(placeholder)), device); !errors.Is(err, reason.InvalidDocument) {
		t.Fatalf("placeholder on the device: %v", err)
	}
	if _, err := jobdoc.Parse([]byte(s.seed(placeholder)), jobdoc.Options{AllowPlaceholders: true}); err != nil {
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
	if len(d.Files) != 2 || d.Files[0].Mode != 0o755 || d.AutoStartValue() {
		t.Fatalf("parsed %+v", d)
	}
	if strings.Join(d.Unknown, ",") != "files[0].fileType,presign" {
		t.Fatalf("unknown keys %v", d.Unknown)
	}
	// No statement: only a device that accepts codesign-only releases takes it.
	if _, err := s.ts.Release(d.Claims(), policy); !errors.Is(err, reason.Unsigned) {
		t.Fatalf("codesign-only release on a default device: %v", err)
	}
	r, err := s.ts.Release(d.Claims(), verify.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Signed || r.Files[1].Mode != 0o644 || r.WorkingDirectory != "/opt/app/bin" {
		t.Fatalf("release %+v", r)
	}
	for i := range d.Files {
		if _, err := s.ts.CheckPayload(r, i, sum[:], int64(len(payload)), time.Time{}); err != nil {
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
		string(d2.Attestation) != string(d.Attestation) || d2.WorkingDirectory != d.WorkingDirectory || !d2.AutoStartValue() {
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
		{"codesign and sig-sha256-ecdsa both", file(fmt.Sprintf(`"sig-sha256-ecdsa": %q`, s.sig)), nil, reason.InvalidDocument, ""},
		{"codesign not an object", repl(`"codesign": {`, `"codesign": "x", "c": {`), nil, reason.InvalidDocument, ""},
		{"keyId not hex", repl(`"signatureAlgorithm"`, `"keyId": "abc", "signatureAlgorithm"`), nil, reason.InvalidDocument, ""},
		{"certificateChain not PEM", repl(`"signatureAlgorithm"`, `"certificateChain": "hello", "signatureAlgorithm"`), nil, reason.InvalidDocument, ""},
		{"mode setuid", file(`"mode": "4755"`), nil, reason.InvalidDocument, ""},
		{"mode not octal", file(`"mode": "rwx"`), nil, reason.InvalidDocument, ""},
		{"mode as a number", file(`"mode": 493`), nil, reason.InvalidDocument, ""},
		{"workingDirectory relative", repl(`"/home/ec2-user/JobSampleTesting"`, `"JobSampleTesting"`), nil, reason.InvalidDocument, ""},
		{"workingDirectory escaping with ..", repl(`"/home/ec2-user/JobSampleTesting"`, `"/opt/app/../../etc"`), nil, reason.InvalidDocument, ""},
		{"workingDirectory with a trailing slash", repl(`"/home/ec2-user/JobSampleTesting"`, `"/home/ec2-user/JobSampleTesting/"`), nil, reason.InvalidDocument, ""},
		{"workingDirectory with a bidi override", repl(`"/home/ec2-user/JobSampleTesting"`, `"/home/ec2-user/Job\u202eSample"`), nil, reason.InvalidDocument, ""},
		{"packageName a path", repl(`"packageName": "install.py"`, `"packageName": "/bin/sh"`), nil, reason.InvalidDocument, ""},
		{"fileName with a right-to-left override", repl(`"fileName": "install.py"`, `"fileName": "install\u202eyp.sh"`), nil, reason.InvalidDocument, ""},
		{"fileName with a zero-width joiner", repl(`"fileName": "install.py"`, `"fileName": "inst\u200dall.py"`), nil, reason.InvalidDocument, ""},
		{"fileName with a no-break space", repl(`"fileName": "install.py"`, `"fileName": "install\u00a0.py"`), nil, reason.InvalidDocument, ""},
		{"fileName with the agent's reserved prefix", repl(`"fileName": "install.py"`, `"fileName": ".fieldota-prev-install.py"`), nil, reason.InvalidDocument, ""},
		{"packageName with the agent's reserved prefix", repl(`"packageName": "install.py"`, `"packageName": ".fieldota-new-x"`), nil, reason.InvalidDocument, ""},
		{"mode world-writable", file(`"mode": "0777"`), nil, reason.InvalidDocument, ""},
		{"mode group-writable", file(`"mode": "0664"`), nil, reason.InvalidDocument, ""},
		{"per-file attestation", file(fmt.Sprintf(`"attestation": %q`, s.att)), nil, reason.InvalidDocument, ""},
		{"size missing without a statement", strings.Replace(repl(fmt.Sprintf(`"size": %d,`, len(payload)), ``), `"attestation": `+fmt.Sprintf("%q", s.att)+`,`, ``, 1), nil, reason.InvalidDocument, ""},
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
		"autoStart as a JSON bool":              {strings.Replace(good, `"autoStart": "true"`, `"autoStart": true`, 1), device},
		"http (the download policy decides)":    {strings.Replace(good, presigned, "http://127.0.0.1:8080/install.py", 1), device},
		"HTTPS in capitals":                     {strings.Replace(good, "https://", "HTTPS://", 1), device},
		"size and sha256 left to the statement": {strings.Replace(strings.Replace(good, fmt.Sprintf(`"size": %d,`, len(payload)), ``, 1), fmt.Sprintf(`"sha256": %q,`, s.hexd), ``, 1), device},
		"attestation as an object": {strings.Replace(good, fmt.Sprintf("%q", s.att), func() string {
			b, _ := base64.StdEncoding.DecodeString(s.att)
			return string(b)
		}(), 1), device},
		"v2 placeholder for tools": {strings.Replace(good, presigned, "${aws:iot:s3-presigned-url-v2:https://s3.eu-west-1.amazonaws.com/b/k%3FversionId%3D1}", 1),
			jobdoc.Options{AllowPlaceholders: true}},
		"certificateChain AWS object": {strings.Replace(good, `"signatureAlgorithm"`, `"certificateChain": {"certificateName":"c","inlineDocument":"`+
			base64.StdEncoding.EncodeToString([]byte("-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n"))+`"}, "signatureAlgorithm"`, 1), device},
	} {
		if _, err := jobdoc.Parse([]byte(c.doc), c.opt); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestVersionMayComeFromTheStatementOnly(t *testing.T) {
	s := newSigned(t)
	noVersion := strings.Replace(s.seed(presigned), `"version": "1.0",`, ``, 1)
	d, err := jobdoc.Parse([]byte(noVersion), device)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.ts.Release(d.Claims(), policy)
	if err != nil || r.Version != "1.0" {
		t.Fatalf("release %+v, %v", r, err)
	}
}

// TestRefusalsNameTheFieldAndWhy: a refusal's words carry its cause ("…is not a base name"),
// not only the field (issue 12: the device used to report detail "attestation").
func TestRefusalsNameTheFieldAndWhy(t *testing.T) {
	s := newSigned(t)
	good := s.seed(presigned)
	for name, c := range map[string]struct{ old, new, want string }{
		"fileName":    {`"fileName": "install.py"`, `"fileName": "../../etc/passwd"`, `files[0].fileName: "../../etc/passwd" is not a base name`},
		"attestation": {fmt.Sprintf("%q", s.att), `{"payloadType":"text/plain"}`, `attestation: envelope payloadType "text/plain"`},
		"signature":   {`"SHA256withECDSA"`, `"SHA1withRSA"`, `files[0].codesign.signatureAlgorithm: signature algorithm "SHA1withRSA" not supported`},
		"mode":        {`"fileName": "install.py",`, `"fileName": "install.py", "mode": "0777",`, `files[0].mode 0777 lets group or others write the file`},
	} {
		_, err := jobdoc.Parse([]byte(strings.Replace(good, c.old, c.new, 1)), device)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want it to say %q", name, err, c.want)
		}
		if err != nil && strings.Count(err.Error(), "INVALID_DOCUMENT") != 1 {
			t.Errorf("%s: code printed more than once: %v", name, err)
		}
	}
}
