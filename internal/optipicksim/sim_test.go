package optipicksim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	svix "github.com/svix/svix-webhooks/go"
)

const testKey = "sim-test-key"

var testSecret = NewSecret()

func newTestSim(t *testing.T, cfg Config) (*Simulator, *httptest.Server) {
	t.Helper()
	cfg.APIKey = testKey
	sim, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	server := httptest.NewServer(sim.Handler())
	t.Cleanup(func() { server.Close(); sim.Close() })
	return sim, server
}

func call(t *testing.T, method, url, key string, body any) (int, map[string]any) {
	t.Helper()
	var reader io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		reader = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, reader)
	if key != "" {
		req.Header.Set("X-API-KEY", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestAPIKeyIsRequired(t *testing.T) {
	_, server := newTestSim(t, Config{})
	for _, key := range []string{"", "wrong"} {
		for _, tc := range []struct{ method, path string }{{"POST", "/optimize/cluster"}, {"GET", "/optimize/cluster/abc"}} {
			status, body := call(t, tc.method, server.URL+tc.path, key, ExampleRequest())
			if status != http.StatusForbidden || body["message"] != "Forbidden" {
				t.Errorf("%s %s with key %q: %d %v, want 403 Forbidden", tc.method, tc.path, key, status, body)
			}
		}
	}
}

func TestUnknownResultIs404(t *testing.T) {
	_, server := newTestSim(t, Config{})
	if status, _ := call(t, "GET", server.URL+"/optimize/route/000000000000000000000000", testKey, nil); status != http.StatusNotFound {
		t.Errorf("status %d, want 404", status)
	}
}

func TestInvalidRequestsAre422(t *testing.T) {
	_, server := newTestSim(t, Config{})
	for name, body := range map[string]any{
		"no site":  map[string]any{"picks": ExampleRequest().Picks},
		"no picks": map[string]any{"site_name": "Example"},
		"not JSON": "picks",
	} {
		if status, out := call(t, "POST", server.URL+"/optimize/cluster", testKey, body); status != http.StatusUnprocessableEntity || out["detail"] == nil {
			t.Errorf("%s: %d %v, want 422 with detail", name, status, out)
		}
	}
}

func TestExampleClustersIntoFewerShorterLists(t *testing.T) {
	_, server := newTestSim(t, Config{})
	status, result := call(t, "POST", server.URL+"/optimize/cluster", testKey, ExampleRequest())
	if status != http.StatusOK {
		t.Fatalf("status %d: %v", status, result)
	}
	for _, field := range []string{"_id", "request_id", "ownerId", "site_name", "site_id", "wave_id", "timestamp",
		"computation_time", "error", "purpose", "visualization_url", "asis_clusters", "optimal_clusters",
		"asis_distance", "optimal_distance", "type", "invalid_picks", "unit", "extra"} {
		if _, ok := result[field]; !ok {
			t.Errorf("result lacks %q", field)
		}
	}
	if _, err := time.Parse("2006-01-02T15:04:05.000000", result["timestamp"].(string)); err != nil {
		t.Errorf("timestamp %q is not OptiPick's zone-less form", result["timestamp"])
	}
	if result["error"] != nil {
		t.Errorf("error = %v, want null", result["error"])
	}
	asis, optimal := result["asis_clusters"].([]any), result["optimal_clusters"].([]any)
	if len(asis) != 5 || len(optimal) >= len(asis) {
		t.Errorf("%d as-is lists, %d optimal: want 5 and fewer", len(asis), len(optimal))
	}
	if a, o := result["asis_distance"].(float64), result["optimal_distance"].(float64); o <= 0 || o >= a {
		t.Errorf("distances as-is %v, optimal %v: want a saving", a, o)
	}
	// Every pick is in exactly one optimal list.
	var picks []string
	for _, c := range optimal {
		for _, p := range c.(map[string]any)["picks"].([]any) {
			picks = append(picks, p.(string))
		}
	}
	sort.Strings(picks)
	if strings.Join(picks, ",") != "p01,p02,p03,p04,p05,p06,p07,p08,p09,p10" {
		t.Errorf("optimal lists hold %v", picks)
	}

	// Fetching it later gives the same result.
	status, fetched := call(t, "GET", server.URL+"/optimize/cluster/"+result["request_id"].(string), testKey, nil)
	if status != http.StatusOK || fetched["optimal_distance"] != result["optimal_distance"] {
		t.Errorf("GET: %d %v", status, fetched)
	}
}

func TestResultsAreDeterministic(t *testing.T) {
	_, server := newTestSim(t, Config{})
	for _, kind := range []string{"cluster", "route"} {
		_, first := call(t, "POST", server.URL+"/optimize/"+kind, testKey, ExampleRequest())
		_, second := call(t, "POST", server.URL+"/optimize/"+kind, testKey, ExampleRequest())
		for _, volatile := range []string{"request_id", "_id", "route_id", "timestamp"} {
			delete(first, volatile)
			delete(second, volatile)
		}
		a, _ := json.Marshal(first)
		b, _ := json.Marshal(second)
		if !bytes.Equal(a, b) {
			t.Errorf("%s: two runs differ:\n%s\n%s", kind, a, b)
		}
	}
}

func TestRouteResult(t *testing.T) {
	_, server := newTestSim(t, Config{})
	req := ExampleRequest()
	req.Picks[0].LocationID = json.RawMessage(`["Z-40","A-01"]`) // stored in two places: the near one wins
	status, result := call(t, "POST", server.URL+"/optimize/route", testKey, req)
	if status != http.StatusOK {
		t.Fatalf("status %d", status)
	}
	picks := result["picks"].([]any)
	optim, asis := map[float64]bool{}, map[float64]bool{}
	for _, p := range picks {
		pick := p.(map[string]any)
		optim[pick["optim_sequence"].(float64)] = true
		asis[pick["asis_sequence"].(float64)] = true
		if pick["pick_id"] == "p01" && pick["location_id"] != "A-01" {
			t.Errorf("p01 picked at %v, want the nearer A-01", pick["location_id"])
		}
		for _, field := range []string{"path", "instructions"} {
			if _, ok := pick[field]; !ok {
				t.Errorf("pick lacks %s", field)
			}
		}
	}
	if len(picks) != 10 || len(optim) != 10 || len(asis) != 10 {
		t.Errorf("%d picks, %d optim and %d as-is sequence numbers; want 10 each", len(picks), len(optim), len(asis))
	}
	if a, o := result["asis_distance"].(float64), result["optimal_distance"].(float64); o >= a {
		t.Errorf("route as-is %v, optimal %v: want a saving", a, o)
	}
}

func TestInvalidPicksAreReported(t *testing.T) {
	_, server := newTestSim(t, Config{})
	req := OptimizeRequest{SiteName: "Example", Picks: []Pick{
		{PickID: "ok", LocationID: json.RawMessage(`"A-01"`)},
		{PickID: "nowhere"},
		{PickID: "empty", LocationID: json.RawMessage(`[]`)},
	}}
	_, result := call(t, "POST", server.URL+"/optimize/cluster", testKey, req)
	if got := result["invalid_picks"].([]any); len(got) != 2 || result["error"] != nil {
		t.Errorf("invalid_picks %v, error %v", got, result["error"])
	}
	req.Picks = req.Picks[1:]
	_, result = call(t, "POST", server.URL+"/optimize/route", testKey, req)
	if result["error"] == nil {
		t.Error("no valid picks, yet error is null")
	}
}

// stubReceiver answers deliveries with the statuses given, in turn (the
// last repeats), and records what it received.
type stubReceiver struct {
	answers []int
	abort   bool

	mu       sync.Mutex
	received []*http.Request
	bodies   [][]byte
}

func (s *stubReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.received = append(s.received, r)
	s.bodies = append(s.bodies, body)
	n := len(s.received)
	s.mu.Unlock()
	if s.abort {
		w.Header().Set("webhook-delivery", "abort-message")
	}
	if s.answers[min(n, len(s.answers))-1] == http.StatusFound {
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
		return
	}
	w.WriteHeader(s.answers[min(n, len(s.answers))-1])
}

func (s *stubReceiver) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.received)
}

