package jobdoc_test

import (
	"errors"
	"testing"

	"github.com/fieldota/fieldota/ota/jobdoc"
	"github.com/fieldota/fieldota/ota/reason"
)

func FuzzParseDocument(f *testing.F) {
	f.Add([]byte(`{"operation":"install","version":"1.0","packageName":"install.py","autoStart":"true","workingDirectory":"/opt/app/x","target":"files","files":{"fileName":"install.py","url":"https://h/x","size":3,"sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","sig-sha256-ecdsa":"MEUCIQ=="}}`))
	f.Add([]byte(`{"operation":"install","version":"2","target":"slot","files":[{"fileName":"a","url":"${aws:iot:s3-presigned-url:https://s3/b/k}","size":0,"sha256":"00"}]}`))
	f.Add([]byte(`{"a":{"a":[1,2,{"b":null}]},"a":1}`))
	opt := jobdoc.Options{AllowPlaceholders: true}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := jobdoc.Parse(b, opt)
		if err != nil {
			if !errors.Is(err, reason.InvalidDocument) && !errors.Is(err, reason.UnsupportedOperation) {
				t.Fatalf("refusal without a document reason: %v", err)
			}
			return
		}
		if len(d.Files) == 0 || d.Operation != jobdoc.OperationInstall {
			t.Fatalf("accepted an incomplete document: %+v", d)
		}
		_ = d.Claims()
		// What parses must encode and parse again (unless too large for AWS).
		if enc, err := jobdoc.Encode(d); err == nil {
			if _, err := jobdoc.Parse(enc, opt); err != nil {
				t.Fatalf("re-encoded document refused: %v\n%s", err, enc)
			}
		}
	})
}
