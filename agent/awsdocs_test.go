package agent

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/fieldota/fieldota/verify"
	"github.com/fieldota/fieldota/verify/sign"
)

// afrDoc is a document in the shape `aws iot create-ota-update` writes for HTTP, its
// sig-sha256-ecdsa made as AWS Signer makes it (ECDSA P-256 over SHA-256 of the bytes, DER,
// base64) by the device's trusted code-signing key.
func (h *harness) afrDoc(name string, content []byte) string {
	h.t.Helper()
	sum := sha256.Sum256(content)
	cs, err := sign.MakeCodesign(h.key, verify.ECDSASHA256, sum[:], int64(len(content)))
	if err != nil {
		h.t.Fatal(err)
	}
	doc := map[string]any{"afr_ota": map[string]any{
		"protocols": []string{"HTTP"},
		"files": []map[string]any{{
			"filepath": "/device/" + name, "filesize": len(content), "fileid": 0, "certfile": "Code Verify Key",
			"update_data_url": "${aws:iot:s3-presigned-url:https://s3.eu-west-1.amazonaws.com/bucket/" + name + "}",
			"auth_scheme":     "aws.s3.presigned", "sig-sha256-ecdsa": cs.Signature,
		}},
	}}
	b, _ := json.Marshal(doc)
	return string(b)
}

func off() *bool { f := false; return &f }

// TestCreateOTAUpdateHTTPDocumentInstallsAndAFlippedByteIsSignatureInvalid: the AWS-shaped
// afr_ota document installs its one file into afr_ota.working_directory (filepath's directory
// is ignored); the same document over a payload with one byte flipped is FAILED
// SIGNATURE_INVALID and nothing is placed.
func TestCreateOTAUpdateHTTPDocumentInstallsAndAFlippedByteIsSignatureInvalid(t *testing.T) {
	h := newHarness(t)
	h.cfg.Verify.RequireReleaseStatement = off()
	work := filepath.Join(h.appRoot, "ota")
	h.cfg.AFROTA.Target, h.cfg.AFROTA.WorkingDirectory = "files", work
	fw := []byte("firmware image 1\n")
	h.publish("fw.bin", fw)
	h.createJob("afr", h.afrDoc("fw.bin", fw))
	h.run()
	if ex := h.waitTerminal("afr"); ex.Status != "SUCCEEDED" {
		t.Fatalf("%s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	if got, _ := os.ReadFile(filepath.Join(work, "fw.bin")); string(got) != string(fw) {
		t.Fatalf("placed %q", got)
	}
	if _, err := os.Stat("/device/fw.bin"); err == nil {
		t.Fatal("the document's filepath was used")
	}

	fw2 := []byte("firmware image 2\n")
	doc := h.afrDoc("fw2.bin", fw2)
	flipped := append([]byte(nil), fw2...)
	flipped[3] ^= 1
	h.publish("fw2.bin", flipped)
	h.createJob("afr-flipped", doc)
	h.expect("afr-flipped", "FAILED", "SIGNATURE_INVALID")
	if _, err := os.Stat(filepath.Join(work, "fw2.bin")); err == nil {
		t.Fatal("a file whose signature failed was placed")
	}
}

// TestCreateOTAUpdateDocumentIsRefusedWhereNotConfigured: with the release statement required
// (the default) it is REJECTED UNSIGNED; with afr_ota.target unset UNSUPPORTED_OPERATION; an MQTT
// stream document INVALID_DOCUMENT — all while QUEUED.
func TestCreateOTAUpdateDocumentIsRefusedWhereNotConfigured(t *testing.T) {
	cases := []struct {
		name, code string
		setup      func(h *harness)
		doc        func(h *harness, fw []byte) string
	}{
		{"statement required", "UNSIGNED", func(h *harness) { h.cfg.AFROTA.Target, h.cfg.AFROTA.WorkingDirectory = "files", h.appRoot+"/ota" }, nil},
		{"afr_ota off", "UNSUPPORTED_OPERATION", func(h *harness) { h.cfg.Verify.RequireReleaseStatement = off() }, nil},
		{"mqtt stream", "INVALID_DOCUMENT", func(h *harness) {
			h.cfg.Verify.RequireReleaseStatement = off()
			h.cfg.AFROTA.Target, h.cfg.AFROTA.WorkingDirectory = "files", h.appRoot+"/ota"
		}, func(h *harness, fw []byte) string {
			return fmt.Sprintf(`{"afr_ota":{"protocols":["MQTT"],"streamname":"AFR_OTA-1","files":[{"filesize":%d,"fileid":0,"sig-sha256-ecdsa":"MEUCIQ=="}]}}`, len(fw))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			c.setup(h)
			fw := []byte("fw")
			h.publish("fw.bin", fw)
			doc := h.afrDoc("fw.bin", fw)
			if c.doc != nil {
				doc = c.doc(h, fw)
			}
			h.createJob("afr", doc)
			h.run()
			h.expect("afr", "REJECTED", c.code)
		})
	}
}