// deliverOnce starts one asynchronous cluster optimization delivered to
// stub, and waits until the simulator stops delivering it.
func deliverOnce(t *testing.T, stub *stubReceiver, timeScale float64) (*Simulator, string) {
	t.Helper()
	receiver := httptest.NewServer(stub)
	t.Cleanup(receiver.Close)
	sim, server := newTestSim(t, Config{
		Cluster:    Receiver{URL: receiver.URL + "/webhook/cluster", Secret: testSecret},
		TimeScale:  timeScale,
		RetryFloor: -1, // the whole schedule in milliseconds
	})
	status, answer := call(t, "POST", server.URL+"/optimize/cluster?synchronous=false", testKey, ExampleRequest())
	if status != http.StatusOK || len(answer) != 1 {
		t.Fatalf("asynchronous POST: %d %v, want 200 with only the request_id", status, answer)
	}
	// The whole retry schedule, scaled, plus room: then nothing more comes.
	var total time.Duration
	for _, d := range sim.RetryDelays() {
		total += d
	}
	deadline := time.Now().Add(total + 2*time.Second)
	for time.Now().Before(deadline) {
		attempts := sim.Attempts()
		if n := len(attempts); n > 0 && (attempts[n-1].Succeeded() || attempts[n-1].Aborted || n == len(RetrySchedule)+1) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // anything after the end would show now
	return sim, answer["request_id"].(string)
}

func TestDeliveryRetriesWithTheSameMessageID(t *testing.T) {
	stub := &stubReceiver{answers: []int{503, 500, 200}}
	sim, requestID := deliverOnce(t, stub, 1e-5)

	if got := stub.count(); got != 3 {
		t.Fatalf("receiver got %d attempts, want 3", got)
	}
	wh, _ := svix.NewWebhook(testSecret)
	for i, r := range stub.received {
		if err := wh.Verify(stub.bodies[i], r.Header); err != nil {
			t.Errorf("attempt %d does not verify: %v", i+1, err)
		}
		if r.Header.Get("svix-id") != stub.received[0].Header.Get("svix-id") {
			t.Errorf("attempt %d has svix-id %q, want the first's", i+1, r.Header.Get("svix-id"))
		}
		if string(stub.bodies[i]) != `{"request_id":"`+requestID+`"}` {
			t.Errorf("body %s", stub.bodies[i])
		}
		if r.URL.Path != "/webhook/cluster" {
			t.Errorf("delivered to %s", r.URL.Path)
		}
	}
	var statuses []int
	for _, a := range sim.Attempts() {
		statuses = append(statuses, a.Status)
	}
	if len(statuses) != 3 || statuses[0] != 503 || statuses[2] != 200 {
		t.Errorf("attempts %v", statuses)
	}
}

func TestAbortMessageStopsRetries(t *testing.T) {
	stub := &stubReceiver{answers: []int{400}, abort: true}
	deliverOnce(t, stub, 1e-6)
	if got := stub.count(); got != 1 {
		t.Errorf("receiver got %d attempts after abort-message, want 1", got)
	}
}

func TestFailureRetriesOnTheWholeSchedule(t *testing.T) {
	for name, status := range map[string]int{"500": 500, "302 is a failure": 302} {
		t.Run(name, func(t *testing.T) {
			stub := &stubReceiver{answers: []int{status}}
			deliverOnce(t, stub, 1e-6)
			if got, want := stub.count(), len(RetrySchedule)+1; got != want {
				t.Errorf("receiver got %d attempts, want %d", got, want)
			}
		})
	}
}

func TestNewRequiresAKeyAndSecrets(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("no API key accepted")
	}
	if _, err := New(Config{APIKey: "k", Route: Receiver{URL: "http://127.0.0.1:1/webhook/route"}}); err == nil {
		t.Error("a receiver without a secret accepted")
	}
}

