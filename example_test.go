package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
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
	client := newOptiPickClient(apiURL, "your-api-key", false, nil)
	logger := slog.New(slog.DiscardHandler)
	handler := newServer(services{logger: logger, verifier: v, fetch: client.fetch, process: store, seen: newDedupe(time.Hour, 1000)})

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
