package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	svix "github.com/svix/svix-webhooks/go"
)

// send delivers one webhook now, as Svix would deliver one attempt, and
// prints what the receiver answered: like `stripe trigger`, for seeing by
// hand what a delivery, a replay (dedupe), a bad signature (401) or an
// unusable body (400 + abort-message) get.
func send(ctx context.Context, mode string, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("optipick-sim "+mode, flag.ContinueOnError)
	kind := flags.String("kind", "cluster", "cluster or route: the endpoint it goes to")
	requestID := flags.String("request-id", "", "the request_id the body names (required unless -body)")
	svixID := flags.String("svix-id", "", "the message id; give one already delivered to replay it and see dedupe (default: a new one; resend requires it)")
	url := flags.String("url", "", "where to deliver (default: http://127.0.0.1:$PORT/webhook/{kind}, 8080 without PORT)")
	body := flags.String("body", "", `the raw body (default: {"request_id":"<-request-id>"}); one without a valid request_id gets 400 and abort-message`)
	// No default value of its own, which help would print: see run.
	secret := flags.String("secret", "", "whsec_ secret to sign with (default: "+fromEnv(getenv, "WEBHOOK_SECRET", "the first in $WEBHOOK_SECRET")+"); another one gets 401")
	unsigned := flags.Bool("unsigned", false, "send no svix-signature header (gets 401)")
	timeout := flags.Duration("timeout", 30*time.Second, "how long to wait for the answer")
	flags.Usage = func() {
		fmt.Fprintf(flags.Output(), "usage: optipick-sim %s -kind cluster|route -request-id ID [-svix-id msg_...] [flags]\n", mode)
		flags.PrintDefaults()
	}
	if help, err := parse(flags, args, stdout, stderr); help || err != nil {
		return err
	}
	if !isSet(flags, "secret") {
		*secret = firstSecret(getenv)
	}
	switch {
	case flags.NArg() > 0:
		return fmt.Errorf("%s: unexpected arguments %q", mode, flags.Args())
	case *kind != "cluster" && *kind != "route":
		return fmt.Errorf("%s: -kind must be cluster or route", mode)
	case *body == "" && *requestID == "":
		return fmt.Errorf("%s: -request-id (or a -body) is required", mode)
	case mode == "resend" && *svixID == "":
		return errors.New("resend: -svix-id is required: the id of the message to replay")
	case !*unsigned && *secret == "":
		return fmt.Errorf("%s: -secret or WEBHOOK_SECRET is required to sign (or -unsigned)", mode)
	}
	payload := []byte(*body)
	if *body == "" {
		payload, _ = json.Marshal(map[string]string{"request_id": *requestID})
	}
	if *svixID == "" {
		*svixID = newMessageID()
	}
	if *url == "" {
		*url = receiverBaseURL(getenv) + "/webhook/" + *kind
	}

	now := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, *url, bytes.NewReader(payload))
	if err != nil {
		return fmt.Errorf("%s: -url: %w", mode, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "optipick-sim "+mode)
	req.Header.Set("svix-id", *svixID)
	req.Header.Set("svix-timestamp", strconv.FormatInt(now.Unix(), 10))
	signedWith := "unsigned: no svix-signature"
	if !*unsigned {
		wh, err := svix.NewWebhook(*secret)
		if err == nil && !strings.HasPrefix(*secret, "whsec_") {
			err = errors.New("no whsec_ prefix")
		}
		if err != nil {
			return fmt.Errorf("%s: -secret: not a whsec_ secret: %w", mode, err)
		}
		signature, err := wh.Sign(*svixID, now, payload)
		if err != nil {
			return fmt.Errorf("%s: signing: %w", mode, err)
		}
		req.Header.Set("svix-signature", signature)
		signedWith = "signed with the first secret in WEBHOOK_SECRET"
		if isSet(flags, "secret") {
			signedWith = "signed with -secret"
		}
	}

	fmt.Fprintf(stdout, "POST %s\nsvix-id: %s (%s)\nbody: %s\n", *url, *svixID, signedWith, payload)
	client := &http.Client{
		Timeout: *timeout,
		// Svix counts a redirect as a failure; it does not follow it.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: no answer: %w", mode, err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))

	verdict := "Svix would retry it"
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		verdict = "delivered: Svix would not retry it"
	case resp.Header.Get("webhook-delivery") == "abort-message":
		verdict = "failed, and the receiver asked Svix not to retry (abort-message)"
	}
	fmt.Fprintf(stdout, "→ %s (%s)\n", resp.Status, verdict)
	if v := resp.Header.Get("webhook-delivery"); v != "" {
		fmt.Fprintf(stdout, "webhook-delivery: %s\n", v)
	}
	if v := resp.Header.Get("Retry-After"); v != "" {
		fmt.Fprintf(stdout, "retry-after: %s\n", v)
	}
	fmt.Fprintf(stdout, "%s\n", strings.TrimRight(string(answer), "\n"))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 && *body == "" && mode == "send" {
		fmt.Fprintf(stdout, "replay it (a receiver that handled it answers \"already handled\" without fetching again):\n"+
			"  go run ./cmd/optipick-sim resend -kind %s -request-id %s -svix-id %s\n", *kind, *requestID, *svixID)
	}
	return nil
}

// newMessageID is a fresh id in Svix's form (msg_ and 27 characters).
func newMessageID() string {
	b := make([]byte, 14)
	rand.Read(b)
	return "msg_send" + hex.EncodeToString(b)[:23]
}
