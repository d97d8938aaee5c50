package jobs

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// ALPNProtocol is the protocol AWS IoT requires to accept MQTT with a client certificate on port 443.
const ALPNProtocol = "x-amzn-mqtt-ca"

// Config configures a Client. Zero durations take the documented defaults.
type Config struct {
	// Endpoint is the broker: "ssl://host:8883", "tcp://127.0.0.1:1883", or "host[:port]" (TLS,
	// port 8883 by default). Port 443 offers ALPN x-amzn-mqtt-ca, as AWS requires there.
	Endpoint string
	// ThingName names the topics; ClientID defaults to it (AWS: one connection per client id).
	ThingName string
	ClientID  string

	// CAFile (PEM bundle; empty = system roots), CertFile and KeyFile (the device certificate, read
	// again at every handshake so a rotated certificate is picked up) configure TLS, unless TLS is set.
	CAFile, CertFile, KeyFile string
	// Key, when set, is the device's private key as a signer (held by a TPM or a PKCS#11 token:
	// agent/identity) and KeyFile is unused; CertFile is still read at every handshake and must
	// carry Key's public half.
	Key crypto.Signer
	// TLS, when set, is used (cloned) instead of the files.
	TLS *tls.Config
	// ServerName is the SNI and the name verified; defaults to the endpoint's host. AWS refuses
	// connections without SNI.
	ServerName string

	// KeepAlive defaults to 60s (AWS clamps to 30–1200 s and drops a client after 1.5× of silence).
	KeepAlive time.Duration
	// ConnectTimeout bounds one connection attempt; default 20s.
	ConnectTimeout time.Duration
	// ConnectRetryInterval separates attempts before the first success; default 10s.
	ConnectRetryInterval time.Duration
	// MaxReconnectInterval caps the reconnect backoff; default 2m.
	MaxReconnectInterval time.Duration
	// ReconnectJitter: each reconnect attempt waits a random time up to this long first, so that a
	// fleet does not reconnect in lock-step after an outage; default 5s.
	ReconnectJitter time.Duration
	// ReconnectBackoff returns the extra wait before reconnect attempt attempt+1 of one outage
	// (the first attempt only waits the jitter); default JitteredBackoff(1s, MaxReconnectInterval).
	ReconnectBackoff func(attempt int) time.Duration
	// StableAfter: a connection that stayed up (subscribed) this long resets the reconnect
	// backoff, so that one long outage does not slow the recovery from every later short one;
	// default 1m. A broker that drops the client sooner (a duplicate client id) keeps backing off.
	StableAfter time.Duration
	// SubscribeTimeout bounds the wait for the SUBACK on each connect; default 10s.
	SubscribeTimeout time.Duration

	// RequestTimeout bounds the wait for accepted/rejected after a request is published; default 10s.
	RequestTimeout time.Duration
	// MaxRetries is how many times a throttled, failed or unanswered request is sent again;
	// 0 means the default 4, a negative value means never.
	MaxRetries int
	// Backoff returns the wait before retry number attempt (1, 2, …); default JitteredBackoff(1s, 30s).
	Backoff func(attempt int) time.Duration

	// Logger receives connection and request logs; nil discards.
	Logger *slog.Logger
	// OnConnect runs after every connect once the subscriptions are in place — the moment to ask for
	// $next again. It runs on its own goroutine and may call the Client; its ctx ends at Close, and it
	// must return by then. Calls can overlap if the link flaps.
	OnConnect func(ctx context.Context)
	// OnNotifyNext and OnNotify receive the notify-next and notify events, one call at a time, on a
	// goroutine of the Client's (never paho's), so they may call the Client. Events that arrive
	// while a callback runs are coalesced: only the latest of each kind is delivered. Treat them as
	// hints and describe $next for the truth. Close waits for a running callback to return.
	OnNotifyNext func(NextJobExecutionChanged)
	OnNotify     func(JobExecutionsChanged)

	// Extra are topic filters beyond the Jobs API (named shadows, Commands) subscribed on every
	// connect; OnMessage receives what arrives on them, one call at a time on a goroutine of the
	// Client's, so it may call Publish. Publish sends to any topic the device may use (extra.go).
	Extra     []string
	OnMessage func(topic string, payload []byte)
}

const (
	defaultKeepAlive        = 60 * time.Second
	defaultConnectTimeout   = 20 * time.Second
	defaultConnectRetry     = 10 * time.Second
	defaultMaxReconnect     = 2 * time.Minute
	defaultReconnectJitter  = 5 * time.Second
	defaultStableAfter      = time.Minute
	defaultSubscribeTimeout = 10 * time.Second
	defaultRequestTimeout   = 10 * time.Second
	defaultMaxRetries       = 4
)