func TestAPIFaultsFailGETsUntilCleared(t *testing.T) {
	sim, server := newTestSim(t, Config{})
	_, result := call(t, "POST", server.URL+"/optimize/cluster", testKey, ExampleRequest())
	url := server.URL + "/optimize/cluster/" + result["request_id"].(string)
	for _, tc := range []struct {
		fault   string
		status  int
		message string
	}{{"500", 500, "Internal server error"}, {"503", 503, "Service Unavailable"}, {"429", 429, "Too Many Requests"}} {
		fault, err := ParseAPIFault(tc.fault)
		if err != nil {
			t.Fatal(err)
		}
		if err := sim.SetAPIFault(fault); err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("X-API-KEY", testKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		status, body := call(t, "GET", url, testKey, nil)
		if status != tc.status || body["message"] != tc.message {
			t.Errorf("fault %s: %d %v, want %d %q", tc.fault, status, body, tc.status, tc.message)
		}
		if tc.status == 429 && resp.Header.Get("Retry-After") != "1" {
			t.Errorf("429 without Retry-After: 1")
		}
		// Submitting still works during an outage.
		if status, _ := call(t, "POST", server.URL+"/optimize/route", testKey, ExampleRequest()); status != http.StatusOK {
			t.Errorf("fault %s: POST answered %d", tc.fault, status)
		}
	}
	if got := sim.FaultedGETs(); got != 6 {
		t.Errorf("FaultedGETs = %d, want 6", got)
	}
	sim.SetAPIFault(APIFault{})
	if status, body := call(t, "GET", url, testKey, nil); status != http.StatusOK || body["request_id"] != result["request_id"] {
		t.Errorf("after the outage: %d %v", status, body)
	}
}

func TestAPIFaultHangsUntilTheClientGivesUp(t *testing.T) {
	sim, server := newTestSim(t, Config{APIFault: APIFault{Hang: true}})
	client := &http.Client{Timeout: 200 * time.Millisecond}
	req, _ := http.NewRequest("GET", server.URL+"/optimize/cluster/abc", nil)
	req.Header.Set("X-API-KEY", testKey)
	start := time.Now()
	resp, err := client.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a hung GET answered %s", resp.Status)
	}
	if took := time.Since(start); took < 200*time.Millisecond || took > 5*time.Second {
		t.Errorf("gave up after %v", took)
	}
	if sim.FaultedGETs() != 1 {
		t.Errorf("FaultedGETs = %d, want 1", sim.FaultedGETs())
	}
}

