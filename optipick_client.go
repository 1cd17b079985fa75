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
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

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

	// maxResultBytes caps how much of a result is read (decompressed).
	// Results with thousands of picks are a few MiB. A result is streamed,
	// not held: this bounds the time spent reading one.
	maxResultBytes = 32 << 20

	// maxTokenBytes caps one token of a result (a string, a number, a run
	// of white space): the decoder holds a whole token in memory, so this
	// bounds what one result can make it hold, with or without compression.
	// OptiPick's longest strings are URLs and messages of a few hundred bytes.
	maxTokenBytes = 64 << 10

	// maxExcerptBytes caps how much of an unexpected answer reaches the logs;
	// maxSiteNameBytes and maxErrorBytes, how much of those fields of a result.
	maxExcerptBytes  = 256
	maxSiteNameBytes = 200
	maxErrorBytes    = 500
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
	urlPassword string // in OPTIPICK_API_URL, if any: redacted like the key
	// apiKeyPattern matches the key as an API may echo it (echoPattern).
	apiKeyPattern    *regexp.Regexp
	minKeyMatchBytes int // the fewest bytes a match of apiKeyPattern can take: one a rune
	// headBytes is how much of an answer is read for its excerpt: enough
	// that a copy of the key starting within the excerpt is read whole,
	// even written as JSON escapes (at most 12 bytes a rune).
	headBytes        int
	shownOptimizeURL string // optimizeURL without a user or password, for messages
	keepRaw          bool
	header           http.Header // of every API call
	http             *http.Client
	slots            chan struct{}   // one per API call in flight
	metrics          *serviceMetrics // nil: none
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
	password, _ := baseURL.User.Password()
	var keyPattern *regexp.Regexp
	if apiKey != "" {
		keyPattern = echoPattern(apiKey)
	}
	shown := *baseURL
	shown.User = nil
	return &optiPickClient{
		apiKeyPattern:    keyPattern,
		minKeyMatchBytes: utf8.RuneCountInString(apiKey),
		headBytes:        maxExcerptBytes + 12*utf8.RuneCountInString(apiKey),
		shownOptimizeURL: shown.JoinPath("optimize").String(),
		header:           http.Header{"X-Api-Key": {apiKey}, "Accept": {"application/json"}, "User-Agent": {"optipick-webhooks"}},
		optimizeURL:      baseURL.JoinPath("optimize").String(),
		apiKey:           apiKey,
		urlPassword:      password,
		keepRaw:          keepRaw,
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
//
// Whatever the API sent that reaches a returned error or the result's text
// fields has the API key (and a password in OPTIPICK_API_URL) redacted:
// an API, or a proxy in front of it, may echo them.
func (c *optiPickClient) fetch(ctx context.Context, k kind, requestID string) (*optimization, error) {
	result, err := c.fetchOnce(ctx, k, requestID)
	if err != nil {
		return nil, c.redactError(err)
	}
	// Redacted before they are cut, so that no cut can hide part of a key.
	result.SiteName = excerptString(c.redact(result.SiteName), maxSiteNameBytes)
	result.Error = excerptString(c.redact(result.Error), maxErrorBytes)
	if result.Raw != nil {
		result.Raw = []byte(c.redact(string(result.Raw)))
	}
	return result, nil
}

func (c *optiPickClient) fetchOnce(ctx context.Context, k kind, requestID string) (*optimization, error) {
	target, err := optimizationURL(c.optimizeURL, k, requestID)
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		result, err := c.get(ctx, target, requestID)
		if err == nil || attempt == maxAttempts || !retryable(ctx, err) {
			return result, err
		}
		wait, asked := backoff(attempt), false
		var apiErr *apiError
		if errors.As(err, &apiErr) && apiErr.RetryAfter > 0 {
			wait, asked = apiErr.RetryAfter, true
		}
		if !fitsBeforeDeadline(ctx, wait) {
			if asked {
				return nil, fmt.Errorf("%w (%v): %w", errRetryLater, wait, err)
			}
			return nil, err
		}
		c.metrics.apiRetry()
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
	req.Header = c.header.Clone()
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		c.metrics.apiCall(0, time.Since(start))
		return nil, err
	}
	defer func() {
		resp.Body.Close()
		c.metrics.apiCall(resp.StatusCode, time.Since(start))
	}()

	if resp.StatusCode != http.StatusOK {
		// Read the excerpt, then drain a little more so that the
		// connection can be reused.
		head, _ := io.ReadAll(io.LimitReader(resp.Body, int64(c.headBytes)))
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil, &apiError{
			Status:     resp.StatusCode,
			URL:        c.shown(target),
			RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
			Excerpt:    c.excerpt(head),
		}
	}

	rr := newResultReader(resp.Body, c.headBytes, c.keepRaw)
	defer rr.release()
	result, err := rr.decode(requestID)
	withoutNames(err)
	if rr.read > maxResultBytes {
		return nil, fmt.Errorf("OptiPick API result from %s is more than the %d bytes this service reads", c.shown(target), maxResultBytes)
	}
	if err != nil {
		return nil, fmt.Errorf("OptiPick API answered 200 from %s, but not with this result: %w (body starts: %s)", c.shown(target), err, c.excerpt(rr.readHead()))
	}
	if rr.raw != nil {
		result.Raw = rr.raw.Bytes()
	}
	return result, nil
}

