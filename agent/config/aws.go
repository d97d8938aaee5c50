package config

import (
	"fmt"
	"path/filepath"
	"slices"
)

// The rest of AWS IoT Device Management (docs/aws-device-management.md): the `$package`
// inventory, AWS IoT Commands, AWS's managed job templates and create-ota-update documents.
// Everything here is off unless configured.

// Inventory configures the `$package` named-shadow reporter.
type Inventory struct {
	// Enabled reports what runs into the thing's `$package` shadow (Software Package Catalog).
	Enabled bool `toml:"enabled"`
	// Packages maps a target key ("slot", "binary:/usr/bin/myapp", "files:/opt/app/x") to the
	// package name it is reported under when the signed release names none.
	Packages map[string]string `toml:"packages"`
}

// Commands configures AWS IoT Commands.
type Commands struct {
	// Allow lists the commands this device runs: rollback, reboot, report-inventory.
	Allow []string `toml:"allow"`
	// Reboot is the argv of the reboot command (default: slot.reboot).
	Reboot []string `toml:"reboot"`
}

// Templates configures AWS's managed job templates (version 1.0 documents with steps[]).
type Templates struct {
	// DownloadFile enables AWS-Download-File, into DownloadRoots (default files.allowed_roots).
	DownloadFile  bool     `toml:"download_file"`
	DownloadRoots []string `toml:"download_roots"`
	// MaxDownloadSize bounds AWS-Download-File (the document states no size); default 1 GiB.
	MaxDownloadSize int64 `toml:"max_download_bytes"`
	// Reboot enables AWS-Reboot with RebootCommand (default: slot.reboot).
	Reboot        bool     `toml:"reboot"`
	RebootCommand []string `toml:"reboot_command"`
	// Services enables AWS-Start/Stop/Restart-Application for these service names only, run as
	// ServiceCommand + [start|stop|restart, name] (default systemctl).
	Services       []string `toml:"services"`
	ServiceCommand []string `toml:"service_command"`
	// InstallCommand and RemoveCommand enable AWS-Install-Application and -Remove-Application
	// (argv prefix; the package names are appended, each checked against Packages when set).
	InstallCommand []string `toml:"install_command"`
	RemoveCommand  []string `toml:"remove_command"`
	Packages       []string `toml:"packages"`
	// RunCommand enables AWS-Run-Command: the document's argv runs as is (no shell). Whoever can
	// create jobs then runs anything on the device as the agent's user: leave it off.
	RunCommand bool `toml:"run_command"`
	// Timeout bounds each step (default 10m).
	Timeout Duration `toml:"timeout"`
}

// AFROTA configures documents written by `aws iot create-ota-update` (afr_ota, HTTP).
type AFROTA struct {
	// Target is where their one file goes: "files" (into WorkingDirectory) or "binary" (the
	// configured swap target). Empty refuses them.
	Target           string `toml:"target"`
	WorkingDirectory string `toml:"working_directory"`
}

func (c *Config) awsDefaults() {
	if len(c.Commands.Reboot) == 0 {
		c.Commands.Reboot = c.Slot.Reboot
	}
	if len(c.Templates.DownloadRoots) == 0 {
		c.Templates.DownloadRoots = c.Files.AllowedRoots
	}
	if c.Templates.MaxDownloadSize == 0 {
		c.Templates.MaxDownloadSize = 1 << 30
	}
	if len(c.Templates.RebootCommand) == 0 {
		c.Templates.RebootCommand = c.Slot.Reboot
	}
	if len(c.Templates.ServiceCommand) == 0 {
		c.Templates.ServiceCommand = []string{"systemctl"}
	}
	if c.Templates.Timeout.Duration == 0 {
		c.Templates.Timeout.Duration = 10 * 60e9
	}
}

func (c *Config) awsValidate() []error {
	var errs []error
	for _, a := range c.Commands.Allow {
		if !slices.Contains([]string{"rollback", "reboot", "report-inventory"}, a) {
			errs = append(errs, fmt.Errorf("commands.allow: %q is not rollback, reboot or report-inventory", a))
		}
	}
	if slices.Contains(c.Commands.Allow, "reboot") && len(c.Commands.Reboot) == 0 {
		errs = append(errs, fmt.Errorf("commands.allow has reboot but neither commands.reboot nor slot.reboot is set"))
	}
	if c.Templates.Reboot && len(c.Templates.RebootCommand) == 0 {
		errs = append(errs, fmt.Errorf("templates.reboot needs templates.reboot_command or slot.reboot"))
	}
	for _, r := range c.Templates.DownloadRoots {
		if !filepath.IsAbs(r) {
			errs = append(errs, fmt.Errorf("templates.download_roots: %q is not absolute", r))
		}
	}
	switch c.AFROTA.Target {
	case "":
	case "files":
		if !filepath.IsAbs(c.AFROTA.WorkingDirectory) {
			errs = append(errs, fmt.Errorf("afr_ota.working_directory must be an absolute directory for target files"))
		}
	case "binary":
	default:
		errs = append(errs, fmt.Errorf("afr_ota.target %q: want files or binary", c.AFROTA.Target))
	}
	return errs
}
