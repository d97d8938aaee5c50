// Package config loads the agent's TOML configuration (/etc/fieldota/agent.toml), fills in
// defaults and refuses anything unsafe or inconsistent at startup rather than mid-update.
// docs/configuration.md documents every key; scripts/agent.example.toml is the commented example.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/fieldota/fieldota/agent/identity"
)

// Config is the whole agent configuration. Keys are stable once released.
type Config struct {
	ThingName string `toml:"thing_name"`
	StateDir  string `toml:"state_dir"`
	// Compatible names this device answers to; a job's `compatible` list must include one.
	Compatible []string `toml:"compatible"`

	MQTT     MQTT     `toml:"mqtt"`
	Jobs     Jobs     `toml:"jobs"`
	Verify   Verify   `toml:"verify"`
	Download Download `toml:"download"`
	Delta    Delta    `toml:"delta"`
	Files    Files    `toml:"files"`
	Slot     Slot     `toml:"slot"`
	Swap     Swap     `toml:"swap"`
	Health   Health   `toml:"health"`
	// AWS IoT Device Management beyond Jobs (aws.go).
	Inventory Inventory `toml:"inventory"`
	Commands  Commands  `toml:"commands"`
	Templates Templates `toml:"templates"`
	AFROTA    AFROTA    `toml:"afr_ota"`
	Policy    Policy    `toml:"policy"`
	Log       Log       `toml:"log"`
}

// MQTT is the connection to AWS IoT Core (or the emulator).
type MQTT struct {
	Endpoint string `toml:"endpoint"`  // host:8883, host:443, ssl://…, tcp://… (emulator only)
	ClientID string `toml:"client_id"` // defaults to thing_name
	CAFile   string `toml:"ca_file"`
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
	// Key is where the device's private key lives: a PEM path, tpm:0x81000001 (persistent
	// handle), tpm:/path (TSS2 key file) or a pkcs11: URI (docs/device-identity.md). key_file is
	// the older name for a PEM path; give one of the two.
	Key        string   `toml:"key"`
	TPMDevice  string   `toml:"tpm_device"`  // default /dev/tpmrm0; a unix socket for a TPM simulator
	ServerName string   `toml:"server_name"` // SNI; defaults to the endpoint host
	KeepAlive  Duration `toml:"keep_alive"`
}

// KeyRef is the device key reference: mqtt.key, or else mqtt.key_file.
func (m MQTT) KeyRef() string {
	if m.Key != "" {
		return m.Key
	}
	return m.KeyFile
}

// Jobs tunes how the agent talks to the Jobs service.
type Jobs struct {
	StepTimeoutMinutes int      `toml:"step_timeout_minutes"` // refreshed at each stage; 0 = none
	ProgressEvery      int      `toml:"progress_every_percent"`
	ProgressInterval   Duration `toml:"progress_min_interval"`
	RequestTimeout     Duration `toml:"request_timeout"`
}

// Verify holds the trust anchors and the policy.
type Verify struct {
	Keys          []string `toml:"keys"`     // PEM public keys
	CACerts       []string `toml:"ca_certs"` // CAs for signing certificates carried in documents
	AllowUnsigned bool     `toml:"allow_unsigned"`
	// RequireReleaseStatement (default true) refuses documents without a signed release
	// statement. false accepts codesign-only releases (AWS Signer pipelines), whose install
	// parameters anyone who can create jobs then decides (docs/signing.md, threat model).
	RequireReleaseStatement *bool `toml:"require_release_statement"`
}

// RequireStatement is verify.require_release_statement with its default (true).
func (v Verify) RequireStatement() bool {
	return v.RequireReleaseStatement == nil || *v.RequireReleaseStatement
}

// Download tunes the downloader.
type Download struct {
	AllowInsecureHTTP bool     `toml:"allow_insecure_http"`
	StallTimeout      Duration `toml:"stall_timeout"`
	MaxRefreshes      int      `toml:"max_url_refreshes"`
	RateLimit         int64    `toml:"rate_limit_bytes_per_sec"`
	// AllowedHosts are the hosts payloads may come from (exact names, IP literals, or
	// "*.suffix"); redirects never leave them. Default: AWS's endpoints (download.DefaultHosts).
	AllowedHosts []string `toml:"allowed_hosts"`
	// MinSpeed (default 1000 B/s) over MinSpeedWindow (default 60 s) is the slow-retrieval
	// watchdog: a connection below it is dropped and the download resumed on a new one;
	// MaxSlowWindows (default 3) slow windows in a row fail DOWNLOAD_TOO_SLOW.
	MinSpeed       int64    `toml:"min_speed_bytes_per_sec"`
	MinSpeedWindow Duration `toml:"min_speed_window"`
	MaxSlowWindows int      `toml:"max_slow_windows"`
	// MaxDecoderWindow bounds the memory a compressed payload's decoder may need (its signed
	// frame size, to the next power of two; default 64 MiB): a release that needs more is
	// REJECTED UNSUPPORTED_OPERATION while QUEUED (docs/delta-updates.md).
	MaxDecoderWindow int64 `toml:"max_decoder_window_bytes"`
}

