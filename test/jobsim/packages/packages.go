// Package packages emulates the AWS IoT Software Package Catalog's control plane: packages and
// their versions (draft → published ↔ deprecated), version attributes and artifact,
// UpdatePackageConfiguration's versionUpdateByJobsConfig, the resolution of a job's
// destinationPackageVersions (`$default`, `$null`) and the `${aws:iot:package:…}` substitutions
// the service makes in a job document before delivery.
package packages

import (
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// Version statuses.
const (
	StatusDraft      = "DRAFT"
	StatusPublished  = "PUBLISHED"
	StatusDeprecated = "DEPRECATED"
)

// Special version names in a destination ARN.
const (
	VersionDefault = "$default"
	VersionNull    = "$null" // remove the package from $package when the job succeeds
)

// Limits (API-PackageVersionSummary, SPC-P, API-CreateJob).
const (
	MaxAttributeBytes = 3 * 1024
	MaxDestinations   = 25
)

var (
	packageNameRE = regexp.MustCompile(`^[a-zA-Z0-9-_.]{1,128}$`)
	versionNameRE = regexp.MustCompile(`^[a-zA-Z0-9-_.]{1,64}$`)
)

// Error is a control-plane error with AWS's exception name.
type Error struct {
	Code    string // ValidationException, ResourceNotFoundException, ConflictException
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func validation(f string, a ...any) *Error {
	return &Error{"ValidationException", fmt.Sprintf(f, a...)}
}
func notFound(f string, a ...any) *Error {
	return &Error{"ResourceNotFoundException", fmt.Sprintf(f, a...)}
}
func conflict(f string, a ...any) *Error { return &Error{"ConflictException", fmt.Sprintf(f, a...)} }

// S3Location is a version's artifact.
type S3Location struct {
	Bucket  string `json:"bucket"`
	Key     string `json:"key"`
	Version string `json:"version,omitempty"`
}

// Artifact is where a version's payload lives.
type Artifact struct {
	S3Location S3Location `json:"s3Location"`
}

// VersionUpdateByJobsConfig says whether Jobs writes $package at SUCCEEDED.
type VersionUpdateByJobsConfig struct {
	Enabled bool   `json:"enabled"`
	RoleArn string `json:"roleArn,omitempty"`
}

// Package is one package.
type Package struct {
	PackageName    string `json:"packageName"`
	PackageArn     string `json:"packageArn"`
	Description    string `json:"description,omitempty"`
	DefaultVersion string `json:"defaultVersionName,omitempty"`
	CreationDate   int64  `json:"creationDate"`
}

// Version is one package version.
type Version struct {
	PackageName  string            `json:"packageName"`
	VersionName  string            `json:"versionName"`
	Arn          string            `json:"packageVersionArn"`
	Status       string            `json:"status"`
	Attributes   map[string]string `json:"attributes,omitempty"`
	Artifact     *Artifact         `json:"artifact,omitempty"`
	Recipe       string            `json:"recipe,omitempty"`
	Description  string            `json:"description,omitempty"`
	CreationDate int64             `json:"creationDate"`
}

// Catalog is the Software Package Catalog of one account and region.
type Catalog struct {
	Region, Account string
	Now             func() time.Time

	mu       sync.Mutex
	packages map[string]*Package
	versions map[string]map[string]*Version
	config   VersionUpdateByJobsConfig
}

func (c *Catalog) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// PackageArn names a package.
func (c *Catalog) PackageArn(pkg string) string {
	return "arn:aws:iot:" + c.Region + ":" + c.Account + ":package/" + pkg
}

// VersionArn names a package version.
func (c *Catalog) VersionArn(pkg, version string) string {
	return c.PackageArn(pkg) + "/version/" + version
}

// CreatePackage creates a package (ConflictException if it exists).
func (c *Catalog) CreatePackage(name, description string) (Package, error) {
	if !packageNameRE.MatchString(name) {
		return Package{}, validation("packageName %q must match [a-zA-Z0-9-_.]{1,128}", name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.packages == nil {
		c.packages, c.versions = map[string]*Package{}, map[string]map[string]*Version{}
	}
	if _, ok := c.packages[name]; ok {
		return Package{}, conflict("package %s already exists", name)
	}
	p := &Package{PackageName: name, PackageArn: c.PackageArn(name), Description: description, CreationDate: c.now().Unix()}
	c.packages[name] = p
	c.versions[name] = map[string]*Version{}
	return *p, nil
}

// CreateVersionInput is CreatePackageVersion's body.
type CreateVersionInput struct {
	Attributes  map[string]string `json:"attributes,omitempty"`
	Artifact    *Artifact         `json:"artifact,omitempty"`
	Recipe      string            `json:"recipe,omitempty"`
	Description string            `json:"description,omitempty"`
}

// CreatePackageVersion creates a draft version.
func (c *Catalog) CreatePackageVersion(pkg, version string, in CreateVersionInput) (Version, error) {
	if !versionNameRE.MatchString(version) {
		return Version{}, validation("versionName %q must match [a-zA-Z0-9-_.]{1,64}", version)
	}
	if err := checkAttributes(in.Attributes); err != nil {
		return Version{}, err
	}
	if in.Artifact != nil && (in.Artifact.S3Location.Bucket == "" || in.Artifact.S3Location.Key == "") {
		return Version{}, validation("artifact.s3Location needs bucket and key")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	vs, ok := c.versions[pkg]
	if !ok {
		return Version{}, notFound("package %s does not exist", pkg)
	}
	if _, ok := vs[version]; ok {
		return Version{}, conflict("version %s of %s already exists", version, pkg)
	}
	v := &Version{PackageName: pkg, VersionName: version, Arn: c.VersionArn(pkg, version), Status: StatusDraft,
		Attributes: maps.Clone(in.Attributes), Artifact: in.Artifact, Recipe: in.Recipe, Description: in.Description, CreationDate: c.now().Unix()}
	vs[version] = v
	return *v, nil
}

func checkAttributes(a map[string]string) error {
	n := 0
	for k, v := range a {
		n += len(k) + len(v)
	}
	if n > MaxAttributeBytes {
		return validation("attributes hold %d bytes, at most %d", n, MaxAttributeBytes)
	}
	return nil
}

// UpdateVersionInput is UpdatePackageVersion's body.
type UpdateVersionInput struct {
	Action     string            `json:"action,omitempty"` // PUBLISH | DEPRECATE
	Attributes map[string]string `json:"attributes,omitempty"`
	Recipe     *string           `json:"recipe,omitempty"`
}

// UpdatePackageVersion publishes or deprecates a version, or edits it: attributes only while
// it is a draft (published attributes and artifact are immutable), the recipe at any time.
func (c *Catalog) UpdatePackageVersion(pkg, version string, in UpdateVersionInput) (Version, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, err := c.version(pkg, version)
	if err != nil {
		return Version{}, err
	}
	if in.Attributes != nil {
		if v.Status != StatusDraft {
			return Version{}, validation("the attributes of %s %s are immutable once published", pkg, version)
		}
		if err := checkAttributes(in.Attributes); err != nil {
			return Version{}, err
		}
		v.Attributes = maps.Clone(in.Attributes)
	}
	if in.Recipe != nil {
		v.Recipe = *in.Recipe
	}
	switch in.Action {
	case "":
	case "PUBLISH":
		v.Status = StatusPublished
	case "DEPRECATE":
		if v.Status == StatusDraft {
			return Version{}, validation("a draft cannot be deprecated")
		}
		v.Status = StatusDeprecated
	default:
		return Version{}, validation("action %q: want PUBLISH or DEPRECATE", in.Action)
	}
	return *v, nil
}

// SetDefaultVersion is UpdatePackage's defaultVersionName.
func (c *Catalog) SetDefaultVersion(pkg, version string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.version(pkg, version); err != nil {
		return err
	}
	c.packages[pkg].DefaultVersion = version
	return nil
}

// DeletePackageVersion deletes a version.
func (c *Catalog) DeletePackageVersion(pkg, version string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.version(pkg, version); err != nil {
		return err
	}
	delete(c.versions[pkg], version)
	if c.packages[pkg].DefaultVersion == version {
		c.packages[pkg].DefaultVersion = ""
	}
	return nil
}

// GetPackageVersion returns a version.
func (c *Catalog) GetPackageVersion(pkg, version string) (Version, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, err := c.version(pkg, version)
	if err != nil {
		return Version{}, err
	}
	return *v, nil
}

func (c *Catalog) version(pkg, version string) (*Version, error) {
	vs, ok := c.versions[pkg]
	if !ok {
		return nil, notFound("package %s does not exist", pkg)
	}
	if version == VersionDefault {
		version = c.packages[pkg].DefaultVersion
	}
	v, ok := vs[version]
	if !ok {
		return nil, notFound("version %s of package %s does not exist", version, pkg)
	}
	return v, nil
}

// UpdatePackageConfiguration sets versionUpdateByJobsConfig.
func (c *Catalog) UpdatePackageConfiguration(cfg VersionUpdateByJobsConfig) error {
	if cfg.Enabled && cfg.RoleArn == "" {
		return validation("versionUpdateByJobsConfig.roleArn is required when enabled")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.config = cfg
	return nil
}

// PackageConfiguration is GetPackageConfiguration.
func (c *Catalog) PackageConfiguration() VersionUpdateByJobsConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.config
}

// Destination is one resolved destinationPackageVersions entry.
type Destination struct {
	Package string
	Version string // "" with Remove
	Remove  bool   // $null
	Attrs   map[string]string
	Art     *Artifact
}

// Resolve checks a job's destinationPackageVersions: at most 25 ARNs of published or
// deprecated versions (or `$default`, or `$null` to remove the package).
func (c *Catalog) Resolve(arns []string) ([]Destination, error) {
	if len(arns) > MaxDestinations {
		return nil, validation("destinationPackageVersions: %d ARNs, at most %d", len(arns), MaxDestinations)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Destination
	seen := map[string]bool{}
	for _, arn := range arns {
		rest, ok := strings.CutPrefix(arn, c.PackageArn(""))
		pkg, version, ok2 := strings.Cut(rest, "/version/")
		if !ok || !ok2 || pkg == "" || version == "" {
			return nil, validation("destinationPackageVersions: %q is not a package version ARN of this account and region", arn)
		}
		if seen[pkg] {
			return nil, validation("destinationPackageVersions: package %s named twice", pkg)
		}
		seen[pkg] = true
		if version == VersionNull {
			if _, ok := c.packages[pkg]; !ok {
				return nil, notFound("package %s does not exist", pkg)
			}
			out = append(out, Destination{Package: pkg, Remove: true})
			continue
		}
		v, err := c.version(pkg, version)
		if err != nil {
			return nil, err
		}
		if v.Status != StatusPublished && v.Status != StatusDeprecated {
			return nil, validation("destinationPackageVersions: %s is %s; only published or deprecated versions deploy", arn, v.Status)
		}
		out = append(out, Destination{Package: pkg, Version: v.VersionName, Attrs: maps.Clone(v.Attributes), Art: v.Artifact})
	}
	return out, nil
}

// ShadowUpdate is what Jobs writes into $package when an execution with these destinations
// reaches SUCCEEDED: each package's version (a removal writes null). Attributes are not copied
// (SPC-P): the device reports its own.
func ShadowUpdate(dest []Destination) []byte {
	rep := map[string]any{}
	for _, d := range dest {
		if d.Remove {
			rep[d.Package] = nil
			continue
		}
		rep[d.Package] = map[string]any{"version": d.Version}
	}
	b, _ := json.Marshal(map[string]any{"state": map[string]any{"reported": rep}})
	return b
}

// placeholderRE matches ${aws:iot:package:<pkg>:version:<ver>:<rest>} (pkg and ver may be empty).
var placeholderRE = regexp.MustCompile(`\$\{aws:iot:package:([a-zA-Z0-9-_.]*):version:([a-zA-Z0-9-_.$]*):([^}]*)\}`)

// Substitute resolves the `${aws:iot:package:…}` placeholders of a job document against its
// destinations, as the service does before delivery: an attribute inside a JSON string becomes
// its value (escaped), the whole attribute map must be a bare JSON value, and the artifact's
// presigned URL becomes an S3 presigned-URL placeholder (presigned afresh on each delivery). An
// empty package and version take the single destination.
func (c *Catalog) Substitute(doc string, dest []Destination) (string, error) {
	var firstErr error
	fail := func(format string, a ...any) string {
		if firstErr == nil {
			firstErr = validation(format, a...)
		}
		return ""
	}
	out := placeholderRE.ReplaceAllStringFunc(doc, func(m string) string {
		sub := placeholderRE.FindStringSubmatch(m)
		pkg, ver, rest := sub[1], sub[2], sub[3]
		if ver == VersionNull {
			return fail("$null is not allowed in a job document")
		}
		var d *Destination
		switch {
		case pkg == "" && ver == "":
			if len(dest) != 1 {
				return fail("Cannot resolve empty package name and version name given multiple elements")
			}
			d = &dest[0]
		default:
			for i := range dest {
				if dest[i].Package == pkg && (dest[i].Version == ver || ver == VersionDefault) {
					d = &dest[i]
				}
			}
			if d == nil {
				// A version not among the destinations still resolves from the catalog.
				c.mu.Lock()
				v, err := c.version(pkg, ver)
				c.mu.Unlock()
				if err != nil {
					return fail("%s", err.Error())
				}
				d = &Destination{Package: pkg, Version: v.VersionName, Attrs: v.Attributes, Art: v.Artifact}
			}
		}
		switch {
		case rest == "attributes":
			b, _ := json.Marshal(d.Attrs)
			if d.Attrs == nil {
				b = []byte("{}")
			}
			return string(b)
		case strings.HasPrefix(rest, "attributes:"):
			key := strings.TrimPrefix(rest, "attributes:")
			v, ok := d.Attrs[key]
			if !ok {
				return fail("package %s version %s has no attribute %s", d.Package, d.Version, key)
			}
			b, _ := json.Marshal(v)
			return string(b[1 : len(b)-1]) // inside a JSON string
		case rest == "artifact-location:s3-presigned-url", rest == "artifact:s3-presigned-url":
			if d.Art == nil {
				return fail("package %s version %s has no artifact", d.Package, d.Version)
			}
			loc := d.Art.S3Location
			return "${aws:iot:s3-presigned-url:https://s3." + c.Region + ".amazonaws.com/" + loc.Bucket + "/" + loc.Key + "}"
		}
		return fail("unknown package placeholder %s", m)
	})
	if firstErr != nil {
		return "", firstErr
	}
	if !json.Valid([]byte(out)) {
		return "", validation("the job document is not valid JSON after package substitution (the whole attribute map must be a bare JSON value)")
	}
	return out, nil
}

// Versions lists a package's versions, sorted by name.
func (c *Catalog) Versions(pkg string) []Version {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Version
	for _, v := range c.versions[pkg] {
		out = append(out, *v)
	}
	slices.SortFunc(out, func(a, b Version) int { return strings.Compare(a.VersionName, b.VersionName) })
	return out
}
