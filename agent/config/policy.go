package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fieldota/fieldota/agent/policy"
)

// Policy is the device owner's update policy: when each phase of an update may run
// (docs/update-policy.md). Empty, every phase runs at once.
type Policy struct {
	// TimeZone is the IANA zone the windows' cron expressions are read in; "" = the device's
	// local zone (/etc/localtime).
	TimeZone string `toml:"time_zone"`
	// Recheck is how often a waiting phase asks its hooks and the link again (default 5m); a
	// window is asked again the moment it opens.
	Recheck Duration `toml:"recheck"`
	// HookTimeout bounds one run of a hook (default 30s); a hook that outlives it said not now.
	HookTimeout Duration `toml:"hook_timeout"`
	// Margin is the time kept free before the job's in-progress timeout for the work after a
	// wait (default 10m): a wait that would end later fails WAIT_EXCEEDS_TIMEOUT.
	Margin Duration `toml:"margin"`

	Download PhasePolicy `toml:"download"`
	Install  PhasePolicy `toml:"install"`
	Reboot   PhasePolicy `toml:"reboot"`  // slot: switch to the new slot and reboot
	Restart  PhasePolicy `toml:"restart"` // binary: swap and restart; files: place and start packageName
}

// PhasePolicy gates one phase: it runs inside one of its windows (none: any time), while the link
// is not metered (download only), and when every hook answers 0.
type PhasePolicy struct {
	Windows []WindowConfig `toml:"windows"`
	// Hooks are argv lists (absolute program path, never a shell) asked in order: exit 0 go,
	// 75 not now, anything else refuse.
	Hooks [][]string `toml:"hooks"`
	// WaitWhileMetered waits while NetworkManager says the link is metered (download only).
	WaitWhileMetered bool `toml:"wait_while_metered"`
}

// WindowConfig is one maintenance window: a five-field cron expression (or @daily…) and how
// long each opening lasts.
type WindowConfig struct {
	Cron     string   `toml:"cron"`
	Duration Duration `toml:"duration"`
}

// Phase returns the policy of a phase.
func (p *Policy) Phase(ph policy.Phase) PhasePolicy {
	switch ph {
	case policy.Download:
		return p.Download
	case policy.Install:
		return p.Install
	case policy.Reboot:
		return p.Reboot
	case policy.Restart:
		return p.Restart
	}
	return PhasePolicy{}
}

// Location is the windows' time zone.
func (p *Policy) Location() (*time.Location, error) {
	if p.TimeZone == "" {
		return time.Local, nil
	}
	// The zone comes from the device's zone database (/usr/share/zoneinfo, Debian's tzdata, or
	// $ZONEINFO): built in, it would cost the agent 450 KB that a device without zones never uses.
	l, err := time.LoadLocation(p.TimeZone)
	if err != nil {
		return nil, fmt.Errorf("policy.time_zone %q: %w (the zone database is the system's: install tzdata, or set ZONEINFO)", p.TimeZone, err)
	}
	return l, nil
}

// Windows compiles the windows of a phase.
func (p *Policy) Windows(ph policy.Phase) (policy.Windows, error) {
	loc, err := p.Location()
	if err != nil {
		return nil, err
	}
	var ws policy.Windows
	for i, w := range p.Phase(ph).Windows {
		cw, err := policy.ParseWindow(w.Cron, w.Duration.Duration, loc)
		if err != nil {
			return nil, fmt.Errorf("policy.%s.windows[%d]: %w", ph, i, err)
		}
		ws = append(ws, cw)
	}
	return ws, nil
}

func (p *Policy) defaults() {
	if p.Recheck.Duration == 0 {
		p.Recheck.Duration = 5 * time.Minute
	}
	if p.HookTimeout.Duration == 0 {
		p.HookTimeout.Duration = policy.DefaultHookTimeout
	}
	if p.Margin.Duration == 0 {
		p.Margin.Duration = 10 * time.Minute
	}
}

func (p *Policy) validate() []error {
	var errs []error
	if _, err := p.Location(); err != nil {
		errs = append(errs, err)
	}
	if p.Recheck.Duration < 10*time.Second {
		errs = append(errs, fmt.Errorf("policy.recheck %s is below 10s", p.Recheck.Duration))
	}
	for _, ph := range []policy.Phase{policy.Download, policy.Install, policy.Reboot, policy.Restart} {
		pp := p.Phase(ph)
		if _, err := p.Windows(ph); err != nil {
			errs = append(errs, err)
		}
		for i, argv := range pp.Hooks {
			if len(argv) == 0 || !filepath.IsAbs(argv[0]) {
				errs = append(errs, fmt.Errorf("policy.%s.hooks[%d]: an argv list whose program is an absolute path (no shell, no PATH lookup)", ph, i))
			}
		}
		if pp.WaitWhileMetered && ph != policy.Download {
			errs = append(errs, fmt.Errorf("policy.%s.wait_while_metered: the metered-link check gates downloads only", ph))
		}
	}
	if p.Margin.Duration < 0 {
		errs = append(errs, errors.New("policy.margin must not be negative"))
	}
	return errs
}
