package main

import (
	"bytes"
	"context"
	"crypto/tls"
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
	"unicode"
)

const (
	// API calls in flight (and idle connections kept for them): a slow or
	// dead API cannot make the service pile up goroutines and sockets.
	maxConcurrentFetches = 64
	// A fetch makes at most maxAttempts calls, waiting about firstBackoff
	// before the first retry, twice as long each time, at most maxBackoff.
	maxAttempts  = 5
	firstBackoff = 200 * time.Millisecond
	maxBackoff   = 2 * time.Second
	// A hung call is given up early enough to leave time for another.
	responseHeaderTimeout = 5 * time.Second
	// OptiPick answers with a few hundred bytes of headers; Go's default
	// allows 10 MiB, times every fetch in flight.
	maxResponseHeaderBytes = 64 << 10
	// When OptiPick throttles us (429) or is unavailable (503), the delivery
	// is answered 503 with a Retry-After for Svix (which waits the longer of
	// it and its own backoff): what OptiPick asked for, at least
	// minRetryAfter and at most maxRetryAfter, so that a throttle is waited
	// out without losing much of the event's 27 h of retries.
	minRetryAfter = 30 * time.Second
	maxRetryAfter = time.Hour
	// How much of an unexpected answer, a site_name and an error is logged.
	maxExcerptBytes  = 256
	maxSiteNameBytes = 200
	maxErrorBytes    = 500
)

// kind is the kind of an optimization, and its path segment in the API.
type kind string

const (
	kindCluster kind = "cluster"
	kindRoute   kind = "route"
)

// kinds are all the kinds.
var kinds = []kind{kindCluster, kindRoute}

// unavailableError means "come back later": a delivery that fails with it
// is answered 503.
type unavailableError string

func (e unavailableError) Error() string   { return string(e) }
func (e unavailableError) HTTPStatus() int { return http.StatusServiceUnavailable }

var (
	errBusy       = unavailableError("too many OptiPick API calls in flight")
	errRetryLater = unavailableError("OptiPick API asked to retry later than this delivery's deadline")
)

// optiPickClient fetches finished optimizations from the OptiPick API.
type optiPickClient struct {
	optimizeURL string // {base}/optimize
	shownURL    string // the same, as logs show it: password redacted
	apiKey      string
	keepRaw     bool // keep each result's JSON in optimization.Raw
	httpClient  *http.Client
	slots       chan struct{} // one per API call in flight
	metrics     recorder
}

// newOptiPickClient returns a client for the API at baseURL.
func newOptiPickClient(baseURL *url.URL, apiKey string, keepRaw bool, metrics recorder) *optiPickClient {
	optimize := baseURL.JoinPath("optimize")
	return &optiPickClient{
		optimizeURL: optimize.String(),
		shownURL:    optimize.Redacted(),
		apiKey:      apiKey,
		keepRaw:     keepRaw,
		httpClient: &http.Client{
			Transport: newAPITransport(),
			// The key goes to the configured API only: a redirect is a
			// failed fetch. Deadlines come from each call's ctx.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		slots:   make(chan struct{}, maxConcurrentFetches),
		metrics: metrics,
	}
}

// newAPITransport is the outbound transport, sized and timed for this
// service.
func newAPITransport() *http.Transport {
	dialer := &net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                  http.ProxyFromEnvironment,
		DialContext:            dialer.DialContext,
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    3 * time.Second,
		ResponseHeaderTimeout:  responseHeaderTimeout,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		MaxConnsPerHost:        maxConcurrentFetches,
		MaxIdleConnsPerHost:    maxConcurrentFetches,
		IdleConnTimeout:        90 * time.Second,
	}
}

// fetch calls GET /optimize/{kind}/{requestID}, retrying network errors, 5xx
// and 429 with backoff and jitter while ctx's deadline leaves time. A 200
// counts only when it is this result: a JSON object whose request_id is
// requestID. The API key is redacted from what the API sent, in errors and
// in the result: an API, or a proxy, may echo it.
func (c *optiPickClient) fetch(ctx context.Context, k kind, requestID string) (*optimization, error) {
	target, err := optimizationURL(c.optimizeURL, k, requestID)
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		res, err := c.get(ctx, target, requestID)
		if err == nil {
			c.redactResult(res)
			return res, nil
		}
		wait, giveUp := retryWait(ctx, attempt, err)
		if giveUp != nil {
			return nil, giveUp
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (after: %w)", ctx.Err(), err)
		case <-time.After(wait):
		}
	}
}

