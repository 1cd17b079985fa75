package main

// The one test harness of the root package: secrets, a fake OptiPick API,
// signed deliveries, the real handler wired to them, and the service
// started with run.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	svix "github.com/svix/svix-webhooks/go"
)

// bytesAllocated is what f allocates on the heap, all goroutines included.
func bytesAllocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// Secrets and a key made for these tests only.
var (
	testSecret   = "whsec_" + base64.StdEncoding.EncodeToString([]byte("optipick-webhooks test secret 1!"))
	secondSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("optipick-webhooks test secret 2!"))
	wrongSecret  = "whsec_" + base64.StdEncoding.EncodeToString([]byte("a secret nobody configured......"))
)

const (
	testAPIKey    = "test-api-key-5f1c9e"
	testRequestID = "674f5c1e2b8a4d0012ab34cd"
)

// rig is the real handler with a fake OptiPick API behind it.
type rig struct {
	handler http.Handler
	api     *fakeAPI
	logs    *syncBuffer
	// process is what the handler does with a fetched result; by default
	// the service's own logSummary.
	process processFunc
	seen    *dedupe
}

// svixRetriesLater moves the handler's memory of messages on by 5 s, when
// Svix's first retry of a failed delivery comes: the failure's outcome no
// longer answers it (recentFor).
func (r *rig) svixRetriesLater() {
	r.seen.mu.Lock()
	defer r.seen.mu.Unlock()
	r.seen.epoch = r.seen.epoch.Add(-5 * time.Second)
}

// newRig serves the fake API over real TCP.
func newRig(t *testing.T, secrets ...string) *rig {
	t.Helper()
	api := &fakeAPI{}
	server := httptest.NewServer(api)
	t.Cleanup(server.Close)
	return newRigWith(t, api, server.URL, nil, secrets)
}

// newBubbleRig serves the fake API in memory, for synctest bubbles, where
// the clock is fake and the network must not be used.
func newBubbleRig(t *testing.T, secrets ...string) *rig {
	t.Helper()
	api := &fakeAPI{}
	return newRigWith(t, api, "http://optipick.test/latest/", handlerTransport{api}, secrets)
}

func newRigWith(t *testing.T, api *fakeAPI, apiURL string, transport http.RoundTripper, secrets []string) *rig {
	t.Helper()
	return buildRig(
		t,
		rigConfig{
			api:       api,
			apiURL:    apiURL,
			transport: transport,
			secrets:   secrets,
			level:     slog.LevelDebug,
			format:    "text",
		},
	)
}

// rigConfig is what buildRig wires: the API, the secrets, and the log
// level and format (debug keeps each result's raw JSON, as the service does).
type rigConfig struct {
	api       *fakeAPI
	apiURL    string
	transport http.RoundTripper
	secrets   []string
	level     slog.Level
	format    string
}

func buildRig(t *testing.T, c rigConfig) *rig {
	t.Helper()
	v, err := newVerifier(strings.Join(c.secrets, " "))
	if err != nil {
		t.Fatal(err)
	}
	base, err := url.Parse(c.apiURL)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	logger := newLogger(logs, c.level, c.format)
	client := clientOver(base, c.level <= slog.LevelDebug, c.transport)
	r := &rig{api: c.api, logs: logs, process: logSummary(logger), seen: newDedupe(time.Hour, 1000)}
	process := func(ctx context.Context, d delivery, res *optimization) error { return r.process(ctx, d, res) }
	r.handler = newServer(webhookDeps{
		logger:   logger,
		verifier: v,
		seen:     r.seen,
		fetch:    client.fetch,
		process:  process,
		metrics:  noMetrics{},
	}, alwaysReady)
	t.Cleanup(func() { assertNoSecrets(t, logs.String()) })
	return r
}

// alwaysReady is the readiness of a service that never shuts down.
func alwaysReady() bool { return true }

