// Package identity runs the real fieldota-agent with its MQTT identity key inside swtpm (the
// default, cgo-free build) and inside a SoftHSM2 token (the pkcs11 build): provision (key made in
// the TPM/token, CSR, the emulator's CreateCertificateFromCsr, certificate installed), then a job
// over the emulator's mutual-TLS listener to SUCCEEDED, with no private key file anywhere; and
// the start failures (wrong PIN, missing token, empty TPM handle, no TPM) as clear messages.
package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fieldota/fieldota/agent/jobs"
	"github.com/fieldota/fieldota/test/jobsim"
	"github.com/fieldota/fieldota/test/softhsm"
	"github.com/fieldota/fieldota/test/swtpm"
	"github.com/fieldota/fieldota/test/testdoc"
	"github.com/fieldota/fieldota/test/testpki"
	"github.com/fieldota/fieldota/verify/sign"
)

// The two agent builds the README names: the static default and the PKCS#11 one (cgo).
var agentDefault, agentPKCS11 string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fieldota-identity-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	agentDefault, agentPKCS11 = filepath.Join(dir, "fieldota-agent"), filepath.Join(dir, "fieldota-agent-pkcs11")
	for _, b := range []struct {
		out string
		env []string
		tag []string
	}{
		{agentDefault, []string{"CGO_ENABLED=0"}, nil},
		{agentPKCS11, []string{"CGO_ENABLED=1"}, []string{"-tags", "pkcs11"}},
	} {
		args := append(append([]string{"build"}, b.tag...), "-o", b.out, "github.com/fieldota/fieldota/cmd/fieldota-agent")
		cmd := exec.Command("go", args...)
		cmd.Env = append(os.Environ(), b.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go %s: %v\n%s", strings.Join(args, " "), err, out)
			os.Exit(2)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

const thing = "dev1"

// env is the emulator with its mTLS listener, and one device directory.
type env struct {
	t          *testing.T
	sim        *jobsim.Sim
	api        *jobsim.Client
	dir        string // the device: config, certificate, state, app root
	artifacts  string
	caPath     string
	releaseKey crypto.Signer
	tmp        string   // the agent's TMPDIR: scanned for key files too
	extraEnv   []string // SOFTHSM2_CONF
	log        bytes.Buffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), tmp: t.TempDir()}
	e.artifacts = filepath.Join(t.TempDir(), "artifacts")
	if err := os.MkdirAll(filepath.Join(e.artifacts, "bucket"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The broker's own certificate (the device checks it against ca.crt); device certificates
	// come only from the emulator's CreateCertificateFromCsr.
	ca, err := testpki.NewCA("broker CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server("broker")
	if err != nil {
		t.Fatal(err)
	}
	sc, err := srv.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	sim, err := jobsim.Start(context.Background(), jobsim.Config{
		TLSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0", ArtifactDir: e.artifacts,
		TLS: &tls.Config{Certificates: []tls.Certificate{sc}, MinVersion: tls.VersionTLS12},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	e.sim, e.api = sim, &jobsim.Client{BaseURL: sim.HTTPURL()}
	if e.caPath, err = ca.WriteCA(e.dir); err != nil {
		t.Fatal(err)
	}
	if e.releaseKey, err = sign.GenerateKey("ecdsa-p256"); err != nil {
		t.Fatal(err)
	}
	if _, err := sign.WriteKeyPair(e.releaseKey, filepath.Join(t.TempDir(), "release.key"), filepath.Join(e.dir, "release.pub")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent output:\n%s", e.log.String())
		}
	})
	return e
}

// writeConfig writes the device's agent.toml with mqtt.key = key.
func (e *env) writeConfig(key, tpmDevice string) string {
	e.t.Helper()
	tpm := ""
	if tpmDevice != "" {
		tpm = fmt.Sprintf("tpm_device = %q\n", tpmDevice)
	}
	cfg := fmt.Sprintf(`thing_name = %q
state_dir = %q
compatible = ["board-rev-c"]
[mqtt]
endpoint = %q
ca_file = %q
cert_file = %q
key = %q
%sserver_name = "localhost"
[jobs]
request_timeout = "2s"
[verify]
keys = [%q]
[download]
allow_insecure_http = true
allowed_hosts = ["127.0.0.1"]
[files]
allowed_roots = [%q]
[log]
level = "debug"
`, thing, filepath.Join(e.dir, "state"), e.sim.TLSURL(), e.caPath, filepath.Join(e.dir, "device.pem.crt"), key, tpm,
		filepath.Join(e.dir, "release.pub"), filepath.Join(e.dir, "app"))
	p := filepath.Join(e.dir, "agent.toml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// agent runs one fieldota-agent command to its end.
func (e *env) agent(bin string, args ...string) (string, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, "--config", filepath.Join(e.dir, "agent.toml"))...)
	cmd.Env = append(append(os.Environ(), "TMPDIR="+e.tmp), e.extraEnv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	fmt.Fprintf(&e.log, "$ %s %s\n%s", filepath.Base(bin), strings.Join(args, " "), out.String())
	return out.String(), err
}

// provision is the factory step: key made inside the TPM/token, CSR out, the emulator's
// CreateCertificateFromCsr (as `aws iot create-certificate-from-csr --set-as-active` would),
// its JSON answer installed.
func (e *env) provision(bin string) {
	e.t.Helper()
	csrPath := filepath.Join(e.dir, "device.csr")
	if out, err := e.agent(bin, "provision", "csr", "--out", csrPath); err != nil {
		e.t.Fatalf("provision csr: %v\n%s", err, out)
	}
	csr, err := os.ReadFile(csrPath)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	created, err := e.api.CreateCertificateFromCsr(ctx, string(csr), true)
	if err != nil {
		e.t.Fatalf("CreateCertificateFromCsr: %v", err)
	}
	b, _ := json.Marshal(created)
	answer := filepath.Join(e.dir, "create-certificate-from-csr.json")
	if err := os.WriteFile(answer, b, 0o644); err != nil {
		e.t.Fatal(err)
	}
	if out, err := e.agent(bin, "provision", "install", answer); err != nil {
		e.t.Fatalf("provision install: %v\n%s", err, out)
	}
}

// runJob starts `fieldota-agent run`, queues a signed files job and waits for its end.
func (e *env) runJob(bin, jobID string) jobsim.JobExecution {
	e.t.Helper()
	payload := []byte("#!/bin/sh\necho identity in hardware\n")
	if err := os.WriteFile(filepath.Join(e.artifacts, "bucket", "app.sh"), payload, 0o644); err != nil {
		e.t.Fatal(err)
	}
	work := filepath.Join(e.dir, "app", "x")
	td := testdoc.For("app.sh", payload, "1.0")
	td.WorkDir = work
	doc, err := td.Signed(e.releaseKey)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", filepath.Join(e.dir, "agent.toml"))
	cmd.Env = append(append(os.Environ(), "TMPDIR="+e.tmp), e.extraEnv...)
	var out syncBuf
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		fmt.Fprintf(&e.log, "$ %s run\n%s", filepath.Base(bin), out.String())
	}()
	if _, err := e.sim.CreateJob(jobsim.CreateJobInput{JobID: jobID, Targets: []string{thing}, Document: doc}); err != nil {
		e.t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		ex, err := e.sim.DescribeJobExecution(jobID, thing, 0)
		if err == nil && jobs.Status(ex.Status).Terminal() {
			if got, err := os.ReadFile(filepath.Join(work, "app.sh")); err != nil || !bytes.Equal(got, payload) {
				e.t.Errorf("placed file: %q %v", got, err)
			}
			return ex
		}
		select {
		case err := <-done:
			done <- err
			e.t.Fatalf("agent exited: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s not terminal: %+v %v", jobID, ex, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// assertNoKeyFile walks the device's directories (config, certificate, state, app, the agent's
// TMPDIR, and the TPM's or token's own store) and fails on any PEM private key: the key exists
// only inside the TPM or the token.
func assertNoKeyFile(t *testing.T, roots ...string) {
	t.Helper()
	for _, root := range roots {
		_ = filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil || fi.IsDir() || !fi.Mode().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			for _, typ := range []string{"-----BEGIN PRIVATE KEY-----", "-----BEGIN EC PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN ENCRYPTED PRIVATE KEY-----"} {
				if bytes.Contains(b, []byte(typ)) {
					t.Errorf("a private key file exists on disk: %s", p)
				}
			}
			return nil
		})
	}
}

// status runs `fieldota-agent status` and returns its identity section.
func (e *env) status(bin string) (map[string]any, string) {
	e.t.Helper()
	out, err := e.agent(bin, "status")
	if err != nil {
		e.t.Fatalf("status: %v\n%s", err, out)
	}
	var st struct {
		Identity map[string]any `json:"identity"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		e.t.Fatalf("status output: %v\n%s", err, out)
	}
	return st.Identity, out
}

// TestKeyInTPMJobSucceedsNoKeyOnDisk: the identity key is made in swtpm at a persistent handle,
// the emulator signs its CSR, and the default (cgo-free) agent runs a job over mutual TLS to
// SUCCEEDED. No private key is ever written: the device directory holds the certificate only.
func TestKeyInTPMJobSucceedsNoKeyOnDisk(t *testing.T) {
	e := newEnv(t)
	tp := swtpm.Start(t, "")
	e.writeConfig("tpm:0x81000001", tp.Socket)
	e.provision(agentDefault)
	id, raw := e.status(agentDefault)
	key, _ := id["key"].(map[string]any)
	if key["kind"] != "tpm" || key["handle"] != "0x81000001" || key["tpm"] != tp.Socket {
		t.Fatalf("status identity: %s", raw)
	}
	if cert, _ := id["certificate"].(map[string]any); cert["subject"] != "CN="+thing {
		t.Fatalf("status certificate: %s", raw)
	}
	ex := e.runJob(agentDefault, "tpm-job")
	if ex.Status != "SUCCEEDED" {
		t.Fatalf("job %s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	assertNoKeyFile(t, e.dir, e.tmp, tp.StateDir)
}

// TestKeyInTPMKeyFileJobSucceeds: the TSS2 key-file form; the file on disk is a blob wrapped by
// this TPM's storage key, not a private key.
func TestKeyInTPMKeyFileJobSucceeds(t *testing.T) {
	e := newEnv(t)
	tp := swtpm.Start(t, "")
	keyFile := filepath.Join(e.dir, "device.tss2")
	e.writeConfig("tpm:"+keyFile, tp.Socket)
	e.provision(agentDefault)
	if b, err := os.ReadFile(keyFile); err != nil || !bytes.HasPrefix(b, []byte("-----BEGIN TSS2 PRIVATE KEY-----")) {
		t.Fatalf("TSS2 key file: %v\n%s", err, b)
	}
	ex := e.runJob(agentDefault, "tss2-job")
	if ex.Status != "SUCCEEDED" {
		t.Fatalf("job %s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	assertNoKeyFile(t, e.dir, e.tmp, tp.StateDir)
}

// TestKeyInSoftHSMJobSucceedsNoKeyOnDisk: the same story with the key generated on a SoftHSM2
// token by the pkcs11 build of the agent; status names token and object, never the PIN.
func TestKeyInSoftHSMJobSucceedsNoKeyOnDisk(t *testing.T) {
	e := newEnv(t)
	h := softhsm.New(t)
	h.InitToken(t, "fieldota", "271828")
	e.extraEnv = []string{h.Env()}
	pin := filepath.Join(e.dir, "pin")
	if err := os.WriteFile(pin, []byte("271828\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.writeConfig("pkcs11:token=fieldota;object=device?module-path="+softhsm.Module+"&pin-source=file:"+pin, "")
	e.provision(agentPKCS11)
	id, raw := e.status(agentPKCS11)
	key, _ := id["key"].(map[string]any)
	if key["kind"] != "pkcs11" || key["token"] != "fieldota" || key["object"] != "device" || strings.Contains(raw, "271828") {
		t.Fatalf("status identity: %s", raw)
	}
	ex := e.runJob(agentPKCS11, "pkcs11-job")
	if ex.Status != "SUCCEEDED" {
		t.Fatalf("job %s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	assertNoKeyFile(t, e.dir, e.tmp, h.TokenDir)
}

// TestStartFailsClearlyWithoutItsKey: a wrong PIN, a missing token, an empty TPM handle, no TPM
// at all, and a pkcs11 URI given to the cgo-free build: `fieldota-agent run` exits at once with a
// sentence naming the cause, and never panics.
func TestStartFailsClearlyWithoutItsKey(t *testing.T) {
	e := newEnv(t)
	h := softhsm.New(t)
	h.InitToken(t, "fieldota", "271828")
	e.extraEnv = []string{h.Env()}
	good, bad := filepath.Join(e.dir, "pin"), filepath.Join(e.dir, "wrong-pin")
	for p, v := range map[string]string{good: "271828\n", bad: "000000\n"} {
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	uri := func(token, pin string) string {
		return "pkcs11:token=" + token + ";object=device?module-path=" + softhsm.Module + "&pin-source=file:" + pin
	}
	// A key and certificate on the token, so that only the named fault is left.
	e.writeConfig(uri("fieldota", good), "")
	e.provision(agentPKCS11)
	tp := swtpm.Start(t, "")
	for _, tc := range []struct {
		name, bin, key, tpm, says string
	}{
		{"wrong PIN", agentPKCS11, uri("fieldota", bad), "", "refused the PIN"},
		{"missing token", agentPKCS11, uri("absent", good), "", `token "absent"`},
		{"empty TPM handle", agentDefault, "tpm:0x81000002", tp.Socket, "no TPM object at persistent handle 0x81000002"},
		{"no TPM", agentDefault, "tpm:0x81000001", filepath.Join(e.dir, "tpmrm0"), "no such file"},
		{"pkcs11 in the default build", agentDefault, uri("fieldota", good), "", "built without PKCS#11 support"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.writeConfig(tc.key, tc.tpm)
			start := time.Now()
			out, err := e.agent(tc.bin, "run")
			if err == nil {
				t.Fatalf("agent started without its key:\n%s", out)
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() <= 0 {
				t.Fatalf("agent ended with %v (want an exit code, not a signal):\n%s", err, out)
			}
			if !strings.Contains(out, tc.says) || !strings.Contains(out, "mqtt.key") {
				t.Fatalf("message does not say %q and name mqtt.key:\n%s", tc.says, out)
			}
			if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") || strings.Contains(out, "000000") {
				t.Fatalf("panic or PIN in the output:\n%s", out)
			}
			if d := time.Since(start); d > 20*time.Second {
				t.Fatalf("took %s to give up", d)
			}
			t.Logf("%s", strings.TrimSpace(out))
		})
	}
}

// syncBuf collects a running process's output.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestRotationNewKeyNewCertificateOldOneDeactivated follows docs/device-identity.md: a second
// key at a new handle, its certificate installed beside the first, the config switched, the old
// certificate set INACTIVE. The agent runs a job on the new identity; the old one no longer
// connects.
func TestRotationNewKeyNewCertificateOldOneDeactivated(t *testing.T) {
	e := newEnv(t)
	tp := swtpm.Start(t, "")
	e.writeConfig("tpm:0x81000001", tp.Socket)
	e.provision(agentDefault)
	old, _ := e.status(agentDefault)
	oldID := old["certificate"].(map[string]any)["certificateId"].(string)

	newCert := filepath.Join(e.dir, "device-2.pem.crt")
	csr := filepath.Join(e.dir, "device-2.csr")
	if out, err := e.agent(agentDefault, "provision", "csr", "--key", "tpm:0x81000002", "--out", csr); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	b, _ := os.ReadFile(csr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	created, err := e.api.CreateCertificateFromCsr(ctx, string(b), true)
	if err != nil {
		t.Fatal(err)
	}
	pemPath := filepath.Join(e.dir, "device-2.from-aws.pem")
	if err := os.WriteFile(pemPath, []byte(created.CertificatePem), 0o644); err != nil {
		t.Fatal(err)
	}
	// The old key's certificate must not be installable for the new key, nor the reverse.
	if out, err := e.agent(agentDefault, "provision", "install", "--key", "tpm:0x81000001", "--cert-out", newCert, pemPath); err == nil || !strings.Contains(out, "does not match") {
		t.Fatalf("installed a certificate for another key: %v\n%s", err, out)
	}
	if out, err := e.agent(agentDefault, "provision", "install", "--key", "tpm:0x81000002", "--cert-out", newCert, pemPath); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	cfg := e.writeConfig("tpm:0x81000002", tp.Socket)
	body, _ := os.ReadFile(cfg)
	if err := os.WriteFile(cfg, bytes.Replace(body, []byte(filepath.Join(e.dir, "device.pem.crt")), []byte(newCert), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.api.UpdateCertificate(ctx, oldID, "INACTIVE"); err != nil {
		t.Fatal(err)
	}
	if ex := e.runJob(agentDefault, "after-rotation"); ex.Status != "SUCCEEDED" {
		t.Fatalf("job %s %v", ex.Status, ex.StatusDetails.DetailsMap)
	}
	// The old identity is refused by the broker now.
	e.writeConfig("tpm:0x81000001", tp.Socket)
	cmd := exec.Command(agentDefault, "run", "--config", cfg)
	var out syncBuf
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(out.String(), "tls: bad certificate") {
		if time.Now().After(deadline) {
			t.Fatalf("the deactivated certificate was not refused:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.Contains(out.String(), "jobs: connected") {
		t.Fatalf("connected with a deactivated certificate:\n%s", out.String())
	}
}
