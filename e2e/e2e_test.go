package e2e

// Tests of the built binary, started as a user starts it.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"optipick-webhooks/internal/optipicksim"
)

// TestBinaryAnswersABattery: the built binary, configured through its
// environment, answers genuine, forged, stale, malformed and hostile
// deliveries as documented, and the API sees exactly the genuine ones.
func TestBinaryAnswersABattery(t *testing.T) {
	api := newSimAPI(t, optipicksim.Config{})
	ids := []string{api.optimize(t, "cluster", true), api.optimize(t, "route", true), api.optimize(t, "cluster", true)}
	p := startReceiver(t, []string{receiverBinary(t)}, receiverEnv(testSecret+","+secondSecret, testAPIKey, api.URL))

	body := bodyFor(ids[0])
	stale := deliveryAt(t, testSecret, "/webhook/cluster", body, "msg_stale", time.Now().Add(-6*time.Minute))
	for _, tc := range []struct {
		name       string
		req        *http.Request
		wantStatus int
	}{
		{"genuine cluster", delivery(t, testSecret, "/webhook/cluster", body), 200},
		{"genuine route, second secret", delivery(t, secondSecret, "/webhook/route", bodyFor(ids[1])), 200},
		{"genuine on /webhook", delivery(t, testSecret, "/webhook", bodyFor(ids[2])), 200},
		{"genuine, but the API has no such result", delivery(t, testSecret, "/webhook/route", bodyFor("674f5c1e2b8a4d0012ab0009")), 502},
		{"forged", delivery(t, wrongSecret, "/webhook/cluster", body), 401},
		{"stale", stale, 401},
		{"unsigned", httptest.NewRequest(http.MethodPost, "/webhook/cluster", bytes.NewReader(body)), 401},
		{"malformed", delivery(t, testSecret, "/webhook/route", []byte(`{"request`)), 400},
		{"hostile id", delivery(t, testSecret, "/webhook/route", []byte(`{"request_id":"../../admin"}`)), 400},
		{"oversized", delivery(t, testSecret, "/webhook/route", bytes.Repeat([]byte("a"), 2<<20)), 413},
		{"wrong method", httptest.NewRequest(http.MethodGet, "/webhook/route", nil), 405},
		{"unknown path", delivery(t, testSecret, "/webhooks/cluster", body), 404},
		{"unclean path", delivery(t, testSecret, "/webhook//cluster", body), 404},
	} {
		resp := p.post(t, tc.req)
		if resp.StatusCode != tc.wantStatus {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.wantStatus)
		}
		if tc.wantStatus == 400 && resp.Header.Get("webhook-delivery") != "abort-message" {
			t.Errorf("%s: no abort-message header", tc.name)
		}
	}
	want := []string{"/optimize/cluster/" + ids[0], "/optimize/route/" + ids[1], "/optimize/cluster/" + ids[2],
		"/optimize/route/674f5c1e2b8a4d0012ab0009"}
	if got := api.getPaths(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("API answered GETs %v, want %v", got, want)
	}
}

