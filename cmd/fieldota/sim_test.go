package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldota/fieldota/test/mosquitto"
	"github.com/fieldota/fieldota/test/testpki"
)

// simLines is a goroutine-safe writer that hands out the emulator's output line by line.
type simLines struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	all   strings.Builder
	lines chan string
}

func (w *simLines) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all.Write(p)
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil {
			w.buf.WriteString(line)
			return len(p), nil
		}
		select {
		case w.lines <- strings.TrimSpace(line):
		default:
		}
	}
}

func (w *simLines) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

// simWaitLine returns the part after prefix of the first line containing it.
func simWaitLine(t *testing.T, w *simLines, prefix string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l := <-w.lines:
			if _, after, ok := strings.Cut(l, prefix); ok {
				return strings.Fields(after)[0]
			}
		case <-timeout:
			t.Fatalf("no %q in the emulator's output:\n%s", prefix, w.String())
		}
	}
}

func simCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		return out.String() + err.Error(), exitCode(err)
	}
	return out.String(), 0
}

// TestSimServeAndControlCommands runs `fieldota sim` and drives a job through its control
// subcommands while a raw MQTT device takes it; the emulator prints each event and stops cleanly.
func TestSimServeAndControlCommands(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bucket"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bucket", "fw.bin"), []byte("firmware"), 0o644); err != nil {
		t.Fatal(err)
	}
	docPath := filepath.Join(t.TempDir(), "doc.json")
	doc := `{"operation":"install","files":{"url":"${aws:iot:s3-presigned-url:https://s3.us-east-1.amazonaws.com/bucket/fw.bin}"}}`
	if err := os.WriteFile(docPath, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}

	out := &simLines{lines: make(chan string, 256)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		root := newRoot()
		root.SetOut(out)
		root.SetErr(out)
		root.SetArgs([]string{"sim", "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0", "--s3", "127.0.0.1:0",
			"--artifacts", dir, "--minute", "200ms"})
		done <- root.ExecuteContext(ctx)
	}()
	mqttURL := simWaitLine(t, out, "MQTT ")
	api := simWaitLine(t, out, "control API ")

	if o, code := simCLI(t, "sim", "create-job", "--api", api, "--file", docPath, "--job-id", "j1", "--target", "dev1",
		"--expires-in", "120", "--in-progress-timeout", "5", "--retry", "FAILED:1"); code != 0 || !strings.Contains(o, `"jobArn"`) {
		t.Fatalf("create-job: exit %d\n%s", code, o)
	}

	opts := paho.NewClientOptions().AddBroker(mqttURL).SetClientID("dev1").SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("device connect: %v", tok.Error())
	}
	defer c.Disconnect(50)
	got := make(chan []byte, 1)
	c.Subscribe("$aws/things/dev1/jobs/start-next/accepted", 1, func(_ paho.Client, m paho.Message) { got <- m.Payload() }).WaitTimeout(5 * time.Second)
	c.Publish("$aws/things/dev1/jobs/start-next", 1, false, `{"clientToken":"x"}`).WaitTimeout(5 * time.Second)
	var reply struct {
		Execution struct {
			JobDocument struct {
				Files struct{ URL string }
			}
		}
	}
	select {
	case p := <-got:
		if err := json.Unmarshal(p, &reply); err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no start-next answer; emulator output:\n%s", out.String())
	}
	resp, err := http.Get(reply.Execution.JobDocument.Files.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "firmware" {
		t.Fatalf("artifact through the presigned URL: %d %q", resp.StatusCode, body)
	}

	if o, code := simCLI(t, "sim", "describe", "--api", api, "j1"); code != 0 || !strings.Contains(o, `"numberOfInProgressThings": 1`) {
		t.Fatalf("describe: exit %d\n%s", code, o)
	}
	if o, code := simCLI(t, "sim", "describe-execution", "--api", api, "j1", "dev1"); code != 0 || !strings.Contains(o, `"status": "IN_PROGRESS"`) {
		t.Fatalf("describe-execution: exit %d\n%s", code, o)
	}
	if o, code := simCLI(t, "sim", "list-executions", "--api", api, "--job-id", "j1"); code != 0 || !strings.Contains(o, "thing/dev1") {
		t.Fatalf("list-executions: exit %d\n%s", code, o)
	}
	if o, code := simCLI(t, "sim", "delete", "--api", api, "j1"); code != 1 || !strings.Contains(o, "InvalidStateTransitionException") {
		t.Fatalf("delete of a running job without --force: exit %d\n%s", code, o)
	}
	if o, code := simCLI(t, "sim", "cancel", "--api", api, "j1", "--force", "--reason-code", "OPERATOR"); code != 0 {
		t.Fatalf("cancel --force: exit %d\n%s", code, o)
	}
	if o, code := simCLI(t, "sim", "delete", "--api", api, "j1"); code != 0 {
		t.Fatalf("delete: exit %d\n%s", code, o)
	}
	if o, code := simCLI(t, "sim", "describe", "--api", api, "j1"); code != 1 || !strings.Contains(o, "ResourceNotFoundException") {
		t.Fatalf("describe of a deleted job: exit %d\n%s", code, o)
	}
	if o, code := simCLI(t, "sim", "create-job", "--api", api, "--job-id", "x", "--target", "dev1"); code != 2 {
		t.Fatalf("create-job without --file: exit %d\n%s", code, o)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("sim did not stop cleanly: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sim did not stop")
	}
	log := out.String()
	for _, want := range []string{"job-created job=j1", "status job=j1 thing=dev1 execution=1 status=IN_PROGRESS",
		"job-canceled job=j1", "status=CANCELED", "job-deleted job=j1", "fieldota sim: stopped"} {
		if !strings.Contains(log, want) {
			t.Errorf("emulator output lacks %q:\n%s", want, log)
		}
	}
	if o, code := simCLI(t, "sim", "describe", "--api", api, "j1"); code != 2 {
		t.Fatalf("describe against a stopped emulator: exit %d\n%s", code, o)
	}
}

