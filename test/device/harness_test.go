//go:build device

package device

import (
	"bufio"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/fieldota/fieldota/test/testdoc"
	"github.com/fieldota/fieldota/verify/sign"
)

const (
	thing    = "dev1"
	uBootBin = "/usr/lib/u-boot/qemu_arm64/u-boot.bin"
	// slotVersionA is what the pristine board runs from slot a; every update installs v2.
	slotVersionA = "1.0.0"
	slotVersionB = "2.0.0"
	// boardName is the board's compatibility name (config `compatible`, documents' `compatible`).
	boardName = "fieldota-qemu-arm64"
	// appDir is the data partition's directory for files jobs (on the board; the partition is
	// mounted at /data), and appBinary the binary that binary jobs swap — outside appDir: the
	// agent refuses allowed roots that hold the binary it manages (a files job could replace it).
	appDir    = "/data/app"
	appBinary = "/data/bin/hello"
)

// appBinaryV1 is the binary at appBinary on the pristine disk; binary jobs replace it.
const appBinaryV1 = "#!/bin/sh\necho hello 1.0.0\n"

// env is what every scenario shares: host and guest binaries, the release key, the slot images
// (slot a baked into the pristine disk, the v2 images served by the emulator) and the ports baked
// into the guests' configuration.
type env struct {
	dir, repo, script      string
	fieldota               string
	key                    crypto.Signer
	mqttPort, httpPort     int
	s3Port                 int
	artifacts              string
	pristine, base         string
	images                 map[string]string // name -> path under artifacts/bucket
	agentBin, fwdBin, pub  string            // the arm64 agent and forwarder, the release key
	timesMu                sync.Mutex
	times                  map[string]time.Duration
	setupTime, buildImages time.Duration
}

var shared *env

func TestMain(m *testing.M) {
	start := time.Now()
	e, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "device test setup:", err)
		os.Exit(1)
	}
	e.setupTime = time.Since(start)
	shared = e
	code := m.Run()
	e.printTimes(time.Since(start))
	if code == 0 && os.Getenv("FIELDOTA_DEVICE_KEEP") == "" {
		os.RemoveAll(e.dir)
	} else {
		fmt.Fprintln(os.Stderr, "device test files kept in", e.dir)
	}
	os.Exit(code)
}

func (e *env) record(name string, d time.Duration) {
	e.timesMu.Lock()
	defer e.timesMu.Unlock()
	e.times[name] = d
}