// clientOver is the service's client for the API at baseURL, over
// transport (nil: the service's own).
func clientOver(baseURL *url.URL, keepRaw bool, transport http.RoundTripper) *optiPickClient {
	client := newOptiPickClient(baseURL, testAPIKey, keepRaw, noMetrics{})
	if transport != nil {
		client.httpClient.Transport = transport
	}
	return client
}

func (r *rig) deliver(req *http.Request) *httptest.ResponseRecorder {
	resp := httptest.NewRecorder()
	r.handler.ServeHTTP(resp, req)
	return resp
}

// jsonEscape is a JSON escape of one character (\u0041, \/), its
// backslash itself escaped any number of times by the log's quoting.
var jsonEscape = regexp.MustCompile(`\\+(u[0-9a-fA-F]{4}|/)`)

// assertNoSecrets fails if text holds a secret, its key bytes or the API key.
func assertNoSecrets(t *testing.T, text string) {
	t.Helper()
	for _, secret := range []string{testSecret, secondSecret, wrongSecret} {
		if strings.Contains(text, strings.TrimPrefix(secret, "whsec_")) {
			t.Errorf("a signing secret reached the output:\n%s", text)
		}
	}
	// Any 10 bytes of the key, in any letter case, JSON escapes read as
	// what they stand for: a key cut in two, or escaped, leaks too.
	plain := strings.ToLower(jsonEscape.ReplaceAllStringFunc(text, func(esc string) string {
		if strings.HasSuffix(esc, "/") {
			return "/"
		}
		r, _ := strconv.ParseUint(esc[len(esc)-4:], 16, 32)
		return string(rune(r))
	}))
	for i := 0; i+10 <= len(testAPIKey); i++ {
		if part := strings.ToLower(testAPIKey[i : i+10]); strings.Contains(plain, part) {
			t.Errorf("part of the API key (%q) reached the output:\n%s", part, text)
			return
		}
	}
}

type apiCall struct {
	Path   string
	APIKey string
}

// fakeAPI stands in for the OptiPick API and records what it received.
type fakeAPI struct {
	respond func(w http.ResponseWriter, r *http.Request) // nil: a result of the kind asked for

	mu    sync.Mutex
	calls []apiCall
}

func (a *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.calls = append(a.calls, apiCall{Path: r.URL.Path, APIKey: r.Header.Get("X-API-KEY")})
	a.mu.Unlock()
	if a.respond != nil {
		a.respond(w, r)
		return
	}
	_, rest, _ := strings.Cut(r.URL.Path, "/optimize/")
	kind, id, ok := strings.Cut(rest, "/")
	switch {
	case r.Method != http.MethodGet || !ok || r.Header.Get("X-API-KEY") != testAPIKey:
		http.Error(w, `{"message":"Forbidden"}`, http.StatusForbidden)
	case kind == "cluster":
		writeClusterResult(w, id)
	case kind == "route":
		writeRouteResult(w, id)
	default:
		http.NotFound(w, r)
	}
}

func (a *fakeAPI) recorded() []apiCall {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]apiCall(nil), a.calls...)
}

