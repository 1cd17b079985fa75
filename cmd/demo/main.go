// Command demo shows the whole flow offline (make demo): it builds the
// receiver and the simulator, starts both on loopback with a generated
// secret and key, submits one cluster and one route optimization for the
// Example warehouse, waits until the receiver has logged both results,
// prints what happened, and stops both with SIGTERM. Every wait has a
// deadline; any failure exits 1 with the reason.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"optipick-webhooks/internal/optipicksim"
)

const (
	buildTimeout = 5 * time.Minute // first builds download modules
	startTimeout = 10 * time.Second
	flowTimeout  = 30 * time.Second
	stopTimeout  = 20 * time.Second
)

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo: FAILED:", err)
		os.Exit(1)
	}
}

func run(out io.Writer) error {
	say := func(format string, args ...any) { fmt.Fprintf(out, "demo     │ "+format+"\n", args...) }

	dir, err := os.MkdirTemp("", "optipick-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	receiverBin, simBin := filepath.Join(dir, "optipick-webhooks"), filepath.Join(dir, "optipick-sim")
	say("building the receiver and the simulator")
	for bin, pkg := range map[string]string{receiverBin: ".", simBin: "./cmd/optipick-sim"} {
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		output, err := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg).CombinedOutput()
		cancel()
		if err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, output)
		}
	}

	apiKey := "demo-" + randomHex(8)
	secret := optipicksim.NewSecret()
	// The simulator must know the receiver's URL before the receiver knows
	// the simulator's: reserve a free loopback port for the receiver.
	receiverPort, err := freePort()
	if err != nil {
		return err
	}
	receiverURL := "http://127.0.0.1:" + receiverPort

	sim, err := start("sim", out, dir, []string{simBin,
		"-addr", "127.0.0.1:0", "-api-key", apiKey, "-secret", secret,
		"-cluster-url", receiverURL + "/webhook/cluster", "-route-url", receiverURL + "/webhook/route",
		"-delay", "300ms", "-time-scale", "0.001", "-log-format", "json"}, nil)
	if err != nil {
		return err
	}
	defer sim.kill()
	simLine, err := sim.waitFor(startTimeout, func(l logLine) bool { return l.msg() == "listening" })
	if err != nil {
		return err
	}
	simURL := "http://" + fmt.Sprint(simLine["addr"])

	receiver, err := start("receiver", out, dir, []string{receiverBin}, []string{
		"WEBHOOK_SECRET=" + secret, "OPTIPICK_API_KEY=" + apiKey, "OPTIPICK_API_URL=" + simURL,
		"PORT=" + receiverPort, "LOG_FORMAT=json", "LOG_LEVEL=info", "DEDUPE_WINDOW=24h"})
	if err != nil {
		return err
	}
	defer receiver.kill()
	if _, err := receiver.waitFor(startTimeout, func(l logLine) bool { return l.msg() == "listening" }); err != nil {
		return err
	}

	var requestIDs []string
	example, _ := json.Marshal(optipicksim.ExampleRequest())
	for _, kind := range []string{"cluster", "route"} {
		id, err := optipicksim.Submit(context.Background(), &http.Client{Timeout: startTimeout}, simURL, apiKey, kind, example, false)
		if err != nil {
			return err
		}
		say("POST /optimize/%s?synchronous=false (Example warehouse: 10 picks, 5 orders) → 200 request_id=%s", kind, id)
		requestIDs = append(requestIDs, id)
	}

	// Done when the receiver has logged both results and the simulator has
	// seen its 2xx for both deliveries.
	deadline := time.Now().Add(flowTimeout)
	for _, wait := range []struct {
		p   *process
		msg string
	}{{receiver, "optimization fetched"}, {sim, "delivery attempt"}} {
		pending := map[string]bool{requestIDs[0]: true, requestIDs[1]: true}
		for len(pending) > 0 {
			line, err := wait.p.waitFor(time.Until(deadline), func(l logLine) bool {
				succeeded := l["status"] == nil || fmt.Sprint(l["status"]) == "200"
				return pending[fmt.Sprint(l["request_id"])] && strings.HasPrefix(l.msg(), wait.msg) && succeeded
			})
			if err != nil {
				return fmt.Errorf("waiting for %q for both optimizations: %w", wait.msg, err)
			}
			delete(pending, fmt.Sprint(line["request_id"]))
		}
	}

	say("both results fetched and logged; stopping both with SIGTERM")
	for _, p := range []*process{receiver, sim} {
		if err := p.stop(); err != nil {
			return err
		}
	}
	say("OK: both programs exited 0")
	return nil
}

// process is a started program whose JSON log lines are echoed, readably,
// and can be waited for.
type process struct {
	name   string
	cmd    *exec.Cmd
	lines  chan logLine
	exited chan error
}

type logLine map[string]any

func (l logLine) msg() string { return fmt.Sprint(l["msg"]) }

func start(name string, out io.Writer, dir string, argv, env []string) (*process, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir // away from any .env of the user's
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, lines: make(chan logLine, 100), exited: make(chan error, 1)}
	go func() {
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			fmt.Fprintf(out, "%-8s │ %s\n", name, readable(scanner.Bytes()))
			var line logLine
			if json.Unmarshal(scanner.Bytes(), &line) == nil {
				select {
				case p.lines <- line:
				default:
				}
			}
		}
		close(p.lines)
		err := cmd.Wait()
		if err != nil && stderr.Len() > 0 {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		}
		p.exited <- err
	}()
	return p, nil
}

// waitFor returns the first line that matches, failing after timeout or
// when the program exits.
func (p *process) waitFor(timeout time.Duration, match func(logLine) bool) (logLine, error) {
	expired := time.After(timeout)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				return nil, fmt.Errorf("%s exited: %v", p.name, <-p.exited)
			}
			if match(line) {
				return line, nil
			}
		case <-expired:
			return nil, fmt.Errorf("%s: nothing expected within %v", p.name, timeout)
		}
	}
}

// stop sends SIGTERM and expects exit status 0.
func (p *process) stop() error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			return fmt.Errorf("%s did not exit cleanly: %w", p.name, err)
		}
		return nil
	case <-time.After(stopTimeout):
		return fmt.Errorf("%s did not exit within %v of SIGTERM", p.name, stopTimeout)
	}
}

func (p *process) kill() { p.cmd.Process.Kill() }

// readable turns a JSON log line into "LEVEL message key=value ...", in
// the line's own order, without the time.
func readable(raw []byte) string {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return string(raw)
	}
	var level, msg string
	var attrs []string
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return string(raw)
		}
		var value any
		if err := dec.Decode(&value); err != nil {
			return string(raw)
		}
		text := fmt.Sprint(value)
		switch key {
		case "time":
		case "level":
			level = text
		case "msg":
			msg = text
		default:
			if text == "" {
				continue
			}
			if strings.ContainsAny(text, " \"") {
				text = fmt.Sprintf("%q", text)
			}
			attrs = append(attrs, fmt.Sprintf("%s=%s", key, text))
		}
	}
	return strings.TrimSpace(fmt.Sprintf("%-5s %s %s", level, msg, strings.Join(attrs, " ")))
}

// freePort asks the system for a free loopback port.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	_, port, err := net.SplitHostPort(l.Addr().String())
	if err != nil {
		return "", errors.New("no free port")
	}
	return port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
