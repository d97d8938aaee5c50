package jobsim

import (
	"context"
	"errors"
	"net/http"
	"net/url"

	"github.com/fieldota/fieldota/test/jobsim/certs"
)

// The certificate operations of AWS IoT's control plane (test/jobsim/certs holds the CA):
// CreateCertificateFromCsr and UpdateCertificate, in AWS's REST shape.

// CreateCertificateFromCsr signs a device's CSR with the emulator's CA; the TLS listener trusts
// the certificate while it is ACTIVE.
func (s *Sim) CreateCertificateFromCsr(in certs.CreateCertificateFromCsrInput) (certs.CreateCertificateFromCsrOutput, error) {
	out, err := s.certs.CreateCertificateFromCsr(in)
	return out, certError(err)
}

// UpdateCertificate sets a certificate's status: ACTIVE, INACTIVE or REVOKED.
func (s *Sim) UpdateCertificate(certificateID, newStatus string) error {
	return certError(s.certs.UpdateCertificate(certificateID, newStatus))
}

// Certificates is the emulator's CA and certificate registry.
func (s *Sim) Certificates() *certs.Authority { return s.certs }

func certError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, certs.ErrNotFound):
		return notFound("%v", err)
	case errors.Is(err, certs.ErrInvalidCSR), errors.Is(err, certs.ErrInvalidStatus):
		return invalid("%v", err)
	default:
		return err
	}
}

func (s *Sim) certificateRoutes(mux *http.ServeMux) {
	// POST /certificates?setAsActive=true {"certificateSigningRequest": "<PEM>"}
	mux.HandleFunc("POST /certificates", func(w http.ResponseWriter, r *http.Request) {
		var in certs.CreateCertificateFromCsrInput
		if !readJSON(w, r, &in) {
			return
		}
		in.SetAsActive = r.URL.Query().Get("setAsActive") == "true"
		out, err := s.CreateCertificateFromCsr(in)
		reply(w, out, err)
	})
	// PUT /certificates/{certificateId}?newStatus=INACTIVE
	mux.HandleFunc("PUT /certificates/{certificateId}", func(w http.ResponseWriter, r *http.Request) {
		err := s.UpdateCertificate(r.PathValue("certificateId"), r.URL.Query().Get("newStatus"))
		reply(w, map[string]any{}, err)
	})
}

// CreateCertificateFromCsr calls the emulator's POST /certificates.
func (c *Client) CreateCertificateFromCsr(ctx context.Context, csrPEM string, setAsActive bool) (certs.CreateCertificateFromCsrOutput, error) {
	var out certs.CreateCertificateFromCsrOutput
	q := url.Values{}
	if setAsActive {
		q.Set("setAsActive", "true")
	}
	err := c.do(ctx, http.MethodPost, "/certificates", q, map[string]string{"certificateSigningRequest": csrPEM}, &out)
	return out, err
}

// UpdateCertificate calls the emulator's PUT /certificates/{id}?newStatus=.
func (c *Client) UpdateCertificate(ctx context.Context, certificateID, newStatus string) error {
	return c.do(ctx, http.MethodPut, "/certificates/"+esc(certificateID), url.Values{"newStatus": {newStatus}}, nil, nil)
}
