package main

// Benchmarks: what verification and a delivery cost (make bench). Compare
// figures with the floor measured in the same run, never across machines.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	svix "github.com/svix/svix-webhooks/go"
)

// signed1KiB is a 1 KiB body with its svix-* headers, signed with secret.
func signed1KiB(b *testing.B, secret string) ([]byte, http.Header) {
	prefix := `{"request_id":"` + testRequestID + `","padding":"`
	body := []byte(prefix + strings.Repeat("x", 1024-len(prefix)-2) + `"}`)
	if len(body) != 1024 {
		b.Fatalf("body is %d bytes", len(body))
	}
	req := signedDeliveryAt(b, secret, "/webhook/cluster", body, "msg_bench", time.Now())
	return body, req.Header
}

// BenchmarkVerify1KiB compares the Svix library's verification with the
// floor: one bare HMAC-SHA256 and base64 of the same bytes, and a compare.
func BenchmarkVerify1KiB(b *testing.B) {
	body, header := signed1KiB(b, testSecret)

	b.Run("floor=bare-HMAC-SHA256+base64", func(b *testing.B) {
		key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(testSecret, "whsec_"))
		want := []byte(strings.TrimPrefix(header.Get("svix-signature"), "v1,"))
		prefix := []byte(header.Get("svix-id") + "." + header.Get("svix-timestamp") + ".")
		sig := make([]byte, base64.StdEncoding.EncodedLen(sha256.Size))
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			mac := hmac.New(sha256.New, key)
			mac.Write(prefix)
			mac.Write(body)
			base64.StdEncoding.Encode(sig, mac.Sum(nil))
			if !hmac.Equal(sig, want) {
				b.Fatal("floor does not match")
			}
		}
	})
	for _, tc := range []struct {
		name    string
		secrets []string
	}{
		{"library/1-secret", []string{testSecret}},
		{"library/2-secrets,first-matches", []string{testSecret, secondSecret}},
		{"library/2-secrets,second-matches", []string{secondSecret, testSecret}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			v, err := newVerifier(strings.Join(tc.secrets, " "))
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if err := v.verify(body, header); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHandler is one whole delivery through ServeHTTP: read, verify,
// decode, dedupe bookkeeping, an in-memory fetch and the info log line.
func BenchmarkHandler(b *testing.B) {
	v, _ := newVerifier(testSecret)
	raw := clusterResultJSON(10)
	result, err := decodeResult(bytes.NewReader(raw), testRequestID)
	if err != nil {
		b.Fatal(err)
	}
	fetch := func(ctx context.Context, k kind, requestID string) (*optimization, error) { return result, nil }
	logger := newLogger(io.Discard, slog.LevelInfo, "json")
	// Window 0: every iteration is a new delivery, not a remembered one.
	handler := newServer(services{logger: logger, verifier: v, fetch: fetch, process: logSummary(logger), seen: newDedupe(0, 1)})

	body := requestBody(testRequestID)
	template := signedDelivery(b, testSecret, "/webhook/cluster", body)
	reader := &rewindBody{body: body}
	req := template.Clone(context.Background())
	req.Body = reader
	w := &benchResponseWriter{header: http.Header{}}

	b.ReportAllocs()
	for b.Loop() {
		reader.Reset()
		clear(w.header)
		w.status = 0
		handler.ServeHTTP(w, req)
		if w.status != 0 && w.status != http.StatusOK {
			b.Fatalf("status %d", w.status)
		}
	}
}

// BenchmarkDecodeClusterResult decodes realistic cluster results, as the
// client does with every fetched optimization: a typical one of a few KiB
// and a large one of about 50 KiB.
func BenchmarkDecodeClusterResult(b *testing.B) {
	for _, tc := range []struct {
		name     string
		picks    int
		min, max int
	}{
		{"2.5KiB", 30, 2 << 10, 3 << 10},
		{"50KiB", 720, 45 << 10, 55 << 10},
	} {
		raw := clusterResultJSON(tc.picks)
		if len(raw) < tc.min || len(raw) > tc.max {
			b.Fatalf("result is %d bytes, want %d to %d", len(raw), tc.min, tc.max)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(raw)))
			b.ReportAllocs()
			for b.Loop() {
				result, err := decodeResult(bytes.NewReader(raw), testRequestID)
				if err != nil || int(result.OptimalClusters) == 0 {
					b.Fatal(err)
				}
			}
		})
	}
}

