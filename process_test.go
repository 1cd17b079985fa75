package main

// Tests of what happens with a result: the summary line, and the
// processFunc contract.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	svix "github.com/svix/svix-webhooks/go"
)

// Wire the receiver with your own processFunc: here it stores each result
// once per request_id, as a database table with a unique key would. Return
// an error to answer 5xx, so that Svix delivers the message again.
func Example_processFunc() {
	// A stand-in for the OptiPick API.
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		fmt.Fprintf(w, `{"request_id":%q,"site_name":"Example","optimal_clusters":[{},{}]}`, id)
	}))
	defer api.Close()

	// Stands in for a table whose unique key on request_id makes a repeat
	// harmless. A real store must be safe for concurrent deliveries.
	stored := map[string]int{}
	store := func(ctx context.Context, d delivery, res *optimization) error {
		stored[d.RequestID] = int(res.OptimalClusters)
		return nil // an error here answers 5xx, and Svix retries
	}

	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	v, _ := newVerifier(secret)
	apiURL, _ := url.Parse(api.URL)
	client := newOptiPickClient(apiURL, "your-api-key", false, noMetrics{})
	handler := newServer(webhookDeps{
		logger:   slog.New(slog.DiscardHandler),
		verifier: v,
		seen:     newDedupe(time.Hour, 1000),
		fetch:    client.fetch,
		process:  store,
		metrics:  noMetrics{},
	}, alwaysReady)

	// A delivery as Svix sends it.
	body := `{"request_id":"674f5c1e2b8a4d0012ab34cd"}`
	now := time.Now()
	signer, _ := svix.NewWebhook(secret)
	signature, _ := signer.Sign("msg_example", now, []byte(body))
	req := httptest.NewRequest(http.MethodPost, "/webhook/cluster", strings.NewReader(body))
	req.Header.Set("svix-id", "msg_example")
	req.Header.Set("svix-timestamp", fmt.Sprint(now.Unix()))
	req.Header.Set("svix-signature", signature)

	resp := httptest.NewRecorder()
	handler.ServeHTTP(resp, req)
	fmt.Printf("%d %s", resp.Code, resp.Body)
	fmt.Println(stored)
	// Output:
	// 200 fetched
	// map[674f5c1e2b8a4d0012ab34cd:2]
}

// statusError is a processor's error that names an HTTP status.
type statusError int

func (e statusError) Error() string { return fmt.Sprintf("store said %d", int(e)) }

func (e statusError) HTTPStatus() int { return int(e) }

// TestAFailedProcessorIsNeverAcknowledged: whatever status a processor's
// error names, the delivery is answered 5xx, so that Svix retries it, and
// not remembered.
func TestAFailedProcessorIsNeverAcknowledged(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{errors.New("database down"), http.StatusBadGateway},
		{statusError(http.StatusServiceUnavailable), http.StatusServiceUnavailable},
		{statusError(http.StatusInternalServerError), http.StatusInternalServerError}, // the 5xx range's ends
		{statusError(599), 599},
		{statusError(600), http.StatusBadGateway},
		{statusError(499), http.StatusBadGateway},
		{statusError(http.StatusOK), http.StatusBadGateway},
		{statusError(http.StatusConflict), http.StatusBadGateway},
		{statusError(0), http.StatusBadGateway},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			rig := newRig(t, testSecret)
			rig.process = func(context.Context, delivery, *optimization) error { return tc.err }
			body := requestBody(testRequestID)
			resp := rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/route", body, "msg_store", time.Now()))
			if resp.Code != tc.want {
				t.Fatalf("status %d, want %d", resp.Code, tc.want)
			}
			rig.process = func(context.Context, delivery, *optimization) error { return nil }
			rig.svixRetriesLater()
			resp = rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/route", body, "msg_store", time.Now()))
			if resp.Body.String() != "fetched\n" {
				t.Fatalf("Svix's retry: %d %q, want it processed again", resp.Code, resp.Body)
			}
		})
	}
}

func TestOptimizationErrorIsLoggedAsWarningAndAcknowledged(t *testing.T) {
	rig := newRig(t, testSecret)
	rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(
			w,
			`{"request_id":"`+testRequestID+`","site_name":"Example","error":"no valid picks","computation_time":0.01}`,
		)
	}
	resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
	if resp.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200", resp.Code)
	}
	if logs := rig.logs.String(); !strings.Contains(
		logs,
		`level=WARN msg="optimization fetched, but OptiPick reports that it failed"`,
	) ||
		!strings.Contains(logs, `optimization_error="no valid picks"`) {
		t.Errorf("log lacks the warning with OptiPick's error:\n%s", logs)
	}
}

// summaryLine delivers a cluster result with these distances and returns
// its summary log line, parsed from JSON.
func summaryLine(t *testing.T, asis, optimal string) map[string]any {
	t.Helper()
	api := &fakeAPI{respond: func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(
			w,
			`{"request_id":%q,"site_name":"S","asis_distance":%s,"optimal_distance":%s,"optimal_clusters":[{}]}`,
			testRequestID,
			asis,
			optimal,
		)
	}}
	rig := buildRig(t, rigConfig{api: api, apiURL: "http://optipick.test", transport: handlerTransport{api},
		secrets: []string{testSecret}, level: slog.LevelInfo, format: "json"})
	resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
	if resp.Code != http.StatusOK {
		t.Fatalf("status %d, want 200\n%s", resp.Code, rig.logs)
	}
	var line map[string]any
	if err := json.Unmarshal([]byte(rig.logs.String()), &line); err != nil {
		t.Fatalf("the summary is not one JSON line: %v\n%s", err, rig.logs)
	}
	return line
}

