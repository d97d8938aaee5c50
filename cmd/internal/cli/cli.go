// Package cli is the exit-status contract of both binaries, fieldota and fieldota-agent:
//
//	0  done: the command did what was asked (verify: accepted)
//	1  refused or failed while doing it (verify: REFUSED <REASON>; a run that failed)
//	2  usage: the command could not start as given — an unknown command or flag, a wrong
//	   number of arguments, a missing required flag, an input or configuration it cannot read
//
// cobra's own usage errors exit 1 like any error unless Execute (or Prepare) wires them to 2.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// The exit statuses.
const (
	OK     = 0
	Failed = 1
	Usage  = 2
)

// Error carries an exit status, and for usage errors the command whose --help explains it.
type Error struct {
	Code int
	Err  error
	Cmd  string // command path, e.g. "fieldota verify"
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// ExitCode is the status main exits with.
func (e *Error) ExitCode() int { return e.Code }

// UsageError marks err as a usage error (exit 2).
func UsageError(err error) error { return &Error{Code: Usage, Err: err} }

func usageOf(c *cobra.Command, err error) error {
	return &Error{Code: Usage, Err: err, Cmd: c.CommandPath()}
}

// Code returns the exit status for err: 0 for nil and for a requested stop (context.Canceled:
// SIGINT/SIGTERM), the status an error carries (any error with an ExitCode method), else 1.
func Code(err error) int {
	if err == nil || errors.Is(err, context.Canceled) {
		return OK
	}
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return Failed
}

// Prepare makes cobra's own usage errors exit 2: flag errors on every command, argument-count
// errors, and required or grouped flags that are missing. Commands added after Prepare are not
// covered: call it on the finished tree (Execute does).
func Prepare(root *cobra.Command) {
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageOf(c, err) })
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if args := c.Args; args != nil || !c.HasSubCommands() {
			if args == nil {
				args = cobra.ArbitraryArgs
			}
			c.Args = func(c *cobra.Command, a []string) error {
				err := args(c, a)
				if err == nil {
					// cobra checks these after the arguments and returns them as plain errors.
					err = errors.Join(c.ValidateRequiredFlags(), c.ValidateFlagGroups())
				}
				if err != nil {
					return usageOf(c, err)
				}
				return nil
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// Execute runs root with args, prints an error as "NAME: error" on stderr (usage errors with a
// pointer to --help) and returns the exit status for main to exit with.
func Execute(ctx context.Context, root *cobra.Command, args []string, stderr io.Writer) int {
	root.SilenceErrors, root.SilenceUsage = true, true
	root.SetArgs(args)
	root.SetErr(stderr)
	Prepare(root)
	err := unknownCommand(root, args)
	if err == nil {
		err = root.ExecuteContext(ctx)
	}
	code := Code(err)
	if code != OK {
		fmt.Fprintf(stderr, "%s: %v\n", root.Name(), err)
		var ce *Error
		if errors.As(err, &ce) && ce.Code == Usage && ce.Cmd != "" {
			fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", ce.Cmd)
		}
	}
	return code
}

// unknownCommand finds the command args name the way cobra will, so that a misspelt subcommand
// is a usage error: cobra reports it from its command lookup, before any command can mark it.
func unknownCommand(root *cobra.Command, args []string) error {
	if len(args) > 0 && strings.HasPrefix(args[0], cobra.ShellCompRequestCmd) {
		return nil // shell completion requests: cobra answers them itself
	}
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd(args...)
	if _, _, err := root.Find(args); err != nil {
		return usageOf(root, err)
	}
	return nil
}
