package main

import (
	"bytes"
	"context"
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

	"github.com/go-json-experiment/json/jsontext"
)

const (
	// maxConcurrentFetches bounds the API calls in flight, so that a slow
	// or dead API cannot make the service pile up goroutines and sockets.
	// The transport keeps as many idle connections to reuse under load.
	maxConcurrentFetches = 64

	// maxAttempts bounds the API calls for one fetch; the caller's deadline
	// bounds them too.
	maxAttempts = 5

	// A first retry waits about firstBackoff, each next one twice as long,
	// never more than maxBackoff.
	firstBackoff = 200 * time.Millisecond
	maxBackoff   = 2 * time.Second

	// responseHeaderTimeout gives up on a hung call early enough to leave
	// time for another one within a delivery's deadline.
	responseHeaderTimeout = 5 * time.Second

	// maxResultBytes caps how much of a result is read. Results with
	// thousands of picks are a few MiB. A result is streamed, not held: this
	// bounds the time spent reading one, not the memory.
	maxResultBytes = 32 << 20

	// maxExcerptBytes caps how much of an unexpected answer reaches the logs.
	maxExcerptBytes = 256
)

// kind is the kind of an optimization, and the path segment that names it
// in the API.
type kind string

const (
	kindCluster kind = "cluster"
	kindRoute   kind = "route"
)

// unavailableError means "come back later": the work could not be tried
// now. A delivery that fails with it is answered 503.
type unavailableError string

func (e unavailableError) Error() string   { return string(e) }
func (e unavailableError) HTTPStatus() int { return http.StatusServiceUnavailable }

const (
	// errBusy: no slot for an API call came free before the deadline.
	errBusy = unavailableError("too many OptiPick API calls in flight")
	// errRetryLater: the API asked to wait longer than the deadline allows.
	errRetryLater = unavailableError("OptiPick API asked to retry later than this delivery's deadline")
)

// optimization is what the receiver reads of an OptiPick result: the fields
// its summary needs, streamed from the answer. Reading is lenient: unknown
// fields are skipped, and a known field of an unexpected type is left zero.
type optimization struct {
	RequestID       string
	SiteName        string
	ComputationTime float64
	Error           string   // OptiPick's message when the optimization itself failed
	AsisDistance    *float64 // nil when absent
	OptimalDistance *float64 // nil when absent
	Clusters        int      // len(optimal_clusters)
	Picks           int      // len(picks)

	// Raw is the whole result as the API sent it, kept only by a client
	// made with keepRaw (LOG_LEVEL=debug).
	Raw []byte
}

// optiPickClient fetches finished optimizations from the OptiPick API.
type optiPickClient struct {
	optimizeURL string // {base}/optimize, without a trailing slash
	apiKey      string
	keepRaw     bool
	http        *http.Client
	slots       chan struct{} // one per API call in flight
}

// newOptiPickClient returns a client for the API at baseURL. keepRaw keeps
// each result's raw JSON in optimization.Raw. A nil transport means one
// sized and timed for this service.
func newOptiPickClient(baseURL *url.URL, apiKey string, keepRaw bool, transport http.RoundTripper) *optiPickClient {
	if transport == nil {
		transport = &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			TLSHandshakeTimeout:   3 * time.Second,
			ResponseHeaderTimeout: responseHeaderTimeout,
			MaxConnsPerHost:       maxConcurrentFetches,
			MaxIdleConns:          maxConcurrentFetches,
			MaxIdleConnsPerHost:   maxConcurrentFetches,
			IdleConnTimeout:       90 * time.Second,
		}
	}
	return &optiPickClient{
		optimizeURL: baseURL.JoinPath("optimize").String(),
		apiKey:      apiKey,
		keepRaw:     keepRaw,
		http: &http.Client{
			Transport: transport,
			// The key goes to the configured API and nowhere else: a
			// redirect is answered as it is, a failed fetch.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			// Deadlines come from each call's context.
		},
		slots: make(chan struct{}, maxConcurrentFetches),
	}
}

