package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	svix "github.com/svix/svix-webhooks/go"
)

// FuzzWebhook sends arbitrary bodies and header values to the real handler.
// Whatever they are, it must not panic, and without a signature that the
// Svix library itself accepts it must neither call the API nor answer 2xx.
// With sign set, the harness signs the body, to reach the decoding steps.
func FuzzWebhook(f *testing.F) {
	f.Add(requestBody(testRequestID), "msg_1", "", "", true, false)
	f.Add(requestBody(testRequestID), "msg_1", "", "", true, true)
	f.Add([]byte(`{"request_id":"../../x"}`), "msg_2", "", "", true, false)
	f.Add([]byte(`{"request_id":"a","request_id":"b/c"}`), "msg_3", "", "", true, true)
	f.Add([]byte(`{"test": 2432232314}`), "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", false, false)
	f.Add(requestBody(testRequestID), "msg_4", "+99999999999", "v1, v1,, ,v1", false, true)
	f.Add([]byte("\xff\xfe{"), "msg\r\n5", "12345678901234567890", "v1a,xyz", false, false)

	v, err := newVerifier(testSecret)
	if err != nil {
		f.Fatal(err)
	}
	signer, _ := svix.NewWebhook(testSecret)
	const optimizeURL = "https://optipick.test/latest/optimize"

	f.Fuzz(func(t *testing.T, body []byte, msgID, timestamp, signature string, sign, route bool) {
		var mu sync.Mutex
		var fetched []string
		fetch := func(ctx context.Context, k kind, requestID string) (*optimization, error) {
			target, err := optimizationURL(optimizeURL, k, requestID)
			if err != nil {
				t.Fatalf("the handler fetched an id the URL builder refuses: %q", requestID)
			}
			mu.Lock()
			fetched = append(fetched, target)
			mu.Unlock()
			return &optimization{}, nil
		}
		logger := slog.New(slog.DiscardHandler)
		handler := newServer(services{logger: logger, verifier: v, fetch: fetch, process: logSummary(logger), seen: newDedupe(0, 1)})

		kind := "cluster"
		if route {
			kind = "route"
		}
		req := httptest.NewRequest(http.MethodPost, "/webhook/"+kind, bytes.NewReader(body))
		if sign {
			now := time.Now()
			timestamp = strconv.FormatInt(now.Unix(), 10)
			signature, _ = signer.Sign(msgID, now, body)
		}
		// Set the raw values, as a hostile client could send them.
		req.Header["Svix-Id"] = []string{msgID}
		req.Header["Svix-Timestamp"] = []string{timestamp}
		req.Header["Svix-Signature"] = []string{signature}
		resp := httptest.NewRecorder()
		handler.ServeHTTP(resp, req)

		genuine := signer.Verify(body, req.Header) == nil
		if !genuine && (len(fetched) > 0 || resp.Code < 300) {
			t.Fatalf("unsigned delivery got %d and fetched %v", resp.Code, fetched)
		}
		for _, target := range fetched {
			u, err := url.Parse(target)
			if err != nil || !strings.HasPrefix(u.Path, "/latest/optimize/"+kind+"/") || strings.Count(u.Path, "/") != 4 || u.RawQuery != "" {
				t.Fatalf("fetched %q, outside /optimize/%s/", target, kind)
			}
		}
	})
}
