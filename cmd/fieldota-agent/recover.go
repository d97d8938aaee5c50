package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	otarun "github.com/fieldota/fieldota/ota/run"

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
//
// With --overdue (from a timer, not before a start) it counts nothing and instead gives up on
// a new agent whose probation is long overdue — one that hangs rather than exits — and then
// restarts the agent's unit so that the restored old agent runs.
func newRecoverCmd(cfgPath *string) *cobra.Command {
	var overdue bool
	var unit string
	cmd := &cobra.Command{
		Use:   "recover",
		Short: "Before a start: restore the previous agent if a self-update cannot come up (offline)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			restored, err := recoverSelf(cmd.OutOrStdout(), *cfgPath, overdue, time.Now())
			if err != nil || !restored || unit == "" {
				return err
			}
			// The hung new agent is still running: restart the unit so the old one takes over.
			_, err = otarun.Run(cmd.Context(), otarun.Spec{Argv: []string{"systemctl", "restart", "--no-block", unit}, Timeout: time.Minute})
			return err
		},
	}
	cmd.Flags().BoolVar(&overdue, "overdue", false, "give up on a new agent whose probation is overdue (it hangs); do not count a start")
	cmd.Flags().StringVar(&unit, "restart-unit", "", "after restoring, restart this systemd unit (with --overdue)")
	return cmd
}

// overdueAfter is how long a probation can legitimately take after the journal's last save:
// reporting selftest, the first healthy round and the last one each within health.timeout,
// the probation window, and the restart.
func overdueAfter(cfg *config.Config) time.Duration {
	return 3*cfg.Health.Timeout.Duration + cfg.Swap.Probation.Duration + cfg.Swap.RestartTimeout.Duration
}

// recoverSelf returns whether it restored the previous agent.
func recoverSelf(w io.Writer, cfgPath string, overdue bool, now time.Time) (bool, error) {
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		return false, err
	}
	st := &ota.Store{Dir: cfg.StateDir}
	j, err := st.Load()
	if errors.Is(err, ota.ErrNoJournal) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	// Keys written by the binary flow (agent/swap.go) before it swaps anything.
	target := j.Data[swap.JournalTarget]
	if j.Target != "binary" || j.Data[swap.JournalSelf] != "true" || target == "" || len(j.Staged) != 1 {
		return false, nil
	}
	sum, err := hex.DecodeString(j.Staged[0].SHA256)
	if err != nil {
		return false, fmt.Errorf("journal digest: %w", err)
	}
	switch j.State {
	case ota.StateInstall, ota.StateSelftest:
		isNew, err := swap.HasDigest(target, sum)
		if err != nil {
			return false, err
		}
		if !isNew {
			return false, nil // not swapped yet: the old agent goes on with the install
		}
		var why string
		if overdue {
			late := now.Sub(j.UpdatedAt)
			if late <= overdueAfter(cfg) {
				return false, nil
			}
			why = fmt.Sprintf("the new agent %s did not finish probation in %s", j.Version, late.Round(time.Second))
		} else {
			n, err := swap.CountStart(cfg.StateDir)
			if err != nil {
				return false, err
			}
			if n <= cfg.Swap.MaxStarts {
				fmt.Fprintf(w, "recover: start %d of %d of the new agent %s on probation\n", n, cfg.Swap.MaxStarts, j.Version)
				return false, nil
			}
			why = fmt.Sprintf("the new agent %s did not pass probation in %d starts", j.Version, cfg.Swap.MaxStarts)
		}
		// Decide, persist, then act: if we die during the restore, the next run sees rollback.
		ota.Fail(j, reason.Errorf(reason.HealthCheckFailed, "%s; the previous agent is restored", why),
			map[string]string{"stage": "selftest", "version": j.Version, "previousVersion": j.PreviousVersion})
		j.State = ota.StateRollback
		if err := st.Save(j); err != nil {
			return false, err
		}
	case ota.StateRollback:
	default:
		return false, nil
	}
	isNew, err := swap.HasDigest(target, sum)
	if err != nil {
		return false, err
	}
	if !isNew {
		return false, nil
	}
	if err := swap.Restore(target, sum); err != nil {
		return false, err
	}
	fmt.Fprintf(w, "recover: previous agent restored at %s\n", target)
	return true, nil
}
