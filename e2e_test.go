package main

// Tests of the built binary, started as a user starts it.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce   sync.Once
	builtBinary string
	buildErr    error
	buildDir    string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// receiverBinary builds the receiver once per test run, as `make build`
// does: static, trimmed, stripped.
func receiverBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "optipick-webhooks-test-"); buildErr != nil {
			return
		}
		builtBinary = filepath.Join(buildDir, "optipick-webhooks")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", builtBinary, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBinary
}

// process is a started receiver binary.
type process struct {
	cmd    *exec.Cmd
	URL    string // http://127.0.0.1:port
	logs   *syncBuffer
	lines  chan map[string]any
	exited chan error
}

// startReceiver runs argv (the binary, possibly behind a wrapper such as
// chroot) with env and waits for its "listening" line. It is killed at the
// end of the test if still running.
func startReceiver(t *testing.T, argv []string, env map[string]string) *process {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LOG_FORMAT=json"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, logs: &syncBuffer{}, lines: make(chan map[string]any, 1000), exited: make(chan error, 1)}
	cmd.Stderr = p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		defer close(p.lines)
		scanner := bufio.NewScanner(stdout)
		scanner.Buffer(make([]byte, 64<<10), 4<<20)
		for scanner.Scan() {
			p.logs.Write(append(scanner.Bytes(), '\n'))
			var line map[string]any
			if json.Unmarshal(scanner.Bytes(), &line) == nil {
				select {
				case p.lines <- line:
				default: // nobody is waiting for lines this far on
				}
			}
		}
	}()
	go func() {
		<-scanned
		p.exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-scanned
		assertNoSecrets(t, p.logs.String())
		if t.Failed() {
			t.Logf("receiver output:\n%s", p.logs)
		}
	})

	listening := p.waitFor(t, "listening", 15*time.Second)
	_, port, err := net.SplitHostPort(fmt.Sprint(listening["addr"]))
	if err != nil {
		t.Fatalf("listening line %v: %v", listening, err)
	}
	p.URL = "http://127.0.0.1:" + port
	return p
}

// waitFor returns the next log line whose msg is msg.
func (p *process) waitFor(t *testing.T, msg string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("receiver exited before logging %q", msg)
			}
			if line["msg"] == msg {
				return line
			}
		case <-deadline:
			t.Fatalf("receiver did not log %q within %v", msg, timeout)
		}
	}
}