// Delta tunes block-reuse delta installs of slot images (docs/delta-updates.md).
type Delta struct {
	// Enabled (default true): a slot image with a signed block index is installed by delta;
	// false: always the full compressed download.
	Enabled *bool `toml:"enabled"`
	// MinSaving (default 0.2): fall back to the full download when the delta would save less
	// than this share of it.
	MinSaving float64 `toml:"min_saving"`
	// MaxRequests (default 200): the most ranged GETs a delta may send for its frames.
	MaxRequests int `toml:"max_requests"`
}

// On is delta.enabled with its default (true).
func (d Delta) On() bool { return d.Enabled == nil || *d.Enabled }

// Files configures the files target.
type Files struct {
	AllowedRoots     []string `toml:"allowed_roots"`
	AutoStartTimeout Duration `toml:"autostart_timeout"`
	// RunAs names the user the files belong to: placement and autoStart then run with that
	// user's rights only, so the working directory may be the user's (the seed's
	// /home/ec2-user/JobSampleTesting). Empty: root, and every directory must be root's.
	RunAs string `toml:"run_as"`
}

// Slot configures A/B installs (docs/ab-slots.md). An empty bootloader disables slot jobs.
type Slot struct {
	Bootloader string   `toml:"bootloader"` // uboot | grub | file | command
	A          string   `toml:"a"`
	B          string   `toml:"b"`
	Reboot     []string `toml:"reboot"`
	// Detect says how the booted slot is found: "cmdline" (fieldota.slot= or root= on the
	// kernel command line) or "root" (the device mounted at RootPath).
	Detect   string `toml:"detect"`
	Cmdline  string `toml:"cmdline"`   // default /proc/cmdline
	RootPath string `toml:"root_path"` // default /
	// BootAttempts is the bootlimit written with a trial boot (default 1, like Mender).
	BootAttempts int `toml:"boot_attempts"`
	// FwEnvConfig is the fw_env.config for uboot (default: the tools' own, /etc/fw_env.config).
	FwEnvConfig string `toml:"fw_env_config"`
	// Grubenv is the environment block for grub (default /boot/grub/grubenv).
	Grubenv string `toml:"grubenv"`
	// EnvFile is the key=value file for the file bootloader.
	EnvFile string `toml:"env_file"`
	// EnvGet and EnvSet are the command bootloader's hooks (argv lists).
	EnvGet []string `toml:"env_get"`
	EnvSet []string `toml:"env_set"`
	// RebootTimeout is how long the agent waits to be stopped after asking for a reboot
	// before it asks again (default 10m).
	RebootTimeout Duration `toml:"reboot_timeout"`
}

// Swap configures binary swaps.
type Swap struct {
	// Name is what a signed release calls the managed binary (its "binary" field); default: the
	// base name of Target (with Self: of the agent's own executable).
	Name    string   `toml:"name"`
	Target  string   `toml:"target"`
	Restart []string `toml:"restart"`
	// Self: the swapped binary is the agent itself (target defaults to its own executable).
	Self bool `toml:"self"`
	// KeepOld keeps the previous binary at <dir>/.<name>.prev after a commit.
	KeepOld bool `toml:"keep_old"`
	// Probation is how long the new binary must stay up and healthy before commit.
	Probation      Duration `toml:"probation"`
	ProbeInterval  Duration `toml:"probe_interval"`
	RestartTimeout Duration `toml:"restart_timeout"`
	// PIDFile or PIDCommand names the managed process, watched for exits and restarts.
	PIDFile    string   `toml:"pid_file"`
	PIDCommand []string `toml:"pid_command"`
	// MaxSize bounds a binary (staging holds it in memory).
	MaxSize int64 `toml:"max_size_bytes"`
	// MaxStarts: recovery restores the old agent after this many starts without passing probation.
	MaxStarts int `toml:"max_starts"`
}

// Health configures the checks that decide commit or rollback.
type Health struct {
	Commands [][]string `toml:"commands"`
	URL      string     `toml:"url"`
	Units    []string   `toml:"units"`
	Timeout  Duration   `toml:"timeout"`
	Interval Duration   `toml:"interval"` // between rounds of checks (default 2s)
}