// TestSIGTERMDrainsInFlightDeliveries: SIGTERM while a delivery waits on a
// slow API lets it finish with 200, refuses new connections, and exits 0.
func TestSIGTERMDrainsInFlightDeliveries(t *testing.T) {
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseAPI := func() { releaseOnce.Do(func() { close(release) }) }
	defer releaseAPI()
	api := newSimAPI(t, optipicksim.Config{})
	id := api.optimize(t, "cluster", true)
	api.setGate(func(r *http.Request) {
		arrived <- struct{}{}
		<-release
	})
	p := startReceiver(t, []string{receiverBinary(t)}, receiverEnv(testSecret, testAPIKey, api.URL))

	answered := make(chan int, 1)
	go func() {
		resp, err := http.DefaultClient.Do(p.onTCP(delivery(t, testSecret, "/webhook/cluster", bodyFor(id))))
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

// TestSimulatorEndToEnd runs the built receiver against the offline
// simulator: a cluster and a route optimization are delivered, verified and
// fetched; a 503 in front of the receiver makes the simulator retry with the
// same svix-id; and the results decode without loss.
func TestSimulatorEndToEnd(t *testing.T) {
	secret := testSecret

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

	sim := newSimAPI(t, optipicksim.Config{
		Cluster:       optipicksim.Receiver{URL: front.URL + "/webhook/cluster", Secret: secret},
		Route:         optipicksim.Receiver{URL: front.URL + "/webhook/route", Secret: secret},
		OptimizeDelay: 10 * time.Millisecond,
		TimeScale:     0.001, // the 5 s retry comes after 5 ms
		RetryFloor:    -1,    // no floor: the receiver never saw the failed attempt, the front answered it
	})

	p := startReceiver(t, []string{receiverBinary(t)}, receiverEnv(secret, testAPIKey, sim.URL))
	mu.Lock()
	receiverURL = p.URL
	mu.Unlock()

	requestIDs := map[string]string{}
	for _, kind := range []string{"cluster", "route"} {
		requestIDs[sim.optimize(t, kind, false)] = kind
	}
	want := maps.Clone(requestIDs)

	summaries := map[string]map[string]any{}
	for len(requestIDs) > 0 {
		line := p.waitFor(t, "optimization fetched", 15*time.Second)
		id := fmt.Sprint(line["request_id"])
		if kind, ok := requestIDs[id]; !ok || line["kind"] != kind {
			t.Fatalf("unexpected summary line %v", line)
		}
		summaries[id] = line
		delete(requestIDs, id)
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

	// The summary lines say what the simulator's results hold.
	for id, kind := range want {
		req, _ := http.NewRequest(http.MethodGet, sim.URL+"/optimize/"+kind+"/"+id, nil)
		req.Header.Set("X-API-KEY", testAPIKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var result map[string]any
		json.NewDecoder(resp.Body).Decode(&result)
		resp.Body.Close()
		line := summaries[id]
		asis, optimal := result["asis_distance"].(float64), result["optimal_distance"].(float64)
		saving := math.Round((asis-optimal)/asis*1000) / 10
		count, countName := len(asSlice(result["optimal_clusters"])), "clusters"
		if kind == "route" {
			count, countName = len(asSlice(result["picks"])), "picks"
		}
		if line["site_name"] != result["site_name"] || line["asis_distance"] != asis || line["optimal_distance"] != optimal ||
			line["saving_pct"] != saving || line[countName] != float64(count) || line["computation_time_s"] != result["computation_time"] {
			t.Errorf("%s summary %v does not match the result %v", kind, line, result)
		}
	}
}

// TestSimulatorsFirstRetryIsFetchedNotAnsweredFromMemory: the real
// receiver remembers a failed delivery for a moment and answers repeats
// from memory, without fetching. The simulator's first retry, at its
// development time scale (0.1: Svix's 5 s becomes 0.5 s), must come after
// that memory, so that it is fetched: here it succeeds once the API is back,
// rather than replaying the failure until the next retry 30 s later.
func TestSimulatorsFirstRetryIsFetchedNotAnsweredFromMemory(t *testing.T) {
	var receiverURL atomic.Value
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		target, _ := url.Parse(receiverURL.Load().(string))
		httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, r)
	}))
	defer front.Close()
	sim := newSimAPI(t, optipicksim.Config{
		Cluster:       optipicksim.Receiver{URL: front.URL + "/webhook/cluster", Secret: testSecret},
		OptimizeDelay: 10 * time.Millisecond,
		TimeScale:     0.1, // cmd/optipick-sim's default, and its default floor
		APIFault:      optipicksim.APIFault{Status: http.StatusServiceUnavailable},
	})
	p := startReceiver(t, []string{receiverBinary(t)}, receiverEnv(testSecret, testAPIKey, sim.URL))
	receiverURL.Store(p.URL)

	id := sim.optimize(t, "cluster", false)
	p.waitFor(t, "delivery not handled; Svix will retry", 15*time.Second) // the API is down
	for deadline := time.Now().Add(5 * time.Second); len(sim.Attempts()) == 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	sim.SetAPIFault(optipicksim.APIFault{}) // back before the retry
	line := p.waitFor(t, "optimization fetched", 10*time.Second)
	for deadline := time.Now().Add(5 * time.Second); len(sim.Attempts()) < 2 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond) // the receiver logs before it answers
	}
	attempts := sim.Attempts()
	if line["request_id"] != id || len(attempts) != 2 || attempts[0].Succeeded() || !attempts[1].Succeeded() {
		t.Fatalf("fetched %v; attempts %+v: want a failure, then a retry that is fetched", line["request_id"], attempts)
	}
	if gap := attempts[1].At.Sub(attempts[0].At.Add(attempts[0].Latency)); gap < optipicksim.DefaultRetryFloor {
		t.Errorf("the retry came %v after the failure, want at least %v", gap, optipicksim.DefaultRetryFloor)
	}
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

