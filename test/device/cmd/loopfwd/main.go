// Command loopfwd runs inside the device-in-a-box guest: it listens on one address and forwards
// every connection to another. The emulator mints presigned URLs for its own loopback address
// (http://127.0.0.1:PORT/…), which inside the guest is the guest itself; loopfwd relays the
// guest's 127.0.0.1:PORT to the host through QEMU's user-network gateway 10.0.2.2:PORT.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: loopfwd LISTEN_ADDR TARGET_ADDR")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "loopfwd:", err)
		os.Exit(1)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "loopfwd:", err)
			os.Exit(1)
		}
		go relay(c, os.Args[2])
	}
}

func relay(c net.Conn, target string) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loopfwd:", err)
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(u, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, u); done <- struct{}{} }()
	<-done
}