// fetch calls GET /optimize/{kind}/{requestID}, retrying network errors, 5xx
// and 429 with exponential backoff and jitter while ctx's deadline leaves
// time. Other answers are final: the caller reports them and Svix retries.
// A 200 counts only when it is this result: a JSON object whose request_id
// is requestID.
func (c *optiPickClient) fetch(ctx context.Context, k kind, requestID string) (*optimization, error) {
	target, err := optimizationURL(c.optimizeURL, k, requestID)
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		result, err := c.get(ctx, target, requestID)
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
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()

	if resp.StatusCode != http.StatusOK {
		// Read enough to see whole any copy of the key that starts within
		// the excerpt, then drain a little more so that the connection can
		// be reused.
		head, _ := io.ReadAll(io.LimitReader(resp.Body, int64(maxExcerptBytes+len(c.apiKey))))
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil, &apiError{
			Status:     resp.StatusCode,
			URL:        redacted(target),
			RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
			Excerpt:    c.excerpt(head),
		}
	}

	var raw *bytes.Buffer
	head := prefixWriter{max: maxExcerptBytes + len(c.apiKey)}
	var seen io.Writer = &head
	if c.keepRaw {
		raw = &bytes.Buffer{}
		seen = io.MultiWriter(&head, raw)
	}
	limited := &io.LimitedReader{R: resp.Body, N: maxResultBytes + 1}
	body := io.TeeReader(limited, seen)
	result, err := decodeResult(body, requestID)
	if err != nil {
		// The decoder stops where the body went wrong: read on far enough
		// to show the start of it.
		io.CopyN(io.Discard, body, int64(head.max-len(head.buf)))
	}
	if limited.N <= 0 {
		return nil, fmt.Errorf("OptiPick API result from %s is more than the %d bytes this service reads", redacted(target), maxResultBytes)
	}
	if err != nil {
		return nil, fmt.Errorf("OptiPick API answered 200 from %s, but not with this result: %w (body starts: %s)", redacted(target), err, c.excerpt(head.buf))
	}
	if raw != nil {
		result.Raw = raw.Bytes()
	}
	return result, nil
}

