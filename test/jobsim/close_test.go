package jobsim

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"
)

// TestCloseWhileDevicesComeAndGoDoesNotHang: closing the emulator while devices connect and
// drop must return. mochi v2.7.9's own Close can deadlock on its clients lock when a client
// disconnects during the shutdown (an e2e run once hung ten minutes there); the window is a few
// instructions wide, so this churn guards Close in general rather than provoking that exact
// interleaving — embedded.close avoids the nested read lock by construction.
func TestCloseWhileDevicesComeAndGoDoesNotHang(t *testing.T) {
	// A CONNECT packet (MQTT 3.1.1, clean session, keep-alive 60 s) for client id "d<n>".
	connect := func(id string) []byte {
		body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, byte(len(id))}, id...)
		return append([]byte{0x10, byte(len(body))}, body...)
	}
	for round := 0; round < 20; round++ {
		sim, err := Start(context.Background(), Config{MQTTAddr: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		addr := sim.MQTTURL()[len("tcp://"):]
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					c, err := net.DialTimeout("tcp", addr, time.Second)
					if err != nil {
						continue
					}
					_, _ = c.Write(connect(string(rune('a'+g)) + string(rune('0'+n%10))))
					buf := make([]byte, 4)
					_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
					_, _ = c.Read(buf) // CONNACK, then drop the connection
					_ = c.Close()
				}
			}(g)
		}
		time.Sleep(20 * time.Millisecond)
		done := make(chan error, 1)
		go func() { done <- sim.Close() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Close hung while devices came and went", round)
		}
		close(stop)
		wg.Wait()
	}
}