// Log configures logging.
type Log struct {
	Level string `toml:"level"` // debug | info | warn | error
}

// Duration is a time.Duration written as "30s", "5m" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", b)
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Load reads, defaults and validates a config file. Unknown keys are errors: a misspelt
// `allow_unsigend = false` must not silently mean something else.
func Load(path string) (*Config, error) {
	var c Config
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path once, not twice ("config X: open X: …")
		}
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("config %s: unknown keys: %s", path, strings.Join(keys, ", "))
	}
	c.defaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	exe, _ := os.Executable()
	if err := c.CheckOverlaps(path, exe); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

// CheckOverlaps refuses allowed roots that contain (or lie inside) what the agent itself depends
// on — its state, this configuration, its trust anchors and identity, its own binary, the managed
// binary — since a files job could then overwrite installed.json or a trusted key.
func (c *Config) CheckOverlaps(configPath, exe string) error {
	own := map[string]string{"state_dir": c.StateDir, "the configuration file": configPath,
		"mqtt.ca_file": c.MQTT.CAFile, "mqtt.cert_file": c.MQTT.CertFile, "mqtt.key_file": c.MQTT.KeyFile,
		"the agent's binary": exe, "swap.target": c.Swap.Target}
	for i, k := range c.Verify.Keys {
		own[fmt.Sprintf("verify.keys[%d]", i)] = k
	}
	for i, k := range c.Verify.CACerts {
		own[fmt.Sprintf("verify.ca_certs[%d]", i)] = k
	}
	var errs []error
	for _, root := range c.Files.AllowedRoots {
		rr := resolved(root)
		for what, p := range own {
			if p == "" {
				continue
			}
			rp := resolved(p)
			if under(rp, rr) || under(rr, rp) {
				errs = append(errs, fmt.Errorf("files.allowed_roots entry %s overlaps %s (%s): a files job could overwrite it", root, what, p))
			}
		}
	}
	slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return errors.Join(errs...)
}

// resolved is p, absolute, with the symlinks of its existing part resolved.
func resolved(p string) string {
	p, _ = filepath.Abs(p)
	var rest []string
	for {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Join(append([]string{r}, rest...)...)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return filepath.Join(append([]string{p}, rest...)...)
		}
		rest = append([]string{filepath.Base(p)}, rest...)
		p = parent
	}
}

// hostPattern accepts an IP address, a host name, or "*." followed by a host name.
func hostPattern(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	name := strings.TrimPrefix(h, "*.")
	return hostName.MatchString(name) && strings.Contains(name, ".") || name == "localhost" && name == h
}

func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

