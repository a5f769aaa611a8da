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
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/graft-sh/graft/internal/retry"
	"github.com/graft-sh/graft/internal/task"
	"github.com/graft-sh/graft/internal/tlsfiles"
	"github.com/graft-sh/graft/sdk"
)

// Agent renders one application's templates and reloads it.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	out     io.Writer // --dry-run's report
	conn    *connection
	metrics *metrics
	reg     *prometheus.Registry
	// rotator runs rotations, when the configuration asks for them.
	rotator *rotator

	values   map[string][]byte
	times    map[string]time.Time // commit time of each value, for lag
	revision int64
	state    []rendered
	modTimes []time.Time

	// parsed keeps the templates parsed, for renders to come.
	parsed templates
	// reloaders are the reload actions, built once from cfg.Reload.
	reloaders []reloader

	// What the last reload did, for reports.
	reloads []sdk.ReloadReport
	healthy bool
	reason  string
	host    string
	// pending holds the watch's responses not yet applied, while follow
	// runs; a reload's retries and health wait give way to them.
	pending chan sdk.WatchResponse
	// reloadPending says a reload or its health check was cut short by
	// a newer revision: the next render reloads even if it writes nothing.
	reloadPending bool
	// instance is the random id of this agent process, in every report:
	// graftd refuses a report under an id another live process holds.
	instance string
	// reportState is how the last report went ("" sent, "failing" or
	// "refused"), to log once per change and not every heartbeat.
	reportState string

	// supervisor runs the application, when the configuration has exec.
	supervisor *supervisor

	ready    atomic.Bool
	applied  atomic.Int64
	listener net.Listener
}

// Reports: after every render, when the connection to graftd is made
// again, and every reportEvery. graftd keeps a report while the
// connection it came over is open, and reportTTL after it closed, so an
// agent that died drops out of `graft agents ls` and rollout status
// within it; the periodic report only retries one that failed and
// restores one graftd lost.
const (
	reportEvery = 30 * time.Second
	reportTTL   = 15 * time.Second
)

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
	a := &Agent{cfg: cfg, conn: conn, host: host, instance: newInstance(), healthy: true, log: log, out: out, reg: reg, metrics: newMetrics(reg),
		values: map[string][]byte{}, times: map[string]time.Time{},
		state: make([]rendered, len(cfg.Templates)), modTimes: make([]time.Time, len(cfg.Templates))}
	if cfg.Rotations.Enabled() {
		a.rotator = newRotator(rotatorConfig{Conn: conn, Log: log, Registry: reg, Holder: holder,
			Rotations: cfg.Rotations, ClaimTTL: cfg.RotationClaimTTL, Hook: cfg.RotationHook})
	}
	a.reloaders = newReloaders(cfg, log)
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
func (a *Agent) Ready() bool { return a.ready.Load() }

// Revision is the store revision of the tree the agent last applied.
func (a *Agent) Revision() int64 { return a.applied.Load() }

// ErrTemplates says that, in --once or --dry-run, a template failed.
var ErrTemplates = errors.New("a template failed")