func (e *env) printTimes(total time.Duration) {
	e.timesMu.Lock()
	defer e.timesMu.Unlock()
	names := make([]string, 0, len(e.times))
	for n := range e.times {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Printf("device timings: setup (binaries, key, images, disk) %.1fs, of which images+disk %.1fs\n",
		e.setupTime.Seconds(), e.buildImages.Seconds())
	for _, n := range names {
		fmt.Printf("device timings: %-60s %6.1fs\n", n, e.times[n].Seconds())
	}
	fmt.Printf("device timings: total %.1fs\n", total.Seconds())
}

// setup builds everything once. Missing tools fail loudly: the device tests never skip.
func setup() (*env, error) {
	for _, tool := range []string{"qemu-system-aarch64", "mkimage", "mkenvimage", "mkfs.vfat", "mcopy", "mkfs.ext4", "sfdisk", "fw_printenv", "cpio", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err2 := os.Stat("/usr/sbin/" + tool); err2 != nil {
				return nil, fmt.Errorf("%s not found: run scripts/device-deps.sh (as root to install)", tool)
			}
		}
	}
	if _, err := os.Stat(uBootBin); err != nil {
		return nil, fmt.Errorf("%s missing: run scripts/device-deps.sh (u-boot-qemu)", uBootBin)
	}
	_, file, _, _ := runtime.Caller(0)
	here := filepath.Dir(file)
	e := &env{repo: filepath.Join(here, "..", ".."), script: filepath.Join(here, "build-image.sh"),
		images: map[string]string{}, times: map[string]time.Duration{}}
	dir, err := os.MkdirTemp("", "fieldota-device-")
	if err != nil {
		return nil, err
	}
	e.dir = dir
	os.Setenv("PATH", os.Getenv("PATH")+":/usr/sbin:/sbin")

	// Host CLI (emulator); guest agent and forwarder for linux/arm64, CGO off.
	e.fieldota = filepath.Join(dir, "fieldota")
	if err := goBuild(e.repo, nil, "", e.fieldota, "./cmd/fieldota"); err != nil {
		return nil, err
	}
	arm := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64"}
	agentBin, fwdBin := filepath.Join(dir, "arm64", "fieldota-agent"), filepath.Join(dir, "arm64", "loopfwd")
	if err := goBuild(e.repo, arm, agentTags, agentBin, "./cmd/fieldota-agent"); err != nil {
		return nil, err
	}
	if err := goBuild(e.repo, arm, "", fwdBin, "./test/device/cmd/loopfwd"); err != nil {
		return nil, err
	}
	key, err := sign.GenerateKey("ecdsa-p256")
	if err != nil {
		return nil, err
	}
	e.key = key
	pub := filepath.Join(dir, "release.pub")
	if _, err := sign.WriteKeyPair(key, filepath.Join(dir, "release.key"), pub); err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	e.mqttPort, e.httpPort, e.s3Port = ports[0], ports[1], ports[2]

	t0 := time.Now()
	if e.base, err = e.run("base"); err != nil {
		return nil, err
	}
	e.base = strings.TrimSpace(lastLine(e.base))
	e.artifacts = filepath.Join(dir, "artifacts")
	if err := os.MkdirAll(filepath.Join(e.artifacts, "bucket"), 0o755); err != nil {
		return nil, err
	}
	e.agentBin, e.fwdBin, e.pub = agentBin, fwdBin, pub
	for _, im := range []slotImage{
		{"slot-a-v1", slotVersionA, "normal", `[["/bin/true"]]`},
		{"good-v2", slotVersionB, "normal", `[["/bin/true"]]`},
		{"unhealthy-v2", slotVersionB, "normal", `[["/bin/false"]]`},
		{"noboot-v2", slotVersionB, "noboot", `[["/bin/true"]]`},
	} {
		out := filepath.Join(e.artifacts, "bucket", im.name+".img")
		if im.name == "slot-a-v1" {
			out = filepath.Join(dir, "slot-a-v1.img")
		}
		if err := e.buildSlot(im, agentBin, out); err != nil {
			return nil, err
		}
		e.images[im.name] = out
	}
	e.pristine = filepath.Join(dir, "pristine.img")
	if err := e.buildDisk(e.pristine, e.images["slot-a-v1"]); err != nil {
		return nil, err
	}
	e.buildImages = time.Since(t0)
	return e, nil
}

// slotImage is one root slot: its version, its init (normal | noboot), its health checks.
type slotImage struct {
	name, version, kind string
	health              string
}

// buildSlot makes the ext4 image of a root slot with agent as its fieldota-agent.
func (e *env) buildSlot(im slotImage, agent, out string) error {
	extra := filepath.Join(e.dir, "extra-"+filepath.Base(out))
	files := map[string]string{
		"etc/fieldota/agent.toml":  e.agentConfig(im.health),
		"etc/fieldota-version":     im.version + "\n",
		"etc/fieldota/s3port":      strconv.Itoa(e.s3Port) + "\n",
		"etc/fieldota/release.pub": mustRead(e.pub),
	}
	for p, content := range files {
		if err := writeFile(filepath.Join(extra, p), content, 0o644); err != nil {
			return err
		}
	}
	for src, dst := range map[string]string{agent: "usr/bin/fieldota-agent", e.fwdBin: "usr/bin/loopfwd"} {
		if err := copyFile(src, filepath.Join(extra, dst), 0o755); err != nil {
			return err
		}
	}
	_, err := e.run("slot", out, extra, im.kind)
	return err
}

