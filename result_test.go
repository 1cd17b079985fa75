package main

// Tests of reading a result: leniency, and the bounds on its size and on
// each token.

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"testing/synctest"
)

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
				result, err := decodeResult(bytes.NewReader(raw))
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

// TestLargeResultsAreStreamedNotHeld: eight concurrent large results cost
// a small fraction of their size in memory (at info level, where the raw
// JSON is not kept).
func TestLargeResultsAreStreamedNotHeld(t *testing.T) {
	const deliveries = 8
	// 2 MiB each proves the point (the README's figure, 30 MiB each, was
	// measured on the built binary) and leaves a loaded machine, and the
	// race detector, time.
	const size = 2 << 20
	pick := []byte(`{"pick_id":"p","location_id":"A-01","optim_sequence":1,"asis_sequence":2},`)
	picks := size / len(pick)
	api := &fakeAPI{respond: func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		fmt.Fprintf(w, `{"request_id":%q,"site_name":"Big","picks":[`, id)
		for range picks {
			w.Write(pick)
		}
		io.WriteString(w, `{"pick_id":"last"}]}`)
	}}
	server := httptest.NewServer(api)
	defer server.Close()
	rig := buildRig(
		t,
		rigConfig{api: api, apiURL: server.URL, secrets: []string{testSecret}, level: slog.LevelInfo, format: "text"},
	)

	var wg sync.WaitGroup
	codes := make([]int, deliveries)
	allocated := bytesAllocated(func() {
		for i := range deliveries {
			req := signedDelivery(t, testSecret, "/webhook/route", requestBody(fmt.Sprintf("big%d", i)))
			wg.Go(func() { codes[i] = rig.deliver(req).Code })
		}
		wg.Wait()
	})
	for i, code := range codes {
		if code != http.StatusOK {
			t.Errorf("delivery %d: status %d, want 200\n%s", i, code, rig.logs)
		}
	}
	if want := fmt.Sprintf("picks=%d", picks+1); strings.Count(rig.logs.String(), want) != deliveries {
		t.Errorf("log lacks %d lines with %s:\n%.2000s", deliveries, want, rig.logs)
	}
	// Both ends of every connection run in this process: the fake API's
	// writes are counted too.
	if total := uint64(size * deliveries); allocated > max(total/20, 4<<20) {
		t.Errorf("streaming %d MiB of results allocated %d MiB", total>>20, allocated>>20)
	}
}

// TestHugeTokensAreRefusedNotHeld: a result that is one enormous string
// (the decoder would hold it whole), plain or compressed 1,000 to 1, is a
// failed fetch that costs a small fraction of its size.
func TestHugeTokensAreRefusedNotHeld(t *testing.T) {
	const size = 30 << 20
	var compressed bytes.Buffer
	zw := gzip.NewWriter(&compressed)
	fmt.Fprintf(zw, `{"request_id":%q,"site_name":"`, testRequestID)
	zw.Write(bytes.Repeat([]byte("a"), size))
	io.WriteString(zw, `"}`)
	zw.Close()
	for _, gzipped := range []bool{false, true} {
		t.Run(fmt.Sprintf("gzip=%v", gzipped), func(t *testing.T) {
			api := &fakeAPI{respond: func(w http.ResponseWriter, r *http.Request) {
				if gzipped {
					w.Header().Set("Content-Encoding", "gzip")
					w.Write(compressed.Bytes())
					return
				}
				fmt.Fprintf(w, `{"request_id":%q,"site_name":"`, testRequestID)
				io.Copy(w, io.LimitReader(zeros{}, size))
				io.WriteString(w, `"}`)
			}}
			server := httptest.NewServer(api)
			defer server.Close()
			rig := buildRig(
				t,
				rigConfig{
					api:     api,
					apiURL:  server.URL,
					secrets: []string{testSecret},
					level:   slog.LevelInfo,
					format:  "text",
				},
			)
			const deliveries = 4
			codes := make([]int, deliveries)
			var wg sync.WaitGroup
			allocated := bytesAllocated(func() {
				for i := range deliveries {
					req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
					wg.Go(func() { codes[i] = rig.deliver(req).Code })
				}
				wg.Wait()
			})
			for i, code := range codes {
				if code != http.StatusBadGateway {
					t.Errorf("delivery %d: status %d, want 502", i, code)
				}
			}
			if !strings.Contains(rig.logs.String(), "a JSON token over") {
				t.Errorf("log does not say why:\n%.1000s", rig.logs)
			}
			if allocated > 16<<20 {
				t.Errorf("%d results of one %d MiB string allocated %d MiB", deliveries, size>>20, allocated>>20)
			}
		})
	}
}