// decodeResult streams one result, keeping only the fields of the summary.
// It refuses what is not this result: not a JSON object, trailing data, a
// duplicate name, no request_id, or another one than wantID.
func decodeResult(r io.Reader, wantID string) (*optimization, error) {
	dec := jsontext.NewDecoder(r)
	if dec.PeekKind() != '{' {
		if _, err := dec.ReadToken(); err != nil {
			return nil, fmt.Errorf("not JSON: %w", err)
		}
		return nil, errors.New("not a JSON object")
	}
	if _, err := dec.ReadToken(); err != nil {
		return nil, err
	}
	res := &optimization{}
	for dec.PeekKind() != '}' {
		name, err := dec.ReadToken()
		if err != nil {
			return nil, err
		}
		if err := res.readField(dec, name.String()); err != nil {
			return nil, err
		}
	}
	if _, err := dec.ReadToken(); err != nil { // the closing }
		return nil, err
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	switch {
	case res.RequestID == "":
		return nil, errors.New("no request_id")
	case res.RequestID != wantID:
		return nil, fmt.Errorf("request_id is %s, not %s", excerptString(res.RequestID, 64), wantID)
	}
	return res, nil
}

// readField reads the value of the top-level field name into res, or skips
// it. A value of an unexpected type is skipped too.
func (res *optimization) readField(dec *jsontext.Decoder, name string) error {
	switch next := dec.PeekKind(); {
	case next == '"' && (name == "request_id" || name == "site_name" || name == "error"):
		tok, err := dec.ReadToken()
		switch name {
		case "request_id":
			res.RequestID = tok.String()
		case "site_name":
			res.SiteName = excerptString(tok.String(), 200)
		default:
			res.Error = excerptString(strings.TrimSpace(tok.String()), 500)
		}
		return err
	case next == '0' && (name == "computation_time" || name == "asis_distance" || name == "optimal_distance"):
		tok, err := dec.ReadToken()
		if err != nil {
			return err
		}
		f, err := tok.Float()
		if err != nil {
			return nil // out of float64's range: leave the field out
		}
		switch name {
		case "computation_time":
			res.ComputationTime = f
		case "asis_distance":
			res.AsisDistance = &f
		default:
			res.OptimalDistance = &f
		}
		return nil
	case next == '[' && (name == "optimal_clusters" || name == "picks"):
		n, err := countElements(dec)
		if name == "picks" {
			res.Picks = n
		} else {
			res.Clusters = n
		}
		return err
	case name == "error" && next != 'n':
		// Neither a message nor null: keep a bounded rendering of it.
		value, err := dec.ReadValue()
		res.Error = excerptString(string(value), 500)
		return err
	}
	return dec.SkipValue()
}

// countElements reads a JSON array, counting its elements without keeping them.
func countElements(dec *jsontext.Decoder) (int, error) {
	if _, err := dec.ReadToken(); err != nil { // [
		return 0, err
	}
	n := 0
	for dec.PeekKind() != ']' {
		if err := dec.SkipValue(); err != nil {
			return n, err
		}
		n++
	}
	_, err := dec.ReadToken() // ]
	return n, err
}

// prefixWriter keeps the first max bytes written to it.
type prefixWriter struct {
	max int
	buf []byte
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	if room := w.max - len(w.buf); room > 0 {
		w.buf = append(w.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// excerpt is the start of an answer's body for the logs, with the API key
// redacted wherever the API (or a proxy) echoed it.
func (c *optiPickClient) excerpt(head []byte) string {
	return excerptString(string(bytes.ReplaceAll(head, []byte(c.apiKey), []byte("[API key]"))), maxExcerptBytes)
}

// excerptString is at most max bytes of s, as valid UTF-8 with no control
// or bidirectional-text characters, so that it reads the same in any log.
func excerptString(s string, max int) string {
	s = strings.ToValidUTF8(s[:min(len(s), max)], "\uFFFD")
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
	URL        string        // what was fetched (never holds the key or a password)
	RetryAfter time.Duration // 0 when the API did not say
	Excerpt    string        // the start of the answer's body, made safe to log
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("OptiPick API answered %d %s", e.Status, http.StatusText(e.Status))
	switch {
	case e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden:
		msg += " (the API key was rejected: check OPTIPICK_API_KEY; keys can expire)"
	case e.Status == http.StatusNotFound || e.Status == http.StatusUnprocessableEntity:
		msg += " for " + e.URL + " (is the request_id unknown or unfinished, or does OPTIPICK_API_URL point at another service?)"
	case e.Status >= 300 && e.Status < 400:
		msg += " (a redirect, not followed: the API key goes only to OPTIPICK_API_URL; check it)"
	}
	if e.Excerpt != "" {
		msg += ": " + e.Excerpt
	}
	return msg
}

// HTTPStatus is what a delivery that failed with e is answered: 503 when
// the API throttled us, else 502.
func (e *apiError) HTTPStatus() int {
	if e.Status == http.StatusTooManyRequests {
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
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

// redacted is rawURL for messages: a password in it (OPTIPICK_API_URL may
// hold one) replaced by xxxxx.
func redacted(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil {
		return u.Redacted()
	}
	return rawURL
}

// optimizationURL is {optimizeURL}/{kind}/{requestID}, where optimizeURL is
// {base}/optimize. It refuses an id that is not one plain path segment (one
// that would need escaping, or a dot segment), whatever the caller checked:
// no id can leave that path or add a query.
func optimizationURL(optimizeURL string, k kind, requestID string) (string, error) {
	if k != kindCluster && k != kindRoute {
		return "", fmt.Errorf("unknown optimization kind %q", excerptString(string(k), 32))
	}
	if requestID == "" || requestID == "." || requestID == ".." || url.PathEscape(requestID) != requestID {
		return "", errors.New("invalid request_id")
	}
	return optimizeURL + "/" + string(k) + "/" + requestID, nil
}
