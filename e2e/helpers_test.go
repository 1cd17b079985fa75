// Package e2e tests the built receiver binary as a user runs it: started
// from its environment, against the offline OptiPick simulator, in an empty
// root as the container runs it. The receiver's own files, at the module
// root, stand alone without these tests.
package e2e

import (
	"bufio"
	"bytes"
	"encoding/base64"
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
	"sync/atomic"
	"testing"
	"time"

	"optipick-webhooks/internal/optipicksim"
)

// Secrets and a key made for these tests only.
var (
	testSecret   = "whsec_" + base64.StdEncoding.EncodeToString([]byte("optipick-webhooks e2e secret 1!!"))
	secondSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("optipick-webhooks e2e secret 2!!"))
	wrongSecret  = "whsec_" + base64.StdEncoding.EncodeToString([]byte("a secret nobody configured......"))
)

const testAPIKey = "e2e-api-key-7c2d0a"

// builtVersion is injected into the receiver binary, as make build does.
const builtVersion = "v0.0.0-e2e"

// drainTimeout is the receiver's: deliveryDeadline (10 s) plus 5 s.
const drainTimeout = 15 * time.Second

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
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -X main.version="+builtVersion, "-o", builtBinary, ".")
		cmd.Dir = ".." // the module root
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
	cmd       *exec.Cmd
	URL       string          // http://127.0.0.1:port
	listening map[string]any  // its "listening" log line
	stdout    strings.Builder // written by one goroutine until scanned is closed
	stderr    bytes.Buffer    // written by exec until the process is waited for
	lines     chan map[string]any
	exited    chan error
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
	p := &process{cmd: cmd, lines: make(chan map[string]any, 1000), exited: make(chan error, 1)}
	cmd.Stderr = &p.stderr
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
			p.stdout.Write(append(scanner.Bytes(), '\n'))
			var line map[string]any
			if json.Unmarshal(scanner.Bytes(), &line) == nil {
				select {
				case p.lines <- line:
				default: // nobody is waiting for lines this far on
				}
			}
		}
	}()
	waited := make(chan struct{})
	go func() {
		<-scanned
		err := cmd.Wait()
		close(waited)
		p.exited <- err
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-waited
		output := p.stdout.String() + p.stderr.String()
		assertNoSecrets(t, output)
		if t.Failed() {
			t.Logf("receiver output:\n%s", output)
		}
	})

	listening := p.waitFor(t, "listening", 15*time.Second)
	_, port, err := net.SplitHostPort(fmt.Sprint(listening["addr"]))
	if err != nil {
		t.Fatalf("listening line %v: %v", listening, err)
	}
	p.URL, p.listening = "http://127.0.0.1:"+port, listening
	return p
}

// receiverEnv configures a receiver on a free port.
func receiverEnv(secrets, apiKey, apiURL string) map[string]string {
	return map[string]string{"WEBHOOK_SECRET": secrets, "OPTIPICK_API_KEY": apiKey, "OPTIPICK_API_URL": apiURL, "PORT": "0"}
}

// waitFor returns the next log line whose msg is msg.
func (p *process) waitFor(t *testing.T, msg string, timeout time.Duration) map[string]any {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			t.Fatalf("receiver did not log %q within %v", msg, timeout)
		case line, open := <-p.lines:
			switch {
			case !open:
				t.Fatalf("receiver exited before logging %q", msg)
			case line["msg"] == msg:
				return line
			}
		}
	}
}

// post sends req, built with signedDelivery, to the receiver over TCP.
func (p *process) post(t *testing.T, req *http.Request) *http.Response {
	t.Helper()
	resp, err := http.DefaultClient.Do(p.onTCP(req))
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// onTCP addresses a test request to the process.
func (p *process) onTCP(req *http.Request) *http.Request {
	target, _ := http.NewRequest(req.Method, p.URL+req.URL.Path, req.Body)
	target.Header = req.Header
	target.ContentLength = req.ContentLength
	return target
}

// simAPI is the offline simulator serving the OptiPick API, recording the
// GETs it answers; gate, when set, runs before each.
type simAPI struct {
	*optipicksim.Simulator
	URL string

	mu     sync.Mutex
	gets   []string // paths, in order
	gate   func(r *http.Request)
	apiKey string
}

func newSimAPI(t *testing.T, cfg optipicksim.Config) *simAPI {
	t.Helper()
	if cfg.APIKey == "" {
		cfg.APIKey = testAPIKey
	}
	sim, err := optipicksim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	api := &simAPI{Simulator: sim, apiKey: cfg.APIKey}
	handler := sim.Handler()
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		api.mu.Lock()
		gate := api.gate
		if r.Method == http.MethodGet {
			api.gets = append(api.gets, r.URL.Path)
		}
		api.mu.Unlock()
		if gate != nil && r.Method == http.MethodGet {
			gate(r)
		}
		handler.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		server.Close()
		sim.Close()
	})
	api.URL = server.URL
	return api
}

func (a *simAPI) setGate(gate func(r *http.Request)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gate = gate
}

func (a *simAPI) getPaths() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.gets...)
}

// optimize starts an optimization of kind for the Example warehouse and
// returns its request_id; synchronous=false makes the simulator deliver it.
func (a *simAPI) optimize(t *testing.T, kind string, synchronous bool) string {
	t.Helper()
	body, _ := json.Marshal(optipicksim.ExampleRequest())
	id, err := optipicksim.Submit(t.Context(), http.DefaultClient, a.URL, a.apiKey, kind, body, synchronous)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// bodyFor is OptiPick's webhook body for id.
func bodyFor(id string) []byte { return fmt.Appendf(nil, `{"request_id":%q}`, id) }

var messages atomic.Int64

// delivery is a webhook delivery as Svix sends it to path: a fresh message
// id, the current time, and the Svix library's signature with secret.
func delivery(t testing.TB, secret, path string, body []byte) *http.Request {
	return deliveryAt(t, secret, path, body, fmt.Sprintf("msg_e2e%06d", messages.Add(1)), time.Now())
}

// deliveryAt is delivery with a chosen message id and signing time.
func deliveryAt(t testing.TB, secret, path string, body []byte, msgID string, at time.Time) *http.Request {
	t.Helper()
	req, err := optipicksim.SignedRequest("http://receiver"+path, secret, msgID, at, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// assertNoSecrets fails if text holds a secret's key bytes or the API key.
func assertNoSecrets(t *testing.T, text string) {
	t.Helper()
	for _, secret := range []string{strings.TrimPrefix(testSecret, "whsec_"), strings.TrimPrefix(secondSecret, "whsec_"),
		strings.TrimPrefix(wrongSecret, "whsec_"), testAPIKey} {
		if strings.Contains(text, secret) {
			t.Errorf("a secret or the API key reached the receiver's output:\n%s", text)
		}
	}
}
