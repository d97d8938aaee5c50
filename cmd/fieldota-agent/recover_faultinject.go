//go:build faultinject

package main

import (
	"fmt"
	"os"
)

// crashOnStart, set with -ldflags "-X main.crashOnStart=true" in a faultinject build, makes a
// broken agent for the self-update tests: it dies before doing anything, every subcommand
// included, as a binary that cannot run on the device would.
var crashOnStart string

func init() {
	if crashOnStart == "true" {
		fmt.Fprintln(os.Stderr, "fieldota-agent: this build crashes at start (fault injection)")
		os.Exit(3)
	}
}