func TestParseAPIFault(t *testing.T) {
	for _, s := range []string{"500", "503", "429", "hang", "none"} {
		f, err := ParseAPIFault(s)
		if err != nil || f.String() != s {
			t.Errorf("ParseAPIFault(%q) = %v, %v", s, f, err)
		}
	}
	for _, s := range []string{"404", "200", "slow"} {
		if _, err := ParseAPIFault(s); err == nil {
			t.Errorf("ParseAPIFault(%q) accepted", s)
		}
	}
	if _, err := New(Config{APIKey: "k", APIFault: APIFault{Status: 404}}); err == nil {
		t.Error("New accepted a 404 fault")
	}
}

func TestResendKeepsTheMessageIDAndIsNotRetried(t *testing.T) {
	stub := &stubReceiver{answers: []int{200, 500}}
	sim, requestID := deliverOnce(t, stub, 1e-6)
	if sim.Pending() != 0 {
		t.Errorf("Pending = %d after the delivery, want 0", sim.Pending())
	}
	msgID, ok := sim.MessageID("cluster", requestID)
	if !ok {
		t.Fatal("no message id for a delivered optimization")
	}
	attempt, err := sim.Resend(msgID)
	if err != nil {
		t.Fatal(err)
	}
	if !attempt.Resend || attempt.Status != 500 || attempt.RequestID != requestID || attempt.MsgID != msgID {
		t.Errorf("resend attempt %+v", attempt)
	}
	time.Sleep(20 * time.Millisecond) // a retry of the failed resend would show by now (scale 1e-6)
	if got := stub.count(); got != 2 {
		t.Fatalf("receiver got %d deliveries, want 2 (a failed resend is not retried)", got)
	}
	if stub.received[1].Header.Get("svix-id") != msgID || !bytes.Equal(stub.bodies[0], stub.bodies[1]) {
		t.Errorf("resend has svix-id %q and body %s", stub.received[1].Header.Get("svix-id"), stub.bodies[1])
	}
	wh, _ := svix.NewWebhook(testSecret)
	if err := wh.Verify(stub.bodies[1], stub.received[1].Header); err != nil {
		t.Errorf("resend does not verify: %v", err)
	}
	if _, err := sim.Resend("msg_unknown"); err == nil {
		t.Error("resending an unknown message succeeded")
	}
}