func (cfg Config) withDefaults() (Config, error) {
	if !validThingName(cfg.ThingName) {
		return cfg, fmt.Errorf("jobs: thing name %q is not 1–128 characters of [a-zA-Z0-9:_-]", cfg.ThingName)
	}
	if cfg.ClientID == "" {
		cfg.ClientID = cfg.ThingName
	}
	if cfg.Endpoint == "" {
		return cfg, errors.New("jobs: no endpoint")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.KeepAlive, defaultKeepAlive)
	if cfg.KeepAlive < time.Second {
		// paho keeps whole seconds: anything shorter would silently disable keep-alive.
		return cfg, fmt.Errorf("jobs: keep-alive %s is under one second", cfg.KeepAlive)
	}
	def(&cfg.ConnectTimeout, defaultConnectTimeout)
	def(&cfg.ConnectRetryInterval, defaultConnectRetry)
	def(&cfg.MaxReconnectInterval, defaultMaxReconnect)
	def(&cfg.ReconnectJitter, defaultReconnectJitter)
	def(&cfg.StableAfter, defaultStableAfter)
	if cfg.ReconnectBackoff == nil {
		cfg.ReconnectBackoff = JitteredBackoff(time.Second, cfg.MaxReconnectInterval)
	}
	def(&cfg.SubscribeTimeout, defaultSubscribeTimeout)
	def(&cfg.RequestTimeout, defaultRequestTimeout)
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = defaultMaxRetries
	}
	if cfg.MaxRetries < 0 {
		cfg.MaxRetries = 0
	}
	if cfg.Backoff == nil {
		cfg.Backoff = JitteredBackoff(time.Second, 30*time.Second)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return cfg, nil
}

// JitteredBackoff returns exponential backoff from base, doubling per attempt up to max, with each
// wait drawn uniformly from [d/2, d] so that devices throttled together spread out.
func JitteredBackoff(base, max time.Duration) func(attempt int) time.Duration {
	return func(attempt int) time.Duration {
		d := base
		for i := 1; i < attempt && d < max; i++ {
			d *= 2
		}
		d = min(d, max)
		if d <= 1 {
			return d
		}
		return d/2 + rand.N(d/2+1)
	}
}

// endpoint is a parsed Config.Endpoint.
type endpoint struct {
	url  string // for paho AddBroker
	host string
	port int
	tls  bool
}

func parseEndpoint(s string) (endpoint, error) {
	scheme := "ssl"
	rest := s
	if i := strings.Index(s, "://"); i >= 0 {
		scheme, rest = strings.ToLower(s[:i]), s[i+3:]
	}
	var ep endpoint
	switch scheme {
	case "ssl", "tls", "mqtts", "tcps", "mqtt+ssl":
		ep.tls = true
	case "tcp", "mqtt":
	default:
		return ep, fmt.Errorf("jobs: endpoint %q: scheme %q is not tcp or ssl", s, scheme)
	}
	u, err := url.Parse("x://" + rest)
	if err != nil || u.Hostname() == "" || (u.Path != "" && u.Path != "/") {
		return ep, fmt.Errorf("jobs: endpoint %q is not host[:port]", s)
	}
	ep.host = u.Hostname()
	ep.port = 8883
	if !ep.tls {
		ep.port = 1883
	}
	if p := u.Port(); p != "" {
		if ep.port, err = strconv.Atoi(p); err != nil || ep.port < 1 || ep.port > 65535 {
			return ep, fmt.Errorf("jobs: endpoint %q: bad port", s)
		}
	}
	sch := "tcp"
	if ep.tls {
		sch = "ssl"
	}
	ep.url = sch + "://" + net.JoinHostPort(ep.host, strconv.Itoa(ep.port))
	return ep, nil
}

// tlsConfig builds the client TLS configuration for ep.
func (cfg Config) tlsConfig(ep endpoint) (*tls.Config, error) {
	var tc *tls.Config
	if cfg.TLS != nil {
		tc = cfg.TLS.Clone()
	} else {
		tc = &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("jobs: CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("jobs: CA file %s holds no PEM certificate", cfg.CAFile)
			}
			tc.RootCAs = pool
		}
		if cfg.Key != nil {
			if cfg.CertFile == "" {
				return nil, errors.New("jobs: Key needs CertFile")
			}
			certFile, key := cfg.CertFile, cfg.Key
			if _, err := signerCertificate(certFile, key); err != nil {
				return nil, err
			}
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return signerCertificate(certFile, key)
			}
		} else if (cfg.CertFile == "") != (cfg.KeyFile == "") {
			return nil, errors.New("jobs: CertFile and KeyFile go together")
		}
		if cfg.CertFile != "" && cfg.Key == nil {
			// Fail now on a missing or broken pair rather than on every reconnect.
			if _, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile); err != nil {
				return nil, fmt.Errorf("jobs: device certificate: %w", err)
			}
			certFile, keyFile := cfg.CertFile, cfg.KeyFile
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				c, err := tls.LoadX509KeyPair(certFile, keyFile)
				if err != nil {
					return nil, fmt.Errorf("jobs: device certificate: %w", err)
				}
				return &c, nil
			}
		}
	}
	if cfg.ServerName != "" {
		tc.ServerName = cfg.ServerName
	}
	if tc.ServerName == "" {
		// paho fills SNI from the host only on its direct-dial path, not through a proxy.
		tc.ServerName = ep.host
	}
	if ep.port == 443 && len(tc.NextProtos) == 0 {
		tc.NextProtos = []string{ALPNProtocol}
	}
	return tc, nil
}

// signerCertificate pairs the certificate chain in certFile with a key that stays in its TPM or
// token: TLS only asks it to sign.
func signerCertificate(certFile string, key crypto.Signer) (*tls.Certificate, error) {
	b, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("jobs: device certificate: %w", err)
	}
	var c tls.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			c.Certificate = append(c.Certificate, blk.Bytes)
		}
	}
	if len(c.Certificate) == 0 {
		return nil, fmt.Errorf("jobs: device certificate %s holds no PEM certificate", certFile)
	}
	if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
		return nil, fmt.Errorf("jobs: device certificate %s: %w", certFile, err)
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(c.Leaf.PublicKey) {
		return nil, fmt.Errorf("jobs: device certificate %s is not for the device key", certFile)
	}
	c.PrivateKey = key
	return &c, nil
}
