package slot

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	otarun "github.com/fieldota/fieldota/ota/run"

	"github.com/fieldota/fieldota/ota/durable"
)

// toolTimeout bounds one run of an environment tool: a hung flash driver must not hang the agent.
const toolTimeout = 30 * time.Second

// UBoot uses fw_printenv/fw_setenv from libubootenv-tool. Config names an fw_env.config other
// than /etc/fw_env.config. The tools are never given a default environment (-f): an
// environment that fails its CRC is an error, not silently replaced.
type UBoot struct {
	Config   string
	Printenv string // defaults to fw_printenv
	Setenv   string // defaults to fw_setenv
}

func (u UBoot) args() []string {
	if u.Config != "" {
		return []string{"-c", u.Config}
	}
	return nil
}

// Get implements Bootloader.
func (u UBoot) Get(ctx context.Context) (Env, error) {
	out, err := run(ctx, nil, or(u.Printenv, "fw_printenv"), u.args()...)
	if err != nil {
		return nil, err
	}
	return parseLines(out), nil
}

// Set implements Bootloader: one `fw_setenv -s -` batch ("name=value" lines; the old
// "name value" form is silently ignored by libubootenv, so it is never used).
func (u UBoot) Set(ctx context.Context, vars Env) error {
	if err := checkVars(vars); err != nil {
		return err
	}
	_, err := run(ctx, strings.NewReader(formatLines(vars)), or(u.Setenv, "fw_setenv"), append(u.args(), "-s", "-")...)
	return err
}

// Grub uses grub-editenv on a grubenv file (one invocation per change).
type Grub struct {
	File   string
	Editor string // defaults to grub-editenv
}

// Get implements Bootloader.
func (g Grub) Get(ctx context.Context) (Env, error) {
	// grub-editenv lists a missing file as empty: a missing env must be an error here.
	if err := checkGrubenv(g.File); err != nil {
		return nil, err
	}
	out, err := run(ctx, nil, or(g.Editor, "grub-editenv"), g.File, "list")
	if err != nil {
		return nil, err
	}
	return parseLines(out), nil
}

// Set implements Bootloader: `grub-editenv FILE set k=v …` then `unset` for removed names.
// GRUB's environment block is one 1 KiB write in place.
func (g Grub) Set(ctx context.Context, vars Env) error {
	if err := checkVars(vars); err != nil {
		return err
	}
	if err := checkGrubenv(g.File); err != nil {
		return err
	}
	setArgs, unsetArgs := []string{g.File, "set"}, []string{g.File, "unset"}
	for _, k := range sortedKeys(vars) {
		if vars[k] == "" {
			unsetArgs = append(unsetArgs, k)
		} else {
			setArgs = append(setArgs, k+"="+vars[k])
		}
	}
	if len(setArgs) > 2 {
		if _, err := run(ctx, nil, or(g.Editor, "grub-editenv"), setArgs...); err != nil {
			return err
		}
	}
	if len(unsetArgs) > 2 {
		if _, err := run(ctx, nil, or(g.Editor, "grub-editenv"), unsetArgs...); err != nil {
			return err
		}
	}
	return nil
}

const grubHeader = "# GRUB Environment Block\n"

func checkGrubenv(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("grubenv: %w", err)
	}
	defer f.Close()
	head := make([]byte, len(grubHeader))
	if _, err := io.ReadFull(f, head); err != nil || string(head) != grubHeader {
		return fmt.Errorf("grubenv %s is not a GRUB environment block", path)
	}
	return nil
}

// File keeps the environment as key=value lines in a file replaced atomically: for custom
// bootloaders that read such a file, and for the demo.
type File struct{ Path string }

// Get implements Bootloader.
func (f File) Get(ctx context.Context) (Env, error) {
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return nil, err
	}
	return parseLines(b), nil
}

// Set implements Bootloader.
func (f File) Set(ctx context.Context, vars Env) error {
	if err := checkVars(vars); err != nil {
		return err
	}
	env, err := f.Get(ctx)
	if errors.Is(err, os.ErrNotExist) {
		env, err = Env{}, nil
	}
	if err != nil {
		return err
	}
	for k, v := range vars {
		if v == "" {
			delete(env, k)
		} else {
			env[k] = v
		}
	}
	return durable.WriteFile(f.Path, []byte(formatLines(env)), 0o644)
}

// Command runs user hooks: GetArgv prints key=value lines; SetArgv reads key=value lines on
// stdin (an empty value means remove) and must apply them all or none.
type Command struct {
	GetArgv []string
	SetArgv []string
}

// Get implements Bootloader.
func (c Command) Get(ctx context.Context) (Env, error) {
	if len(c.GetArgv) == 0 {
		return nil, errors.New("slot.env_get is empty")
	}
	out, err := run(ctx, nil, c.GetArgv[0], c.GetArgv[1:]...)
	if err != nil {
		return nil, err
	}
	return parseLines(out), nil
}

// Set implements Bootloader.
func (c Command) Set(ctx context.Context, vars Env) error {
	if err := checkVars(vars); err != nil {
		return err
	}
	if len(c.SetArgv) == 0 {
		return errors.New("slot.env_set is empty")
	}
	_, err := run(ctx, strings.NewReader(formatLines(vars)), c.SetArgv[0], c.SetArgv[1:]...)
	return err
}

func run(ctx context.Context, stdin io.Reader, name string, args ...string) ([]byte, error) {
	res, err := otarun.Run(ctx, otarun.Spec{Argv: append([]string{name}, args...), Stdin: stdin, Timeout: toolTimeout})
	if err != nil {
		return nil, err
	}
	return res.Stdout, nil
}

func parseLines(b []byte) Env {
	env := Env{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && k != "" {
			env[k] = v
		}
	}
	return env
}

func formatLines(env Env) string {
	var sb strings.Builder
	for _, k := range sortedKeys(env) {
		sb.WriteString(k + "=" + env[k] + "\n")
	}
	return sb.String()
}

func sortedKeys(env Env) []string {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func or(s, def string) string {
	if s != "" {
		return s
	}
	return def
}
