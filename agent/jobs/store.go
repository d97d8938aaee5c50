package jobs

import (
	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// copyingStore is paho's memory store, except that PUBLISH packets are copied on the way in and
// out. paho v1.5.1 hands the same *PublishPacket to the network writer and to the store; when a
// request is published just as the link drops, the reconnect's resume() sets its DUP flag while the
// new connection's writer is encoding it — a data race the race detector reports (found by
// test/conformance's drop-mid-job test under load). With copies, each side owns its packet.
type copyingStore struct {
	mqtt.Store
}

func newCopyingStore() copyingStore { return copyingStore{Store: mqtt.NewMemoryStore()} }

func (s copyingStore) Put(key string, m packets.ControlPacket) { s.Store.Put(key, clonePublish(m)) }

func (s copyingStore) Get(key string) packets.ControlPacket { return clonePublish(s.Store.Get(key)) }

// clonePublish copies a PUBLISH packet's header and fields; the payload is never written, so it is
// shared.
func clonePublish(m packets.ControlPacket) packets.ControlPacket {
	if p, ok := m.(*packets.PublishPacket); ok && p != nil {
		c := *p
		return &c
	}
	return m
}
