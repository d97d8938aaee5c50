package download

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"

	"github.com/fieldota/fieldota/ota/reason"
)

// DefaultHosts is where a device fetches payloads from unless configured otherwise: AWS's own
// endpoints, where presigned S3 URLs point (virtual-hosted, path-style, dual-stack, FIPS and
// access-point names all end so).
var DefaultHosts = []string{"*.amazonaws.com", "*.amazonaws.com.cn"}

// Policy says which URLs the device may fetch. A job document names the URL, so without a
// policy anyone who can create a job could make the device reach its metadata service, the
// emulator's control API or a LAN admin page.
type Policy struct {
	// Hosts are exact host names or IP literals, or "*.suffix" for any name ending in
	// ".suffix"; a port is never part of an entry. Empty = DefaultHosts.
	Hosts     []string
	AllowHTTP bool // http as well as https (the local emulator only)
}

// Check refuses a URL the device must not fetch: a scheme other than https (or http when
// allowed) — any letter case — user information, or a host outside the policy.
func (p Policy) Check(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return reason.Errorf(reason.InvalidDocument, "payload URL is not a URL") // the parse error would echo the query
	}
	switch {
	case u.Scheme == "https": // url.Parse lowercases the scheme
	case u.Scheme == "http" && p.AllowHTTP:
	case u.Scheme == "http":
		return reason.Errorf(reason.InvalidDocument, "payload URL %s: http is refused (https required; download.allow_insecure_http permits http)", Redact(raw))
	default:
		return reason.Errorf(reason.InvalidDocument, "payload URL %s: scheme %q, want https", Redact(raw), u.Scheme)
	}
	if u.User != nil || u.Host == "" {
		return reason.Errorf(reason.InvalidDocument, "payload URL %s: want https://host/path with no user information", Redact(raw))
	}
	if !p.allowed(u.Hostname()) {
		return reason.Errorf(reason.HostNotAllowed, "payload host %q is not in download.allowed_hosts %q", u.Hostname(), p.hosts())
	}
	return nil
}

func (p Policy) hosts() []string {
	if len(p.Hosts) == 0 {
		return DefaultHosts
	}
	return p.Hosts
}

func (p Policy) allowed(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, h := range p.hosts() {
		h = strings.ToLower(h)
		if suffix, ok := strings.CutPrefix(h, "*."); ok {
			if strings.HasSuffix(host, "."+suffix) {
				return true
			}
		} else if host == h {
			return true
		}
	}
	return false
}

// allowsAddr tells whether a dial may reach ip. Link-local (the cloud metadata service lives
// there), unspecified and multicast addresses are never dialled; loopback only when the policy
// names a loopback address or localhost (the local emulator). A name on the list that resolves
// somewhere it must not is refused here, at connect time.
func (p Policy) allowsAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	switch {
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast(), ip.IsUnspecified(), ip.IsMulticast():
		return false
	case ip.IsLoopback():
		for _, h := range p.hosts() {
			if h == "localhost" {
				return true
			}
			if a, err := netip.ParseAddr(h); err == nil && a.IsLoopback() {
				return true
			}
		}
		return false
	}
	return true
}

// control is the dialer's check of the address actually connected to.
func (p Policy) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("dial %s: %w", address, err)
	}
	if !p.allowsAddr(ap.Addr()) {
		return &refusedAddr{addr: ap.Addr()}
	}
	return nil
}

type refusedAddr struct{ addr netip.Addr }

func (e *refusedAddr) Error() string {
	return fmt.Sprintf("refusing to connect to %s (link-local, unspecified, multicast, or loopback not named in download.allowed_hosts)", e.addr)
}

// checkRedirect lets a redirect through only to an allowed URL, never from https to http.
func (p *Policy) checkRedirect(req *http.Request, via []*http.Request) error {
	if err := noDowngrade(req, via); err != nil {
		return err
	}
	if p == nil {
		return nil
	}
	if err := p.Check(req.URL.String()); err != nil {
		return fmt.Errorf("redirect refused: %w", err)
	}
	return nil
}

// dialContext is a dialer that applies the policy to every address it connects to.
func (p *Policy) dialContext() func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{}
	if p != nil {
		d.Control = p.control
	}
	return d.DialContext
}

// refusedByPolicy tells whether a request failed because the policy refused where it led.
func refusedByPolicy(err error) bool {
	var ra *refusedAddr
	return errors.As(err, &ra) || errors.Is(err, reason.HostNotAllowed)
}
