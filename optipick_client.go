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
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

const (
	// API calls in flight (and idle connections kept for them): a slow or
	// dead API cannot make the service pile up goroutines and sockets.
	maxConcurrentFetches = 64
	// A fetch makes at most maxAttempts calls, waiting about firstBackoff
	// before the first retry, twice as long each time, at most maxBackoff.
	maxAttempts, firstBackoff, maxBackoff = 5, 200 * time.Millisecond, 2 * time.Second
	// A hung call is given up early enough to leave time for another.
	responseHeaderTimeout = 5 * time.Second
	// OptiPick answers with a few hundred bytes of headers; Go's default
	// allows 10 MiB, times every fetch in flight.
	maxResponseHeaderBytes = 64 << 10
	// Results (thousands of picks are a few MiB) are streamed, read up to
	// maxResultBytes decompressed. The decoder holds a whole token (a
	// string, a number, white space): maxTokenBytes bounds its memory.
	maxResultBytes, maxTokenBytes = 32 << 20, 64 << 10
	// How much of an unexpected answer, a site_name and an error is logged.
	maxExcerptBytes, maxSiteNameBytes, maxErrorBytes = 256, 200, 500
)

// kind is the kind of an optimization, and its path segment in the API.
type kind string

const (
	kindCluster kind = "cluster"
	kindRoute   kind = "route"
)

// unavailableError means "come back later": a delivery that fails with it
// is answered 503.
type unavailableError string

func (e unavailableError) Error() string   { return string(e) }
func (e unavailableError) HTTPStatus() int { return http.StatusServiceUnavailable }

const (
	errBusy       = unavailableError("too many OptiPick API calls in flight")
	errRetryLater = unavailableError("OptiPick API asked to retry later than this delivery's deadline")
)

// optimization is what the service reads of an OptiPick result. To read
// another field, add it with its tag: WaveID string `json:"wave_id"`.
// Unknown fields are skipped; one sent as another type is left zero.
type optimization struct {
	RequestID       string  `json:"request_id"`
	SiteName        string  `json:"site_name"`
	ComputationTime float64 `json:"computation_time"` // seconds
	Error           failure `json:"error"`            // set when the optimization itself failed
	AsisDistance    float64 `json:"asis_distance"`
	OptimalDistance float64 `json:"optimal_distance"`
	OptimalClusters count   `json:"optimal_clusters"` // to keep the clusters, make it a []struct{...}
	Picks           count   `json:"picks"`
	Raw             []byte  `json:"-"` // the whole result, with KEEP_RESULT_JSON or LOG_LEVEL=debug
}

// failure is OptiPick's message for a failed optimization (null if none).
type failure string

func (f *failure) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	if k := dec.PeekKind(); k == '{' || k == '[' { // not a message: say so, without holding it
		*f = "OptiPick reported an error as a JSON object or array (KEEP_RESULT_JSON=true keeps the whole result)"
		return dec.SkipValue()
	}
	tok, err := dec.ReadToken() // one token, held within maxTokenBytes
	if tok.Kind() != 'n' {
		*f = failure(strings.TrimSpace(tok.String()))
	}
	return err
}

// count is how many elements an array has, read without keeping them.
type count int

func (n *count) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	if dec.PeekKind() != '[' {
		return dec.SkipValue()
	}
	_, err := dec.ReadToken()
	for ; err == nil && dec.PeekKind() != ']'; *n++ {
		err = dec.SkipValue()
	}
	if err == nil {
		_, err = dec.ReadToken()
	}
	return err
}

// optiPickClient fetches finished optimizations from the OptiPick API.
type optiPickClient struct {
	optimizeURL, shownURL string // {base}/optimize, and as logs show it: password redacted
	apiKey                string
	keepRaw               bool // keep each result's JSON in optimization.Raw
	header                http.Header
	http                  *http.Client
	slots                 chan struct{} // one per API call in flight
	rec                   recorder      // nil: none
}

