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
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"optipick-webhooks/internal/optipicksim"
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

// receiverEnv configures a receiver on a free port.
func receiverEnv(secrets, apiKey, apiURL string) map[string]string {
	return map[string]string{"WEBHOOK_SECRET": secrets, "OPTIPICK_API_KEY": apiKey, "OPTIPICK_API_URL": apiURL, "PORT": "0"}
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
	p := startReceiver(t, []string{receiverBinary(t)}, receiverEnv(testSecret+","+secondSecret, testAPIKey, apiServer.URL))

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
	p := startReceiver(t, []string{receiverBinary(t)}, receiverEnv(testSecret, testAPIKey, apiServer.URL))

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

// TestSimulatorEndToEnd runs the built receiver against the offline
// simulator: a cluster and a route optimization are delivered, verified and
// fetched; a 503 in front of the receiver makes the simulator retry with the
// same svix-id; and the results decode without loss.
func TestSimulatorEndToEnd(t *testing.T) {
	secret := optipicksim.NewSecret()
	const apiKey = "sim-e2e-key"

	// The receiver's address is known only once it runs, and it needs the
	// simulator's: the simulator delivers through this front, set later.
	var receiverURL string
	var mu sync.Mutex
	seenIDs := map[string][]string{} // path → svix-ids, in order
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seenIDs[r.URL.Path] = append(seenIDs[r.URL.Path], r.Header.Get("svix-id"))
		first := len(seenIDs[r.URL.Path]) == 1
		mu.Unlock()
		if r.URL.Path == "/webhook/cluster" && first {
			http.Error(w, "down for a moment", http.StatusServiceUnavailable)
			return
		}
		target, _ := url.Parse(receiverURL)
		httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, r)
	}))
	defer front.Close()

	sim, err := optipicksim.New(optipicksim.Config{
		APIKey:        apiKey,
		Cluster:       optipicksim.Receiver{URL: front.URL + "/webhook/cluster", Secret: secret},
		Route:         optipicksim.Receiver{URL: front.URL + "/webhook/route", Secret: secret},
		OptimizeDelay: 10 * time.Millisecond,
		TimeScale:     0.001, // the 5 s retry comes after 5 ms
	})
	if err != nil {
		t.Fatal(err)
	}
	simServer := httptest.NewServer(sim.Handler())
	defer simServer.Close()
	defer sim.Close()

	p := startReceiver(t, []string{receiverBinary(t)}, receiverEnv(secret, apiKey, simServer.URL))
	mu.Lock()
	receiverURL = p.URL
	mu.Unlock()

	requestIDs := map[string]string{}
	for _, kind := range []string{"cluster", "route"} {
		body, _ := json.Marshal(optipicksim.ExampleRequest())
		req, _ := http.NewRequest(http.MethodPost, simServer.URL+"/optimize/"+kind+"?synchronous=false", bytes.NewReader(body))
		req.Header.Set("X-API-KEY", apiKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var answer struct {
			RequestID string `json:"request_id"`
		}
		json.NewDecoder(resp.Body).Decode(&answer)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || answer.RequestID == "" {
			t.Fatalf("POST /optimize/%s: %d", kind, resp.StatusCode)
		}
		requestIDs[answer.RequestID] = kind
	}

	for len(requestIDs) > 0 {
		line := p.waitFor(t, "optimization fetched", 15*time.Second)
		kind, ok := requestIDs[fmt.Sprint(line["request_id"])]
		if !ok || line["kind"] != kind || line["site_name"] != "Example" || !(line["saving_pct"].(float64) > 0) {
			t.Fatalf("unexpected summary line %v", line)
		}
		delete(requestIDs, fmt.Sprint(line["request_id"]))
	}

	mu.Lock()
	clusterIDs, routeIDs := seenIDs["/webhook/cluster"], seenIDs["/webhook/route"]
	mu.Unlock()
	if len(clusterIDs) != 2 || clusterIDs[0] != clusterIDs[1] {
		t.Errorf("cluster deliveries carried svix-ids %v, want one retry with the same id", clusterIDs)
	}
	if len(routeIDs) != 1 {
		t.Errorf("route deliveries: %v, want one", routeIDs)
	}

	// What the receiver decodes is all that the simulator sent.
	base, _ := url.Parse(simServer.URL)
	client := newOptiPickClient(base, apiKey, nil)
	for _, a := range sim.Attempts() {
		if !a.Succeeded() {
			continue
		}
		result, err := client.fetch(t.Context(), a.Kind, a.RequestID)
		if err != nil {
			t.Fatal(err)
		}
		var generic map[string]any
		if err := json.Unmarshal(result.raw, &generic); err != nil {
			t.Fatal(err)
		}
		if result.RequestID != a.RequestID || result.SiteName != generic["site_name"] || result.Timestamp != generic["timestamp"] ||
			result.ComputationTime != generic["computation_time"] || result.failure() != "" ||
			*result.AsisDistance != generic["asis_distance"] || *result.OptimalDistance != generic["optimal_distance"] ||
			len(result.OptimalClusters)+len(result.Picks) != len(asSlice(generic["optimal_clusters"]))+len(asSlice(generic["picks"])) {
			t.Errorf("%s result decoded as %+v, sent as %v", a.Kind, result, generic)
		}
	}
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}
