package jobsim

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// embedded is the mochi broker front end.
type embedded struct {
	srv *mochi.Server
}

const requestFilter = "$aws/things/+/jobs/#"

func embed(s *Sim, cfg Config) (*embedded, error) {
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumQos = 1 // like AWS IoT
	srv := mochi.New(&mochi.Options{
		InlineClient: true,
		Capabilities: caps,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	e := &embedded{srv: srv}
	if err := srv.AddHook(new(thingAuth), nil); err != nil {
		return nil, err
	}
	if cfg.MQTTAddr != "" {
		l := listeners.NewTCP(listeners.Config{Type: "tcp", ID: "plain", Address: cfg.MQTTAddr})
		if err := srv.AddListener(l); err != nil {
			return nil, fmt.Errorf("mqtt listener: %w", err)
		}
		s.mqttURL = "tcp://" + l.Address()
	}
	if cfg.TLSAddr != "" {
		if cfg.TLS == nil {
			return nil, errors.New("jobsim: TLSAddr needs Config.TLS")
		}
		tc := s.certs.ServerTLS(cfg.TLS) // also trusts CreateCertificateFromCsr's certificates
		tc.ClientAuth = tls.RequireAndVerifyClientCert
		if len(tc.NextProtos) == 0 {
			tc.NextProtos = []string{"x-amzn-mqtt-ca"}
		}
		l := listeners.NewTCP(listeners.Config{Type: "tcp", ID: "mtls", Address: cfg.TLSAddr, TLSConfig: tc})
		if err := srv.AddListener(l); err != nil {
			srv.Close()
			return nil, fmt.Errorf("mqtt tls listener: %w", err)
		}
		s.tlsURL = "ssl://" + l.Address()
	}
	// The inline handler runs in the publishing device's read goroutine: the model call and the
	// publishes below only take short locks and queue writes.
	err := srv.Subscribe(requestFilter, 1, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		if pk.Origin == mochi.InlineClientId {
			return
		}
		s.onRequest(pk.TopicName, bytes.Clone(pk.Payload))
	})
	if err != nil {
		srv.Close()
		return nil, err
	}
	for _, f := range []string{shadowFilter, commandsFilter} {
		err := srv.Subscribe(f, 1, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
			if pk.Origin != mochi.InlineClientId {
				s.onDeviceManagement(pk.TopicName, bytes.Clone(pk.Payload))
			}
		})
		if err != nil {
			srv.Close()
			return nil, err
		}
	}
	if err := srv.Serve(); err != nil {
		srv.Close()
		return nil, err
	}
	return e, nil
}

// send publishes at QoS 1. AWS delivers a request's /accepted or /rejected answer to the device
// that asked even without a subscription; mochi would drop it, so such answers go straight to the
// connection (at QoS 0, which is what an unsubscribed delivery can be).
func (e *embedded) send(m outMsg) error {
	if m.reply {
		if _, subscribed := e.srv.Topics.Subscribers(m.topic).Subscriptions[m.thing]; !subscribed {
			cl, ok := e.srv.Clients.Get(m.thing)
			if !ok || cl.Closed() {
				return nil // gone: AWS drops it too
			}
			return cl.WritePacket(packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Publish},
				TopicName:   m.topic,
				Payload:     m.payload,
			})
		}
	}
	return e.srv.Publish(m.topic, m.payload, false, 1)
}

func (e *embedded) disconnect(thing string) error {
	cl, ok := e.srv.Clients.Get(thing)
	if !ok || cl.Closed() {
		return fmt.Errorf("jobsim: thing %q is not connected", thing)
	}
	err := e.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
	if errors.Is(err, packets.ErrServerShuttingDown) {
		return nil // mochi returns the reason code it disconnected with
	}
	return err
}

func (e *embedded) close() error {
	// mochi v2.7.9's Server.Close can deadlock: its closeListenerClients calls
	// Clients.GetByListener, which takes the clients' read lock and then again inside Len; a
	// client disconnecting at that moment (Delete waiting for the write lock) blocks the second
	// read lock forever. Close the listeners first with a closer that takes one snapshot
	// (GetAll, a single read lock); Server.Close then finds them closed and skips its own closer.
	e.srv.Listeners.CloseAll(func(listener string) {
		for _, cl := range e.srv.Clients.GetAll() {
			if cl.Net.Listener == listener && !cl.Closed() {
				_ = e.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
			}
		}
	})
	return e.srv.Close()
}

// thingAuth is AWS IoT's identity and policy, reduced to what matters here: on TLS the client
// certificate's CN must equal the client id (the thing name); a device may publish and subscribe
// only under $aws/things/<its thing>/. An unauthorised QoS 1 publish disconnects the device (mochi,
// like AWS); an unauthorised subscription is refused with 0x80.
type thingAuth struct {
	mochi.HookBase
}

func (h *thingAuth) ID() string { return "jobsim-thing-auth" }

func (h *thingAuth) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (h *thingAuth) OnConnectAuthenticate(cl *mochi.Client, _ packets.Packet) bool {
	if !thingNamePattern.MatchString(cl.ID) {
		return false
	}
	if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
		peers := tc.ConnectionState().PeerCertificates
		return len(peers) > 0 && peers[0].Subject.CommonName == cl.ID
	}
	return true
}

func (h *thingAuth) OnACLCheck(cl *mochi.Client, topic string, _ bool) bool {
	return strings.HasPrefix(topic, topicPrefix+cl.ID+"/") || strings.HasPrefix(topic, "$aws/commands/things/"+cl.ID+"/")
}