// retryWait is how long to wait before retrying after attempt failed with
// err, or the error to give up with. A retry must leave a second for its
// call before ctx's deadline.
func retryWait(ctx context.Context, attempt int, err error) (time.Duration, error) {
	if attempt == maxAttempts || !retryable(ctx, err) {
		return 0, err
	}
	wait := backoff(attempt)
	var apiErr *apiError
	asked := errors.As(err, &apiErr) && apiErr.RetryAfter > 0
	if asked {
		wait = apiErr.RetryAfter
	}
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= wait+time.Second {
		if asked {
			return 0, fmt.Errorf("%w (%v): %w", errRetryLater, wait, err)
		}
		return 0, err
	}
	return wait, nil
}

// get makes one API call.
func (c *optiPickClient) get(ctx context.Context, target, requestID string) (*optimization, error) {
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

	status := 0 // no answer
	start := time.Now()
	defer func() { c.metrics.apiCalled(status, time.Since(start)) }()
	resp, err := c.httpClient.Do(req)
	if err != nil {
		return nil, withSettingToCheck(err)
	}
	defer resp.Body.Close()
	status = resp.StatusCode

	shown := c.shownURL + strings.TrimPrefix(target, c.optimizeURL)
	if resp.StatusCode != http.StatusOK {
		return nil, c.answerError(resp, shown)
	}
	return c.readResult(resp.Body, requestID, shown)
}

// readResult reads the result a 200 carries, and checks that it is the one
// asked for.
func (c *optiPickClient) readResult(body io.Reader, requestID, shown string) (*optimization, error) {
	// The start of the body is kept for errors: an excerpt, and a key that
	// starts in it (redacted before the excerpt is cut).
	rr := getResultReader(body, maxExcerptBytes+len(c.apiKey), c.keepRaw)
	defer rr.release()
	res, err := rr.decode()
	if err == nil {
		err = c.checkRequestID(res.RequestID, requestID)
	}
	switch {
	case errors.Is(err, errResultTooLarge):
		return nil, fmt.Errorf("OptiPick API result from %s is more than the %d bytes this service reads",
			shown, maxResultBytes)
	case errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("OptiPick API answered 200 from %s, but its result had not arrived by the deadline: %w",
			shown, err)
	case err != nil:
		return nil, fmt.Errorf("OptiPick API answered 200 from %s, but not with this result: %w (body starts: %s)",
			shown, err, excerpt(c.redact(rr.readStart()), maxExcerptBytes))
	}
	return res, nil
}

// withSettingToCheck names the setting to check when the API could not be
// reached at all: no such host, or a connection refused or timed out.
func withSettingToCheck(err error) error {
	var dnsErr *net.DNSError
	var opErr *net.OpError
	if errors.As(err, &dnsErr) || (errors.As(err, &opErr) && opErr.Op == "dial") {
		return fmt.Errorf("%w (is OPTIPICK_API_URL right, and the API reachable from here?)", err)
	}
	return err
}

// checkRequestID refuses a result that does not answer wantID.
func (c *optiPickClient) checkRequestID(id, wantID string) error {
	switch {
	case id == "":
		return errors.New("no request_id")
	case id != wantID && !validRequestID(id): // not shown: an API may echo the key there
		return fmt.Errorf("request_id is not %s, nor an id (%d bytes)", wantID, len(id))
	case id != wantID:
		return fmt.Errorf("request_id is %s, not %s", c.redact(id), wantID)
	}
	return nil
}

// answerError is the error for an answer other than 200. It reads an
// excerpt of the body, and a little more, so that the connection is
// reused.
func (c *optiPickClient) answerError(resp *http.Response, shown string) error {
	head, _ := io.ReadAll(io.LimitReader(resp.Body, int64(maxExcerptBytes+len(c.apiKey))))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return &apiError{
		Status:     resp.StatusCode,
		URL:        shown,
		Excerpt:    excerpt(c.redact(string(head)), maxExcerptBytes),
		RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
	}
}

// redactResult removes the API key from what will be logged or processed,
// then cuts the strings logged to their bounds.
func (c *optiPickClient) redactResult(res *optimization) {
	res.SiteName = excerpt(c.redact(res.SiteName), maxSiteNameBytes)
	res.Error = errorMessage(excerpt(c.redact(string(res.Error)), maxErrorBytes))
	if c.apiKey != "" && bytes.Contains(res.Raw, []byte(c.apiKey)) {
		res.Raw = bytes.ReplaceAll(res.Raw, []byte(c.apiKey), []byte("[API key]"))
	}
}