// clusterResultJSON is a cluster result for picks picks in the shape of a
// real one: every pick in an as-is and an optimal cluster of three orders.
func clusterResultJSON(picks int) []byte {
	clusters := func(prefix string, distance int) string {
		var out []string
		for c := 0; c*6 < picks; c++ {
			var ids, orders []string
			for p := c * 6; p < min(picks, c*6+6); p++ {
				ids = append(ids, strconv.Quote(fmt.Sprintf("pick-%d", p)))
				orders = append(orders, strconv.Quote(fmt.Sprintf("order-%d", p/2)))
			}
			out = append(out, fmt.Sprintf(`{"list_id":"%s%d","picks":[%s],"order_ids":[%s],"estimated_distance":%d}`,
				prefix, c, strings.Join(ids, ","), strings.Join(orders, ","), distance+c))
		}
		return "[" + strings.Join(out, ",") + "]"
	}
	return fmt.Appendf(nil, `{"_id":"674f5c1e2b8a4d0012ab0000","request_id":%q,"ownerId":"673f48095739843f4de65ec9",`+
		`"site_name":"Example","site_id":"6740aa","wave_id":"wave-bench","timestamp":"2024-12-04T16:52:49.303000",`+
		`"computation_time":0.53,"error":null,"purpose":"bench","visualization_url":"https://example.invalid/v",`+
		`"type":"CLUSTER","unit":"cm","invalid_picks":[],"extra":{},"asis_clusters":%s,"optimal_clusters":%s,`+
		`"asis_distance":%d,"optimal_distance":%d}`,
		testRequestID, clusters("o", 2000), clusters("c", 1000), 2000*picks, 1000*picks)
}

// rewindBody is a request body that can be read again, so that the
// benchmark measures the handler and not the making of requests.
type rewindBody struct {
	body []byte
	r    bytes.Reader
}

func (b *rewindBody) Reset()                     { b.r.Reset(b.body) }
func (b *rewindBody) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b *rewindBody) Close() error               { return nil }

type benchResponseWriter struct {
	header http.Header
	status int
}

func (w *benchResponseWriter) Header() http.Header { return w.header }
func (w *benchResponseWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}
func (w *benchResponseWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return len(p), nil
}

// loopbackDeliveries numbers BenchmarkDeliveryOverLoopback's deliveries.
var loopbackDeliveries atomic.Int64

// BenchmarkDeliveryOverLoopback is a whole delivery over real HTTP on
// loopback, for the receiver and for a bare baseline that does the same I/O
// (read the body, one GET, one log line, 200) and nothing else: their ratio
// is what verifying, decoding and deduplicating cost (make loadtest measures
// the same with the built binary).
func BenchmarkDeliveryOverLoopback(b *testing.B) {
	result := clusterResultJSON(30) // about 2.5 KB
	before, after, _ := bytes.Cut(result, []byte(`"`+testRequestID+`"`))
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		w.Header().Set("Content-Type", "application/json")
		w.Write(before)
		w.Write([]byte(`"` + id + `"`))
		w.Write(after)
	}))
	defer api.Close()
	apiURL, _ := url.Parse(api.URL)
	logger := newLogger(io.Discard, slog.LevelInfo, "json")
	v, _ := newVerifier(testSecret)
	client := newOptiPickClient(apiURL, testAPIKey, false, nil)
	apiClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	baseline := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, api.URL+"/optimize/cluster/baseline", nil)
		req.Header.Set("X-API-KEY", testAPIKey)
		resp, err := apiClient.Do(req)
		if err != nil {
			http.Error(w, "api", http.StatusBadGateway)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		logger.Info("delivered", "svix_id", r.Header.Get("svix-id"), "body_bytes", len(body), "api_status", resp.StatusCode)
	})
	for _, tc := range []struct {
		name    string
		handler http.Handler
	}{
		{"baseline", baseline},
		{"receiver", newServer(services{logger: logger, verifier: v, fetch: client.fetch, process: logSummary(logger), seen: newDedupe(time.Hour, 1<<20)})},
	} {
		b.Run(tc.name, func(b *testing.B) {
			server := httptest.NewServer(tc.handler)
			defer server.Close()
			sender := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			signer, _ := svix.NewWebhook(testSecret)
			now := time.Now()
			b.SetParallelism(32) // with GOMAXPROCS 2: 64 deliveries in flight, as make loadtest
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := loopbackDeliveries.Add(1) // unique across runs: never "already handled"
					body := fmt.Appendf(nil, `{"request_id":"%024x"}`, i)
					msgID := fmt.Sprintf("msg_bench_%s_%d", tc.name, i)
					signature, _ := signer.Sign(msgID, now, body)
					req, _ := http.NewRequest(http.MethodPost, server.URL+"/webhook/cluster", bytes.NewReader(body))
					req.Header = http.Header{"Svix-Id": {msgID}, "Svix-Timestamp": {strconv.FormatInt(now.Unix(), 10)}, "Svix-Signature": {signature}}
					resp, err := sender.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Fatalf("status %d", resp.StatusCode)
					}
				}
			})
		})
	}
}
