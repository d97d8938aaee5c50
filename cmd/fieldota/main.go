// Command fieldota is the operator and developer CLI: key and signature tools, job documents,
// the local AWS IoT Jobs emulator (sim) and the demo. The device daemon is cmd/fieldota-agent.
package main

import (
	"context"

	"os"

	"github.com/fieldota/fieldota/ota/run"

	"github.com/spf13/cobra"

	"github.com/fieldota/fieldota/cmd/internal/cli"
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
	os.Exit(cli.Execute(context.Background(), newRoot(), os.Args[1:], os.Stderr))
}

// exitCode is the status of err under the contract both binaries share (cmd/internal/cli):
// 0 done, 1 refused or failed, 2 usage. Errors choose theirs with an ExitCode method.
func exitCode(err error) int { return cli.Code(err) }
