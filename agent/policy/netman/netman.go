// Package netman asks NetworkManager, over the D-Bus system bus (github.com/godbus/dbus/v5),
// whether the device's network link is metered: its Metered property, which NetworkManager
// derives from the primary connection (a connection marked metered, a mobile broadband modem,
// a phone's hotspot that says so through DHCP).
package netman

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/godbus/dbus/v5"
)

// NetworkManager's names (https://networkmanager.dev/docs/api/latest/nm-dbus-types.html, NMMetered).
const (
	service   = "org.freedesktop.NetworkManager"
	path      = "/org/freedesktop/NetworkManager"
	property  = "org.freedesktop.NetworkManager.Metered"
	getMethod = "org.freedesktop.DBus.Properties.Get"
)

// metered names NMMetered's values.
var metered = map[uint32]struct {
	name    string
	metered bool
}{
	0: {"unknown", false}, // no primary connection, or NetworkManager cannot tell
	1: {"yes", true},
	2: {"no", false},
	3: {"guess-yes", true}, // e.g. a mobile broadband device
	4: {"guess-no", false},
}

// DefaultTimeout bounds one question to NetworkManager.
const DefaultTimeout = 5 * time.Second

// Client asks NetworkManager. Its zero value uses the system bus (DBUS_SYSTEM_BUS_ADDRESS when
// set, else the well-known socket).
type Client struct {
	// Address is a D-Bus address (unix:path=…); "" is the system bus.
	Address string
	Timeout time.Duration
}

// Metered reports whether NetworkManager says the link is metered ("yes" or "guess-yes"), with
// the value's name. One connection per question: it is asked rarely (at each re-evaluation of a
// waiting download), and a connection kept open would have to survive bus restarts.
func (c Client) Metered(ctx context.Context) (bool, string, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// The context bounds authentication and Hello too: godbus closes the connection when it ends.
	var conn *dbus.Conn
	var err error
	if c.Address != "" {
		conn, err = dbus.Connect(c.Address, dbus.WithContext(ctx))
	} else {
		conn, err = dbus.ConnectSystemBus(dbus.WithContext(ctx))
	}
	if err != nil {
		return false, "", fmt.Errorf("D-Bus system bus: %w", err)
	}
	defer conn.Close()
	var v dbus.Variant
	err = conn.Object(service, path).CallWithContext(ctx, getMethod, 0, service, "Metered").Store(&v)
	if err != nil {
		var de dbus.Error
		if errors.As(err, &de) && de.Name == "org.freedesktop.DBus.Error.ServiceUnknown" {
			return false, "", errors.New("NetworkManager is not running (no org.freedesktop.NetworkManager on the system bus)")
		}
		return false, "", fmt.Errorf("NetworkManager %s: %w", property, err)
	}
	n, ok := v.Value().(uint32)
	if !ok {
		return false, "", fmt.Errorf("NetworkManager %s is %s, want a uint32", property, v.Signature())
	}
	m, ok := metered[n]
	if !ok {
		return false, "", fmt.Errorf("NetworkManager %s is %d, not a known NMMetered value", property, n)
	}
	return m.metered, m.name, nil
}