// assertCalls checks the calls, with paths relative to /optimize/.
func (a *fakeAPI) assertCalls(t *testing.T, want []apiCall) {
	t.Helper()
	got := a.recorded()
	for i := range got { // drop the base URL's path, such as /latest
		if at := strings.Index(got[i].Path, "/optimize/"); at > 0 {
			got[i].Path = got[i].Path[at:]
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("API received %v, want %v", got, want)
	}
}

// writeClusterResult writes a cluster result in the shape of a real one:
// as-is 200, optimal 150, two clusters, a timestamp with no time zone.
func writeClusterResult(w http.ResponseWriter, id string) {
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"_id":"674f5c1e2b8a4d0012ab0000","request_id":%q,"ownerId":"673f48095739843f4de65ec9",
"site_name":"Example","site_id":"6740aa","wave_id":"wave-1","timestamp":"2024-12-04T16:52:49.303000",
"computation_time":0.53,"error":null,"purpose":"test","visualization_url":"https://example.invalid/v",
"type":"CLUSTER","unit":"cm","invalid_picks":[],"extra":{},
"asis_clusters":[{"list_id":"o1","picks":["p1","p2"],"order_ids":["o1"],"estimated_distance":120},
 {"list_id":"o2","picks":["p3"],"order_ids":["o2"],"estimated_distance":80}],
"optimal_clusters":[{"list_id":"c1","picks":["p1","p3"],"order_ids":["o1","o2"],"estimated_distance":100},
 {"list_id":"c2","picks":["p2"],"order_ids":["o1"],"estimated_distance":50}],
"asis_distance":200,"optimal_distance":150}`, id)
}

// writeRouteResult writes a route result in the documented shape.
func writeRouteResult(w http.ResponseWriter, id string) {
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"request_id":%q,"route_id":"r1","site_name":"Example","wave_id":"wave-1",
"timestamp":"2024-12-04T16:52:49.303000","computation_time":0.53,"error":null,"unit":"cm","invalid_picks":[],
"picks":[{"pick_id":"p1","location_id":"A-01","optim_sequence":0,"asis_sequence":2,"path":[],"instructions":[]},
 {"pick_id":"p2","location_id":"A-07","optim_sequence":2,"asis_sequence":0,"path":[],"instructions":[]},
 {"pick_id":"p3","location_id":["B-02","B-03"],"optim_sequence":1,"asis_sequence":1,"path":[],"instructions":[]}],
"extra":{}}`, id)
}

// handlerTransport serves HTTP requests with a handler, in memory, as a
// real transport over a network would: the answer comes once the handler
// writes its header (or returns), its body streams as the handler writes
// it, and the call gives up when the request's context ends, before the
// answer (an answer the handler made after that is not delivered) or
// while its body is read.
type handlerTransport struct{ handler http.Handler }

func (t handlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	body, bodyWriter := io.Pipe()
	w := &streamingResponse{header: http.Header{}, body: bodyWriter, answered: make(chan struct{})}
	go func() {
		t.handler.ServeHTTP(w, req)
		w.WriteHeader(http.StatusOK)         // if it wrote nothing
		bodyWriter.CloseWithError(ctx.Err()) // nil: the body ends
	}()
	select {
	case <-w.answered:
	case <-ctx.Done():
	}
	if err := ctx.Err(); err != nil {
		body.CloseWithError(err)
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { bodyWriter.CloseWithError(ctx.Err()) })
	return &http.Response{
		Status:        fmt.Sprintf("%d %s", w.status, http.StatusText(w.status)),
		StatusCode:    w.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        w.header,
		Body:          stopOnClose{ReadCloser: body, stop: stop},
		ContentLength: -1,
		Request:       req,
	}, nil
}

// streamingResponse is the http.ResponseWriter of handlerTransport.
type streamingResponse struct {
	header   http.Header
	status   int
	body     *io.PipeWriter
	answered chan struct{} // closed once status and header are set
}

func (w *streamingResponse) Header() http.Header { return w.header }

func (w *streamingResponse) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
		w.header = w.header.Clone() // what the handler sets later is not sent
		close(w.answered)
	}
}

func (w *streamingResponse) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}

// Flush sends the header: what is written is sent at once anyway.
func (w *streamingResponse) Flush() { w.WriteHeader(http.StatusOK) }

// stopOnClose calls stop when the body is closed.
type stopOnClose struct {
	io.ReadCloser
	stop func() bool
}