// post sends req to the receiver over TCP.
func (p *process) post(t *testing.T, req *http.Request) *http.Response {
	t.Helper()
	resp, err := http.DefaultClient.Do(onTCP(p, req))
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestBinaryAnswersABattery: the built binary, configured through its
// environment, answers genuine, forged, stale, malformed and hostile
// deliveries as documented, and the API sees exactly the genuine ones.
func TestBinaryAnswersABattery(t *testing.T) {
	api := &fakeAPI{}
	apiServer := httptest.NewServer(api)
	defer apiServer.Close()
	p := startReceiver(t, []string{receiverBinary(t)}, map[string]string{
		"WEBHOOK_SECRET":   testSecret + "," + secondSecret,
		"OPTIPICK_API_KEY": testAPIKey,
		"OPTIPICK_API_URL": apiServer.URL,
		"PORT":             "0",
	})

	body := requestBody(testRequestID)
	stale := signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_stale", time.Now().Add(-6*time.Minute))
	for _, tc := range []struct {
		name       string
		req        *http.Request
		wantStatus int
	}{
		{"genuine cluster", signedDelivery(t, testSecret, "/webhook/cluster", body), 200},
		{"genuine route, second secret", signedDelivery(t, secondSecret, "/webhook/route", requestBody("674f5c1e2b8a4d0012ab0002")), 200},
		{"genuine on /webhook", signedDelivery(t, testSecret, "/webhook", requestBody("674f5c1e2b8a4d0012ab0003")), 200},
		{"forged", signedDelivery(t, wrongSecret, "/webhook/cluster", body), 401},
		{"stale", stale, 401},
		{"unsigned", httptest.NewRequest(http.MethodPost, "/webhook/cluster", bytes.NewReader(body)), 401},
		{"malformed", signedDelivery(t, testSecret, "/webhook/route", []byte(`{"request`)), 400},
		{"hostile id", signedDelivery(t, testSecret, "/webhook/route", []byte(`{"request_id":"../../admin"}`)), 400},
		{"oversized", signedDelivery(t, testSecret, "/webhook/route", bytes.Repeat([]byte("a"), 2<<20)), 413},
		{"wrong method", httptest.NewRequest(http.MethodGet, "/webhook/route", nil), 405},
		{"unknown path", signedDelivery(t, testSecret, "/webhooks/cluster", body), 404},
		{"unclean path", signedDelivery(t, testSecret, "/webhook//cluster", body), 404},
	} {
		resp := p.post(t, tc.req)
		if resp.StatusCode != tc.wantStatus {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.wantStatus)
		}
		if tc.wantStatus == 400 && resp.Header.Get("webhook-delivery") != "abort-message" {
			t.Errorf("%s: no abort-message header", tc.name)
		}
	}
	api.assertCalls(t, []apiCall{
		{Path: "/optimize/cluster/" + testRequestID, APIKey: testAPIKey},
		{Path: "/optimize/route/674f5c1e2b8a4d0012ab0002", APIKey: testAPIKey},
		{Path: "/optimize/cluster/674f5c1e2b8a4d0012ab0003", APIKey: testAPIKey},
	})
}

// TestSIGTERMDrainsInFlightDeliveries: SIGTERM while a delivery waits on a
// slow API lets it finish with 200, refuses new connections, and exits 0.
func TestSIGTERMDrainsInFlightDeliveries(t *testing.T) {
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseAPI := func() { releaseOnce.Do(func() { close(release) }) }
	defer releaseAPI()
	api := &fakeAPI{respond: func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		writeClusterResult(w, testRequestID)
	}}
	apiServer := httptest.NewServer(api)
	defer apiServer.Close()
	p := startReceiver(t, []string{receiverBinary(t)}, map[string]string{
		"WEBHOOK_SECRET":   testSecret,
		"OPTIPICK_API_KEY": testAPIKey,
		"OPTIPICK_API_URL": apiServer.URL,
		"PORT":             "0",
	})

	answered := make(chan int, 1)
	go func() {
		resp, err := http.DefaultClient.Do(onTCP(p, signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))))
		if err != nil {
			t.Errorf("in-flight delivery: %v", err)
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the delivery never reached the API")
	}

	signalled := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, "shutting down: draining in-flight deliveries", 5*time.Second)
	refused := false
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(p.URL, "http://"), time.Second)
		if err != nil {
			refused = true
			break
		}
		conn.Close()
	}
	if !refused {
		t.Error("still accepting new connections while draining")
	}

	time.Sleep(500 * time.Millisecond) // the API is slow, and the receiver waits for it
	releaseAPI()
	select {
	case code := <-answered:
		if code != http.StatusOK {
			t.Errorf("in-flight delivery got %d, want 200", code)
		}
	case <-time.After(drainTimeout):
		t.Fatal("in-flight delivery got no answer")
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Errorf("exit: %v, want status 0", err)
		}
	case <-time.After(drainTimeout):
		t.Fatal("the receiver did not exit")
	}
	if took := time.Since(signalled); took > drainTimeout {
		t.Errorf("took %v from SIGTERM to exit, past the %v drain deadline", took, drainTimeout)
	}
}

// onTCP addresses a test request to the process.
func onTCP(p *process, req *http.Request) *http.Request {
	target, _ := http.NewRequest(req.Method, p.URL+req.URL.Path, req.Body)
	target.Header = req.Header
	target.ContentLength = req.ContentLength
	return target
}