func TestResultDecodingIsLenient(t *testing.T) {
	for _, tc := range []struct {
		name, body   string
		wantErr      bool
		wantSite     string
		wantFailure  string
		wantClusters int
	}{
		{"zone-less timestamp and unknown fields", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"Example","timestamp":"2024-12-04T16:52:49.303000","new_field":{"x":1},"optimal_clusters":[{},{},{}]}`, false, "Example", "", 3},
		{"a field of another type", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"Example","computation_time":"fast","optimal_clusters":[{}]}`, false, "Example", "", 1},
		{"fields of other types, and a number out of range", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":{"x":["y"]},"asis_distance":1e999,"optimal_distance":[1],"error":null,"picks":{},"optimal_clusters":[{}]}`, false, "", "", 1},
		{"error as a string", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"S","error":"no picks"}`, false, "S", "no picks", 0},
		{"error as an object", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"S","error":{"code":7}}`, false, "S", "OptiPick reported an error as a JSON object or array (KEEP_RESULT_JSON=true keeps the whole result)", 0},
		{"error as an array", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"S","error":["x"]}`, false, "S", "OptiPick reported an error as a JSON object or array (KEEP_RESULT_JSON=true keeps the whole result)", 0},
		{"error as a number", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"S","error":7}`, false, "S", "OptiPick reported an error: 7", 0},
		{"error false", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"S","error":false}`, false, "S", "", 0},
		{"error true", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"S","error":true}`, false, "S", "OptiPick reported an error: true", 0},
		{"clusters that are not objects are still counted", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"S","optimal_clusters":["a",[1],null]}`, false, "S", "", 3},
		{"not JSON", `<html>`, true, "", "", 0},
		{"truncated", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"S"`, true, "", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				client := newBubbleClient(
					t,
					func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, tc.body) },
				)
				result, err := client.fetch(t.Context(), "cluster", testRequestID)
				if tc.wantErr {
					if err == nil {
						t.Fatal("want an error")
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if result.SiteName != tc.wantSite || string(result.Error) != tc.wantFailure ||
					int(result.OptimalClusters) != tc.wantClusters {
					t.Errorf(
						"got site %q, failure %q, %d clusters",
						result.SiteName,
						result.Error,
						int(result.OptimalClusters),
					)
				}
				if string(result.Raw) != tc.body {
					t.Errorf("raw = %q, want the body as sent", result.Raw)
				}
			})
		})
	}
}

// TestResultSizeCap: a result of exactly maxResultBytes is read; one byte
// more is refused.
func TestResultSizeCap(t *testing.T) {
	for _, tc := range []struct {
		size int
		ok   bool
	}{{maxResultBytes, true}, {maxResultBytes + 1, false}} {
		t.Run(fmt.Sprint(tc.size), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				base, _ := url.Parse("http://optipick.test")
				client := clientOver(
					base,
					false,
					handlerTransport{http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						// Long strings, each under maxTokenBytes (few tokens, so
						// it is quick), then "0," to make the size exact.
						head, tail := `{"request_id":"`+testRequestID+`","site_name":"Big","pad":[`, `0]}`
						io.WriteString(w, head)
						rest := tc.size - len(head) - len(tail)
						unit := `"` + strings.Repeat("a", maxTokenBytes/2) + `",`
						units := rest/len(unit) - 1
						io.Copy(w, io.LimitReader(&repeatReader{s: unit}, int64(units*len(unit))))
						rest -= units * len(unit)
						if rest%2 == 1 {
							io.WriteString(w, " ")
							rest--
						}
						io.Copy(w, io.LimitReader(&repeatReader{s: "0,"}, int64(rest)))
						io.WriteString(w, tail)
					})},
				)
				result, err := client.fetch(t.Context(), "cluster", testRequestID)
				if tc.ok && (err != nil || result.SiteName != "Big") {
					t.Fatalf("a result of %d bytes: %v", tc.size, err)
				}
				if !tc.ok && (err == nil || !strings.Contains(err.Error(), "more than")) {
					t.Fatalf("a result of %d bytes: %v, want a size error", tc.size, err)
				}
			})
		})
	}
}