// TestSummaryLineValues: the saving is (as-is − optimal) / as-is in
// percent, to one decimal; without a positive as-is distance there is
// none, and the line stays valid JSON.
func TestSummaryLineValues(t *testing.T) {
	for _, tc := range []struct {
		asis, optimal string
		saving        any // nil: no saving_pct
	}{
		{"200", "150", 25.0},
		{"300", "200", 33.3},
		{"3", "1", 66.7},
		{"100", "150", -50.0},
		{"1000", "999.4", 0.1},
		{"0", "0", nil},
		{"0", "5", nil},
		{"-100", "50", nil},
		{"1e-320", "0", 100.0},
	} {
		t.Run(tc.asis+"→"+tc.optimal, func(t *testing.T) {
			line := summaryLine(t, tc.asis, tc.optimal)
			if got, ok := line["saving_pct"]; got != tc.saving || ok != (tc.saving != nil) {
				t.Errorf("saving_pct = %v, want %v\n%v", got, tc.saving, line)
			}
			if line["clusters"] != 1.0 || line["site_name"] != "S" {
				t.Errorf("summary line %v", line)
			}
			// Distances are logged when the result has any, as sent.
			_, hasAsis := line["asis_distance"]
			if wantDistances := tc.asis != "0" || tc.optimal != "0"; hasAsis != wantDistances ||
				wantDistances && line["optimal_distance"] == nil {
				t.Errorf("distances logged: %v, want %v\n%v", hasAsis, wantDistances, line)
			}
		})
	}
}

// TestWholeNumbersAreLoggedAsTheyWouldBeAsFloats: number logs a whole
// number as an int64. In JSON it must print as slog prints the float64; in
// text it may print in full where slog would use an exponent, but it must
// be the same number. A fraction, or a float too large for an exact int64,
// stays a float64. -0 (a saving that rounds to it) prints as 0.
func TestWholeNumbersAreLoggedAsTheyWouldBeAsFloats(t *testing.T) {
	logged := func(format string, attr slog.Attr) string {
		var out bytes.Buffer
		newLogger(&out, slog.LevelInfo, format).LogAttrs(t.Context(), slog.LevelInfo, "m", attr)
		_, value, _ := strings.Cut(
			strings.TrimSpace(out.String()),
			map[string]string{"json": `"n":`, "text": " n="}[format],
		)
		return strings.TrimSuffix(value, "}")
	}
	numbers := []float64{0, 1, -3, 22920, 2e6, 1 << 52, 1<<53 - 1, 1 << 53, 1e21, 1e300, 0.5, 33.3, -999.4, 1e-320}
	for _, f := range numbers {
		if got, want := logged("json", numberAttr("n", f)), logged("json", slog.Float64("n", f)); got != want {
			t.Errorf("%v in JSON: logged %s, as a float64 %s", f, got, want)
		}
		got, err := strconv.ParseFloat(logged("text", numberAttr("n", f)), 64)
		if err != nil || got != f {
			t.Errorf("%v in text: logged %s (%v)", f, logged("text", numberAttr("n", f)), err)
		}
	}
	if got := logged("json", numberAttr("n", math.Copysign(0, -1))); got != "0" {
		t.Errorf("-0 logged %s, want 0", got)
	}
}

// saveResult is the README's example of a processFunc that keeps the log
// line: it writes each result's JSON to a file in dir.
func saveResult(dir string, logger *slog.Logger) processFunc {
	logLine := logSummary(logger)
	return func(ctx context.Context, d delivery, res *optimization) error {
		if res.Raw == nil {
			return errors.New("the result's JSON was not kept: set KEEP_RESULT_JSON=true")
		}
		// A request_id is 1 to 128 of [A-Za-z0-9_-]: safe as a file name.
		path := filepath.Join(dir, string(d.Kind)+"-"+d.RequestID+".json")
		if err := os.WriteFile(path, res.Raw, 0o644); err != nil {
			return err // 502: Svix delivers the message again
		}
		return logLine(ctx, d, res)
	}
}

// TestTheREADMEsSaveResultExample: with the result's JSON kept, the
// README's saveResult writes it and logs the summary; without, it fails
// the delivery (Svix retries) instead of acknowledging an empty file.
func TestTheREADMEsSaveResultExample(t *testing.T) {
	for _, keep := range []bool{true, false} {
		t.Run(fmt.Sprint("KEEP_RESULT_JSON=", keep), func(t *testing.T) {
			level := slog.LevelInfo
			if keep {
				level = slog.LevelDebug // keeps the JSON, as KEEP_RESULT_JSON=true does
			}
			api := &fakeAPI{}
			rig := buildRig(t, rigConfig{api: api, apiURL: "http://optipick.test", transport: handlerTransport{api},
				secrets: []string{testSecret}, level: level, format: "text"})
			dir := t.TempDir()
			rig.process = saveResult(dir, newLogger(rig.logs, level, "text"))
			resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
			saved, err := os.ReadFile(filepath.Join(dir, "cluster-"+testRequestID+".json"))
			if !keep {
				if resp.Code != http.StatusBadGateway || err == nil {
					t.Errorf("without the JSON: %d, file %v; want 502 and no file", resp.Code, err)
				}
				return
			}
			if resp.Code != http.StatusOK || !bytes.Contains(saved, []byte(`"site_name":"Example"`)) {
				t.Errorf("with the JSON: %d, saved %q (%v); want 200 and the result", resp.Code, saved, err)
			}
			if !strings.Contains(rig.logs.String(), "optimization fetched") {
				t.Errorf("the summary line was not logged:\n%s", rig.logs)
			}
		})
	}
}
