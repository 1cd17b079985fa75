package e2e

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"optipick-webhooks/internal/optipicksim"
)

// TestOfflineContainerfileKeepsTheDockerfilesConventions: the image of make
// image-offline runs as the release image does, so Containerfile.offline
// has the same EXPOSE, ENV, HEALTHCHECK and ENTRYPOINT lines as the
// Dockerfile's final stage, the same user by number (distroless's nonroot
// is 65532), starts FROM scratch and puts the CA bundle where Go reads it.
// It needs no container engine.
func TestOfflineContainerfileKeepsTheDockerfilesConventions(t *testing.T) {
	final := func(name string) map[string][]string {
		text, err := os.ReadFile(filepath.Join("..", name))
		if err != nil {
			t.Fatal(err)
		}
		lines := map[string][]string{} // instruction → lines, of the last stage
		for _, line := range strings.Split(string(text), "\n") {
			instruction, _, _ := strings.Cut(line, " ")
			switch {
			case strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "":
			case instruction == "FROM":
				lines = map[string][]string{"FROM": {line}}
			default:
				lines[instruction] = append(lines[instruction], line)
			}
		}
		return lines
	}
	release, offline := final("Dockerfile"), final("Containerfile.offline")
	for _, instruction := range []string{"EXPOSE", "ENV", "HEALTHCHECK", "ENTRYPOINT"} {
		if len(release[instruction]) == 0 || !slices.Equal(release[instruction], offline[instruction]) {
			t.Errorf("%s: the Dockerfile has %q, Containerfile.offline %q", instruction, release[instruction], offline[instruction])
		}
	}
	if want := []string{"USER nonroot"}; !slices.Equal(release["USER"], want) {
		t.Errorf("the Dockerfile's USER is %q, not %q: the number below may be wrong", release["USER"], want)
	}
	for instruction, want := range map[string][]string{
		"FROM": {"FROM scratch"},
		"USER": {fmt.Sprintf("USER %d:%d", nonrootUID, nonrootUID)},
		"COPY": {"COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt", "COPY optipick-webhooks /optipick-webhooks"},
	} {
		if !slices.Equal(offline[instruction], want) {
			t.Errorf("Containerfile.offline's %s lines are %q, want %q", instruction, offline[instruction], want)
		}
	}
}