// simStart runs `fieldota sim args…` until the test ends and returns its output.
func simStart(t *testing.T, args ...string) *simLines {
	t.Helper()
	out := &simLines{lines: make(chan string, 256)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		root := newRoot()
		root.SetOut(out)
		root.SetErr(out)
		root.SetArgs(append([]string{"sim"}, args...))
		done <- root.ExecuteContext(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("sim: %v\n%s", err, out.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("sim did not stop")
		}
	})
	return out
}

// simNextJob asks for $next over MQTT and returns the job id in the answer.
func simNextJob(t *testing.T, url, thing string, tc *tls.Config) string {
	t.Helper()
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(thing).SetTLSConfig(tc).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", url, tok.Error())
	}
	defer c.Disconnect(50)
	got := make(chan []byte, 1)
	topic := "$aws/things/" + thing + "/jobs/$next/get"
	c.Subscribe(topic+"/accepted", 1, func(_ paho.Client, m paho.Message) { got <- m.Payload() }).WaitTimeout(5 * time.Second)
	c.Publish(topic, 1, false, `{}`).WaitTimeout(5 * time.Second)
	var reply struct{ Execution struct{ JobID string } }
	select {
	case p := <-got:
		json.Unmarshal(p, &reply)
	case <-time.After(5 * time.Second):
		t.Fatalf("no $next answer from %s", url)
	}
	return reply.Execution.JobID
}

func simWriteJob(t *testing.T, api, jobID, thing string) {
	t.Helper()
	docPath := filepath.Join(t.TempDir(), "doc.json")
	if err := os.WriteFile(docPath, []byte(`{"operation":"install"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if o, code := simCLI(t, "sim", "create-job", "--api", api, "--file", docPath, "--job-id", jobID, "--target", thing); code != 0 {
		t.Fatalf("create-job: exit %d\n%s", code, o)
	}
}

// TestSimServesMutualTLS: --tls with server certificate and client CA; the device's certificate
// CN is its thing name.
func TestSimServesMutualTLS(t *testing.T) {
	ca, err := testpki.NewCA("sim test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, _ := ca.Server("sim")
	certPath, keyPath, err := srv.WriteFiles(dir, "server")
	if err != nil {
		t.Fatal(err)
	}
	caPath, _ := ca.WriteCA(dir)
	out := simStart(t, "serve", "--mqtt", "", "--tls", "127.0.0.1:0", "--tls-cert", certPath, "--tls-key", keyPath,
		"--client-ca", caPath, "--http", "127.0.0.1:0", "--s3", "")
	url := simWaitLine(t, out, "mutual TLS ")
	api := simWaitLine(t, out, "control API ")
	simWriteJob(t, api, "j-tls", "dev1")
	p, _ := ca.Client("dev1")
	cert, _ := p.TLSCertificate()
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.Pool(), NextProtos: []string{"x-amzn-mqtt-ca"}}
	if got := simNextJob(t, url, "dev1", tc); got != "j-tls" {
		t.Fatalf("$next over mutual TLS: %q", got)
	}
	if o, code := simCLI(t, "sim", "--tls", "127.0.0.1:0", "--s3", ""); code != 2 {
		t.Fatalf("--tls without certificates: exit %d\n%s", code, o)
	}
}

// TestSimAttachesToMosquitto: --external-broker with the emulator's client certificate.
func TestSimAttachesToMosquitto(t *testing.T) {
	ca, err := testpki.NewCA("sim test CA")
	if err != nil {
		t.Fatal(err)
	}
	b := mosquitto.Start(t, ca, mosquitto.Options{})
	dir := t.TempDir()
	admin, _ := ca.Client(b.Admin())
	certPath, keyPath, err := admin.WriteFiles(dir, "jobsim")
	if err != nil {
		t.Fatal(err)
	}
	caPath, _ := ca.WriteCA(dir)
	out := simStart(t, "--external-broker", b.URL(), "--external-cert", certPath, "--external-key", keyPath,
		"--external-ca", caPath, "--http", "127.0.0.1:0", "--s3", "")
	api := simWaitLine(t, out, "control API ")
	simWriteJob(t, api, "j-ext", "dev1")
	if got := simNextJob(t, b.URL(), "dev1", b.ClientTLS("dev1")); got != "j-ext" {
		t.Fatalf("$next through mosquitto: %q", got)
	}
}