// newOptiPickClient returns a client for the API at baseURL; a nil
// transport is one sized and timed for this service.
func newOptiPickClient(baseURL *url.URL, apiKey string, keepRaw bool, transport http.RoundTripper) *optiPickClient {
	if transport == nil {
		transport = &http.Transport{
			Proxy:                  http.ProxyFromEnvironment,
			DialContext:            (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:      true,
			TLSHandshakeTimeout:    3 * time.Second,
			ResponseHeaderTimeout:  responseHeaderTimeout,
			MaxResponseHeaderBytes: maxResponseHeaderBytes,
			MaxConnsPerHost:        maxConcurrentFetches,
			MaxIdleConnsPerHost:    maxConcurrentFetches,
			IdleConnTimeout:        90 * time.Second,
		}
	}
	optimize := baseURL.JoinPath("optimize")
	return &optiPickClient{optimizeURL: optimize.String(), shownURL: optimize.Redacted(), apiKey: apiKey, keepRaw: keepRaw,
		header: http.Header{"X-Api-Key": {apiKey}, "Accept": {"application/json"}, "User-Agent": {"optipick-webhooks"}},
		// The key goes to the configured API only: a redirect is a failed
		// fetch. Deadlines come from each call's ctx.
		http:  &http.Client{Transport: transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		slots: make(chan struct{}, maxConcurrentFetches),
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
			// Redacted before they are cut, so that no cut hides part of a key.
			res.SiteName = excerpt(c.redact(res.SiteName), maxSiteNameBytes)
			res.Error = failure(excerpt(c.redact(string(res.Error)), maxErrorBytes))
			if c.apiKey != "" && bytes.Contains(res.Raw, []byte(c.apiKey)) { // copies only then
				res.Raw = bytes.ReplaceAll(res.Raw, []byte(c.apiKey), []byte("[API key]"))
			}
			return res, nil
		}
		if attempt == maxAttempts || !retryable(ctx, err) {
			return nil, err
		}
		wait, apiErr := backoff(attempt), (*apiError)(nil)
		asked := errors.As(err, &apiErr) && apiErr.RetryAfter > 0
		if asked {
			wait = apiErr.RetryAfter
		}
		// A retry must leave a second for its call before the deadline.
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= wait+time.Second {
			if asked {
				err = fmt.Errorf("%w (%v): %w", errRetryLater, wait, err)
			}
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (after: %w)", ctx.Err(), err)
		case <-time.After(wait):
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
	start, status := time.Now(), 0
	if c.rec != nil {
		defer func() { c.rec.apiCalled(status, time.Since(start)) }()
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	status = resp.StatusCode
	shown := c.shownURL + strings.TrimPrefix(target, c.optimizeURL)
	headMax := maxExcerptBytes + len(c.apiKey) // an excerpt, and a key that starts in it
	if resp.StatusCode != http.StatusOK {
		head, _ := io.ReadAll(io.LimitReader(resp.Body, int64(headMax)))
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // so that the connection is reused
		return nil, &apiError{Status: resp.StatusCode, URL: shown, Excerpt: excerpt(c.redact(string(head)), maxExcerptBytes),
			RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())}
	}

	rr := resultReaders.Get().(*resultReader)
	defer resultReaders.Put(rr)
	rr.reset(resp.Body, headMax, c.keepRaw)
	defer rr.reset(nil, 0, false) // holds neither the body nor the result
	res, err := rr.decode()
	if err == nil {
		err = c.checkRequestID(res.RequestID, requestID)
	}
	switch {
	case rr.read > maxResultBytes:
		return nil, fmt.Errorf("OptiPick API result from %s is more than the %d bytes this service reads", shown, maxResultBytes)
	case err != nil:
		io.CopyN(io.Discard, rr, int64(headMax-len(rr.head))) // the excerpt shows the body's start
		return nil, fmt.Errorf("OptiPick API answered 200 from %s, but not with this result: %w (body starts: %s)",
			shown, err, excerpt(c.redact(string(rr.head)), maxExcerptBytes))
	case rr.raw != nil:
		res.Raw = rr.raw.Bytes()
	}
	return res, nil
}

// resultReader is what a result is decoded from: it stops a result at
// maxResultBytes and a token at maxTokenBytes, and keeps the first headMax
// bytes for an error's excerpt (all with keepRaw). It is pooled with its
// decoder, which keeps its buffers.
type resultReader struct {
	body    io.Reader
	dec     *jsontext.Decoder // reads from this resultReader
	read    int64
	head    []byte
	headMax int
	raw     *bytes.Buffer
}

var resultReaders = sync.Pool{New: func() any {
	rr := &resultReader{}
	rr.dec = jsontext.NewDecoder(rr)
	return rr
}}

func (rr *resultReader) reset(body io.Reader, headMax int, keepRaw bool) {
	rr.body, rr.read, rr.head, rr.headMax, rr.raw = body, 0, rr.head[:0], headMax, nil
	if keepRaw {
		rr.raw = &bytes.Buffer{}
	}
	// Looking for duplicate names would double the decoding's cost; decode
	// refuses the one that matters.
	rr.dec.Reset(rr, jsontext.AllowDuplicateNames(true))
}

// Read is the decoder's read. The decoder reads more only when the token
// it reads does not end in what it holds, so what it has read and not
// consumed is that token: past maxTokenBytes, Read refuses to go on. A
// read is at most a quarter of that, and stops one byte past maxResultBytes.
func (rr *resultReader) Read(p []byte) (int, error) {
	if rr.read-rr.dec.InputOffset() > maxTokenBytes {
		return 0, errTokenTooLong
	}
	if rr.read > maxResultBytes {
		return 0, errResultTooLarge
	}
	n, err := rr.body.Read(p[:min(len(p), maxTokenBytes/4, int(maxResultBytes+1-rr.read))])
	rr.read += int64(n)
	rr.head = append(rr.head, p[:min(max(rr.headMax-len(rr.head), 0), n)]...)
	if rr.raw != nil {
		rr.raw.Write(p[:n])
	}
	return n, err
}

var (
	errTokenTooLong   = fmt.Errorf("a JSON token over %d bytes", maxTokenBytes)
	errResultTooLarge = fmt.Errorf("a result over %d bytes", maxResultBytes)
)

// resultFields are optimization's fields by their tags' names.
var resultFields = func() map[string]int {
	fields, t := map[string]int{}, reflect.TypeFor[optimization]()
	for i := range t.NumField() { // its own fields: not those of an embedded struct
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); t.Field(i).IsExported() && name != "" && name != "-" {
			fields[name] = i
		}
	}
	return fields
}()

// decode reads one result, refusing what cannot be one: not a JSON object,
// trailing data, a request_id given twice. Its errors hold no text from the
// result. It reads the object's members one by one (json.Unmarshal would
// match each unknown name case-insensitively too, at twice the cost).
func (rr *resultReader) decode() (*optimization, error) {
	res, dec, sawID := &optimization{}, rr.dec, false
	fields := reflect.ValueOf(res).Elem()
	if tok, err := dec.ReadToken(); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	} else if tok.Kind() != '{' {
		return nil, errors.New("not a JSON object")
	}
	for dec.PeekKind() != '}' {
		quoted, err := dec.ReadValue()
		if err != nil {
			return nil, withoutPointer(err)
		}
		name := quoted[1 : len(quoted)-1]
		if bytes.IndexByte(name, '\\') >= 0 { // an escaped name: rare
			name, _ = jsontext.AppendUnquote(nil, quoted)
		}
		i, known := resultFields[string(name)]
		if string(name) == "request_id" {
			if sawID {
				return nil, errors.New("request_id given twice")
			}
			sawID = true
		}
		if !known {
			err = dec.SkipValue()
		} else {
			err = readField(dec, fields.Field(i).Addr().Interface())
		}
		if err != nil {
			return nil, withoutPointer(err)
		}
	}
	if _, err := dec.ReadToken(); err != nil { // }
		return nil, withoutPointer(err)
	} else if _, err := dec.ReadToken(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return res, nil
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

// readField reads a value into field, a pointer: a value of another type
// leaves it zero. Strings, numbers and the UnmarshalerFrom types are read
// directly; json.UnmarshalDecode, through reflection, costs more.
func readField(dec *jsontext.Decoder, field any) error {
	switch p := field.(type) {
	case json.UnmarshalerFrom:
		return p.UnmarshalJSONFrom(dec)
	case *string, *float64:
		if k := dec.PeekKind(); k == '{' || k == '[' {
			return dec.SkipValue()
		}
		tok, err := dec.ReadToken()
		switch v := p.(type) {
		case *string:
			if tok.Kind() == '"' {
				*v = tok.String()
			}
		case *float64:
			if tok.Kind() == '0' {
				if f, rangeErr := tok.Float(); rangeErr == nil { // out of range: left zero
					*v = f
				}
			}
		}
		return err
	}
	if err := json.UnmarshalDecode(dec, field); !errors.As(err, new(*json.SemanticError)) {
		return err
	}
	return nil
}

// withoutPointer drops a syntax error's JSON pointer: it is made of the
// result's names, which an API could fill with the key, cut where
// redaction cannot see it.
func withoutPointer(err error) error {
	if se := (*jsontext.SyntacticError)(nil); errors.As(err, &se) {
		se.JSONPointer = ""
	}
	return err
}

// redact replaces the API key in text that came from the API.
func (c *optiPickClient) redact(text string) string {
	if c.apiKey == "" {
		return text
	}
	return strings.ReplaceAll(text, c.apiKey, "[API key]")
}

// excerpt is at most max bytes of s, as valid UTF-8 without control or
// bidirectional-text characters, so that it reads the same in any log.
func excerpt(s string, max int) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' || r == '\t' {
			return ' '
		} else if !unicode.IsPrint(r) {
			return '\uFFFD'
		}
		return r
	}, strings.ToValidUTF8(s[:min(len(s), max)], "\uFFFD"))
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