func (c *Config) defaults() {
	defer c.awsDefaults()
	if c.StateDir == "" {
		c.StateDir = "/var/lib/fieldota"
	}
	if c.MQTT.ClientID == "" {
		c.MQTT.ClientID = c.ThingName
	}
	if c.MQTT.KeepAlive.Duration == 0 {
		c.MQTT.KeepAlive.Duration = 60 * time.Second
	}
	if c.Jobs.StepTimeoutMinutes == 0 {
		c.Jobs.StepTimeoutMinutes = 60
	}
	if c.Jobs.ProgressEvery == 0 {
		c.Jobs.ProgressEvery = 10
	}
	if c.Jobs.ProgressInterval.Duration == 0 {
		c.Jobs.ProgressInterval.Duration = 30 * time.Second
	}
	if c.Jobs.RequestTimeout.Duration == 0 {
		c.Jobs.RequestTimeout.Duration = 10 * time.Second
	}
	if c.Download.StallTimeout.Duration == 0 {
		c.Download.StallTimeout.Duration = 60 * time.Second
	}
	if c.Download.MaxRefreshes == 0 {
		c.Download.MaxRefreshes = 5
	}
	if c.Download.MinSpeed == 0 {
		c.Download.MinSpeed = 1000
	}
	if c.Download.MinSpeedWindow.Duration == 0 {
		c.Download.MinSpeedWindow.Duration = time.Minute
	}
	if c.Download.MaxSlowWindows == 0 {
		c.Download.MaxSlowWindows = 3
	}
	if c.Download.MaxDecoderWindow == 0 {
		c.Download.MaxDecoderWindow = 64 << 20
	}
	if c.Delta.MinSaving == 0 {
		c.Delta.MinSaving = 0.2
	}
	if c.Delta.MaxRequests == 0 {
		c.Delta.MaxRequests = 200
	}
	if c.Files.AutoStartTimeout.Duration == 0 {
		c.Files.AutoStartTimeout.Duration = 5 * time.Minute
	}
	c.Swap.defaults()
	if c.Health.Timeout.Duration == 0 {
		c.Health.Timeout.Duration = 5 * time.Minute
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	c.Slot.defaults()
	c.Policy.defaults()
}

func (s *Slot) defaults() {
	if s.Bootloader == "" {
		return
	}
	if s.Detect == "" {
		s.Detect = "cmdline"
	}
	if s.BootAttempts == 0 {
		s.BootAttempts = 1
	}
	if s.Bootloader == "grub" && s.Grubenv == "" {
		s.Grubenv = "/boot/grub/grubenv"
	}
	if s.RebootTimeout.Duration == 0 {
		s.RebootTimeout.Duration = 10 * time.Minute
	}
}

// validate refuses a slot setup that would fail mid-update (after the payload was written).
func (s *Slot) validate() []error {
	if s.Bootloader == "" {
		return nil
	}
	var errs []error
	switch s.Bootloader {
	case "uboot", "grub":
	case "file":
		if !filepath.IsAbs(s.EnvFile) {
			errs = append(errs, fmt.Errorf("slot.env_file %q must be an absolute path for bootloader file", s.EnvFile))
		}
	case "command":
		if len(s.EnvGet) == 0 || len(s.EnvSet) == 0 {
			errs = append(errs, errors.New("slot.env_get and slot.env_set are required for bootloader command"))
		}
	default:
		errs = append(errs, fmt.Errorf("slot.bootloader %q is not uboot, grub, file or command", s.Bootloader))
	}
	if s.A == "" || s.B == "" || s.A == s.B {
		errs = append(errs, fmt.Errorf("slot.a and slot.b must name two different devices (got %q, %q)", s.A, s.B))
	}
	if len(s.Reboot) == 0 {
		errs = append(errs, errors.New("slot.reboot (the argv that reboots the device) is required"))
	}
	if s.Detect != "cmdline" && s.Detect != "root" {
		errs = append(errs, fmt.Errorf("slot.detect %q is not cmdline or root", s.Detect))
	}
	if s.BootAttempts < 1 || s.BootAttempts > 8 {
		errs = append(errs, fmt.Errorf("slot.boot_attempts %d outside 1–8 (the boot scripts count in one digit)", s.BootAttempts))
	}
	return errs
}

var (
	thingName  = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)
	hostName   = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$`)
	binaryName = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,64}$`)
)

