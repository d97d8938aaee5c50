package identity

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/stefanberger/go-pkcs11uri"
)

// moduleDirs are searched for a module-name (Debian's multiarch directories and p11-kit's).
var moduleDirs = []string{
	"/usr/lib/x86_64-linux-gnu/pkcs11", "/usr/lib/aarch64-linux-gnu/pkcs11", "/usr/lib/arm-linux-gnueabihf/pkcs11",
	"/usr/lib/x86_64-linux-gnu/softhsm", "/usr/lib/aarch64-linux-gnu/softhsm", "/usr/lib/softhsm",
	"/usr/lib/pkcs11", "/usr/lib64/pkcs11", "/usr/local/lib/pkcs11",
}

// queryOnly are RFC 7512 query attributes; written in the path (as in
// `pkcs11:token=a;object=b;pin-source=file:/p`, a common slip) they are moved to the query.
var queryOnly = []string{"pin-source", "pin-value", "module-path", "module-name"}

// parsePKCS11 parses an RFC 7512 URI (go-pkcs11uri) into what crypto11 needs. It reads no PIN.
func parsePKCS11(spec string) (*PKCS11Ref, error) {
	u := pkcs11uri.New()
	if err := u.Parse(spec); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRef, err)
	}
	for _, a := range queryOnly {
		if v, ok := u.GetPathAttribute(a, false); ok {
			u.RemovePathAttribute(a)
			if err := u.AddQueryAttributeUnencoded(a, []byte(v)); err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrBadRef, a, err)
			}
		}
	}
	if err := u.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRef, err)
	}
	p := &PKCS11Ref{}
	p.Token, _ = u.GetPathAttribute("token", false)
	p.Serial, _ = u.GetPathAttribute("serial", false)
	p.Object, _ = u.GetPathAttribute("object", false)
	if id, ok := u.GetPathAttribute("id", false); ok {
		p.ID = []byte(id)
	}
	if s, ok := u.GetPathAttribute("slot-id", false); ok {
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, fmt.Errorf("%w: slot-id %q", ErrBadRef, s)
		}
		p.SlotID = &n
	}
	if p.Token == "" && p.Serial == "" && p.SlotID == nil {
		return nil, fmt.Errorf("%w: %s names no token (token=, serial= or slot-id=)", ErrBadRef, redactURI(spec))
	}
	if p.Object == "" && len(p.ID) == 0 {
		return nil, fmt.Errorf("%w: %s names no key (object= or id=)", ErrBadRef, redactURI(spec))
	}
	if t, ok := u.GetPathAttribute("type", false); ok && t != "private" {
		return nil, fmt.Errorf("%w: type=%s: the identity is a private key (type=private or none)", ErrBadRef, t)
	}
	u.SetModuleDirectories(moduleDirs)
	u.SetAllowAnyModule(true) // the module is named by the device's own root-owned config
	mod, ok := u.GetQueryAttribute("module-path", false)
	if _, named := u.GetQueryAttribute("module-name", false); named || (ok && isDir(mod)) {
		m, err := u.GetModule()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrToken, err)
		}
		mod, ok = m, true
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s names no module (?module-path=/usr/lib/…/libsofthsm2.so or ?module-name=…)", ErrBadRef, redactURI(spec))
	}
	p.Module = mod
	if f, ok := u.GetQueryAttribute("pin-source", false); ok {
		p.pinKind, p.pinFile = "file", strings.TrimPrefix(f, "file:")
	} else if _, ok := u.GetQueryAttribute("pin-value", false); ok {
		p.pinKind = "value"
	}
	if u.HasPIN() {
		p.pin = func() (string, error) {
			pin, err := u.GetPIN()
			if err != nil {
				return "", fmt.Errorf("%w: %v", ErrPIN, err)
			}
			// A PIN file written with echo ends in a newline that is not part of the PIN.
			return strings.TrimRight(pin, "\r\n"), nil
		}
	}
	return p, nil
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// String is the URI without the PIN value.
func (p *PKCS11Ref) String() string {
	var path []string
	add := func(k, v string) {
		if v != "" {
			path = append(path, k+"="+v)
		}
	}
	add("token", p.Token)
	add("serial", p.Serial)
	if p.SlotID != nil {
		add("slot-id", strconv.Itoa(*p.SlotID))
	}
	add("object", p.Object)
	if len(p.ID) > 0 {
		var b strings.Builder
		for _, c := range p.ID {
			fmt.Fprintf(&b, "%%%02X", c)
		}
		add("id", b.String())
	}
	s := "pkcs11:" + strings.Join(path, ";") + "?module-path=" + p.Module
	switch p.pinKind {
	case "file":
		s += "&pin-source=file:" + p.pinFile
	case "value":
		s += "&pin-value=REDACTED"
	}
	return s
}

// redactURI hides a pin-value in an unparsed URI, for error messages.
func redactURI(s string) string {
	i := strings.Index(s, "pin-value=")
	if i < 0 {
		return s
	}
	j := strings.IndexAny(s[i:], "&;")
	if j < 0 {
		return s[:i] + "pin-value=REDACTED"
	}
	return s[:i] + "pin-value=REDACTED" + s[i+j:]
}