// buildDisk makes a pristine disk with slotA in slot a and the data partition's app directory
// holding the binary that binary jobs swap.
func (e *env) buildDisk(out, slotA string) error {
	data := filepath.Join(e.dir, "data-skeleton")
	if err := writeFile(filepath.Join(data, "bin", "hello"), appBinaryV1, 0o755); err != nil {
		return err
	}
	_, err := e.run("disk", out, slotA, data)
	return err
}

// agentConfig is the guest's /etc/fieldota/agent.toml: the emulator on the host through QEMU's
// gateway, the uboot backend unchanged (fw_setenv on /etc/fw_env.config → /boot/uboot.env),
// files jobs under appDir and binary jobs swapping appBinary on the data partition. Downloads
// come only from the emulator's host (the presigned URLs name its loopback address, which
// loopfwd relays in the guest).
func (e *env) agentConfig(health string) string {
	return fmt.Sprintf(`thing_name = %q
state_dir = "/var/lib/fieldota"
compatible = [%q]

[mqtt]
endpoint = "tcp://10.0.2.2:%d"
keep_alive = "10s"

[jobs]
request_timeout = "10s"
progress_min_interval = "2s"

[verify]
keys = ["/etc/fieldota/release.pub"]

[download]
allow_insecure_http = true
allowed_hosts = ["127.0.0.1"]

[files]
allowed_roots = [%q]

[swap]
target = %q
restart = ["/bin/true"]
probation = "2s"
probe_interval = "1s"

[slot]
bootloader = "uboot"
a = "/dev/vda2"
b = "/dev/vda3"
reboot = ["/sbin/fieldota-reboot"]
detect = "cmdline"
fw_env_config = "/etc/fw_env.config"
reboot_timeout = "1m"

[health]
commands = %s
timeout = "15s"
interval = "1s"

[log]
level = "debug"
`, thing, boardName, e.mqttPort, appDir, appBinary, health)
}

func (e *env) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.script, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build-image.sh %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// agentTags are the tags `make build` gives the agent (AGENT_TAGS): the board runs the binary we
// ship. A fault-injection build adds its own tag to them (a second -tags flag, or GOFLAGS,
// would replace them instead).
const agentTags = "nethttpomithttp2"

// goBuild builds pkg into out with the given build tags ("" for none).
func goBuild(repo string, envv []string, tags, out, pkg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-tags", tags, "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), envv...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// --- one scenario: a fresh copy of the disk, its own emulator, one job ---

// emulator is a running `fieldota sim` (a child process) or jobsim in this process: the lines
// it printed (one per job event, as `fieldota sim` prints them) and a way to stop it.
type emulator interface {
	lines() []string
	stop()
}

type scenario struct {
	t     *testing.T
	e     *env
	dir   string
	disk  string
	sim   emulator
	api   *jobsim.Client
	job   string
	board *proc
	boots int
	start time.Time
	// extraQEMU is appended to QEMU's arguments at every power-on (another device, a TPM…).
	extraQEMU []string
	// recordLog, when set, attaches the disk through QEMU's blklogwrites driver, which logs every
	// write (and flush) the guest makes to it into this file (docs/power-loss.md).
	recordLog string
}

// scenarioOpts are what a scenario can change; the zero value is the default board.
type scenarioOpts struct {
	simArgs []string // extra `fieldota sim` flags
	// inProcess runs the emulator inside the test (jobsim.Start) instead of `fieldota sim`, so
	// that onEvent sees each job event synchronously, before the device hears of it.
	inProcess bool
	onEvent   func(*jobsim.Sim, jobsim.Event)
	// disk is the image the scenario starts from (default: the pristine disk).
	disk string
}

func newScenario(t *testing.T, simArgs ...string) *scenario {
	return newScenarioWith(t, scenarioOpts{simArgs: simArgs})
}

