package main

// Benchmarks: what verification and a delivery cost (make bench). Compare
// figures with the floor measured in the same run, never across machines.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"optipick-webhooks/internal/optipicksim"
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
			v, err := parseSecrets(strings.Join(tc.secrets, " "))
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
	v, _ := parseSecrets(testSecret)
	result, err := decodeResult(bytes.NewReader(clusterResultJSON(b, 10)), -1)
	if err != nil {
		b.Fatal(err)
	}
	fetch := func(ctx context.Context, kind, requestID string) (*optimization, error) { return result, nil }
	logger := newLogger(io.Discard, slog.LevelInfo, "json")
	// Window 0: every iteration is a new delivery, not a remembered one.
	handler := newHandler(logger, v, fetch, newDedupe(0, 1))

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

// BenchmarkDecodeClusterResult50KiB decodes a realistic cluster result of
// about 50 KiB, as the client does with every fetched optimization.
func BenchmarkDecodeClusterResult50KiB(b *testing.B) {
	raw := clusterResultJSON(b, 750)
	if len(raw) < 45<<10 || len(raw) > 55<<10 {
		b.Fatalf("result is %d bytes, want about 50 KiB", len(raw))
	}
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		result, err := decodeResult(bytes.NewReader(raw), int64(len(raw)))
		if err != nil || len(result.OptimalClusters) == 0 {
			b.Fatal(err)
		}
	}
}

// clusterResultJSON is a cluster result for picks picks, made by the
// simulator, in OptiPick's shape.
func clusterResultJSON(b *testing.B, picks int) []byte {
	sim, err := optipicksim.New(optipicksim.Config{APIKey: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer sim.Close()
	req := optipicksim.OptimizeRequest{SiteName: "Example", WaveID: "wave-bench"}
	for i := range picks {
		location := fmt.Sprintf("%c-%02d", 'A'+i%12, 1+i*7%40)
		req.Picks = append(req.Picks, optipicksim.Pick{
			PickID:     "pick-" + strconv.Itoa(i),
			LocationID: json.RawMessage(strconv.Quote(location)),
			OrderID:    "order-" + strconv.Itoa(i/3),
		})
	}
	body, _ := json.Marshal(req)
	httpReq := httptest.NewRequest(http.MethodPost, "/optimize/cluster", bytes.NewReader(body))
	httpReq.Header.Set("X-API-KEY", "bench")
	resp := httptest.NewRecorder()
	sim.Handler().ServeHTTP(resp, httpReq)
	if resp.Code != http.StatusOK {
		b.Fatalf("simulator: %d %s", resp.Code, resp.Body)
	}
	return resp.Body.Bytes()
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
