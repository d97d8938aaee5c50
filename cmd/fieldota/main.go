// Command fieldota is the operator and developer CLI: key and signature tools, job documents,
// the local AWS IoT Jobs emulator (sim) and the demo. The device daemon is cmd/fieldota-agent.
package main

import (
	"fmt"
	"github.com/fieldota/fieldota/ota/run"
	"os"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// subcommands are registered by the files of this package, one file per subcommand family,
// so that each can be read (and owned) on its own.
var subcommands []func() *cobra.Command

func register(f func() *cobra.Command) { subcommands = append(subcommands, f) }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "fieldota",
		Short:         "fieldota: sign, publish and emulate over-the-air updates for AWS IoT Jobs",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	for _, f := range subcommands {
		root.AddCommand(f())
	}
	return root
}

func main() {
	// An autoStart program is run through this binary acting as its shim (package run).
	run.MaybeShim()
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "fieldota:", err)
		os.Exit(exitCode(err))
	}
}

// exitCoder lets a subcommand choose its exit status (verify: 1 = refused, 2 = usage/IO error).
type exitCoder interface{ ExitCode() int }

func exitCode(err error) int {
	if ec, ok := err.(exitCoder); ok {
		return ec.ExitCode()
	}
	return 1
}
