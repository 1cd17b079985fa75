package optipicksim

import (
	"bytes"
	"net/http"
	"strconv"
	"time"

	svix "github.com/svix/svix-webhooks/go"
)

// SignedRequest is a webhook delivery as Svix sends it: body POSTed to url
// with svix-id msgID, svix-timestamp at, and the Svix library's signature
// with secret (a whsec_ secret).
func SignedRequest(url, secret, msgID string, at time.Time, body []byte) (*http.Request, error) {
	signer, err := svix.NewWebhook(secret)
	if err != nil {
		return nil, err
	}
	signature, err := signer.Sign(msgID, at, body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("svix-id", msgID)
	req.Header.Set("svix-timestamp", strconv.FormatInt(at.Unix(), 10))
	req.Header.Set("svix-signature", signature)
	return req, nil
}
