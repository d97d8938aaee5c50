// Package certs emulates the certificate side of AWS IoT Core for tests: a small CA of its own
// that signs device CSRs as CreateCertificateFromCsr does, a registry of the certificates it
// issued with their status (ACTIVE, INACTIVE, REVOKED: UpdateCertificate), and the server TLS
// configuration that trusts those certificates while they are ACTIVE. Deviations from AWS are
// listed in docs/emulator.md.
package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"
)

// Certificate statuses, as AWS names them.
const (
	StatusActive   = "ACTIVE"
	StatusInactive = "INACTIVE"
	StatusRevoked  = "REVOKED"
)

var (
	// ErrInvalidCSR: the CSR does not parse, its signature does not verify, or its key is weak.
	ErrInvalidCSR = errors.New("certs: invalid certificate signing request")
	// ErrNotFound: no certificate with that id.
	ErrNotFound = errors.New("certs: no such certificate")
	// ErrInvalidStatus: UpdateCertificate's newStatus is not one AWS accepts.
	ErrInvalidStatus = errors.New("certs: invalid certificate status")
)

// notAfter is what AWS IoT puts in certificates it creates from a CSR.
var notAfter = time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC)

// Authority is the emulator's certificate authority and certificate registry.
type Authority struct {
	region, account string
	ca              *x509.Certificate
	key             crypto.Signer
	caPEM           []byte
	now             func() time.Time

	mu    sync.Mutex
	certs map[string]*record // by certificateId
}

type record struct {
	status string
	cert   *x509.Certificate
}

// New makes a P-256 CA; ARNs name region and account. now nil = time.Now.
func New(region, account string, now func() time.Time) (*Authority, error) {
	if now == nil {
		now = time.Now
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "fieldota emulator IoT CA", Organization: []string{"fieldota jobsim"}},
		NotBefore:             now().Add(-time.Hour),
		NotAfter:              notAfter.AddDate(1, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Authority{region: region, account: account, ca: ca, key: key, now: now,
		caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), certs: map[string]*record{}}, nil
}

// CACertPEM is the CA certificate: a broker that should accept the issued certificates trusts it.
func (a *Authority) CACertPEM() []byte { return a.caPEM }

// CreateCertificateFromCsrInput is the request body (setAsActive is a query parameter on the
// REST API).
type CreateCertificateFromCsrInput struct {
	CertificateSigningRequest string `json:"certificateSigningRequest"`
	SetAsActive               bool   `json:"-"`
}

// CreateCertificateFromCsrOutput is the response.
type CreateCertificateFromCsrOutput struct {
	CertificateArn string `json:"certificateArn"`
	CertificateID  string `json:"certificateId"`
	CertificatePem string `json:"certificatePem"`
}

// CreateCertificateFromCsr signs the CSR after checking its proof of possession. The certificate
// keeps the CSR's subject and key, is valid until the end of 2049 (as AWS's are) and is ACTIVE
// only with SetAsActive.
func (a *Authority) CreateCertificateFromCsr(in CreateCertificateFromCsrInput) (CreateCertificateFromCsrOutput, error) {
	var out CreateCertificateFromCsrOutput
	blk, _ := pem.Decode([]byte(in.CertificateSigningRequest))
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return out, fmt.Errorf("%w: certificateSigningRequest is not a PEM CERTIFICATE REQUEST", ErrInvalidCSR)
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return out, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return out, fmt.Errorf("%w: signature: %v", ErrInvalidCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return out, fmt.Errorf("%w: curve %s (P-256 or P-384)", ErrInvalidCSR, k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return out, fmt.Errorf("%w: RSA key of %d bits (at least 2048)", ErrInvalidCSR, k.N.BitLen())
		}
	default:
		return out, fmt.Errorf("%w: key type %T", ErrInvalidCSR, csr.PublicKey)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial(),
		Subject:      csr.Subject,
		NotBefore:    a.now().Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, a.ca, csr.PublicKey, a.key)
	if err != nil {
		return out, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return out, err
	}
	id := ID(der)
	status := StatusInactive
	if in.SetAsActive {
		status = StatusActive
	}
	a.mu.Lock()
	a.certs[id] = &record{status: status, cert: cert}
	a.mu.Unlock()
	return CreateCertificateFromCsrOutput{
		CertificateArn: a.ARN(id),
		CertificateID:  id,
		CertificatePem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
	}, nil
}

// ID is a certificate's id: the SHA-256 of its DER, in hex (64 characters, as AWS's).
func ID(der []byte) string {
	h := sha256.Sum256(der)
	return hex.EncodeToString(h[:])
}

// ARN is the certificate's ARN.
func (a *Authority) ARN(id string) string {
	return "arn:aws:iot:" + a.region + ":" + a.account + ":cert/" + id
}

// UpdateCertificate sets a certificate's status (ACTIVE, INACTIVE or REVOKED). A revoked
// certificate stays revoked, as in AWS.
func (a *Authority) UpdateCertificate(id, newStatus string) error {
	switch newStatus {
	case StatusActive, StatusInactive, StatusRevoked:
	default:
		return fmt.Errorf("%w: %q (ACTIVE, INACTIVE or REVOKED)", ErrInvalidStatus, newStatus)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.certs[id]
	if r == nil {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if r.status == StatusRevoked && newStatus != StatusRevoked {
		return fmt.Errorf("%w: certificate %s is revoked", ErrInvalidStatus, id)
	}
	r.status = newStatus
	return nil
}

// Status is a certificate's status ("" if this CA never issued it).
func (a *Authority) Status(id string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r := a.certs[id]; r != nil {
		return r.status
	}
	return ""
}

// ServerTLS returns a clone of base that also trusts this CA's certificates for clients, but
// only while they are ACTIVE (AWS refuses the TLS handshake of an inactive certificate).
// Client certificates of other CAs in base.ClientCAs are left to base's own rules.
func (a *Authority) ServerTLS(base *tls.Config) *tls.Config {
	tc := base.Clone()
	if tc.ClientCAs == nil {
		tc.ClientCAs = x509.NewCertPool()
	} else {
		tc.ClientCAs = tc.ClientCAs.Clone()
	}
	tc.ClientCAs.AddCert(a.ca)
	prev := tc.VerifyPeerCertificate
	tc.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if len(raw) > 0 {
			id := ID(raw[0])
			if st := a.Status(id); st != "" && st != StatusActive {
				return fmt.Errorf("certs: certificate %s is %s", id, st)
			}
		}
		if prev != nil {
			return prev(raw, chains)
		}
		return nil
	}
	return tc
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(fmt.Sprintf("certs: no randomness: %v", err))
	}
	return n
}