// resultReader is what a result is decoded through. It stops a result
// at maxResultBytes and a token at maxTokenBytes, keeps the first bytes
// for an error's excerpt and, for a client that keeps raw results, all of
// them. Each is pooled with its decoder, which keeps its buffers across
// uses: reading a result allocates only what the summary keeps.
type resultReader struct {
	body    io.Reader
	dec     *jsontext.Decoder // reads from this resultReader
	read    int64             // bytes read from body
	head    []byte            // the first bytes read, up to headMax
	headMax int
	raw     *bytes.Buffer // every byte read; nil unless kept
}

var resultReaders = sync.Pool{New: func() any {
	rr := &resultReader{}
	rr.dec = jsontext.NewDecoder(rr)
	return rr
}}

// newResultReader reads a result from body, keeping its first headMax
// bytes, and all of them when keepRaw. Release it when done.
func newResultReader(body io.Reader, headMax int, keepRaw bool) *resultReader {
	rr := resultReaders.Get().(*resultReader)
	rr.body, rr.read, rr.head, rr.headMax = body, 0, rr.head[:0], headMax
	if keepRaw {
		rr.raw = &bytes.Buffer{}
	}
	// Names are checked for duplicates where it matters (request_id) by
	// decode: checking every object's names costs most of the decoding.
	rr.dec.Reset(rr, jsontext.AllowDuplicateNames(true))
	return rr
}

// release returns rr to the pool, holding neither the body nor raw bytes.
func (rr *resultReader) release() {
	rr.body, rr.raw = nil, nil
	rr.dec.Reset(rr)
	resultReaders.Put(rr)
}

// Read is the decoder's read. The decoder reads more only when the token
// it is reading (a string, a number, white space) does not end in what it
// holds, so what it has read and not yet consumed is that token: past
// maxTokenBytes, Read refuses to go on. Each read is at most a quarter of
// that, whatever buffer a pooled decoder offers, so no token longer than
// 1.25 x maxTokenBytes is ever read whole; and reads stop one byte past
// maxResultBytes, which tells a result that is too large.
func (rr *resultReader) Read(p []byte) (int, error) {
	if rr.read-rr.dec.InputOffset() > maxTokenBytes {
		return 0, errTokenTooLong
	}
	if rr.read > maxResultBytes {
		return 0, errResultTooLarge
	}
	n, err := rr.body.Read(p[:min(len(p), maxTokenBytes/4, int(maxResultBytes+1-rr.read))])
	rr.read += int64(n)
	if room := rr.headMax - len(rr.head); room > 0 {
		rr.head = append(rr.head, p[:min(room, n)]...)
	}
	if rr.raw != nil {
		rr.raw.Write(p[:n])
	}
	return n, err
}