func newScenarioWith(t *testing.T, o scenarioOpts) *scenario {
	t.Helper()
	e := shared
	s := &scenario{t: t, e: e, dir: filepath.Join(e.dir, t.Name()), start: time.Now()}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s.disk = filepath.Join(s.dir, "disk.img")
	from := o.disk
	if from == "" {
		from = e.pristine
	}
	if out, err := exec.Command("cp", "--sparse=always", from, s.disk).CombinedOutput(); err != nil {
		t.Fatalf("copying the disk: %v %s", err, out)
	}
	if o.inProcess {
		s.sim = startInProcessSim(t, e, o.onEvent)
	} else {
		args := append([]string{"sim", "--mqtt", fmt.Sprintf("127.0.0.1:%d", e.mqttPort),
			"--http", fmt.Sprintf("127.0.0.1:%d", e.httpPort), "--s3", fmt.Sprintf("127.0.0.1:%d", e.s3Port),
			"--artifacts", e.artifacts}, o.simArgs...)
		p := startProc(t, filepath.Join(s.dir, "sim.log"), e.fieldota, args...)
		if _, err := p.waitLine("fieldota sim: ready", 0, 30*time.Second); err != nil {
			t.Fatalf("emulator did not start: %v\n%s", err, p.text())
		}
		s.sim = p
	}
	s.api = &jobsim.Client{BaseURL: fmt.Sprintf("http://127.0.0.1:%d", e.httpPort)}
	t.Cleanup(func() {
		if s.board != nil {
			s.board.kill()
		}
		s.sim.stop()
		e.record(t.Name(), time.Since(s.start))
		t.Logf("%s took %.1fs, %s", t.Name(), time.Since(s.start).Seconds(), plural(s.boots, "power-on", "power-ons"))
		if t.Failed() {
			t.Logf("console: %s\nemulator: %s", filepath.Join(s.dir, "console-*.log"), filepath.Join(s.dir, "sim.log"))
		}
	})
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// inProcessSim is jobsim running in the test process, on the ports baked into the guests.
type inProcessSim struct {
	sim *jobsim.Sim
	mu  sync.Mutex
	buf []string
	log *os.File
}

func startInProcessSim(t *testing.T, e *env, onEvent func(*jobsim.Sim, jobsim.Event)) *inProcessSim {
	t.Helper()
	logf, err := os.Create(filepath.Join(e.dir, t.Name(), "sim.log"))
	if err != nil {
		t.Fatal(err)
	}
	p := &inProcessSim{log: logf}
	var sim *jobsim.Sim
	var simMu sync.Mutex // OnEvent may run before Start returns (never here, but cheap)
	cfg := jobsim.Config{
		MQTTAddr: fmt.Sprintf("127.0.0.1:%d", e.mqttPort), HTTPAddr: fmt.Sprintf("127.0.0.1:%d", e.httpPort),
		S3Addr: fmt.Sprintf("127.0.0.1:%d", e.s3Port), ArtifactDir: e.artifacts,
		OnEvent: func(ev jobsim.Event) {
			line := ev.String()
			p.mu.Lock()
			p.buf = append(p.buf, line)
			fmt.Fprintln(p.log, line)
			p.mu.Unlock()
			simMu.Lock()
			s := sim
			simMu.Unlock()
			if onEvent != nil && s != nil {
				onEvent(s, ev)
			}
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The ports were just freed by the previous scenario's emulator: retry briefly.
	for attempt := 0; ; attempt++ {
		sim, err = jobsim.Start(ctx, cfg)
		if err == nil || attempt == 20 {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("emulator: %v", err)
	}
	simMu.Lock()
	p.sim = sim
	simMu.Unlock()
	return p
}

func (p *inProcessSim) lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.buf...)
}

func (p *inProcessSim) stop() {
	_ = p.sim.Close()
	p.log.Close()
}

// powerOn starts QEMU on the scenario's disk: a fresh boot after a power cut or the first one.
func (s *scenario) powerOn() *proc {
	s.t.Helper()
	s.boots++
	log := filepath.Join(s.dir, fmt.Sprintf("console-%d.log", s.boots))
	args := []string{"-machine", "virt", "-accel", "tcg", "-cpu", "cortex-a57", "-m", "512", "-smp", "1", "-nographic",
		"-bios", uBootBin,
		"-drive", "if=pflash,format=raw,index=1,readonly=on,file=" + filepath.Join(s.e.base, "flash1.img")}
	if s.recordLog != "" {
		// The disk under a write log (QEMU's blklogwrites, the dm-log-writes format): sector size
		// 512 = the virtio disk's logical block size, so the guest's requests are logged as they
		// are (the driver requires every request to be aligned to it). A fresh log per power-on.
		if err := os.WriteFile(s.recordLog, nil, 0o644); err != nil {
			s.t.Fatal(err)
		}
		args = append(args,
			"-blockdev", "driver=file,node-name=disk0,filename="+s.disk,
			"-blockdev", "driver=file,node-name=wlog0,filename="+s.recordLog,
			"-blockdev", "driver=blklogwrites,node-name=d0,file=disk0,log=wlog0,log-sector-size=512",
			"-device", "virtio-blk-device,drive=d0")
	} else {
		args = append(args, "-drive", "if=none,id=d0,format=raw,file="+s.disk, "-device", "virtio-blk-device,drive=d0")
	}
	args = append(args, "-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0")
	args = append(args, s.extraQEMU...)
	s.board = startProc(s.t, log, "qemu-system-aarch64", args...)
	return s.board
}

// powerCut kills QEMU with SIGKILL: whatever the guest had not written is lost.
func (s *scenario) powerCut() {
	s.t.Helper()
	s.board.kill()
	s.t.Logf("power cut after %.1fs", time.Since(s.start).Seconds())
}

// expect waits for a console line containing want, from line index from on; it returns the index
// after the match.
func (s *scenario) expect(want string, from int, timeout time.Duration) int {
	s.t.Helper()
	i, err := s.board.waitLine(want, from, timeout)
	if err != nil {
		s.t.Fatalf("console: waiting for %q: %v\n--- last console lines ---\n%s", want, err, s.board.tail(40))
	}
	return i
}

// createJob queues a slot job for the named v2 image, signed with the release key.
func (s *scenario) createJob(image string) {
	s.t.Helper()
	s.job = "device-" + strings.ReplaceAll(s.t.Name(), "/", "-")
	s.createJobFor(s.job, s.e.slotDoc(image))
}

// slotDoc is the signed document of a slot job for the named v2 image.
func (e *env) slotDoc(image string) testdoc.Doc {
	path := e.images[image]
	digest, size, err := sign.DigestFile(path)
	if err != nil {
		panic(err)
	}
	return testdoc.Doc{Target: "slot", Name: filepath.Base(path), Size: size, SHA256: digest,
		Version: slotVersionB, Compatible: []string{boardName}}
}

// createJobFor queues job id with the document d, signed with the release key; the payload
// must be under the emulator's artifacts as bucket/<d.Name>.
func (s *scenario) createJobFor(id string, d testdoc.Doc) {
	s.t.Helper()
	doc, err := d.Signed(s.e.key)
	if err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.api.CreateJob(ctx, jobsim.CreateJobInput{JobID: id, Targets: []string{thing}, Document: doc}); err != nil {
		s.t.Fatalf("CreateJob %s: %v", id, err)
	}
}

// waitTerminal polls the control API until the execution leaves QUEUED/IN_PROGRESS.
func (s *scenario) waitTerminal(timeout time.Duration) jobsim.JobExecution {
	s.t.Helper()
	return s.waitTerminalOf(s.job, timeout)
}

func (s *scenario) waitTerminalOf(job string, timeout time.Duration) jobsim.JobExecution {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	var last jobsim.JobExecution
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ex, err := s.api.DescribeJobExecution(ctx, job, thing, 0)
		cancel()
		if err == nil {
			last = ex
			if ex.Status != "QUEUED" && ex.Status != "IN_PROGRESS" {
				s.t.Logf("job %s reached a terminal status after %.1fs", job, time.Since(s.start).Seconds())
				return ex
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	s.t.Fatalf("job %s not terminal after %v (last: %s)\n--- console ---\n%s", job, timeout, outcome(last), s.board.tail(60))
	return last
}

// outcome prints an execution's end as a sentence, e.g. "status FAILED, reason
// HEALTH_CHECK_FAILED, rolled back, slot b, version 2.0.0": the logs of scenarios meant to fail
// say what happened without looking like a failed test.
func outcome(ex jobsim.JobExecution) string {
	d := ex.StatusDetails.DetailsMap
	parts := []string{"status " + ex.Status}
	if r := d["reason"]; r != "" {
		parts = append(parts, "reason "+r)
	}
	if d["rolledBack"] == "true" {
		parts = append(parts, "rolled back")
	}
	for _, k := range []string{"stage", "slot", "version"} {
		if v := d[k]; v != "" {
			parts = append(parts, k+" "+v)
		}
	}
	return strings.Join(parts, ", ")
}

// waitProgress polls the control API until the execution's statusDetails report a download
// progress of at least pct percent.
func (s *scenario) waitProgress(pct int, timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ex, err := s.api.DescribeJobExecution(ctx, s.job, thing, 0)
		cancel()
		if err == nil {
			if p, err := strconv.Atoi(ex.StatusDetails.DetailsMap["progress"]); err == nil && p >= pct {
				s.t.Logf("download progress %d%% after %.1fs", p, time.Since(s.start).Seconds())
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("download progress never reached %d%%\n%s", pct, s.board.tail(40))
}

// terminalReports counts the emulator's lines recording the device moving the execution to a
// terminal status, and refusals of a report after that: "reported once" means 1 and 0.
func (s *scenario) terminalReports() (reports, refused int) {
	for _, l := range s.sim.lines() {
		if strings.Contains(l, " status job="+s.job+" ") && strings.Contains(l, "by device") &&
			(strings.Contains(l, "→ SUCCEEDED") || strings.Contains(l, "→ FAILED")) {
			reports++
		}
		if strings.Contains(l, " rejected ") && (strings.Contains(l, "InvalidStateTransition") || strings.Contains(l, "TerminalStateReached")) {
			refused++
		}
	}
	return
}

// expectReportedOnce waits a little for a duplicate to show up, then checks there is none.
func (s *scenario) expectReportedOnce() {
	s.t.Helper()
	time.Sleep(3 * time.Second)
	if n, refused := s.terminalReports(); n != 1 || refused != 0 {
		s.t.Errorf("terminal report made %d times (want 1), %d refused late reports (want 0)\n%s", n, refused, strings.Join(s.sim.lines(), "\n"))
	}
}

// bootEnv reads the A/B variables from the redundant env (two files) on the disk's FAT
// partition with the host's fw_printenv, which picks the current copy as U-Boot's script does
// (the board must be off).
func (s *scenario) bootEnv() map[string]string {
	s.t.Helper()
	var cfgText string
	for _, name := range []string{"uboot.env", "uboot-redund.env"} {
		f := filepath.Join(s.dir, name)
		os.Remove(f)
		if out, err := exec.Command("mcopy", "-n", "-i", s.disk+"@@1M", "::/"+name, f).CombinedOutput(); err != nil {
			s.t.Fatalf("mcopy %s: %v %s", name, err, out)
		}
		cfgText += f + " 0x0 0x4000\n"
	}
	cfg := filepath.Join(s.dir, "fw_env.config")
	if err := os.WriteFile(cfg, []byte(cfgText), 0o644); err != nil {
		s.t.Fatal(err)
	}
	out, err := exec.Command("fw_printenv", "-c", cfg).CombinedOutput()
	if err != nil {
		s.t.Fatalf("fw_printenv: %v %s", err, out)
	}
	env := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			env[k] = v
		}
	}
	return env
}

// expectRunning checks that the board came up in user space on slot with version, from console
// line from on, and returns the index after it.
func (s *scenario) expectRunning(slot, version string, from int) int {
	s.t.Helper()
	return s.expect(fmt.Sprintf("fieldota-device: slot=%s version=%s up", slot, version), from, 90*time.Second)
}

// expectDetails checks the terminal execution.
func (s *scenario) expectDetails(ex jobsim.JobExecution, status string, want map[string]string) {
	s.t.Helper()
	ok := ex.Status == status
	if !ok {
		s.t.Errorf("the job ended with status %s, want %s (%s)", ex.Status, status, outcome(ex))
	}
	for k, v := range want {
		if got := ex.StatusDetails.DetailsMap[k]; got != v {
			ok = false
			s.t.Errorf("statusDetails[%s] = %q, want %q (%s)", k, got, v, outcome(ex))
		}
	}
	if ok {
		s.t.Logf("outcome as expected: %s", outcome(ex))
	}
}

// expectEnv checks variables of the boot environment.
func (s *scenario) expectEnv(want map[string]string) {
	s.t.Helper()
	env := s.bootEnv()
	for k, v := range want {
		if env[k] != v {
			s.t.Errorf("boot env %s = %q, want %q (all: %v)", k, env[k], v, env)
		}
	}
}

// --- processes with a line-watched output ---

type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	mu     sync.Mutex
	buf    []string
	change chan struct{}
	done   chan struct{}
	once   sync.Once
}

func startProc(t *testing.T, logPath, name string, args ...string) *proc {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	p := &proc{t: t, cmd: exec.Command(name, args...), change: make(chan struct{}, 1), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.cmd.Wait()
		pw.Close()
	}()
	go func() {
		defer close(p.done)
		defer logf.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			fmt.Fprintf(logf, "%s %s\n", time.Now().UTC().Format("15:04:05.000"), line)
			p.mu.Lock()
			p.buf = append(p.buf, line)
			p.mu.Unlock()
			select {
			case p.change <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(p.kill)
	return p
}

func (p *proc) lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.buf...)
}

func (p *proc) text() string { return strings.Join(p.lines(), "\n") }

func (p *proc) tail(n int) string {
	l := p.lines()
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

var errExited = errors.New("process exited")

// waitLine waits for a line containing want at index >= from; it returns the index after it.
func (p *proc) waitLine(want string, from int, timeout time.Duration) (int, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		l := p.lines()
		for i := from; i < len(l); i++ {
			if strings.Contains(l[i], want) {
				return i + 1, nil
			}
		}
		select {
		case <-p.change:
		case <-p.done:
			l := p.lines()
			for i := from; i < len(l); i++ {
				if strings.Contains(l[i], want) {
					return i + 1, nil
				}
			}
			return 0, errExited
		case <-timer.C:
			return 0, fmt.Errorf("timeout after %v", timeout)
		}
	}
}

// kill is SIGKILL and wait (a power cut for QEMU).
func (p *proc) kill() {
	p.once.Do(func() {
		if p.cmd.Process != nil {
			p.cmd.Process.Signal(syscall.SIGKILL)
		}
		<-p.done
	})
}

// stop asks politely first (the emulator), then kills.
func (p *proc) stop() {
	p.once.Do(func() {
		if p.cmd.Process != nil {
			p.cmd.Process.Signal(syscall.SIGTERM)
		}
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Signal(syscall.SIGKILL)
			<-p.done
		}
	})
}

// --- small file helpers ---

func writeFile(path, content string, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), perm)
}

func copyFile(src, dst string, perm os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return writeFile(dst, string(b), perm)
}

func mustRead(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

// tearEnvCopy overwrites the middle of one env file on the FAT partition with garbage, as a
// power cut in the middle of writing that copy would leave it (its CRC no longer matches).
func (s *scenario) tearEnvCopy(name string) {
	s.t.Helper()
	f := filepath.Join(s.dir, "torn-"+name)
	os.Remove(f)
	if out, err := exec.Command("mcopy", "-n", "-i", s.disk+"@@1M", "::/"+name, f).CombinedOutput(); err != nil {
		s.t.Fatalf("mcopy %s: %v %s", name, err, out)
	}
	b, err := os.ReadFile(f)
	if err != nil {
		s.t.Fatal(err)
	}
	for i := 8; i < 64; i++ {
		b[i] ^= 0x5a
	}
	if err := os.WriteFile(f, b, 0o644); err != nil {
		s.t.Fatal(err)
	}
	if out, err := exec.Command("mcopy", "-o", "-i", s.disk+"@@1M", f, "::/"+name).CombinedOutput(); err != nil {
		s.t.Fatalf("mcopy back %s: %v %s", name, err, out)
	}
}
