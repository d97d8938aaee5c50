// Package reason holds the reason codes the agent reports in statusDetails.reason, and the error
// type that carries one. Packages wrap their failures in *Error (or sentinels built with New) so
// that the agent picks the code with errors.Is / errors.As, never by reading messages.
package reason

import (
	"errors"
	"fmt"
)

// Code is a reason code as it appears in statusDetails.
type Code string

// The reason codes of DESIGN.md.
const (
	InvalidDocument      Code = "INVALID_DOCUMENT"
	UnsupportedOperation Code = "UNSUPPORTED_OPERATION"
	IncompatibleDevice   Code = "INCOMPATIBLE_DEVICE"
	DowngradeRefused     Code = "DOWNGRADE_REFUSED"
	Unsigned             Code = "UNSIGNED"
	UntrustedKey         Code = "UNTRUSTED_KEY"
	SignatureInvalid     Code = "SIGNATURE_INVALID"
	DigestMismatch       Code = "DIGEST_MISMATCH"
	SizeMismatch         Code = "SIZE_MISMATCH"
	DownloadFailed       Code = "DOWNLOAD_FAILED"
	URLExpired           Code = "URL_EXPIRED"
	InsufficientSpace    Code = "INSUFFICIENT_SPACE"
	InstallFailed        Code = "INSTALL_FAILED"
	HealthCheckFailed    Code = "HEALTH_CHECK_FAILED"
	BootFailed           Code = "BOOT_FAILED"
	AutostartFailed      Code = "AUTOSTART_FAILED"
	Canceled             Code = "CANCELED"
	Internal             Code = "INTERNAL"

	// DocumentMismatch: a plain document field disagrees with the signed release statement
	// (the plain fields are only copies of the signed ones).
	DocumentMismatch Code = "DOCUMENT_MISMATCH"
	// ReleaseExpired: the signed release statement's expires time has passed.
	ReleaseExpired Code = "RELEASE_EXPIRED"
	// UnsafePath: a directory or file the install would touch can be changed by a user other
	// than root (or the configured files.run_as user), or is not what it was checked to be.
	UnsafePath Code = "UNSAFE_PATH"
	// HostNotAllowed: a payload URL (or a redirect) names a host outside download.allowed_hosts.
	HostNotAllowed Code = "HOST_NOT_ALLOWED"
	// DownloadTooSlow: the download stayed below download.min_speed for its whole window, again
	// and again (a slow-retrieval attack or a link too poor to finish).
	DownloadTooSlow Code = "DOWNLOAD_TOO_SLOW"
	// PolicyRefused: the device's update policy (a hook answering neither 0 nor 75) refused a
	// phase of the update (docs/update-policy.md).
	PolicyRefused Code = "POLICY_REFUSED"
	// WaitExceedsTimeout: the update must wait (for a window or a hook) longer than the job's
	// in-progress timeout leaves: reported before AWS would time the execution out.
	WaitExceedsTimeout Code = "WAIT_EXCEEDS_TIMEOUT"
	// DecompressionBomb: a compressed payload decompresses past its signed raw size. Its own code,
	// not SIZE_MISMATCH: the bytes on the wire may be exactly the signed ones (a release built
	// wrong) or a decoder is being attacked, and it is refused before the extra byte is written.
	DecompressionBomb Code = "DECOMPRESSION_BOMB"
)

// All lists every code once, for tests and documentation.
var All = []Code{
	InvalidDocument, UnsupportedOperation, IncompatibleDevice, DowngradeRefused, Unsigned,
	UntrustedKey, SignatureInvalid, DigestMismatch, SizeMismatch, DecompressionBomb, DownloadFailed, URLExpired,
	InsufficientSpace, InstallFailed, HealthCheckFailed, BootFailed, AutostartFailed, Canceled,
	Internal, DocumentMismatch, ReleaseExpired, UnsafePath, HostNotAllowed, DownloadTooSlow,
	PolicyRefused, WaitExceedsTimeout,
}

// Error is a failure with a reason code. errors.Is(err, reason.SignatureInvalid) matches any
// *Error in the chain carrying that code, so callers need no package-specific sentinels.
type Error struct {
	Code Code
	Msg  string // the whole human sentence, cause included; safe to report (no secrets)
	Err  error  // the cause, may be nil
}

func (e *Error) Error() string {
	switch {
	case e.Msg != "":
		// Msg is the whole sentence: Errorf already wrote the cause into it.
		return fmt.Sprintf("%s: %s", e.Code, e.Msg)
	case e.Err != nil:
		return fmt.Sprintf("%s: %v", e.Code, e.Err)
	}
	return string(e.Code)
}

func (e *Error) Unwrap() error { return e.Err }

// Is lets errors.Is(err, someCode) and errors.Is(err, &Error{Code: c}) match on the code.
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case Code:
		return e.Code == t
	case *Error:
		return t.Msg == "" && t.Err == nil && e.Code == t.Code
	}
	return false
}

// Error makes a Code usable as an errors.Is target and as a bare error.
func (c Code) Error() string { return string(c) }

// Errorf builds an *Error with a formatted message; a %w verb wraps a cause.
func Errorf(code Code, format string, args ...any) error {
	wrapped := fmt.Errorf(format, args...)
	return &Error{Code: code, Msg: wrapped.Error(), Err: errors.Unwrap(wrapped)}
}

// Wrap attaches a code to err; nil stays nil.
func Wrap(code Code, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Code: code, Err: err}
}

// Of returns the code of the first *Error in err's chain, or Internal when there is none:
// an unclassified failure is reported as INTERNAL, never guessed.
func Of(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	var c Code
	if errors.As(err, &c) {
		return c
	}
	return Internal
}