func (b stopOnClose) Close() error {
	b.stop()
	return b.ReadCloser.Close()
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

func requestBody(id string) []byte {
	return []byte(`{"request_id":"` + id + `"}`)
}

var messageCounter struct {
	sync.Mutex
	n int
}

// signedDelivery is a delivery as Svix sends it: a fresh message id, the
// current time and the library's signature.
func signedDelivery(t testing.TB, secret, path string, body []byte) *http.Request {
	messageCounter.Lock()
	messageCounter.n++
	id := fmt.Sprintf("msg_test%06d", messageCounter.n)
	messageCounter.Unlock()
	return signedDeliveryAt(t, secret, path, body, id, time.Now())
}

func signedDeliveryAt(t testing.TB, secret, path string, body []byte, msgID string, at time.Time) *http.Request {
	t.Helper()
	wh, err := svix.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	signature, err := wh.Sign(msgID, at, body)
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("svix-id", msgID)
	req.Header.Set("svix-timestamp", fmt.Sprint(at.Unix()))
	req.Header.Set("svix-signature", signature)
	return req
}

func setBody(r *http.Request, body []byte) {
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
}

// syncBuffer is a bytes.Buffer that concurrent loggers may share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// logLines reads JSON log lines from r and hands them to waitFor.
type logLines struct {
	lines chan map[string]any
	all   syncBuffer
}

func readLogLines(t *testing.T, r io.Reader) *logLines {
	l := &logLines{lines: make(chan map[string]any, 1000)}
	go func() {
		defer close(l.lines)
		scanner := bufio.NewScanner(r)
		scanner.Buffer(nil, 1<<20)
		for scanner.Scan() {
			l.all.Write(append(scanner.Bytes(), '\n'))
			var line map[string]any
			if err := json.Unmarshal(scanner.Bytes(), &line); err != nil {
				t.Errorf("log line is not JSON: %q", scanner.Text())
				continue
			}
			l.lines <- line
		}
	}()
	return l
}

// waitFor returns the next line whose msg is msg, skipping others.
func (l *logLines) waitFor(t *testing.T, msg string) map[string]any {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case line, ok := <-l.lines:
			if !ok {
				t.Fatalf("logs ended before %q", msg)
			}
			if line["msg"] == msg {
				return line
			}
		case <-timeout:
			t.Fatalf("no %q log line within 10 s", msg)
		}
	}
}

// zeros reads as an endless run of 'a'.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
	}
	return len(p), nil
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func getenvFrom(env map[string]string) func(string) string {
	return func(key string) string { return env[key] }
}

func merge(maps ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range maps {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// bubbleServer is the service's http.Server, wired as run wires it (behind
// a connLimitListener), over in-memory connections (net.Pipe), so that it
// runs in a synctest bubble on the fake clock: its timeouts can be waited
// out exactly and at once.
type bubbleServer struct {
	srv      *http.Server
	incoming chan net.Conn // the kernel's accept queue
	closed   chan struct{}
	once     sync.Once

	// Connections the server serves and has not closed (by itself or by
	// shedding), now and at most.
	open, peak atomic.Int32
	// Connections whose goroutine in the server has not ended.
	serving sync.WaitGroup
}

func startBubbleServer(t *testing.T, handler http.Handler, maxConns int) *bubbleServer {
	t.Helper()
	s := &bubbleServer{incoming: make(chan net.Conn, 64), closed: make(chan struct{})}
	s.srv = newHTTPServer(handler, slog.New(slog.DiscardHandler))
	var listener net.Listener = s
	if limitConnections != nil {
		listener = limitConnections(s, s.srv, maxConns) // as run does
	}
	limiterHook := s.srv.ConnState
	s.srv.ConnState = func(c net.Conn, state http.ConnState) {
		switch state {
		case http.StateNew:
			s.serving.Add(1)
			n := s.open.Add(1)
			for p := s.peak.Load(); n > p && !s.peak.CompareAndSwap(p, n); p = s.peak.Load() {
			}
		case http.StateClosed, http.StateHijacked:
			s.serving.Done()
		}
		if limiterHook != nil {
			limiterHook(c, state)
		}
	}
	go s.srv.Serve(listener)
	// The bubble ends only when every goroutine has: wait for the server's
	// (a connection that refused a request lingers before it closes).
	t.Cleanup(func() {
		s.srv.Close()
		s.serving.Wait()
	})
	return s
}

// The net.Listener under the connection limiter.
func (s *bubbleServer) Accept() (net.Conn, error) {
	select {
	case c := <-s.incoming:
		return c, nil
	case <-s.closed:
		return nil, net.ErrClosed
	}
}

func (s *bubbleServer) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

func (s *bubbleServer) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }

func (pipeAddr) String() string { return "pipe" }

// dial opens a client connection; it returns before the server accepts it.
func (s *bubbleServer) dial(t *testing.T) net.Conn {
	t.Helper()
	server, client := net.Pipe()
	s.incoming <- &countedConn{Conn: server, open: &s.open}
	t.Cleanup(func() { client.Close() })
	return client
}

// countedConn counts itself out of open when it is first closed.
type countedConn struct {
	net.Conn
	open *atomic.Int32
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.open.Add(-1) })
	return c.Conn.Close()
}