func TestPendingCountsUndeliveredMessages(t *testing.T) {
	release := make(chan struct{})
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	t.Cleanup(receiver.Close)
	sim, server := newTestSim(t, Config{Cluster: Receiver{URL: receiver.URL, Secret: testSecret}})
	for range 3 {
		call(t, "POST", server.URL+"/optimize/cluster?synchronous=false", testKey, ExampleRequest())
	}
	call(t, "POST", server.URL+"/optimize/cluster", testKey, ExampleRequest()) // synchronous: nothing to deliver
	if got := sim.Pending(); got != 3 {
		t.Errorf("Pending = %d with 3 deliveries held, want 3", got)
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for sim.Pending() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := sim.Pending(); got != 0 {
		t.Errorf("Pending = %d once delivered, want 0", got)
	}
}

func TestAFailedAttemptLogsWhenTheNextOneIs(t *testing.T) {
	var logs syncLog
	stub := &stubReceiver{answers: []int{500, 200}}
	receiver := httptest.NewServer(stub)
	t.Cleanup(receiver.Close)
	_, server := newTestSim(t, Config{
		Cluster:    Receiver{URL: receiver.URL + "/webhook/cluster", Secret: testSecret},
		TimeScale:  0.0001, // 5 s → 0.5 ms
		RetryFloor: -1,
		Logger:     slog.New(slog.NewTextHandler(&logs, nil)),
	})
	call(t, "POST", server.URL+"/optimize/cluster?synchronous=false", testKey, ExampleRequest())
	for deadline := time.Now().Add(5 * time.Second); stub.count() < 2 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if stub.count() != 2 {
		t.Fatalf("receiver got %d attempts, want 2", stub.count())
	}
	if out := logs.String(); !strings.Contains(out, `msg="next attempt in 500µs"`) || !strings.Contains(out, "attempt=2") {
		t.Errorf("no next-attempt line after the 500:\n%s", out)
	}
}

func TestRetryDelaysAreScaledWithAFloor(t *testing.T) {
	for _, tc := range []struct {
		scale float64
		floor time.Duration
		want  string
	}{
		{1, DefaultRetryFloor, "[5s 5m0s 30m0s 2h0m0s 5h0m0s 10h0m0s 10h0m0s]"}, // Svix's own: the floor changes nothing
		{0.1, DefaultRetryFloor, "[2.5s 30s 3m0s 12m0s 30m0s 1h0m0s 1h0m0s]"},
		{0.001, DefaultRetryFloor, "[2.5s 2.5s 2.5s 7.2s 18s 36s 36s]"},
		{0.1, 0, "[500ms 30s 3m0s 12m0s 30m0s 1h0m0s 1h0m0s]"},
	} {
		if got := fmt.Sprint(RetryDelays(tc.scale, tc.floor)); got != tc.want {
			t.Errorf("RetryDelays(%g, %v) = %s, want %s", tc.scale, tc.floor, got, tc.want)
		}
	}
	for floor, want := range map[time.Duration]time.Duration{0: DefaultRetryFloor, -1: 5 * time.Millisecond, time.Second: time.Second} {
		sim, _ := newTestSim(t, Config{TimeScale: 0.001, RetryFloor: floor})
		if got := sim.RetryDelays()[0]; got != want {
			t.Errorf("Config.RetryFloor %v at time scale 0.001: first retry after %v, want %v", floor, got, want)
		}
	}
}

// receiverFailureMemory is how long the receiver answers a repeat of a
// failed delivery from memory, without fetching (recentFor in the root
// dedupe.go).
const receiverFailureMemory = 2 * time.Second

// forgetfulReceiver answers as the receiver does when the API is down for
// its first fetch only: the first delivery fails (503), a repeat within
// receiverFailureMemory of that failure gets the same 503 from memory, and
// a later one is fetched (200).
type forgetfulReceiver struct {
	mu       sync.Mutex
	failedAt time.Time
	answers  []int
}

func (f *forgetfulReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	status := http.StatusOK
	switch {
	case f.failedAt.IsZero():
		status, f.failedAt = http.StatusServiceUnavailable, time.Now()
	case time.Since(f.failedAt) < receiverFailureMemory:
		status = http.StatusServiceUnavailable // "a duplicate failed moments ago": not fetched
	}
	f.answers = append(f.answers, status)
	w.WriteHeader(status)
}

// TestFirstRetryComesAfterTheReceiversFailureMemory: at the simulator's
// development time scale (0.1: Svix's 5 s becomes 0.5 s), the first retry
// after a failure still waits out the receiver's memory of that failure, so
// it is fetched, not answered from memory (and the next try 30 s later).
func TestFirstRetryComesAfterTheReceiversFailureMemory(t *testing.T) {
	if DefaultRetryFloor <= receiverFailureMemory {
		t.Fatalf("DefaultRetryFloor %v is within the receiver's failure memory (%v)", DefaultRetryFloor, receiverFailureMemory)
	}
	stub := &forgetfulReceiver{}
	receiver := httptest.NewServer(stub)
	t.Cleanup(receiver.Close)
	sim, server := newTestSim(t, Config{
		Cluster:   Receiver{URL: receiver.URL + "/webhook/cluster", Secret: testSecret},
		TimeScale: 0.1, // cmd/optipick-sim's default
	})
	call(t, "POST", server.URL+"/optimize/cluster?synchronous=false", testKey, ExampleRequest())
	for deadline := time.Now().Add(10 * time.Second); sim.Pending() > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	attempts := sim.Attempts()
	stub.mu.Lock()
	answers := fmt.Sprint(stub.answers)
	stub.mu.Unlock()
	if len(attempts) != 2 || answers != "[503 200]" {
		t.Fatalf("%d attempts answered %s, want 2: the failure, then a retry that is fetched (200)", len(attempts), answers)
	}
	if gap := attempts[1].At.Sub(attempts[0].At.Add(attempts[0].Latency)); gap < DefaultRetryFloor || gap <= receiverFailureMemory {
		t.Errorf("the first retry came %v after the failure was answered, want at least %v (over the receiver's %v)", gap, DefaultRetryFloor, receiverFailureMemory)
	}
}

type syncLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
