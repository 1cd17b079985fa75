package main

// An OptiPick result, and how it is read. To read another field, add it to
// optimization with its JSON name: WaveID string `json:"wave_id"`.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

const (
	// Results (thousands of picks are a few MiB) are streamed and read up
	// to maxResultBytes.
	maxResultBytes = 32 << 20
	// The decoder holds a whole token (a string, a number, white space):
	// maxTokenBytes bounds its memory.
	maxTokenBytes = 64 << 10
)

// optimization is what the service reads of an OptiPick result. Unknown
// fields are skipped, and a field sent as null is left zero. A string,
// float64 or int field (here or in a struct or slice you add) sent as
// another JSON type, or a number out of range, is left zero too; a field
// of any other type sent as the wrong JSON type fails the fetch, so prefer
// these types (a timestamp as a string: it has no time zone).
type optimization struct {
	RequestID       string       `json:"request_id"`
	SiteName        string       `json:"site_name"`
	ComputationTime float64      `json:"computation_time"` // seconds
	Error           errorMessage `json:"error"`            // set when the optimization itself failed
	AsisDistance    float64      `json:"asis_distance"`
	OptimalDistance float64      `json:"optimal_distance"`
	OptimalClusters arrayLen     `json:"optimal_clusters"` // how many; to keep them, add a []struct{...} field
	Picks           arrayLen     `json:"picks"`            // how many, in a route result
	Raw             []byte       `json:"-"`                // the whole result, with KEEP_RESULT_JSON=true
}

// errorMessage is OptiPick's message for a failed optimization (null if
// none).
type errorMessage string

func (m *errorMessage) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	kind := dec.PeekKind()
	if kind == '{' || kind == '[' { // not a message: say so, without holding it
		*m = "OptiPick reported an error as a JSON object or array (KEEP_RESULT_JSON=true keeps the whole result)"
		return dec.SkipValue()
	}
	tok, err := dec.ReadToken() // one token, held within maxTokenBytes
	if err != nil {
		return err
	}
	switch kind {
	case 'n', 'f': // null or false: no error
	case '"':
		*m = errorMessage(strings.TrimSpace(tok.String()))
	default: // a number, or true
		*m = errorMessage("OptiPick reported an error: " + tok.String())
	}
	return nil
}

// arrayLen is how many elements an array has, read without keeping them.
type arrayLen int

func (n *arrayLen) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	if dec.PeekKind() != '[' {
		return dec.SkipValue()
	}
	if _, err := dec.ReadToken(); err != nil {
		return err
	}
	for dec.PeekKind() != ']' {
		if err := dec.SkipValue(); err != nil {
			return err
		}
		*n++
	}
	_, err := dec.ReadToken()
	return err
}

// lenientFields read strings and numbers anywhere in a result, so that a
// value of another type leaves its field zero instead of failing the fetch.
var lenientFields = json.WithUnmarshalers(json.JoinUnmarshalers(
	lenient('"', func(t jsontext.Token) (string, error) { return t.String(), nil }),
	lenient('0', jsontext.Token.Float),
	lenient('0', func(t jsontext.Token) (int, error) {
		i, err := t.Int()
		return int(i), err
	}),
))

// lenient reads a field of type T from a JSON value of kind want, with
// value; any other value, or one that value refuses, leaves the field zero.
func lenient[T any](want jsontext.Kind, value func(jsontext.Token) (T, error)) *json.Unmarshalers {
	return json.UnmarshalFromFunc(func(dec *jsontext.Decoder, field *T) error {
		if dec.PeekKind() != want {
			return dec.SkipValue()
		}
		tok, err := dec.ReadToken()
		if err != nil {
			return err
		}
		if v, err := value(tok); err == nil {
			*field = v
		}
		return nil
	})
}

// resultReader reads one result from an API answer's body: at most
// maxResultBytes, no token over maxTokenBytes, keeping the start of the
// body for error messages and, with keepRaw, all of it.
type resultReader struct {
	body     io.Reader
	dec      *jsontext.Decoder // reads from the resultReader
	read     int64
	start    []byte // the first startLen bytes of the body
	startLen int
	raw      *bytes.Buffer // nil unless keepRaw
}