// TestOfflineImage builds the image with make image-offline under podman,
// from a CA bundle that holds this machine's CAs and one the test made, and
// runs it: the bundle is in the image byte for byte, the receiver runs as
// 65532, answers /healthz and its HEALTHCHECK, fetches a delivered
// optimization over https from an API whose certificate only the test's CA
// vouches for (so the binary reads the bundle where make put it: a scratch
// image has no other), and exits 0 on podman stop. make image-offline's own
// build context is emptied afterwards. Skipped where podman or make is
// missing, as on CI machines without them.
func TestOfflineImage(t *testing.T) {
	podman, err := exec.LookPath("podman")
	if err != nil {
		t.Skip("podman is not installed: the offline image is not built (Debian: apt-get install podman runc; docs/container.md)")
	}
	if out, err := exec.Command(podman, "info").CombinedOutput(); err != nil {
		t.Skipf("podman does not work here (podman info: %v): the offline image is not built\n%s", err, out)
	}
	makeBin, err := exec.LookPath("make")
	if err != nil {
		t.Skip("make is not installed: make image-offline cannot run")
	}

	// The simulated API over https, with httptest's certificate, which is
	// its own CA.
	sim, err := optipicksim.New(optipicksim.Config{APIKey: testAPIKey})
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewTLSServer(sim.Handler())
	t.Cleanup(func() { api.Close(); sim.Close() })
	testCA := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw})

	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle.pem")
	hostCAs, _ := os.ReadFile("/etc/ssl/certs/ca-certificates.crt") // none is fine
	if err := os.WriteFile(bundle, append(hostCAs, testCA...), 0o644); err != nil {
		t.Fatal(err)
	}
	image := fmt.Sprintf("localhost/optipick-webhooks-e2e:offline-%d", os.Getpid())
	context := filepath.Join(dir, "context")
	build := exec.Command(makeBin, "-C", "..", "--no-print-directory", "image-offline", "ENGINE=podman", "IMAGE="+image,
		"BINARY="+filepath.Join(dir, "optipick-webhooks"), "OFFLINE_CONTEXT="+context, "CA_BUNDLE="+bundle)
	t.Cleanup(func() { exec.Command(podman, "rmi", "-f", image).Run() })
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make image-offline: %v\n%s", err, out)
	}
	if _, err := os.Stat(context); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("make image-offline left its build context %s behind (%v)", context, err)
	}

	// What the image says of itself.
	out, err := exec.Command(podman, "image", "inspect", image).Output()
	if err != nil {
		t.Fatal(err)
	}
	var inspected []struct {
		Config struct {
			User         string
			Entrypoint   []string
			Env          []string
			ExposedPorts map[string]any
		}
		Healthcheck *struct{ Test []string }
	}
	if err := json.Unmarshal(out, &inspected); err != nil || len(inspected) != 1 {
		t.Fatalf("podman image inspect: %v\n%s", err, out)
	}
	config := inspected[0].Config
	if want := fmt.Sprintf("%d:%d", nonrootUID, nonrootUID); config.User != want {
		t.Errorf("image user %q, want %q", config.User, want)
	}
	if !slices.Equal(config.Entrypoint, []string{"/optipick-webhooks"}) || !slices.Contains(config.Env, "LOG_FORMAT=json") || config.ExposedPorts["8080/tcp"] == nil {
		t.Errorf("image config %+v: want the Dockerfile's ENTRYPOINT, ENV and EXPOSE", config)
	}
	if hc := inspected[0].Healthcheck; hc == nil || !slices.Equal(hc.Test, []string{"CMD", "/optipick-webhooks", "-healthcheck"}) {
		t.Errorf("image healthcheck %+v: want the binary's -healthcheck (podman keeps it only in the docker format)", hc)
	}

	// The bundle, as the image holds it.
	files := fmt.Sprintf("optipick-webhooks-e2e-files-%d", os.Getpid())
	if out, err := exec.Command(podman, "create", "--name", files, image).CombinedOutput(); err != nil {
		t.Fatalf("podman create: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command(podman, "rm", "-f", files).Run() })
	copied := filepath.Join(dir, "from-image.crt")
	if out, err := exec.Command(podman, "cp", files+":/etc/ssl/certs/ca-certificates.crt", copied).CombinedOutput(); err != nil {
		t.Fatalf("podman cp of the CA bundle: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(copied); !bytes.Equal(got, append(hostCAs, testCA...)) {
		t.Errorf("the image's /etc/ssl/certs/ca-certificates.crt (%d bytes) is not the bundle make was given (%d bytes)", len(got), len(hostCAs)+len(testCA))
	}

	// Run it on the host's network, with the ulimits of docs/container.md
	// (or this process's hard limits, if lower): podman's defaults may
	// exceed what a sandboxed host allows.
	port := freeTCPPort(t)
	name := fmt.Sprintf("optipick-webhooks-e2e-%d", os.Getpid())
	run := []string{"run", "--rm", "--network", "host"}
	if runtime.GOOS == "linux" {
		for _, l := range []struct {
			name     string
			resource int
			max      uint64
		}{{"nofile", syscall.RLIMIT_NOFILE, 20000}, {"nproc", 6 /* RLIMIT_NPROC on Linux */, 4096}} {
			var limit syscall.Rlimit
			if syscall.Getrlimit(l.resource, &limit) == nil {
				n := min(limit.Max, l.max)
				run = append(run, "--ulimit", fmt.Sprintf("%s=%d:%d", l.name, n, n))
			}
		}
	}
	if out, err := exec.Command(podman, slices.Concat(run, []string{"--name", name + "-probe", image, "-version"})...).CombinedOutput(); err != nil {
		if regexp.MustCompile(`(?i)rlimit|cgroup`).Match(out) {
			t.Skipf("podman built the image but cannot start a container here (see docs/container.md): %v\n%s", err, out)
		}
		t.Fatalf("podman run %s -version: %v\n%s", image, err, out)
	}
	env := receiverEnv(testSecret, testAPIKey, api.URL) // passed on by name: -e NAME
	env["PORT"] = port
	p := startReceiver(t, slices.Concat([]string{podman}, run, []string{"--name", name,
		"-e", "WEBHOOK_SECRET", "-e", "OPTIPICK_API_KEY", "-e", "OPTIPICK_API_URL", "-e", "PORT", image}), env)
	t.Cleanup(func() { exec.Command(podman, "rm", "-f", "-t", "0", name).Run() }) // before startReceiver's kill of the client

	resp, err := http.Get(p.URL + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz: %v %v", resp, err)
	}
	resp.Body.Close()
	if out, err := exec.Command(podman, "healthcheck", "run", name).CombinedOutput(); err != nil {
		t.Errorf("podman healthcheck run: %v\n%s", err, out)
	}
	if out, err := exec.Command(podman, "top", name, "user", "huser").Output(); err != nil || !regexp.MustCompile(fmt.Sprintf(`(?m)^%d\s+%d\s*$`, nonrootUID, nonrootUID)).Match(out) {
		t.Errorf("podman top: %v\n%s\nwant the receiver running as %d", err, out, nonrootUID)
	}

	id, err := optipicksim.Submit(t.Context(), api.Client(), api.URL, testAPIKey, "cluster", mustJSON(t, optipicksim.ExampleRequest()), true)
	if err != nil {
		t.Fatal(err)
	}
	if resp := p.post(t, delivery(t, testSecret, "/webhook/cluster", bodyFor(id))); resp.StatusCode != http.StatusOK {
		t.Fatalf("delivery: %d, want 200: the https fetch failed (is the CA bundle in the image?)", resp.StatusCode)
	}

	if out, err := exec.Command(podman, "stop", "-t", "20", name).CombinedOutput(); err != nil {
		t.Errorf("podman stop: %v\n%s", err, out)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Errorf("the container exited with %v after podman stop, want 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("the container did not exit within 30 s of podman stop")
	}
}

// freeTCPPort is a port free on loopback now.
func freeTCPPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
