package optipicksim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// Submit starts an optimization of kind (cluster or route) on the
// simulator's API at apiURL, as a client of OptiPick would, and returns its
// request_id. With synchronous false the simulator delivers the result by
// webhook; with true it only stores it.
func Submit(ctx context.Context, client *http.Client, apiURL, apiKey, kind string, body []byte, synchronous bool) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		apiURL+"/optimize/"+kind+"?synchronous="+strconv.FormatBool(synchronous), bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("X-API-KEY", apiKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("POST /optimize/%s: %w", kind, err)
	}
	defer resp.Body.Close()
	var answer struct {
		RequestID string `json:"request_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil || resp.StatusCode != http.StatusOK || answer.RequestID == "" {
		return "", fmt.Errorf("POST /optimize/%s: %s, request_id %q, %v", kind, resp.Status, answer.RequestID, err)
	}
	return answer.RequestID, nil
}
