// Command fleet is the fleet benchmark of `make bench`: one emulator process (`fieldota sim`), one
// process of N real agents (`fieldota sim fleet`), one `fieldota release` to their thing group
// with an exponential rollout and an abort criterion, some devices seeded to fail, watched with
// `fieldota rollout status --watch`. It measures the time from CreateJob to the last SUCCEEDED,
// the emulator's CPU time and peak RSS, and the MQTT messages per job execution (from the
// emulator's event stream), and writes them into BENCHMARKS.md between fleet markers.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fieldota/fieldota/test/jobsim"
)

func main() {
	devices := flag.Int("devices", 1000, "agents in the fleet")
	failEvery := flag.Int("fail-every", 50, "every K-th device fails its health check")
	out := flag.String("out", "BENCHMARKS.md", "report to update (\"\" = stdout only)")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	report, err := run(ctx, *devices, *failEvery)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet bench:", err)
		os.Exit(1)
	}
	fmt.Print(report)
	if *out != "" {
		if err := splice(*out, report); err != nil {
			fmt.Fprintln(os.Stderr, "fleet bench:", err)
			os.Exit(1)
		}
	}
}

const (
	beginMark = "<!-- fleet benchmark: written by go run ./test/bench/fleet -->"
	endMark   = "<!-- end of fleet benchmark -->"
)