// redact replaces the API key in text that came from the API.
func (c *optiPickClient) redact(text string) string {
	if c.apiKey == "" {
		return text
	}
	return strings.ReplaceAll(text, c.apiKey, "[API key]")
}

// excerpt is at most maxLen bytes of s, as valid UTF-8 without control or
// bidirectional-text characters, so that it reads the same in any log.
func excerpt(s string, maxLen int) string {
	s = strings.ToValidUTF8(s[:min(len(s), maxLen)], "\uFFFD")
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\r' || r == '\t':
			return ' '
		case !unicode.IsPrint(r):
			return '\uFFFD'
		}
		return r
	}, s)
}

// apiError is an API answer other than 200.
type apiError struct {
	Status     int
	URL        string        // what was fetched, password redacted
	RetryAfter time.Duration // 0 when the API did not say
	Excerpt    string        // the start of the answer's body, safe to log
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("OptiPick API answered %d %s", e.Status, http.StatusText(e.Status))
	switch {
	case e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden:
		msg += " (the API key was rejected: check OPTIPICK_API_KEY; keys can expire)"
	case e.Status == http.StatusNotFound || e.Status == http.StatusUnprocessableEntity:
		msg += " for " + e.URL +
			" (is the request_id unknown or unfinished, or does OPTIPICK_API_URL point at another service?)"
	case e.Status >= 300 && e.Status < 400:
		msg += " (a redirect, not followed: the API key goes only to OPTIPICK_API_URL; check it)"
	}
	if e.Excerpt != "" {
		msg += ": " + e.Excerpt
	}
	return msg
}

// HTTPStatus is what a delivery that failed with e is answered: 503 when
// the API throttled us or was unavailable, else 502.
func (e *apiError) HTTPStatus() int {
	if e.comeBackLater() {
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}

func (e *apiError) comeBackLater() bool {
	return e.Status == http.StatusTooManyRequests || e.Status == http.StatusServiceUnavailable
}

// retryAfter is the Retry-After for a delivery that failed with err, or 0
// for none: when OptiPick throttled us, was unavailable, or asked to retry
// later than the deadline allows, what it asked for, within minRetryAfter
// and maxRetryAfter.
func retryAfter(err error) time.Duration {
	var apiErr *apiError
	if !errors.As(err, &apiErr) {
		return 0
	}
	if !apiErr.comeBackLater() && apiErr.RetryAfter == 0 {
		return 0
	}
	return min(max(apiErr.RetryAfter, minRetryAfter), maxRetryAfter)
}

// retryable reports whether another attempt may succeed: network errors
// (unless ctx has ended, or a certificate was not trusted), 5xx and 429.
func retryable(ctx context.Context, err error) bool {
	var apiErr *apiError
	var certErr *tls.CertificateVerificationError
	var netErr net.Error // every transport error (*url.Error) is one
	switch {
	case ctx.Err() != nil || errors.Is(err, errBusy) || errors.As(err, &certErr):
		return false
	case errors.As(err, &apiErr):
		return apiErr.Status >= 500 || apiErr.Status == http.StatusTooManyRequests
	}
	return errors.As(err, &netErr)
}

// backoff is the wait before retry number attempt (1, 2, ...): exponential,
// with jitter so that many receivers do not retry in step.
func backoff(attempt int) time.Duration {
	d := min(firstBackoff<<(attempt-1), maxBackoff)
	return d/2 + rand.N(d/2+1)
}

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date.
func parseRetryAfter(value string, now time.Time) time.Duration {
	if secs, err := strconv.ParseUint(value, 10, 32); err == nil {
		return time.Duration(secs) * time.Second
	}
	if at, err := http.ParseTime(value); err == nil && at.After(now) {
		return at.Sub(now)
	}
	return 0
}

// optimizationURL is {optimizeURL}/{kind}/{requestID}. It refuses an id
// that is not one plain path segment, whatever the caller checked: no id
// can leave that path or add a query.
func optimizationURL(optimizeURL string, k kind, requestID string) (string, error) {
	if k != kindCluster && k != kindRoute {
		return "", fmt.Errorf("unknown optimization kind %q", excerpt(string(k), 32))
	}
	if !validRequestID(requestID) {
		return "", errors.New("invalid request_id")
	}
	return optimizeURL + "/" + string(k) + "/" + requestID, nil
}