// repeatReader reads as s repeated without end.
type repeatReader struct {
	s   string
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	for n := 0; n < len(p); {
		copied := copy(p[n:], r.s[r.off%len(r.s):])
		n += copied
		r.off += copied
	}
	return len(p), nil
}

// TestTokenGuard: a result whose one token (a string, with or without
// escapes, a number, white space) is far over maxTokenBytes is refused,
// however the text arrives in reads; a large token under the cap, and many
// small tokens whatever their total, are read.
func TestTokenGuard(t *testing.T) {
	long := func(s string, n int) string { return strings.Repeat(s, n) }
	const over = maxTokenBytes + maxTokenBytes/4 + 1 // the guard lets at most a quarter more through
	for _, tc := range []struct {
		name, text string
		ok         bool
	}{
		{"string under the cap", `"` + long("a", maxTokenBytes-64) + `"`, true},
		{"string over the cap", `"` + long("a", over) + `"`, false},
		{"escapes", `"` + long(`\n`, over/2) + `"`, false},
		{"escaped quotes do not end it", `"` + long(`\"`, over/2) + `"`, false},
		{"number", `1` + long("0", over), false},
		{"white space", long(" ", over) + `1`, false},
		{"many small strings", `[` + long(`"`+long("a", 1000)+`\"",`, 300) + `""]`, true},
		{"many small numbers", `[` + long(`12345,`, 60000) + `0]`, true},
	} {
		for _, oneByte := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/one-byte-reads=%v", tc.name, oneByte), func(t *testing.T) {
				text := `{"request_id":"` + testRequestID + `","x":` + tc.text + `}`
				var r io.Reader = strings.NewReader(text)
				if oneByte {
					r = iotest.OneByteReader(r)
				}
				_, err := decodeResult(r)
				if tc.ok && err != nil {
					t.Fatalf("decodeResult: %v", err)
				}
				if !tc.ok && !errors.Is(err, errTokenTooLong) {
					t.Fatalf("decodeResult: %v, want errTokenTooLong", err)
				}
			})
		}
	}
}

// TestResultFieldNamesMayBeEscaped: JSON allows a name written with
// escapes; it is the same name.
func TestResultFieldNamesMayBeEscaped(t *testing.T) {
	body := `{"request\u005fid":"` + testRequestID + `","site\u005Fname":"Escaped"}`
	result, err := decodeResult(strings.NewReader(body))
	if err != nil || result.SiteName != "Escaped" {
		t.Fatalf("decodeResult: %+v, %v", result, err)
	}
}

// TestReadingStopsAtTheResultCap: however much more the API sends, no
// more than one byte past maxResultBytes is read.
func TestReadingStopsAtTheResultCap(t *testing.T) {
	// Long strings, each under the token cap: few tokens, so it is quick.
	pad := &repeatReader{s: `"` + strings.Repeat("a", maxTokenBytes/2) + `",`}
	body := &countingReader{r: io.MultiReader(strings.NewReader(`{"request_id":"`+testRequestID+`","pad":[`), pad)}
	if _, err := decodeResult(body); !errors.Is(err, errResultTooLarge) {
		t.Fatalf("decodeResult: %v, want errResultTooLarge", err)
	}
	if body.n != maxResultBytes+1 {
		t.Errorf("read %d bytes of the body, want %d", body.n, maxResultBytes+1)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// decodeResult reads one result from r as the client does (without the
// request_id check, which is the client's).
func decodeResult(r io.Reader) (*optimization, error) {
	rr := getResultReader(r, 0, false)
	defer rr.release()
	return rr.decode()
}
