package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/fieldota/fieldota/agent/config"
	"github.com/fieldota/fieldota/ota"
	"github.com/fieldota/fieldota/ota/reason"
	"github.com/fieldota/fieldota/ota/swap"
)

// newRecoverCmd is `fieldota-agent recover`, run by systemd before every start of the agent
// (ExecStartPre, from the previous agent kept at <dir>/.<name>.prev, so that it works even when
// the new binary cannot run at all). It reads only the config and the journal — no network —
// and acts only while a self-update is in flight: it counts the starts of the new agent that
// have not passed probation, and past swap.max_starts it puts the old agent back and leaves the
// journal in rollback, so that the old agent reports FAILED HEALTH_CHECK_FAILED rolledBack=true.
func newRecoverCmd(cfgPath *string) *cobra.Command {
	return &cobra.Command{
		Use:   "recover",
		Short: "before a start: restore the previous agent if a self-update cannot come up (offline)",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return recoverSelf(cmd.OutOrStdout(), *cfgPath) },
	}
}

func recoverSelf(w io.Writer, cfgPath string) error {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	st := &ota.Store{Dir: cfg.StateDir}
	j, err := st.Load()
	if errors.Is(err, ota.ErrNoJournal) {
		return nil
	}
	if err != nil {
		return err
	}
	// Keys written by the binary flow (agent/swap.go) before it swaps anything.
	target := j.Data["swap.target"]
	if j.Target != "binary" || j.Data["swap.self"] != "true" || target == "" || len(j.Staged) != 1 {
		return nil
	}
	sum, err := hex.DecodeString(j.Staged[0].SHA256)
	if err != nil {
		return fmt.Errorf("journal digest: %w", err)
	}
	switch j.State {
	case ota.StateInstall, ota.StateSelftest:
		isNew, err := swap.HasDigest(target, sum)
		if err != nil {
			return err
		}
		if !isNew {
			return nil // not swapped yet: the old agent goes on with the install
		}
		n, err := swap.CountStart(cfg.StateDir)
		if err != nil {
			return err
		}
		if n <= cfg.Swap.MaxStarts {
			fmt.Fprintf(w, "recover: start %d of %d of the new agent %s on probation\n", n, cfg.Swap.MaxStarts, j.Version)
			return nil
		}
		// Decide, persist, then act: if we die during the restore, the next run sees rollback.
		ota.Fail(j, reason.Errorf(reason.HealthCheckFailed, "the new agent %s did not pass probation in %d starts; the previous agent is restored", j.Version, cfg.Swap.MaxStarts),
			map[string]string{"stage": "selftest", "version": j.Version, "previousVersion": j.PreviousVersion})
		j.State = ota.StateRollback
		if err := st.Save(j); err != nil {
			return err
		}
	case ota.StateRollback:
	default:
		return nil
	}
	if err := swap.Restore(target, sum); err != nil {
		return err
	}
	fmt.Fprintf(w, "recover: previous agent restored at %s\n", target)
	return nil
}
