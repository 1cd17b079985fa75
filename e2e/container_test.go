package e2e

import (
	"debug/elf"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"optipick-webhooks/internal/optipicksim"
)

// nonrootUID is the user of gcr.io/distroless/static-debian12:nonroot.
const nonrootUID = 65532

// TestReleaseBinaryIsStatic: the image's final stage has no libc, so the
// binary must have no ELF interpreter and no dynamic section.
func TestReleaseBinaryIsStatic(t *testing.T) {
	f, err := elf.Open(receiverBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP || prog.Type == elf.PT_DYNAMIC {
			t.Errorf("the release binary has a %v program header: it is dynamically linked", prog.Type)
		}
	}
}

// TestReleaseBinaryRunsInAnEmptyRootAsNonroot runs the release binary as
// distroless/static runs it: as uid 65532, in a root file system that holds
// only the binary and /tmp (no shell, no /etc, no libc). It must start,
// answer /healthz and its -healthcheck mode, and accept a signed delivery
// that it fetches from the fake API over loopback.
func TestReleaseBinaryRunsInAnEmptyRootAsNonroot(t *testing.T) {
	chroot, err := exec.LookPath("chroot")
	if os.Geteuid() != 0 || err != nil {
		why := fmt.Sprintf("needs root (euid is %d) and chroot(8) (%v)", os.Geteuid(), err)
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must run the empty-root check, but it %s", why)
		}
		t.Skipf("the empty-root check %s", why)
	}

	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	binary, err := os.ReadFile(receiverBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "optipick-webhooks"), binary, 0o755); err != nil {
		t.Fatal(err)
	}
	inRoot := func(args ...string) []string {
		return append([]string{chroot, fmt.Sprintf("--userspec=%d:%d", nonrootUID, nonrootUID), root, "/optipick-webhooks"}, args...)
	}

	api := newSimAPI(t, optipicksim.Config{})
	id := api.optimize(t, "cluster", true)
	p := startReceiver(t, inRoot(), receiverEnv(testSecret, testAPIKey, api.URL))

	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("Uid:\t%d\t%d", nonrootUID, nonrootUID); !strings.Contains(string(status), want) {
		t.Errorf("the receiver does not run as %d:\n%s", nonrootUID, status)
	}

	resp, err := http.Get(p.URL + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz: %v %v", resp, err)
	}
	resp.Body.Close()

	port := strings.TrimPrefix(p.URL, "http://127.0.0.1:")
	for _, tc := range []struct {
		port string
		ok   bool
	}{{port, true}, {"1", false}} {
		cmd := exec.Command(inRoot("-healthcheck")[0], inRoot("-healthcheck")[1:]...)
		cmd.Env = []string{"PORT=" + tc.port}
		out, err := cmd.CombinedOutput()
		if (err == nil) != tc.ok {
			t.Errorf("-healthcheck with PORT=%s: %v %s, want success %v", tc.port, err, out, tc.ok)
		}
	}

	resp = p.post(t, delivery(t, testSecret, "/webhook/cluster", bodyFor(id)))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("delivery: %d, want 200", resp.StatusCode)
	}
	if got, want := api.getPaths(), []string{"/optimize/cluster/" + id}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("API answered GETs %v, want %v", got, want)
	}
}
