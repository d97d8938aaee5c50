//go:build device

package device

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fieldota/fieldota/agent/identity"
	"github.com/fieldota/fieldota/test/swtpm"
	"github.com/fieldota/fieldota/test/testpki"
)

// tpmHandle is where the board's identity key lives in its TPM.
const tpmHandle = "tpm:0x81000001"

// TestTPMIdentityGoodImageCommitted: the board carries a TPM 2.0 (QEMU's tpm-tis-device backed
// by swtpm, the guest kernel's tpm_tis driver, /dev/tpmrm0). On its first boot the agent
// provisions its MQTT identity inside it — the key made in the TPM at a persistent handle, the
// CSR signed by the emulator's CreateCertificateFromCsr through a host "factory station", the
// certificate installed — then reaches the emulator's mutual-TLS listener with that key, writes
// slot b, reboots, connects again from slot b with the same TPM key, and commits: SUCCEEDED.
// Afterwards the key is read back from the TPM's state on the host, and the whole disk is
// searched for a private key: there is none.
func TestTPMIdentityGoodImageCommitted(t *testing.T) {
	e := shared
	ports, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	tlsPort, factoryPort := ports[0], ports[1]
	pki := t.TempDir()
	ca, err := testpki.NewCA("device-in-a-box broker CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server("emulator")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := srv.WriteFiles(pki, "emulator")
	if err != nil {
		t.Fatal(err)
	}
	caPath, err := ca.WriteCA(pki)
	if err != nil {
		t.Fatal(err)
	}
	pristine := e.tpmDisk(t, tlsPort, factoryPort, caPath)

	s := newScenario(t, "--tls", fmt.Sprintf("127.0.0.1:%d", tlsPort), "--tls-cert", srvCert, "--tls-key", srvKey, "--client-ca", caPath)
	if out, err := exec.Command("cp", "--sparse=always", pristine, s.disk).CombinedOutput(); err != nil {
		t.Fatalf("copying the TPM disk: %v %s", err, out)
	}
	issued := s.factoryStation(t, factoryPort)
	tp := swtpm.StartForQEMU(t, filepath.Join(s.dir, "tpm-state"))
	s.extraQEMU = []string{"-chardev", "socket,id=chrtpm,path=" + tp.Ctrl,
		"-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis-device,tpmdev=tpm0"}

	s.powerOn()
	i := s.expectRunning("a", slotVersionA, 0)
	i = s.expect("fieldota-device: identity provisioned in the TPM", i, 2*time.Minute)
	i = s.expect("jobs: connected and subscribed", i, bootTimeout)
	s.createJob("tpm-good-v2")
	i = s.expect("trial boot set", i, jobTimeout)
	i = s.expectRunning("b", slotVersionB, i)
	s.expect("jobs: connected and subscribed", i, bootTimeout)
	ex := s.waitTerminal(jobTimeout)
	s.expectDetails(ex, "SUCCEEDED", map[string]string{"slot": "b", "version": slotVersionB})
	s.expectReportedOnce()
	if n := strings.Count(s.board.text(), "identity provisioned in the TPM"); n != 1 {
		t.Errorf("provisioned %d times (want once: slot b uses the same key)", n)
	}
	s.powerCut()
	tp.Stop()

	// The certificate the board got is for the key at the TPM's persistent handle.
	certPEM := issued()
	blk, _ := pem.Decode([]byte(certPEM))
	if blk == nil {
		t.Fatal("the factory station issued no certificate")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	host := swtpm.Start(t, tp.StateDir)
	ref, err := identity.Parse(tpmHandle, host.Socket)
	if err != nil {
		t.Fatal(err)
	}
	k, err := identity.Open(ref)
	if err != nil {
		t.Fatalf("the board's TPM holds no key at %s: %v", tpmHandle, err)
	}
	defer k.Close()
	if err := identity.MatchCertificate(cert, k.Public(), time.Now()); err != nil {
		t.Fatalf("the board's certificate is not for its TPM key: %v", err)
	}
	disk, err := os.ReadFile(s.disk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(disk, []byte("-----BEGIN CERTIFICATE-----")) {
		t.Fatal("no certificate on the disk: the search below would prove nothing")
	}
	for _, marker := range []string{"PRIVATE KEY-----", "BEGIN EC PARAMETERS"} {
		if bytes.Contains(disk, []byte(marker)) {
			t.Errorf("the board's disk holds %q", marker)
		}
	}
}

// tpmDisk builds the TPM board's images: slot a (v1) and v2 (served as tpm-good-v2), both with
// mqtt.key = the TPM handle, the certificate on the data partition, the mTLS endpoint and the
// first-boot provisioning step; and a pristine disk with slot a.
func (e *env) tpmDisk(t *testing.T, tlsPort, factoryPort int, caPath string) string {
	t.Helper()
	plain := fmt.Sprintf("endpoint = \"tcp://10.0.2.2:%d\"\n", e.mqttPort)
	tlsMQTT := fmt.Sprintf(`endpoint = "ssl://10.0.2.2:%d"
server_name = "localhost"
ca_file = "/etc/fieldota/broker-ca.pem"
cert_file = "/var/lib/fieldota/identity/device.pem.crt"
key = %q
`, tlsPort, tpmHandle)
	cfg := e.agentConfig(`[["/bin/true"]]`)
	if !strings.Contains(cfg, plain) {
		t.Fatalf("the guest config has no %q line to replace:\n%s", plain, cfg)
	}
	cfg = strings.Replace(cfg, plain, tlsMQTT, 1)
	here := filepath.Join(e.repo, "test", "device")
	dir := t.TempDir()
	var slotA string
	for _, im := range []struct{ name, version string }{{"tpm-slot-a-v1", slotVersionA}, {"tpm-good-v2", slotVersionB}} {
		extra := filepath.Join(dir, "extra-"+im.name)
		for p, content := range map[string]string{
			"etc/fieldota/agent.toml":    cfg,
			"etc/fieldota-version":       im.version + "\n",
			"etc/fieldota/s3port":        strconv.Itoa(e.s3Port) + "\n",
			"etc/fieldota/factory-port":  strconv.Itoa(factoryPort) + "\n",
			"etc/fieldota/release.pub":   mustRead(filepath.Join(e.dir, "release.pub")),
			"etc/fieldota/broker-ca.pem": mustRead(caPath),
			"etc/fieldota/first-boot":    mustRead(filepath.Join(here, "guest", "tpm-first-boot")),
			"usr/bin/fieldota-agent":     mustRead(filepath.Join(e.dir, "arm64", "fieldota-agent")),
			"usr/bin/loopfwd":            mustRead(filepath.Join(e.dir, "arm64", "loopfwd")),
		} {
			perm := os.FileMode(0o644)
			if strings.HasPrefix(p, "usr/bin/") || strings.HasSuffix(p, "first-boot") {
				perm = 0o755
			}
			if err := writeFile(filepath.Join(extra, p), content, perm); err != nil {
				t.Fatal(err)
			}
		}
		out := filepath.Join(e.artifacts, "bucket", im.name+".img")
		if im.name == "tpm-slot-a-v1" {
			out = filepath.Join(dir, im.name+".img")
			slotA = out
		}
		if _, err := e.run("slot", out, extra, "normal"); err != nil {
			t.Fatal(err)
		}
		e.images[im.name] = out
	}
	disk := filepath.Join(dir, "tpm-pristine.img")
	if _, err := e.run("disk", disk, slotA); err != nil {
		t.Fatal(err)
	}
	return disk
}

// factoryStation is the host side of provisioning on a production line: it takes the board's
// CSR over HTTP (the guest reaches it at 10.0.2.2), asks the emulator's CreateCertificateFromCsr
// (setAsActive, as `aws iot create-certificate-from-csr --set-as-active` does) and answers with
// that JSON. The returned func gives the certificate it issued.
func (s *scenario) factoryStation(t *testing.T, port int) func() string {
	t.Helper()
	var mu sync.Mutex
	var issued string
	mux := http.NewServeMux()
	mux.HandleFunc("POST /csr", func(w http.ResponseWriter, r *http.Request) {
		csr, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		out, err := s.api.CreateCertificateFromCsr(ctx, string(csr), true)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		mu.Lock()
		issued = out.CertificatePem
		mu.Unlock()
		s.t.Logf("factory station: issued %s for the board", out.CertificateID)
		_ = json.NewEncoder(w).Encode(out)
	})
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return func() string { mu.Lock(); defer mu.Unlock(); return issued }
}