// send writes a request on conn and reads its response.
func send(conn net.Conn, request string) (*http.Response, error) {
	if _, err := io.WriteString(conn, request); err != nil {
		return nil, err
	}
	return readResponse(conn)
}

// readResponse reads one whole response from conn.
func readResponse(conn net.Conn) (*http.Response, error) {
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, err
}

const getHealthz = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

// runBriefly starts the service with env and stops it at once, as a
// SIGTERM right after start would: run checks the configuration, listens,
// logs and drains. PORT defaults to 0 (a free port). It returns what run
// returned and what it logged. run has a deadline, so that it cannot hang.
func runBriefly(t *testing.T, env map[string]string, args ...string) (logs string, err error) {
	t.Helper()
	env = merge(map[string]string{"PORT": "0"}, env)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	if len(args) == 0 {
		cancel() // a stop signal that is already there
	}
	defer cancel()
	var stdout, stderr syncBuffer
	err = run(ctx, append([]string{"optipick-webhooks"}, args...), getenvFrom(env), &stdout, &stderr)
	if stderr.String() != "" && err == nil {
		t.Errorf("wrote to stderr: %q", stderr.String())
	}
	return stdout.String(), err
}

// service is run() started in this process, with the fake API.
type service struct {
	base, metricsURL string
	lines            *logLines
	stop             context.CancelFunc
	done             chan error
}

func startService(t *testing.T, api *fakeAPI, env map[string]string) *service {
	t.Helper()
	apiServer := httptest.NewServer(api)
	t.Cleanup(apiServer.Close)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second) // nothing here may hang
	t.Cleanup(cancel)
	logs, logWriter := io.Pipe()
	env = merge(map[string]string{"WEBHOOK_SECRET": testSecret, "OPTIPICK_API_KEY": testAPIKey,
		"OPTIPICK_API_URL": apiServer.URL, "PORT": "0", "LOG_FORMAT": "json"}, env)
	s := &service{stop: cancel, done: make(chan error, 1)}
	go func() {
		err := run(ctx, []string{"optipick-webhooks"}, getenvFrom(env), logWriter, io.Discard)
		logWriter.Close()
		s.done <- err
	}()
	s.lines = readLogLines(t, logs)
	if env["METRICS_ADDR"] != "" {
		s.metricsURL = "http://" + fmt.Sprint(s.lines.waitFor(t, "serving metrics")["addr"]) + "/metrics"
	}
	_, port, _ := net.SplitHostPort(fmt.Sprint(s.lines.waitFor(t, "listening")["addr"]))
	s.base = "http://127.0.0.1:" + port
	return s
}

func (s *service) send(t *testing.T, req *http.Request) int {
	t.Helper()
	target, _ := http.NewRequest(req.Method, s.base+req.URL.Path, req.Body)
	target.Header = req.Header
	resp, err := http.DefaultClient.Do(target)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