// resultReaders keeps result readers, each with its decoder, for the next
// fetch: a new decoder per fetch (its buffer of a few KiB) cost about 7%
// more instructions per delivery, in the garbage collector
// (docs/performance.md).
var resultReaders = sync.Pool{New: func() any {
	rr := &resultReader{}
	rr.dec = jsontext.NewDecoder(rr)
	return rr
}}

// getResultReader returns a reader of body; give it back with release.
func getResultReader(body io.Reader, startLen int, keepRaw bool) *resultReader {
	rr := resultReaders.Get().(*resultReader)
	rr.body = body
	rr.read = 0
	rr.start = rr.start[:0]
	rr.startLen = startLen
	rr.raw = nil
	if keepRaw {
		rr.raw = &bytes.Buffer{}
	}
	// A name given twice is not looked for: the last one counts, as in
	// most JSON parsers. Tracking every object's names cost 8% more
	// instructions per delivery; a result is checked by its request_id,
	// and an API that would forge one needs no such trick.
	rr.dec.Reset(rr, jsontext.AllowDuplicateNames(true))
	return rr
}

// release gives rr back for the next fetch, without the body or the raw
// result.
func (rr *resultReader) release() {
	rr.body = nil
	rr.raw = nil
	resultReaders.Put(rr)
}

var (
	errTokenTooLong   = fmt.Errorf("a JSON token over %d bytes", maxTokenBytes)
	errResultTooLarge = fmt.Errorf("a result over %d bytes", maxResultBytes)
)

// Read is the decoder's read. The decoder reads more only when the token
// it reads does not end in what it holds, so what it has read and not
// consumed is that token: past maxTokenBytes, Read refuses to go on. A
// read is at most a quarter of that, and stops one byte past maxResultBytes.
// That is how jsontext reads (TestTokenGuard checks it on every update).
func (rr *resultReader) Read(p []byte) (int, error) {
	if rr.read-rr.dec.InputOffset() > maxTokenBytes {
		return 0, errTokenTooLong
	}
	if rr.read > maxResultBytes {
		return 0, errResultTooLarge
	}
	p = p[:min(len(p), maxTokenBytes/4, int(maxResultBytes+1-rr.read))]
	n, err := rr.body.Read(p)
	rr.read += int64(n)
	keep := min(rr.startLen-len(rr.start), n)
	rr.start = append(rr.start, p[:keep]...)
	if rr.raw != nil {
		rr.raw.Write(p[:n])
	}
	return n, err
}

// decode reads one result, refusing what cannot be one: not JSON, not an
// object, data after it. Its errors hold no text of
// the result.
func (rr *resultReader) decode() (*optimization, error) {
	switch rr.dec.PeekKind() {
	case '{':
	case 0: // not JSON, or no body: the read says why
		_, err := rr.dec.ReadToken()
		return nil, fmt.Errorf("not JSON: %w", describe(err))
	default:
		return nil, errors.New("not a JSON object")
	}
	var res optimization
	if err := json.UnmarshalDecode(rr.dec, &res, lenientFields); err != nil {
		return nil, describe(err)
	}
	_, err := rr.dec.ReadToken()
	if errors.Is(err, errResultTooLarge) {
		return nil, err
	}
	if err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	if rr.raw != nil {
		res.Raw = rr.raw.Bytes()
	}
	return &res, nil
}

// readStart reads on until the start of the body is kept, for an error's
// excerpt: it shows the body where the decoder stopped too.
func (rr *resultReader) readStart() string {
	io.CopyN(io.Discard, rr, int64(rr.startLen-len(rr.start)))
	return string(rr.start)
}

// describe makes a decoding error safe to log: a syntax error's JSON
// pointer is dropped, as it is made of the result's names, which an API
// could fill with the key, cut where redaction cannot see it.
func describe(err error) error {
	var syntaxErr *jsontext.SyntacticError
	if errors.As(err, &syntaxErr) {
		syntaxErr.JSONPointer = ""
	}
	return err
}
