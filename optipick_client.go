package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const (
	// maxConcurrentFetches bounds the API calls in flight, so that a slow
	// or dead API cannot make the service pile up goroutines and sockets.
	// The transport keeps as many idle connections to reuse under load.
	maxConcurrentFetches = 64

	// maxAttempts bounds the API calls for one delivery; the delivery's
	// deadline bounds them too.
	maxAttempts = 5

	// A first retry waits about firstBackoff, each next one twice as long,
	// never more than maxBackoff.
	firstBackoff = 200 * time.Millisecond
	maxBackoff   = 2 * time.Second

	// maxResultBytes caps an optimization result. Results with thousands of
	// picks are a few MiB.
	maxResultBytes = 32 << 20

	// maxExcerptBytes caps how much of an error answer reaches the logs.
	maxExcerptBytes = 256
)

var (
	// errBusy: no slot for an API call came free before the deadline.
	errBusy = errors.New("too many OptiPick API calls in flight")
	// errRetryLater: the API asked to wait longer than the deadline allows.
	errRetryLater = errors.New("OptiPick API asked to retry later than this delivery's deadline")
)

// optimization is what the receiver reads of an OptiPick result. Decoding is
// lenient: unknown fields are ignored, and timestamp (which has no time zone)
// stays a string.
type optimization struct {
	RequestID       string          `json:"request_id"`
	SiteName        string          `json:"site_name"`
	Timestamp       string          `json:"timestamp"`
	ComputationTime float64         `json:"computation_time"`
	Error           json.RawMessage `json:"error"`
	AsisDistance    *float64        `json:"asis_distance"`
	OptimalDistance *float64        `json:"optimal_distance"`
	OptimalClusters []struct{}      `json:"optimal_clusters"` // only counted
	Picks           []struct{}      `json:"picks"`            // only counted

	raw []byte // the whole result, as the API sent it
}

// failure is OptiPick's message when the optimization itself failed, or "".
func (o *optimization) failure() string {
	text := strings.TrimSpace(string(o.Error))
	if text == "" || text == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(o.Error, &s) == nil {
		text = s
	}
	return excerpt([]byte(text), 500)
}

// optiPickClient fetches finished optimizations from the OptiPick API.
type optiPickClient struct {
	optimizeURL string // {base}/optimize, without a trailing slash
	apiKey      string
	http        *http.Client
	slots       chan struct{} // one per API call in flight
}

// newOptiPickClient returns a client for the API at baseURL. A nil transport
// means one sized and timed for this service.
func newOptiPickClient(baseURL *url.URL, apiKey string, transport http.RoundTripper) *optiPickClient {
	if transport == nil {
		transport = &http.Transport{
			Proxy:             http.ProxyFromEnvironment,
			DialContext:       (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2: true,
			// A hung attempt gives up at half the deadline, leaving time to retry.
			TLSHandshakeTimeout:   3 * time.Second,
			ResponseHeaderTimeout: deliveryDeadline / 2,
			MaxConnsPerHost:       maxConcurrentFetches,
			MaxIdleConns:          maxConcurrentFetches,
			MaxIdleConnsPerHost:   maxConcurrentFetches,
			IdleConnTimeout:       90 * time.Second,
		}
	}
	return &optiPickClient{
		optimizeURL: baseURL.JoinPath("optimize").String(),
		apiKey:      apiKey,
		// Deadlines come from each call's context.
		http:  &http.Client{Transport: transport},
		slots: make(chan struct{}, maxConcurrentFetches),
	}
}

// fetch calls GET /optimize/{kind}/{requestID}, retrying network errors, 5xx
// and 429 with exponential backoff and jitter while ctx's deadline leaves
// time. Other answers are final: the caller reports them and Svix retries.
func (c *optiPickClient) fetch(ctx context.Context, kind, requestID string) (*optimization, error) {
	target, err := optimizationURL(c.optimizeURL, kind, requestID)
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		result, err := c.get(ctx, target)
		if err == nil || attempt == maxAttempts || !retryable(ctx, err) {
			return result, err
		}
		wait := backoff(attempt)
		var apiErr *apiError
		if errors.As(err, &apiErr) && apiErr.RetryAfter > 0 {
			wait = apiErr.RetryAfter
			if !fitsBeforeDeadline(ctx, wait) {
				return nil, fmt.Errorf("%w (%v): %w", errRetryLater, wait, err)
			}
		}
		if !fitsBeforeDeadline(ctx, wait) {
			return nil, err
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("%w (after: %w)", ctx.Err(), err)
		case <-timer.C:
		}
	}
}

// get makes one API call.
func (c *optiPickClient) get(ctx context.Context, target string) (*optimization, error) {
	select {
	case c.slots <- struct{}{}:
		defer func() { <-c.slots }()
	case <-ctx.Done():
		return nil, errBusy
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-API-KEY", c.apiKey)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "optipick-webhooks")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()

	if resp.StatusCode != http.StatusOK {
		// Read enough to see whole any copy of the key that starts within
		// the excerpt: an API that echoes it must not put it in the logs.
		head, _ := io.ReadAll(io.LimitReader(resp.Body, int64(maxExcerptBytes+len(c.apiKey))))
		head = bytes.ReplaceAll(head, []byte(c.apiKey), []byte("[API key]"))
		// Drain a little more so that the connection can be reused.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil, &apiError{
			Status:     resp.StatusCode,
			RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
			Excerpt:    excerpt(head, maxExcerptBytes),
		}
	}

	return decodeResult(resp.Body, resp.ContentLength)
}

