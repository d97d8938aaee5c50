package reason

import (
	"errors"
	"fmt"
	"testing"
)

func TestCodeMatchesThroughWrapping(t *testing.T) {
	cause := errors.New("asn1: truncated")
	err := fmt.Errorf("verify release: %w", Errorf(SignatureInvalid, "ecdsa check failed: %w", cause))
	if !errors.Is(err, SignatureInvalid) {
		t.Fatal("code lost through wrapping")
	}
	if errors.Is(err, DigestMismatch) {
		t.Fatal("matched the wrong code")
	}
	if !errors.Is(err, cause) {
		t.Fatal("cause lost")
	}
	if Of(err) != SignatureInvalid {
		t.Fatalf("Of = %s", Of(err))
	}
}

func TestUnclassifiedErrorIsInternal(t *testing.T) {
	if got := Of(errors.New("???")); got != Internal {
		t.Fatalf("got %s", got)
	}
	if got := Of(fmt.Errorf("x: %w", URLExpired)); got != URLExpired {
		t.Fatalf("bare code: got %s", got)
	}
}

func TestCauseIsPrintedOnce(t *testing.T) {
	err := Errorf(SignatureInvalid, "ecdsa check failed: %w", errors.New("asn1: truncated"))
	if got := err.Error(); got != "SIGNATURE_INVALID: ecdsa check failed: asn1: truncated" {
		t.Fatalf("got %q", got)
	}
	if got := Wrap(InstallFailed, errors.New("disk full")).Error(); got != "INSTALL_FAILED: disk full" {
		t.Fatalf("got %q", got)
	}
}
