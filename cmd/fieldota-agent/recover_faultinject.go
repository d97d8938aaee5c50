//go:build faultinject

package main

import (
	"fmt"
	"os"
	"time"
)

// crashOnStart and hangOnStart, set with -ldflags "-X main.crashOnStart=true" in a faultinject
// build, make broken agents for the self-update tests: one dies before doing anything, every
// subcommand included, as a binary that cannot run on the device would; the other never gets
// anywhere and never exits.
var crashOnStart, hangOnStart string

func init() {
	if crashOnStart == "true" {
		fmt.Fprintln(os.Stderr, "fieldota-agent: this build crashes at start (fault injection)")
		os.Exit(3)
	}
	if hangOnStart == "true" {
		fmt.Fprintln(os.Stderr, "fieldota-agent: this build hangs at start (fault injection)")
		<-time.After(24 * time.Hour)
	}
}