// decodeResult reads and decodes a result of at most maxResultBytes.
// contentLength is the answer's Content-Length, or -1.
func decodeResult(body io.Reader, contentLength int64) (*optimization, error) {
	if contentLength > maxResultBytes {
		return nil, fmt.Errorf("OptiPick API result is %d bytes, more than the %d this service reads", contentLength, maxResultBytes)
	}
	raw, err := readAll(io.LimitReader(body, maxResultBytes+1), contentLength)
	if err != nil {
		return nil, fmt.Errorf("reading OptiPick API result: %w", err)
	}
	if len(raw) > maxResultBytes {
		return nil, fmt.Errorf("OptiPick API result is more than the %d bytes this service reads", maxResultBytes)
	}
	result := &optimization{raw: raw}
	if err := json.Unmarshal(raw, result); err != nil {
		// A field of an unexpected type only costs that field in the log
		// line; anything else means the answer is not a result at all.
		if typeErr := (*json.UnmarshalTypeError)(nil); !errors.As(err, &typeErr) {
			return nil, fmt.Errorf("OptiPick API answered 200 with a body that is not a JSON result: %w (starts %q)", err, excerpt(raw, 64))
		}
	}
	return result, nil
}

// apiError is an API answer other than 200.
type apiError struct {
	Status     int
	RetryAfter time.Duration // 0 when the API did not say
	Excerpt    string        // the start of the answer's body
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("OptiPick API answered %d %s", e.Status, http.StatusText(e.Status))
	switch e.Status {
	case http.StatusUnauthorized, http.StatusForbidden:
		msg += " (the API key was rejected: check OPTIPICK_API_KEY; keys can expire)"
	case http.StatusNotFound, http.StatusUnprocessableEntity:
		msg += " (is the request_id unknown, or the optimization unfinished?)"
	}
	if e.Excerpt != "" {
		msg += fmt.Sprintf(": %q", e.Excerpt)
	}
	return msg
}

// retryable reports whether another attempt may succeed: network errors
// (unless ctx itself has ended), 5xx and 429.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, errBusy) {
		return false
	}
	var apiErr *apiError
	if errors.As(err, &apiErr) {
		return apiErr.Status >= 500 || apiErr.Status == http.StatusTooManyRequests
	}
	var netErr net.Error
	var urlErr *url.Error
	return errors.As(err, &netErr) || errors.As(err, &urlErr)
}

// backoff is the wait before retry number attempt (1, 2, ...): exponential,
// with jitter so that many receivers do not retry in step.
func backoff(attempt int) time.Duration {
	d := min(firstBackoff<<(attempt-1), maxBackoff)
	return d/2 + rand.N(d/2+1)
}

// fitsBeforeDeadline reports whether waiting d still leaves time for one
// more call before ctx's deadline.
func fitsBeforeDeadline(ctx context.Context, d time.Duration) bool {
	deadline, ok := ctx.Deadline()
	return !ok || time.Until(deadline) > d+time.Second
}

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date.
func parseRetryAfter(value string, now time.Time) time.Duration {
	if value == "" {
		return 0
	}
	if secs, err := strconv.ParseUint(value, 10, 32); err == nil {
		return time.Duration(secs) * time.Second
	}
	if at, err := http.ParseTime(value); err == nil && at.After(now) {
		return at.Sub(now)
	}
	return 0
}

// optimizationURL is {optimizeURL}/{kind}/{requestID}, where optimizeURL is
// {base}/optimize. It refuses ids that could leave that path, whatever the
// caller checked before: valid ids need no escaping.
func optimizationURL(optimizeURL, kind, requestID string) (string, error) {
	if kind != "cluster" && kind != "route" {
		return "", fmt.Errorf("unknown optimization kind %q", kind)
	}
	if !validRequestID(requestID) {
		return "", errors.New("invalid request_id")
	}
	return optimizeURL + "/" + kind + "/" + requestID, nil
}

// validRequestID accepts 1 to 128 of [A-Za-z0-9_-]: OptiPick's ids are
// 24-hex ObjectIds, and nothing else may reach a URL path.
func validRequestID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// readAll reads r to its end into a buffer presized from sizeHint (a
// Content-Length, or -1), sparing the copies io.ReadAll makes as it grows.
// The caller limits r.
func readAll(r io.Reader, sizeHint int64) ([]byte, error) {
	if sizeHint < 0 || sizeHint > maxResultBytes {
		sizeHint = 512
	}
	buf := make([]byte, 0, sizeHint+1) // +1: room for the read that sees EOF
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// excerpt is at most max bytes of b as valid UTF-8, for logs.
func excerpt(b []byte, max int) string {
	return strings.ToValidUTF8(string(b[:min(len(b), max)]), "\uFFFD")
}

// isAPIStatus reports whether err is the API answering status.
func isAPIStatus(err error, status int) bool {
	var apiErr *apiError
	return errors.As(err, &apiErr) && apiErr.Status == status
}