// splice replaces the fleet section of the report file (or appends it).
func splice(path, section string) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	s := string(old)
	block := beginMark + "\n" + section + endMark + "\n"
	if i, j := strings.Index(s, beginMark), strings.Index(s, endMark); i >= 0 && j > i {
		s = s[:i] + block + s[j+len(endMark)+1:]
	} else {
		s = strings.TrimRight(s, "\n") + "\n\n" + block
	}
	return os.WriteFile(path, []byte(s), 0o644)
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func run(ctx context.Context, devices, failEvery int) (string, error) {
	dir, err := os.MkdirTemp("", "fieldota-fleet-bench-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "fieldota")
	if b, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/fieldota").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build: %v\n%s", err, b)
	}
	mqtt, api, s3addr := freeAddr(), freeAddr(), freeAddr()
	arts := filepath.Join(dir, "artifacts")
	events := filepath.Join(dir, "events.jsonl")
	if err := os.MkdirAll(arts, 0o755); err != nil {
		return "", err
	}
	const minute = time.Second // one emulator minute: the rollout rates count in these
	sim := exec.CommandContext(ctx, bin, "sim", "--mqtt", mqtt, "--http", api, "--s3", s3addr, "--artifacts", arts,
		"--minute", minute.String(), "--events", events)
	simLog, _ := os.Create(filepath.Join(dir, "sim.log"))
	sim.Stdout, sim.Stderr = simLog, simLog
	if err := sim.Start(); err != nil {
		return "", err
	}
	defer func() { _ = sim.Process.Kill(); _ = sim.Wait() }()
	apiURL, s3URL := "http://"+api, "http://"+s3addr
	if err := waitTCP(ctx, api); err != nil {
		return "", err
	}
	key := filepath.Join(dir, "release")
	if b, err := exec.CommandContext(ctx, bin, "keygen", "--out", key).CombinedOutput(); err != nil {
		return "", fmt.Errorf("keygen: %v %s", err, b)
	}
	// The fleet: its own process, so the emulator's CPU and memory are its own.
	fl := exec.CommandContext(ctx, bin, "sim", "fleet", "--devices", strconv.Itoa(devices), "--fail-every", strconv.Itoa(failEvery),
		"--broker", "tcp://"+mqtt, "--api", apiURL, "--s3", s3URL, "--bucket", "fleet-releases", "--key", key+".pub", "--dir", filepath.Join(dir, "devices"))
	flOut, err := fl.StdoutPipe()
	if err != nil {
		return "", err
	}
	fl.Stderr = simLog
	t0 := time.Now()
	if err := fl.Start(); err != nil {
		return "", err
	}
	defer func() { _ = fl.Process.Signal(os.Interrupt); _ = fl.Wait() }()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(flOut)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "agents connected") {
				ready <- sc.Text()
			}
		}
	}()
	var readyLine string
	select {
	case readyLine = <-ready:
	case <-ctx.Done():
		return "", errors.New("the fleet did not connect")
	}
	connectTime := time.Since(t0)

	payload := filepath.Join(dir, "app")
	if err := os.WriteFile(payload, []byte("#!/bin/true\nrelease 2.0.0\n"), 0o755); err != nil {
		return "", err
	}
	rel := exec.CommandContext(ctx, bin, "release", "--key", key+".key", "--file", payload, "--target", "binary", "--binary", "app",
		"--version", "2.0.0", "--bucket", "fleet-releases", "--job-id", "fleet-2-0-0", "--thing-group", "fleet",
		"--role-arn", "arn:aws:iam::123456789012:role/iot-s3-presign",
		"--exponential", "100:2:succeeded=100", "--abort", "FAILED:20:100",
		"--endpoint-url", apiURL, "--s3-endpoint-url", s3URL, "--region", "us-east-1")
	rel.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=AKIAFIELDOTABENCH000", "AWS_SECRET_ACCESS_KEY=bench", "AWS_EC2_METADATA_DISABLED=true")
	if b, err := rel.CombinedOutput(); err != nil {
		return "", fmt.Errorf("release: %v\n%s", err, b)
	}
	st := exec.CommandContext(ctx, bin, "rollout", "status", "fleet-2-0-0", "--watch", "--interval", "500ms",
		"--endpoint-url", apiURL, "--region", "us-east-1")
	st.Env = rel.Env
	statusOut, statusErr := st.CombinedOutput()
	statusCode := 0
	var ee *exec.ExitError
	if errors.As(statusErr, &ee) {
		statusCode = ee.ExitCode()
	} else if statusErr != nil {
		return "", statusErr
	}
	cpu, rss, err := procUsage(sim.Process.Pid)
	if err != nil {
		return "", err
	}
	m, err := measure(events, "fleet-2-0-0")
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## Fleet rollout: %d agents, one emulator (`go run ./test/bench/fleet`)\n\n", devices)
	fmt.Fprintf(&b, "Measured %s on %s (%d cores, %s). One `fieldota sim` process (emulator minute = %v), one `fieldota sim fleet` process running %d real agents (package `agent`, each with its own state directory, config and MQTT connection), every %dth seeded to fail its health check. `fieldota release --target binary --exponential 100:2:succeeded=100 --abort FAILED:20:100` to the thing group, watched with `fieldota rollout status --watch` (exit %d).\n\n",
		time.Now().UTC().Format("2006-01-02"), cpuModel(), runtime.NumCPU(), memTotal(), minute, devices, failEvery, statusCode)
	fmt.Fprintf(&b, "| measure | value |\n| --- | --- |\n")
	fmt.Fprintf(&b, "| agents connected (fleet start → all CONNACKed and subscribed) | %.1f s |\n", connectTime.Seconds())
	fmt.Fprintf(&b, "| CreateJob → last SUCCEEDED | **%.1f s** (goal ≤ 60 s) |\n", m.lastSucceeded.Seconds())
	fmt.Fprintf(&b, "| CreateJob → every execution terminal | %.1f s |\n", m.allTerminal.Seconds())
	fmt.Fprintf(&b, "| outcome | %s |\n", m.outcome)
	fmt.Fprintf(&b, "| emulator CPU time (user + system, whole run) | %.1f s |\n", cpu.Seconds())
	fmt.Fprintf(&b, "| emulator peak RSS (VmHWM) | %.0f MiB |\n", float64(rss)/(1<<20))
	fmt.Fprintf(&b, "| MQTT messages published by a device per execution (mean, SUCCEEDED executions) | **%.1f** (goal ≤ 10) |\n", m.devicePerExec)
	fmt.Fprintf(&b, "| MQTT messages published by the service per execution (answers + notify + notify-next) | %.1f |\n\n", m.servicePerExec)
	fmt.Fprintf(&b, "What one successful device publishes for one execution (mean per SUCCEEDED execution):\n\n| request | per execution |\n| --- | --- |\n")
	for _, r := range m.breakdown {
		fmt.Fprintf(&b, "| %s | %.2f |\n", r.name, r.mean)
	}
	fmt.Fprintf(&b, "\nThe accepted UpdateJobExecution requests by the status and stage they reported:\n\n| update | per execution |\n| --- | --- |\n")
	for _, r := range m.updates {
		fmt.Fprintf(&b, "| %s | %.2f |\n", r.name, r.mean)
	}
	if m.devicePerExec > 10 {
		fmt.Fprintf(&b, "\nAbove the goal of 10 messages: these are the agent's publishes (package agent, not the emulator): "+
			"it describes `$next` %.1f times per execution (after connecting, on each notify-next and after each job ends) where one or two would do, "+
			"it sends a second `stage=download` update (the 100 %% progress report) and then an update with a stale expectedVersion that is refused VersionMismatch "+
			"%.2f times per execution and resent (issue 12, item 1). Fixing both in the agent gives about 8.\n", m.perOp("DescribeJobExecution $next"), m.perOp("rejected: UpdateJobExecution VersionMismatch"))
	}
	fmt.Fprintf(&b, "\nFleet: %s\n\nLast status lines:\n\n```\n%s```\n\n", withoutStateDir(strings.TrimSpace(strings.TrimPrefix(readyLine, "fieldota sim fleet: "))), tail(string(statusOut), 6))
	return b.String(), nil
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n") + "\n"
}

func waitTCP(ctx context.Context, addr string) error {
	for ctx.Err() == nil {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return ctx.Err()
}

// procUsage reads a process's CPU time and peak RSS from /proc.
func procUsage(pid int) (time.Duration, int64, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	stt, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	cpu := time.Duration(ut+stt) * time.Second / hz
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	var rss int64
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			rss = kb << 10
		}
	}
	return cpu, rss, nil
}