// readHead reads on, after the decoder stopped, far enough to have the
// first headMax bytes of the body (or all of it), and returns them.
func (rr *resultReader) readHead() []byte {
	io.CopyN(io.Discard, rr, int64(rr.headMax-len(rr.head)))
	return rr.head
}

// decode reads one result, keeping only the fields of the summary. It
// refuses what is not this result: not a JSON object, trailing data, a
// request_id missing, given twice, or other than wantID.
func (rr *resultReader) decode(wantID string) (*optimization, error) {
	dec := rr.dec
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
	var unquoted []byte
	sawRequestID := false // a second request_id, of any type, is refused
	for dec.PeekKind() != '}' {
		quoted, err := dec.ReadValue() // the name, as sent
		if err != nil {
			return nil, err
		}
		name := quoted[1 : len(quoted)-1]
		if bytes.IndexByte(name, '\\') >= 0 { // an escaped name: rare, so unquote only then
			unquoted, _ = jsontext.AppendUnquote(unquoted[:0], quoted)
			name = unquoted
		}
		// name is valid only until the next read: take what it says first.
		field := fieldNamed(name)
		if field == requestIDField {
			if sawRequestID {
				return nil, errors.New("request_id given twice")
			}
			sawRequestID = true
		}
		if err := res.readField(dec, field); err != nil {
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
		if !validRequestID(res.RequestID) { // not shown, nor cut: an API may echo the key there
			return nil, fmt.Errorf("request_id is not %s, nor an id (%d bytes)", wantID, len(res.RequestID))
		}
		return nil, fmt.Errorf("request_id is %s, not %s", res.RequestID, wantID)
	}
	return res, nil
}

// resultField is a top-level field of a result that the summary reads.
type resultField int

const (
	otherField resultField = iota
	requestIDField
	siteNameField
	errorField
	computationTimeField
	asisDistanceField
	optimalDistanceField
	optimalClustersField
	picksField
)

// fieldNamed is the field called name (unquoted).
func fieldNamed(name []byte) resultField {
	switch string(name) { // compiled without a conversion
	case "request_id":
		return requestIDField
	case "site_name":
		return siteNameField
	case "error":
		return errorField
	case "computation_time":
		return computationTimeField
	case "asis_distance":
		return asisDistanceField
	case "optimal_distance":
		return optimalDistanceField
	case "optimal_clusters":
		return optimalClustersField
	case "picks":
		return picksField
	}
	return otherField
}

// readField reads the value of field into res, or skips it. A value of an
// unexpected type is skipped too.
func (res *optimization) readField(dec *jsontext.Decoder, field resultField) error {
	switch next := dec.PeekKind(); field {
	case requestIDField:
		if next != '"' {
			break
		}
		tok, err := dec.ReadToken()
		res.RequestID = tok.String()
		return err
	case siteNameField, errorField:
		switch {
		case next == '"':
			tok, err := dec.ReadToken()
			if field == siteNameField {
				res.SiteName = tok.String() // cut by fetch, after redaction
			} else {
				res.Error = strings.TrimSpace(tok.String())
			}
			return err
		case next == '{' || next == '[':
			// Not a message: say so, without holding the value.
			if field == errorField {
				what := "object"
				if next == '[' {
					what = "array"
				}
				res.Error = "OptiPick reported an error as a JSON " + what + " (LOG_LEVEL=debug logs the whole result)"
			}
		case next != 'n' && field == errorField:
			// A number or boolean: one token, bounded by maxTokenBytes.
			value, err := dec.ReadValue()
			res.Error = string(value)
			return err
		}
	case computationTimeField, asisDistanceField, optimalDistanceField:
		if next != '0' {
			break
		}
		tok, err := dec.ReadToken()
		if err != nil {
			return err
		}
		f, err := tok.Float()
		if err != nil {
			return nil // out of float64's range: leave the field out
		}
		switch field {
		case computationTimeField:
			res.ComputationTime = f
		case asisDistanceField:
			res.AsisDistance = &f
		default:
			res.OptimalDistance = &f
		}
		return nil
	case optimalClustersField, picksField:
		if next != '[' {
			break
		}
		n, err := countElements(dec)
		if field == picksField {
			res.Picks = n
		} else {
			res.Clusters = n
		}
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

var (
	// errTokenTooLong: the result holds a token larger than any OptiPick sends.
	errTokenTooLong = fmt.Errorf("a JSON token over %d bytes", maxTokenBytes)
	// errResultTooLarge: the result is over maxResultBytes.
	errResultTooLarge = fmt.Errorf("a result over %d bytes", maxResultBytes)
)

// withoutNames drops the JSON pointer from a jsontext syntax error in err.
// It is made of the result's object names, which an API could fill with the
// key, and it is cut, keeping its start and end, where redaction could not
// see the key whole. The byte offset stays, and the error's own text, which
// quotes at most one character or escape sequence of the input.
func withoutNames(err error) {
	if se := (*jsontext.SyntacticError)(nil); errors.As(err, &se) {
		se.JSONPointer = ""
	}
}

// echoPattern matches key as text from the API may echo it: in any letter
// case, and with any of its characters written as a JSON escape (\u0041,
// \u0061, \/), which a JSON encoder may write, in a body that is logged
// raw (an excerpt, or the result at debug level). Decoded fields hold the
// key plain, and match too.
func echoPattern(key string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("(?i)") // letter case, also of the escapes' hex digits
	for _, r := range key {
		b.WriteString("(?:" + regexp.QuoteMeta(string(r)))
		for f := r; ; {
			if r1, r2 := utf16.EncodeRune(f); r1 != utf8.RuneError {
				fmt.Fprintf(&b, `|\\u%04x\\u%04x`, r1, r2)
			} else {
				fmt.Fprintf(&b, `|\\u%04x`, f)
			}
			if f = unicode.SimpleFold(f); f == r {
				break
			}
		}
		if r == '/' {
			b.WriteString(`|\\/`)
		}
		b.WriteString(")")
	}
	return regexp.MustCompile(b.String())
}

// shown is target, a URL under optimizeURL, as messages show it: without
// the user and password of OPTIPICK_API_URL.
func (c *optiPickClient) shown(target string) string {
	return c.shownOptimizeURL + strings.TrimPrefix(target, c.optimizeURL)
}

// redact replaces the API key, and a password in OPTIPICK_API_URL, in text
// that came from the API or names its URL.
func (c *optiPickClient) redact(text string) string {
	if c.apiKeyPattern != nil && len(text) >= c.minKeyMatchBytes { // most text is too short to hold it
		text = c.apiKeyPattern.ReplaceAllLiteralString(text, "[API key]")
	}
	if c.urlPassword != "" {
		text = strings.ReplaceAll(text, c.urlPassword, "xxxxx")
	}
	return text
}

// redactError is err with its message redacted; errors.Is and errors.As
// see through it.
func (c *optiPickClient) redactError(err error) error {
	if msg := c.redact(err.Error()); msg != err.Error() {
		return &redactedError{msg: msg, err: err}
	}
	return err
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// excerpt is the start of an answer's body for the logs, with the API key
// redacted wherever the API (or a proxy) echoed it.
func (c *optiPickClient) excerpt(head []byte) string {
	return excerptString(c.redact(string(head)), maxExcerptBytes)
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
	URL        string        // what was fetched, without a user or password
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
	// A certificate the system does not trust will not be trusted on the
	// next attempt either.
	var certErr *tls.CertificateVerificationError
	if errors.As(err, &certErr) {
		return false
	}
	var netErr net.Error // *url.Error, which every transport error is, is one
	return errors.As(err, &netErr)
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
