// Package agent is graft-agent: it runs next to an application, renders
// the application's values from its tree in graft (/app/<name>) into
// files, and makes the application use them (a signal, an HTTP call, a
// command, a container restart or a Kubernetes rollout restart after any
// file changed, then a health check). It reads one consistent snapshot of
// the tree, renders everything from it, then follows one watch stream from
// that revision, resuming after graftd restarts and reading a new snapshot
// if its revision was compacted. It never applies an older revision over a
// newer one, writes a file only when its bytes change, and keeps values out
// of its logs, metrics and errors. It links no graftd code: it talks to
// graftd through the SDK.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/graft-sh/graft/internal/task"
	"github.com/graft-sh/graft/internal/tlsfiles"
	"github.com/graft-sh/graft/sdk"
)

// Agent renders one application's templates and reloads it, runs its
// rotations, or both. It wires the subsystems, each built from its part
// of the configuration and run as a task: the watch and render loop
// (loop.go) with its reporter (report.go) and exec supervisor (exec.go),
// the rotator (rotator.go) and the HTTP endpoints (http.go). They share
// the connection to graftd (conn.go).
type Agent struct {
	cfg  Config
	log  *slog.Logger
	conn *connection
	reg  *prometheus.Registry
	// loop renders and reloads; Run leaves it out when the agent is only
	// a rotator.
	loop *loop
	// rotator runs rotations, when the configuration asks for them.
	rotator *rotator
	// supervisor runs the application, when the configuration has exec.
	supervisor *supervisor
	// brokers are the credential broker's listeners.
	brokers  []*brokerListener
	listener net.Listener
}

// New returns an agent for cfg, connected lazily to graftd. out receives
// the --dry-run report (nil: stdout).
func New(ctx context.Context, cfg Config, log *slog.Logger, out io.Writer) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	if out == nil {
		out = os.Stdout
	}
	sc := sdk.Config{Addr: cfg.Server, Insecure: cfg.Insecure}
	if cfg.TLS.CAFile != "" {
		tc, err := cfg.TLS.config()
		if err != nil {
			return nil, err
		}
		sc.TLS = tc
	}
	conn, err := newConnection(ctx, connConfig{SDK: sc, TokenFile: cfg.TokenFile, App: cfg.App, Log: log})
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	holder := cfg.ID
	if holder == "" {
		holder = defaultHolder(host)
	}
	if cfg.ID == "" {
		cfg.ID = cfg.DefaultID(host)
	}
	reg := prometheus.NewRegistry()
	a := &Agent{cfg: cfg, conn: conn, log: log, reg: reg}
	if cfg.Rotations.Enabled() {
		a.rotator = newRotator(rotatorConfig{Conn: conn, Log: log, Registry: reg, Holder: holder,
			Rotations: cfg.Rotations, ClaimTTL: cfg.RotationClaimTTL, Hook: cfg.RotationHook})
	}
	if cfg.Exec != nil {
		a.supervisor = newSupervisor(supervisorConfig{Exec: *cfg.Exec, Log: log})
	}
	if cfg.ServesHTTP() && !cfg.Once && !cfg.DryRun {
		l, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			conn.close()
			return nil, fmt.Errorf("listen %s: %w (set listen: to a free loopback port, or off)", cfg.Listen, err)
		}
		a.listener = l
	}
	var creds *keeper
	if cfg.App != "" {
		creds = newKeeper(keeperConfig{Conn: conn, Log: log, StateFile: cfg.stateFile(cfg.ID), Grace: cfg.DBCred.grace(), DryRun: cfg.DryRun})
	}
	var sessionsEnded func()
	if !cfg.Once && !cfg.DryRun {
		if a.brokers, err = newBrokers(cfg, creds, reg, log, func() { sessionsEnded() }); err != nil {
			if a.listener != nil {
				a.listener.Close()
			}
			conn.close()
			return nil, err
		}
	}
	reporter := newReporter(reporterConfig{Conn: conn, Log: log, ID: cfg.ID, App: cfg.App, Host: host, Addr: a.Addr()})
	a.loop = newLoop(loopConfig{Config: cfg, Conn: conn, Log: log, Metrics: newMetrics(reg), Reloaders: newReloaders(cfg, log),
		Supervisor: a.supervisor, Reporter: reporter, Creds: creds, Brokers: a.brokers, Out: out})
	sessionsEnded = func() {
		a.loop.sessionsEnded()
		creds.sessionsEnded()
	}
	if creds != nil && len(a.brokers) > 0 {
		creds.sessions = func(user string) int {
			n := 0
			for _, b := range a.brokers {
				n += b.srv.Sessions()[user]
			}
			return n
		}
	}
	return a, nil
}

func (t TLS) config() (*tls.Config, error) {
	tc, err := tlsfiles.Client(t.CAFile, t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	return tc, nil
}

// ForwardSignals makes an agent that runs its application (exec) pass the
// signals from ch to it. Call it before Run; graft-agent gives it SIGTERM,
// SIGINT and SIGHUP. Without exec it does nothing.
func (a *Agent) ForwardSignals(ch <-chan os.Signal) {
	if a.supervisor != nil {
		a.supervisor.signals = ch
	}
}

// Addr is the address of the agent's HTTP endpoints, if it serves them.
func (a *Agent) Addr() string {
	if a.listener == nil {
		return ""
	}
	return a.listener.Addr().String()
}

// Ready reports whether the first complete render is done.
func (a *Agent) Ready() bool { return a.loop.ready.Load() }

// Revision is the store revision of the tree the agent last applied.
func (a *Agent) Revision() int64 { return a.loop.applied.Load() }

// ErrTemplates says that, in --once or --dry-run, a template failed.
var ErrTemplates = errors.New("a template failed")

// Run renders and reloads until ctx ends; it never gives up because
// graftd is away. With Once or DryRun it reads one snapshot, renders (or
// reports) and returns, with ErrTemplates if a template failed.
func (a *Agent) Run(ctx context.Context) error {
	defer a.conn.close()
	defer closeReloaders(a.loop.reloaders)
	if a.cfg.Once || a.cfg.DryRun {
		return a.loop.once(ctx)
	}
	// The agent's long-running parts, as tasks: the first to fail stops
	// the others. The watch loop ends the run when the application it
	// runs (exec) exits, with its status.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var tasks []task.Task
	if a.listener != nil {
		tasks = append(tasks, task.New("http", a.serveHTTP))
	}
	if a.supervisor != nil && a.supervisor.signals != nil {
		tasks = append(tasks, task.New("signals", func(ctx context.Context) error {
			a.supervisor.forward(ctx, cancel)
			return nil
		}))
	}
	if a.rotator != nil {
		tasks = append(tasks, task.New("rotator", a.rotator.Run))
	}
	for _, b := range a.brokers {
		tasks = append(tasks, task.New("broker "+b.cfg.Listen, b.Serve))
	}
	if a.rotator == nil || a.cfg.App != "" {
		tasks = append(tasks, task.New("watch", a.loop.Run))
		if a.loop.creds != nil {
			tasks = append(tasks, task.New("dynamic credentials", a.loop.creds.Run))
		}
	} else {
		a.loop.ready.Store(true) // a rotator alone has nothing to render
	}
	err := task.Run(ctx, 0, tasks...)
	if exit := (*ExitError)(nil); errors.As(err, &exit) {
		return exit
	}
	return err
}