// Run renders and reloads until ctx ends; it never gives up because
// graftd is away. With Once or DryRun it reads one snapshot, renders (or
// reports) and returns, with ErrTemplates if a template failed.
func (a *Agent) Run(ctx context.Context) error {
	defer a.conn.close()
	defer closeReloaders(a.reloaders)
	if a.cfg.Once || a.cfg.DryRun {
		return a.runOnce(ctx)
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
	var exit *ExitError
	if a.rotator == nil || a.cfg.App != "" {
		tasks = append(tasks, task.New("watch", func(ctx context.Context) error {
			exit = a.watch(ctx)
			if exit != nil {
				return exit
			}
			return nil
		}))
	} else {
		a.ready.Store(true) // a rotator alone has nothing to render
	}
	err := task.Run(ctx, 0, tasks...)
	if exit != nil {
		return exit
	}
	return err
}

// watch renders and reloads until ctx ends or the application it runs
// exits: a snapshot, a render from it, then the watch after it. A watch
// that ends because its revision was compacted, or because a new token
// replaced its connection, reads a new snapshot at once; any other
// failure (graftd away, access lost) backs off, with jitter. With exec,
// the application is stopped on the way out.
func (a *Agent) watch(ctx context.Context) *ExitError {
	if a.supervisor != nil {
		defer a.supervisor.close()
	}
	var exit *ExitError
	ctx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	retry.Forever(ctx, a.log, "following the application's tree "+a.cfg.Root(), 100*time.Millisecond, 10*time.Second, func(ctx context.Context) error {
		if err := a.snapshot(ctx); err != nil {
			return err
		}
		a.renderAndReload(ctx, nil, true)
		err := a.follow(ctx)
		switch {
		case errors.As(err, &exit):
			stopRun()
			return nil
		case errors.Is(err, sdk.ErrOutOfRange):
			a.log.Info("the revision to resume from was compacted; reading a new snapshot", "revision", a.Revision())
			return nil
		case err == nil:
			return nil
		}
		return err
	})
	return exit
}

func (a *Agent) runOnce(ctx context.Context) error {
	if err := a.snapshot(ctx); err != nil {
		return err
	}
	if a.cfg.DryRun {
		return a.dryRun()
	}
	failed := 0
	for i := range a.cfg.Templates {
		if _, err := a.renderOne(i); err != nil {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%w: %d of %d templates did not render (see the log)", ErrTemplates, failed, len(a.cfg.Templates))
	}
	return nil
}

// snapshot replaces the agent's view with one consistent read of its tree,
// unless it is older than what the agent has applied.
func (a *Agent) snapshot(ctx context.Context) error {
	var tree sdk.Tree
	err := a.conn.call(ctx, func(c *sdk.Client) (err error) {
		tree, err = c.ReadTree(ctx, a.cfg.Root())
		return err
	})
	if err != nil {
		return err
	}
	if tree.Revision < a.revision {
		return fmt.Errorf("graftd answered with revision %d, older than the %d applied; retrying", tree.Revision, a.revision)
	}
	values := make(map[string][]byte, len(tree.Entries))
	times := make(map[string]time.Time, len(tree.Entries))
	for _, e := range tree.Entries {
		values[e.Path] = e.Value
		times[e.Path] = commitTime(e)
	}
	for _, p := range tree.Unreadable {
		a.log.Error("a value in the tree cannot be decrypted by graftd; templates that read it fail", "path", p)
	}
	a.values, a.times, a.revision = values, times, tree.Revision
	a.applied.Store(tree.Revision)
	a.metrics.revision.Set(float64(tree.Revision))
	return nil
}

// follow applies the watch from the snapshot's revision, debounced, until
// the stream ends (it resumes by itself across graftd restarts; it ends
// when the revision to resume from was compacted, or the agent lost
// access).
func (a *Agent) follow(ctx context.Context) error {
	// The stream holds its client until it ends; when the token file's
	// new token replaces that client, the stream starts again on the new
	// one from a new snapshot.
	conn, release := a.conn.hold()
	defer release()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in := readAhead(wctx, conn.client.Watch(wctx, a.cfg.Root(), a.revision+1))
	a.pending = in
	defer func() { a.pending = nil }()
	changed := map[string]bool{}
	var quiet, deadline <-chan time.Time
	tick := time.NewTicker(time.Second) // template source files
	defer tick.Stop()
	heartbeat := time.NewTicker(reportEvery)
	defer heartbeat.Stop()
	// graftd keeps a report while the connection it came over is open:
	// one made again (graftd restarted, or another took over) is told at
	// once.
	reconnected := conn.client.Reconnects(wctx)
	flush := func() {
		a.renderAndReload(ctx, changed, false)
		changed = map[string]bool{}
		quiet, deadline = nil, nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-conn.replaced:
			return nil
		case resp, ok := <-in:
			if !ok {
				return errors.New("watch closed")
			}
			if resp.Err != nil {
				a.conn.refused(ctx, conn, resp.Err)
				return resp.Err
			}
			if resp.Revision <= a.revision {
				continue // never older over newer
			}
			for _, ev := range resp.Events {
				if ev.Type == sdk.EventDelete {
					delete(a.values, ev.Entry.Path)
					delete(a.times, ev.Entry.Path)
				} else {
					a.values[ev.Entry.Path] = ev.Entry.Value
					a.times[ev.Entry.Path] = commitTime(ev.Entry)
				}
				changed[ev.Entry.Path] = true
			}
			a.revision = resp.Revision
			if a.cfg.Wait.Min <= 0 {
				flush()
				continue
			}
			quiet = time.After(a.cfg.Wait.Min)
			if deadline == nil && a.cfg.Wait.Max > 0 {
				deadline = time.After(a.cfg.Wait.Max)
			}
		case <-quiet:
			flush()
		case <-deadline:
			flush()
		case <-tick.C:
			if a.sourcesChanged() {
				a.renderAndReload(ctx, nil, true)
			}
		case <-heartbeat.C:
			a.report(ctx)
		case <-reconnected:
			a.report(ctx)
		case <-a.supervisor.done():
			return a.supervisor.exited()
		}
	}
}

// readAhead reads the watch at once into a queue, so that a reload's
// retries and health wait can see that a newer revision is waiting.
func readAhead(ctx context.Context, events <-chan sdk.WatchResponse) chan sdk.WatchResponse {
	in := make(chan sdk.WatchResponse, 256)
	go func() {
		defer close(in)
		for resp := range events {
			select {
			case in <- resp:
			case <-ctx.Done():
				return
			}
		}
	}()
	return in
}

// sourcesChanged reports whether a template's source file changed since
// its last render.
func (a *Agent) sourcesChanged() bool {
	for i, t := range a.cfg.Templates {
		if t.Source != "" && !t.sourceModTime(a.cfg.base).Equal(a.modTimes[i]) {
			return true
		}
	}
	return false
}

// renderAndReload renders the templates that read a changed path (all with
// every set), and, if a file was written, runs the reload actions and
// waits for health.
func (a *Agent) renderAndReload(ctx context.Context, changed map[string]bool, every bool) {
	wrote, failed := 0, 0
	var newest time.Time
	for p := range changed {
		if t := a.times[p]; t.After(newest) {
			newest = t
		}
	}
	for i := range a.cfg.Templates {
		st := a.state[i]
		if !every && st.err == nil && !touched(st.deps, changed) {
			continue
		}
		w, err := a.renderOne(i)
		if err != nil {
			failed++
		}
		if w {
			wrote++
		}
	}
	if wrote > 0 && !newest.IsZero() {
		a.metrics.lag.Observe(time.Since(newest).Seconds())
	}
	// The revision counts as applied, and is reported, only with the
	// verdict of its reload and health check. When a newer revision
	// arrives first, the previous verdict stands and the newer one is
	// rendered at once: a reload's retries or a health wait of a minute
	// never hold back the next credential.
	prevReloads, prevHealthy, prevReason := a.reloads, a.healthy, a.reason
	var err error
	restarted := a.supervisor != nil && a.supervisor.supervise(a.view(), failed == 0, wrote > 0)
	switch {
	case restarted:
		a.reloads, a.healthy, a.reason = []sdk.ReloadReport{{Kind: "exec", OK: true}}, true, ""
		a.metrics.reloads.WithLabelValues("exec", "ok").Inc()
		err = a.checkHealth(ctx)
	case wrote > 0:
		err = a.reload(ctx)
	case a.reloadPending:
		err = a.reload(ctx)
	}
	if errors.Is(err, errSuperseded) {
		a.reloads, a.healthy, a.reason = prevReloads, prevHealthy, prevReason
		a.reloadPending = true
		a.log.Info("a newer revision arrived during the reload; applying it first", "revision", a.revision)
		return
	}
	a.reloadPending = false
	a.applied.Store(a.revision)
	a.metrics.revision.Set(float64(a.revision))
	// Ready once every template rendered and, with exec, the application
	// runs.
	if failed == 0 && (a.supervisor == nil || a.supervisor.running()) && !a.ready.Load() {
		a.ready.Store(true)
		a.log.Info("first complete render done", "revision", a.revision, "templates", len(a.cfg.Templates))
	}
	a.report(ctx)
}

// report tells graftd what the agent runs. A failure is logged once per
// outage; the next heartbeat tries again.
func (a *Agent) report(ctx context.Context) {
	rep := sdk.AgentReport{ID: a.cfg.ID, App: a.cfg.App, Host: a.host, Revision: a.applied.Load(),
		Reloads: a.reloads, Healthy: a.healthy, Reason: a.reason, HTTPAddress: a.Addr(), Instance: a.instance}
	for i, t := range a.cfg.Templates {
		st := a.state[i]
		tr := sdk.TemplateReport{Destination: t.Destination, SHA256: st.hash, Keys: st.deps.keys()}
		if st.err != nil {
			tr.Error = st.err.Error()
		}
		rep.Templates = append(rep.Templates, tr)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := a.conn.call(rctx, func(c *sdk.Client) error { return c.Report(rctx, rep, reportTTL) })
	if ctx.Err() != nil {
		return
	}
	a.noteReport(err)
}

// noteReport logs how a report went when that changed since the last
// one: reports go again and again, the log says each change once. A refusal
// because another live agent holds the id is its own state, with what to
// do; the agent keeps rendering and reloading, and keeps trying.
func (a *Agent) noteReport(err error) {
	state := ""
	switch {
	case err == nil:
	case idTaken(err):
		state = "refused"
	default:
		state = "failing"
	}
	if state == a.reportState {
		return
	}
	prev := a.reportState
	a.reportState = state
	switch state {
	case "refused":
		a.log.Error("graftd refuses this agent's reports: another live agent reports under the same id; give each agent its own (id: or --id), or stop the other one. This agent goes on rendering and tries again every heartbeat",
			"id", a.cfg.ID, "app", a.cfg.App, "instance", a.instance, "err", err)
	case "failing":
		a.log.Warn("cannot report to graftd; retrying every heartbeat", "err", err)
	default:
		if prev == "refused" {
			a.log.Info("graftd accepts this agent's reports again", "id", a.cfg.ID)
		} else {
			a.log.Info("reporting to graftd again")
		}
	}
}

// idTaken reports whether graftd refused a report because another live
// agent process holds its id: AlreadyExists, or a refusal that names the
// instance.
func idTaken(err error) bool {
	var e *sdk.Error
	return errors.As(err, &e) && (e.Code == codes.AlreadyExists ||
		e.Code == codes.FailedPrecondition && strings.Contains(e.Message, "instance"))
}

// newInstance returns a random id for this agent process.
func newInstance() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func touched(d deps, changed map[string]bool) bool {
	for p := range changed {
		if d.touches(p) {
			return true
		}
	}
	return false
}

// renderOne renders template i, writes it if its bytes changed, and
// reports whether it wrote. A failure leaves the previous file in place.
func (a *Agent) renderOne(i int) (bool, error) {
	t := a.cfg.Templates[i]
	a.modTimes[i] = t.sourceModTime(a.cfg.base)
	data, d, err := a.render(t)
	a.state[i].deps = d
	wrote, sum := false, hashOf(data)
	if err == nil {
		wrote, err = t.write(data, sum, a.state[i].hash)
	}
	if err != nil {
		a.state[i].err = err
		a.metrics.renders.WithLabelValues("failed").Inc()
		a.log.Error("template failed; the previous file stays", "file", t.Destination, "revision", a.revision, "err", err)
		return false, err
	}
	a.state[i].hash, a.state[i].err = sum, nil
	outcome := "unchanged"
	if wrote {
		outcome = "written"
		a.log.Info("file written", "file", t.Destination, "revision", a.revision, "sha256", sum[:12])
	}
	a.metrics.renders.WithLabelValues(outcome).Inc()
	return wrote, nil
}

// render renders template t against the tree as the agent has it.
func (a *Agent) render(t Template) ([]byte, deps, error) {
	text, err := t.text(a.cfg.base)
	if err != nil {
		return nil, deps{}, err
	}
	return a.view().render(t.Destination, text)
}

// view is the tree as the agent has applied it, for templates.
func (a *Agent) view() *view {
	return &view{root: a.cfg.Root(), values: a.values, revision: a.revision, parsed: &a.parsed}
}

// errSuperseded ends a reload's retries or health wait when a newer
// revision is waiting to be applied.
var errSuperseded = errors.New("superseded by a newer revision")

// superseded reports whether the watch has delivered a response not yet
// applied.
func (a *Agent) superseded() bool { return a.pending != nil && len(a.pending) > 0 }

// reload runs the reload actions in order, each retried with backoff
// unless its failure is final (a failed rollout), then waits for the
// health check. It returns errSuperseded when a newer revision arrived
// first; any other outcome is recorded for the report.
func (a *Agent) reload(ctx context.Context) error {
	a.reloads, a.healthy, a.reason = nil, true, ""
	for _, act := range a.reloaders {
		var err error
		attempt := 1
		for delay := 500 * time.Millisecond; ; attempt, delay = attempt+1, delay*2 {
			if err = act.Run(ctx); err == nil || attempt == reloadAttempts || ctx.Err() != nil || isFinal(err) {
				break
			}
			a.log.Warn("reload failed; retrying", "action", act.Kind(), "attempt", attempt, "err", err)
			if err := a.pause(ctx, delay); err != nil {
				return err
			}
		}
		if err != nil {
			a.metrics.reloads.WithLabelValues(act.Kind(), "failed").Inc()
			a.log.Error("reload failed", "action", act.Kind(), "attempts", attempt, "err", err)
			a.reloads = append(a.reloads, sdk.ReloadReport{Kind: act.Kind(), Error: err.Error()})
			a.healthy, a.reason = false, fmt.Sprintf("reload (%s) failed: %v", act.Kind(), err)
			continue
		}
		a.reloads = append(a.reloads, sdk.ReloadReport{Kind: act.Kind(), OK: true})
		a.metrics.reloads.WithLabelValues(act.Kind(), "ok").Inc()
		a.log.Info("reloaded", "action", act.Kind(), "revision", a.revision)
	}
	return a.checkHealth(ctx)
}

// pause waits d between a reload's tries, or returns errSuperseded as soon
// as a newer revision is waiting.
func (a *Agent) pause(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if a.superseded() {
			return errSuperseded
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(min(left, 100*time.Millisecond)):
		}
	}
}

// checkHealth waits for the health check after a reload or restart, and
// returns errSuperseded if a newer revision arrived first.
func (a *Agent) checkHealth(ctx context.Context) error {
	if err := a.cfg.Health.wait(ctx, a.superseded); err != nil {
		if errors.Is(err, errSuperseded) {
			return err
		}
		a.metrics.health.Set(0)
		a.healthy, a.reason = false, err.Error()
		a.log.Error("the application is unhealthy after the reload", "revision", a.revision, "err", err)
		return nil
	}
	if a.healthy {
		a.metrics.health.Set(1)
	} else {
		a.metrics.health.Set(0)
	}
	return nil
}

// reloadAttempts bounds the tries of one reload action.
const reloadAttempts = 4

// dryRun reports which files would change and which keys they read,
// never the values.
func (a *Agent) dryRun() error {
	failed := 0
	for _, t := range a.cfg.Templates {
		data, d, err := a.render(t)
		switch {
		case err != nil:
			failed++
			fmt.Fprintf(a.out, "fail   %s: %v\n", t.Destination, err)
		case onDisk(t.Destination) == hashOf(data):
			fmt.Fprintf(a.out, "same   %s\n", t.Destination)
		default:
			fmt.Fprintf(a.out, "write  %s (reads %s)\n", t.Destination, strings.Join(d.keys(), ", "))
		}
	}
	fmt.Fprintf(a.out, "at revision %d; nothing was written\n", a.revision)
	if failed > 0 {
		return fmt.Errorf("%w: %d of %d templates would not render", ErrTemplates, failed, len(a.cfg.Templates))
	}
	return nil
}

// commitTime is when a change was first committed: for a replicated copy
// its source's commit, so that the lag metric covers replication too.
func commitTime(e sdk.Entry) time.Time {
	if e.Origin != nil && !e.Origin.SourceTime.IsZero() {
		return e.Origin.SourceTime
	}
	return e.Time
}
