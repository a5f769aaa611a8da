package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// reloader is one reload action, built once from the configuration
// (newReloaders); each kind keeps what it holds open between reloads
// (docker's engine client, kubernetes' cluster client) and releases it in
// Close.
type reloader interface {
	// Kind names the action for logs, metrics and reports.
	Kind() string
	// Run performs the action once.
	Run(ctx context.Context) error
	Close()
}

var (
	_ reloader = signalReloader{}
	_ reloader = httpReloader{}
	_ reloader = commandReloader{}
	_ reloader = (*dockerRestarter)(nil)
	_ reloader = (*kubeRestarter)(nil)
)

// newReloaders builds the configuration's reload actions, in order.
func newReloaders(cfg Config, log *slog.Logger) []reloader {
	out := make([]reloader, 0, len(cfg.Reload))
	for _, a := range cfg.Reload {
		switch {
		case a.Signal != nil:
			out = append(out, signalReloader{a.Signal})
		case a.HTTP != nil:
			out = append(out, httpReloader{a.HTTP})
		case a.Docker != nil:
			out = append(out, &dockerRestarter{action: a.Docker})
		case a.Kubernetes != nil:
			out = append(out, newKubeRestarter(a.Kubernetes, cfg.Kubernetes, log.With("action", "kubernetes")))
		default:
			out = append(out, commandReloader{a.Command})
		}
	}
	return out
}

// closeReloaders releases what the actions hold open between reloads.
func closeReloaders(rs []reloader) {
	for _, r := range rs {
		r.Close()
	}
}

type signalReloader struct{ *SignalAction }

func (signalReloader) Kind() string                { return "signal" }
func (s signalReloader) Run(context.Context) error { return s.run() }
func (signalReloader) Close()                      {}

type httpReloader struct{ *HTTPAction }

func (httpReloader) Kind() string                    { return "http" }
func (h httpReloader) Run(ctx context.Context) error { return h.run(ctx) }
func (httpReloader) Close()                          {}

type commandReloader struct{ argv []string }

func (commandReloader) Kind() string                    { return "command" }
func (c commandReloader) Run(ctx context.Context) error { return runCommand(ctx, c.argv, 0) }
func (commandReloader) Close()                          {}

func (s *SignalAction) run() error {
	data, err := os.ReadFile(s.Pidfile)
	if err != nil {
		return fmt.Errorf("signal: read the pidfile: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("signal: pidfile %s holds no process id", s.Pidfile)
	}
	sig, _ := parseSignal(s.Signal)
	if err := syscall.Kill(pid, sig); err != nil {
		return fmt.Errorf("signal: send %s to process %d (from %s): %w", sig, pid, s.Pidfile, err)
	}
	return nil
}

func (h *HTTPAction) run(ctx context.Context) error {
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = defaultHTTPTime
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	method := h.Method
	if method == "" {
		method = http.MethodPost
	}
	req, err := http.NewRequestWithContext(ctx, strings.ToUpper(method), h.URL, nil)
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("http: %s %s: %w", req.Method, h.URL, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("http: %s %s answered %s", req.Method, h.URL, resp.Status)
	}
	return nil
}

// runCommand runs argv and succeeds on exit status 0. Its output is not
// kept: a reload script may print what it loaded.
func runCommand(ctx context.Context, argv []string, timeout time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return fmt.Errorf("command %s: %s", argv[0], exit.ProcessState)
		}
		return fmt.Errorf("command %s: %w", argv[0], err)
	}
	return nil
}

// configured reports whether a health check is set.
func (h Health) configured() bool {
	return h.HTTP != "" || h.TCP != "" || len(h.Command) > 0
}

// probe runs the health check once.
func (h Health) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	switch {
	case h.HTTP != "":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.HTTP, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("GET %s: %w", h.HTTP, err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("GET %s answered %s", h.HTTP, resp.Status)
		}
		return nil
	case h.TCP != "":
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", h.TCP)
		if err != nil {
			return fmt.Errorf("connect %s: %w", h.TCP, err)
		}
		return c.Close()
	default:
		return runCommand(ctx, h.Command, 0)
	}
}

// wait polls the health check until it passes or its timeout ends, and
// returns the last failure then; or errSuperseded once superseded says a
// newer revision is waiting.
func (h Health) wait(ctx context.Context, superseded func() bool) error {
	if !h.configured() {
		return nil
	}
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = defaultHealthTTL
	}
	deadline := time.Now().Add(timeout)
	for {
		err := h.probe(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("unhealthy after %s: %w", timeout, err)
		}
		if superseded() {
			return errSuperseded
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}