// TestVersionIsPrinted: -version names the version injected at build time
// and the Go release, and the "listening" line logs the same version.
func TestVersionIsPrinted(t *testing.T) {
	out, err := exec.Command(receiverBinary(t), "-version").CombinedOutput()
	if err != nil {
		t.Fatalf("-version: %v\n%s", err, out)
	}
	// Exactly the version injected, whether or not Go stamped the VCS
	// revision too (it does with GOFLAGS=-mod=mod, for one).
	if want := "optipick-webhooks " + builtVersion + " go1."; !strings.HasPrefix(string(out), want) {
		t.Errorf("-version printed %q, want %q...", out, want)
	}
	api := newSimAPI(t, optipicksim.Config{})
	env := receiverEnv(testSecret, testAPIKey, api.URL)
	p := startReceiver(t, []string{receiverBinary(t)}, env)
	if p.listening["version"] != builtVersion {
		t.Errorf("the listening line logs version %v, want %s", p.listening["version"], builtVersion)
	}
	help, err := exec.Command(receiverBinary(t), "-h").CombinedOutput()
	if err != nil || !strings.Contains(string(help), "WEBHOOK_SECRET") || !strings.Contains(string(help), "METRICS_ADDR") {
		t.Errorf("-h: %v, want exit 0 and the variables:\n%s", err, help)
	}
}

// TestHungAPICallsAreCutAtTheTransportLimits: an API call that hangs is
// given up after the transport's limit, leaving the delivery's 10 s for
// another call: response headers after 5 s (so two calls, then 504 at
// the deadline), a TLS handshake after 3 s (so three calls, then 502, as
// no fourth fits). Without these limits one hung call would take the whole
// deadline. Real time: about 10 s, both at once.
func TestHungAPICallsAreCutAtTheTransportLimits(t *testing.T) {
	for _, tc := range []struct {
		name      string
		api       func(t *testing.T, accepted *atomic.Int32) string // its URL
		wantCalls func(n int32) bool
		want      string
		wantCode  int
	}{
		{"response headers", func(t *testing.T, accepted *atomic.Int32) string {
			server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				accepted.Add(1)
				<-r.Context().Done()
			}))
			t.Cleanup(server.Close)
			return server.URL
		}, func(n int32) bool { return n == 2 }, "2 calls", http.StatusGatewayTimeout},
		{"TLS handshake", func(t *testing.T, accepted *atomic.Int32) string {
			listener, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var conns sync.WaitGroup
			t.Cleanup(func() { listener.Close(); conns.Wait() })
			go func() {
				for {
					conn, err := listener.Accept()
					if err != nil {
						return
					}
					accepted.Add(1)
					conns.Go(func() { io.Copy(io.Discard, conn); conn.Close() }) // never answers
				}
			}()
			return "https://" + listener.Addr().String()
		}, func(n int32) bool { return n >= 3 }, "3 calls or more", http.StatusBadGateway},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var accepted atomic.Int32
			p := startReceiver(t, []string{receiverBinary(t)}, receiverEnv(testSecret, testAPIKey, tc.api(t, &accepted)))
			resp := p.post(t, delivery(t, testSecret, "/webhook/cluster", bodyFor("674f5c1e2b8a4d0012ab34cd")))
			if resp.StatusCode != tc.wantCode {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.wantCode)
			}
			if n := accepted.Load(); !tc.wantCalls(n) {
				t.Errorf("the hung API got %d calls, want %s", n, tc.want)
			}
		})
	}
}