// Validate refuses configurations that would fail later or fail open.
func (c *Config) Validate() error {
	errs := c.awsValidate()
	if !thingName.MatchString(c.ThingName) {
		errs = append(errs, fmt.Errorf("thing_name %q must match [a-zA-Z0-9:_-]{1,128}", c.ThingName))
	}
	if !filepath.IsAbs(c.StateDir) {
		errs = append(errs, fmt.Errorf("state_dir %q must be absolute", c.StateDir))
	}
	if c.MQTT.Endpoint == "" {
		errs = append(errs, errors.New("mqtt.endpoint is required"))
	} else if u, err := url.Parse(c.MQTT.Endpoint); err == nil && (u.Scheme == "tcp" || u.Scheme == "mqtt") {
		// Plain MQTT exists only for the local emulator; AWS IoT requires TLS.
		if c.MQTT.CertFile != "" {
			errs = append(errs, errors.New("mqtt.cert_file given with a plain tcp:// endpoint"))
		}
	} else if c.MQTT.CertFile == "" || c.MQTT.KeyRef() == "" {
		errs = append(errs, errors.New("mqtt.cert_file and mqtt.key (or mqtt.key_file) are required for a TLS endpoint"))
	}
	if c.MQTT.Key != "" && c.MQTT.KeyFile != "" {
		errs = append(errs, errors.New("mqtt.key and mqtt.key_file are two names for the device key: give one"))
	} else if k := c.MQTT.KeyRef(); k != "" {
		if _, err := identity.Parse(k, c.MQTT.TPMDevice); err != nil {
			errs = append(errs, fmt.Errorf("mqtt.key: %w", err))
		}
	}
	// Fail closed: a device with no trust anchors could install nothing signed, and
	// "no keys" must never be read as "skip verification".
	if len(c.Verify.Keys) == 0 && len(c.Verify.CACerts) == 0 && !c.Verify.AllowUnsigned {
		errs = append(errs, errors.New("verify.keys (or verify.ca_certs) is empty: no update could ever verify; set keys, or allow_unsigned = true for development only"))
	}
	for _, r := range c.Files.AllowedRoots {
		if !filepath.IsAbs(r) || filepath.Clean(r) != r || r == "/" {
			errs = append(errs, fmt.Errorf("files.allowed_roots entry %q must be a clean absolute path other than /", r))
		}
	}
	if c.Download.MinSpeed < 0 || c.Download.MaxSlowWindows < 0 {
		errs = append(errs, errors.New("download.min_speed_bytes_per_sec and download.max_slow_windows must be positive"))
	}
	if c.Download.RateLimit > 0 && c.Download.RateLimit < c.Download.MinSpeed {
		errs = append(errs, fmt.Errorf("download.rate_limit_bytes_per_sec %d is below download.min_speed_bytes_per_sec %d: every download would be cut as too slow", c.Download.RateLimit, c.Download.MinSpeed))
	}
	if c.Download.MaxDecoderWindow < 1<<20 {
		errs = append(errs, fmt.Errorf("download.max_decoder_window_bytes %d is below 1 MiB: no compressed release could be decoded", c.Download.MaxDecoderWindow))
	}
	if c.Delta.MinSaving <= 0 || c.Delta.MinSaving >= 1 {
		errs = append(errs, fmt.Errorf("delta.min_saving %g outside (0, 1)", c.Delta.MinSaving))
	}
	if c.Delta.MaxRequests < 1 || c.Delta.MaxRequests > 10000 {
		errs = append(errs, fmt.Errorf("delta.max_requests %d outside 1–10000", c.Delta.MaxRequests))
	}
	for _, h := range c.Download.AllowedHosts {
		if !hostPattern(h) {
			errs = append(errs, fmt.Errorf("download.allowed_hosts entry %q: want a host name, an IP address or *.suffix (no scheme, port or path)", h))
		}
	}
	if c.Files.RunAs != "" && len(c.Files.AllowedRoots) == 0 {
		errs = append(errs, errors.New("files.run_as is set but files.allowed_roots is empty"))
	}
	if c.Swap.Name != "" && !binaryName.MatchString(c.Swap.Name) {
		errs = append(errs, fmt.Errorf("swap.name %q: only letters, digits, '.', '_' and '-' (1 to 64)", c.Swap.Name))
	}
	if c.Jobs.StepTimeoutMinutes < 0 || c.Jobs.StepTimeoutMinutes > 10080 {
		errs = append(errs, fmt.Errorf("jobs.step_timeout_minutes %d outside 1–10080", c.Jobs.StepTimeoutMinutes))
	}
	if c.Jobs.ProgressEvery < 1 || c.Jobs.ProgressEvery > 100 {
		errs = append(errs, fmt.Errorf("jobs.progress_every_percent %d outside 1–100", c.Jobs.ProgressEvery))
	}
	errs = append(errs, c.Swap.validate()...)
	errs = append(errs, c.Slot.validate()...)
	errs = append(errs, c.Policy.validate()...)
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level %q is not debug, info, warn or error", c.Log.Level))
	}
	return errors.Join(errs...)
}

// EnsureStateDir creates the state directory owner-only.
func (c *Config) EnsureStateDir() error {
	return os.MkdirAll(c.StateDir, 0o700)
}

func (s *Swap) defaults() {
	if s.Probation.Duration == 0 {
		s.Probation.Duration = 30 * time.Second
	}
	if s.ProbeInterval.Duration == 0 {
		s.ProbeInterval.Duration = 2 * time.Second
	}
	if s.RestartTimeout.Duration == 0 {
		s.RestartTimeout.Duration = time.Minute
	}
	if s.MaxSize == 0 {
		s.MaxSize = 64 << 20
	}
	if s.MaxStarts == 0 {
		s.MaxStarts = 3
	}
}

func (s *Swap) validate() []error {
	var errs []error
	if s.Target != "" && (!filepath.IsAbs(s.Target) || filepath.Clean(s.Target) != s.Target) {
		errs = append(errs, fmt.Errorf("swap.target %q must be a clean absolute path", s.Target))
	}
	if s.Target != "" && !s.Self && len(s.Restart) == 0 {
		errs = append(errs, errors.New("swap.restart is required with swap.target (unless swap.self)"))
	}
	if s.PIDFile != "" && len(s.PIDCommand) > 0 {
		errs = append(errs, errors.New("swap.pid_file and swap.pid_command are exclusive"))
	}
	if s.MaxSize < 0 || s.MaxStarts < 0 {
		errs = append(errs, errors.New("swap.max_size_bytes and swap.max_starts must be positive"))
	}
	return errs
}