// row is one line of a per-execution breakdown.
type row struct {
	name string
	mean float64
}

type measurement struct {
	lastSucceeded, allTerminal    time.Duration
	outcome                       string
	devicePerExec, servicePerExec float64
	breakdown, updates            []row
}

func (m measurement) perOp(name string) float64 {
	for _, r := range m.breakdown {
		if r.name == name {
			return r.mean
		}
	}
	return 0
}

// measure reads the emulator's event stream.
func measure(path, job string) (measurement, error) {
	var m measurement
	f, err := os.Open(path)
	if err != nil {
		return m, err
	}
	defer f.Close()
	var created, lastOK, lastEnd time.Time
	final := map[string]string{}
	perThing := map[string]map[string]int{} // thing → request kind → count
	updates := map[string]map[string]int{}  // thing → "status stage=…" of its accepted updates
	service := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev jobsim.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return m, err
		}
		switch ev.Kind {
		case jobsim.EventJobCreated:
			if ev.JobID == job {
				created = ev.Time
			}
		case jobsim.EventStatus, jobsim.EventUpdated:
			if ev.JobID != job {
				continue
			}
			if strings.Contains(ev.Detail, "device") || strings.Contains(ev.Detail, "start-next") {
				if updates[ev.Thing] == nil {
					updates[ev.Thing] = map[string]int{}
				}
				k := ev.Status
				if st := ev.StatusDetails["stage"]; st != "" {
					k += " stage=" + st
				}
				updates[ev.Thing][k]++
			}
			if ev.Kind == jobsim.EventUpdated {
				continue
			}
			if ev.Status == jobsim.StatusSucceeded {
				lastOK = ev.Time
			}
			if ev.Status != jobsim.StatusQueued && ev.Status != jobsim.StatusInProgress {
				lastEnd = ev.Time
				final[ev.Thing] = ev.Status
			}
		case jobsim.EventDeviceRequest, jobsim.EventRejected:
			service++ // the answer on /accepted or /rejected
			k := ev.Detail
			if ev.Kind == jobsim.EventRejected {
				k = "rejected: " + ev.Detail
			}
			op, _, _ := strings.Cut(k, " ")
			if strings.HasPrefix(k, "DescribeJobExecution $next") {
				op = "DescribeJobExecution $next"
			} else if strings.HasPrefix(k, "DescribeJobExecution") {
				op = "DescribeJobExecution <job>"
			} else if strings.HasPrefix(k, "rejected: ") {
				f := strings.Fields(k)
				op = "rejected: " + f[1]
				if len(f) > 3 {
					op += " " + strings.TrimSuffix(f[3], ":") // the error code
				}
			}
			if perThing[ev.Thing] == nil {
				perThing[ev.Thing] = map[string]int{}
			}
			perThing[ev.Thing][op]++
		case jobsim.EventNotify, jobsim.EventNotifyNext:
			service++
		}
	}
	if created.IsZero() {
		return m, errors.New("no job-created event")
	}
	m.lastSucceeded, m.allTerminal = lastOK.Sub(created), lastEnd.Sub(created)
	counts := map[string]int{}
	for _, s := range final {
		counts[s]++
	}
	var parts []string
	for s, n := range counts {
		parts = append(parts, fmt.Sprintf("%s %d", s, n))
	}
	sort.Strings(parts)
	m.outcome = strings.Join(parts, ", ")
	// Per SUCCEEDED execution: that device's publishes (one execution each).
	ok, total := 0, 0
	byOp := map[string]int{}
	for thing, ops := range perThing {
		if final[thing] != jobsim.StatusSucceeded {
			continue
		}
		ok++
		for op, n := range ops {
			byOp[op] += n
			total += n
		}
	}
	if ok == 0 {
		return m, errors.New("no execution succeeded")
	}
	m.devicePerExec = float64(total) / float64(ok)
	m.servicePerExec = float64(service) / float64(len(final))
	ops := make([]string, 0, len(byOp))
	for op := range byOp {
		ops = append(ops, op)
	}
	sort.Slice(ops, func(i, j int) bool { return byOp[ops[i]] > byOp[ops[j]] })
	for _, op := range ops {
		m.breakdown = append(m.breakdown, row{op, float64(byOp[op]) / float64(ok)})
	}
	byUpd := map[string]int{}
	for thing, u := range updates {
		if final[thing] != jobsim.StatusSucceeded {
			continue
		}
		for k, n := range u {
			byUpd[k] += n
		}
	}
	keys := make([]string, 0, len(byUpd))
	for k := range byUpd {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		m.updates = append(m.updates, row{k, float64(byUpd[k]) / float64(ok)})
	}

	return m, nil
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

func memTotal() string {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
		}
	}
	return "?"
}

// withoutStateDir drops the fleet's temporary state directory from its ready line: a machine path
// has no place in BENCHMARKS.md.
func withoutStateDir(line string) string {
	if i := strings.LastIndex(line, ", state under "); i >= 0 {
		return line[:i]
	}
	return line
}
