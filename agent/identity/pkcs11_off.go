//go:build !pkcs11 || !cgo

package identity

// PKCS11Supported tells whether this build can open pkcs11: references. The default build is
// static and cgo-free; PKCS#11 modules are C libraries, so they live in the pkcs11 build.
const PKCS11Supported = false

func openPKCS11(r Ref) (*Key, error) {
	return nil, ErrNoPKCS11
}

func createPKCS11(r Ref) (*Key, bool, error) {
	return nil, false, ErrNoPKCS11
}
