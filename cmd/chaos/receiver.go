package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	startTimeout = 15 * time.Second
	stopTimeout  = maxDrain + 10*time.Second
)

// fetched is one "optimization fetched" line of a receiver's log.
type fetched struct {
	incarnation int
	seq         int       // order of reading, across incarnations
	at          time.Time // the line's time
	kind        string
	requestID   string
	svixID      string
}

// logBook collects what every incarnation of the receiver logged.
type logBook struct {
	mu      sync.Mutex
	seq     int
	fetched []fetched
	odd     []string // lines that are JSON but lack what a fetched line must have
}

func (b *logBook) add(incarnation int, raw []byte) (listening bool) {
	var line map[string]any
	if json.Unmarshal(raw, &line) != nil {
		return false
	}
	msg, _ := line["msg"].(string)
	if msg == "listening" {
		return true
	}
	if !strings.HasPrefix(msg, "optimization fetched") {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	requestID, _ := line["request_id"].(string)
	if requestID == "" {
		b.odd = append(b.odd, string(raw))
		return false
	}
	kind, _ := line["kind"].(string)
	svixID, _ := line["svix_id"].(string)
	b.seq++
	at, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(line["time"]))
	b.fetched = append(b.fetched, fetched{incarnation: incarnation, seq: b.seq, at: at, kind: kind, requestID: requestID, svixID: svixID})
	return false
}

func (b *logBook) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.fetched)
}

// incarnation is one run of the receiver binary.
type incarnation struct {
	n       int
	cmd     *exec.Cmd
	ready   chan struct{} // closed at its "listening" line
	done    chan struct{} // closed once it exited and its output is read
	exitErr error
	logPath string
}

// startReceiver runs the binary as incarnation n, logging to a file in
// dir, and waits until it listens.
func startReceiver(ctx context.Context, bin, dir string, n int, env []string, book *logBook) (*incarnation, error) {
	logPath := filepath.Join(dir, fmt.Sprintf("receiver-%03d.log", n))
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	cmd.Dir = dir // away from any .env
	cmd.Env = env
	cmd.Stderr = logFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting the receiver: %w", err)
	}
	inc := &incarnation{n: n, cmd: cmd, ready: make(chan struct{}), done: make(chan struct{}), logPath: logPath}
	go func() {
		defer close(inc.done)
		scanner := bufio.NewScanner(stdout)
		scanner.Buffer(make([]byte, 64<<10), 4<<20)
		readyOnce := sync.OnceFunc(func() { close(inc.ready) })
		for scanner.Scan() {
			logFile.Write(append(scanner.Bytes(), '\n'))
			if book.add(n, scanner.Bytes()) {
				readyOnce()
			}
		}
		inc.exitErr = cmd.Wait()
		logFile.Close()
	}()
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case <-inc.ready:
		return inc, nil
	case <-inc.done:
		return nil, fmt.Errorf("receiver %d exited before listening (%v); see %s", n, inc.exitErr, logPath)
	case <-timer.C:
		inc.kill()
		return nil, fmt.Errorf("receiver %d did not listen within %v; see %s", n, startTimeout, logPath)
	case <-ctx.Done():
		inc.kill()
		return nil, ctx.Err()
	}
}

// kill sends SIGKILL and waits until its output is read.
func (inc *incarnation) kill() {
	inc.cmd.Process.Kill()
	<-inc.done
}

// terminate sends SIGTERM and waits for a clean exit; after stopTimeout it
// kills and reports the failure.
func (inc *incarnation) terminate() error {
	if err := inc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-inc.done:
		if inc.exitErr != nil {
			return fmt.Errorf("receiver %d exited with %v after SIGTERM; see %s", inc.n, inc.exitErr, inc.logPath)
		}
		return nil
	case <-timer.C:
		inc.kill()
		return fmt.Errorf("receiver %d did not exit within %v of SIGTERM; see %s", inc.n, stopTimeout, inc.logPath)
	}
}

// exited reports whether the incarnation ended by itself.
func (inc *incarnation) exited() bool {
	select {
	case <-inc.done:
		return true
	default:
		return false
	}
}

// buildReceiver builds the receiver from the module root into dir.
func buildReceiver(ctx context.Context, dir string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	if err != nil || root == "." || strings.TrimSpace(string(gomod)) == os.DevNull {
		return "", errors.New("not inside the module: run from the repository, or pass -receiver")
	}
	bin := filepath.Join(dir, "optipick-webhooks")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build (the receiver): %v\n%s", err, out)
	}
	return bin, nil
}
