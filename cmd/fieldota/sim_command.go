package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/spf13/cobra"
)

// newSimCommandCmd is `fieldota sim command`: AWS IoT Commands against the emulator — create the
// command if needed, start an execution on a thing, wait for the device's answer.
func newSimCommandCmd() *cobra.Command {
	var (
		api, thing string
		wait       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "command rollback|reboot|report-inventory --thing THING",
		Short: "StartCommandExecution: send a command to a thing and print its execution",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if thing == "" {
				return usageErr(errors.New("--thing is required"))
			}
			c := &jobsim.Client{BaseURL: api}
			payload, _ := json.Marshal(map[string]string{"command": args[0]})
			id := "fieldota-" + args[0]
			if err := c.CreateCommand(cmd.Context(), id, payload); err != nil {
				var ae *jobsim.APIError
				if !errors.As(err, &ae) || ae.Code != "ConflictException" {
					return apiErr(err)
				}
			}
			exec, err := c.StartCommandExecution(cmd.Context(), id, thing, max(wait, time.Second))
			if err != nil {
				return apiErr(err)
			}
			deadline := time.Now().Add(wait)
			for {
				ex, err := c.GetCommandExecution(cmd.Context(), exec)
				if err != nil {
					return apiErr(err)
				}
				done := ex.Status != "CREATED" && ex.Status != "IN_PROGRESS"
				if done || time.Now().After(deadline) {
					if err := printJSON(cmd.OutOrStdout(), ex); err != nil {
						return err
					}
					if ex.Status != "SUCCEEDED" {
						return fmt.Errorf("command %s: %s", args[0], ex.Status)
					}
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(100 * time.Millisecond):
				}
			}
		},
	}
	apiFlag(cmd.Flags(), &api)
	cmd.Flags().StringVar(&thing, "thing", "", "target thing name")
	cmd.Flags().DurationVar(&wait, "wait", 30*time.Second, "executionTimeoutSeconds, and how long to wait for the device's answer")
	return cmd
}
