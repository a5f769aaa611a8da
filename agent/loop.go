package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/graft-sh/graft/internal/retry"
	"github.com/graft-sh/graft/sdk"
)

// loopConfig is what the watch and render loop is given.
type loopConfig struct {
	// Config is the agent's: its application, templates, wait, health
	// check, --once and --dry-run.
	Config  Config
	Conn    *connection
	Log     *slog.Logger
	Metrics *metrics
	// Reloaders are the reload actions, built once from Config.Reload.
	Reloaders []reloader
	// Supervisor runs the application, when the configuration has exec.
	Supervisor *supervisor
	// Reporter sends what the loop applied to graftd.
	Reporter *reporter
	// Creds keeps the dynamic credentials templates use.
	Creds *keeper
	// Brokers take their credentials from each revision the loop applies.
	Brokers []*brokerListener
	// Out receives the --dry-run report.
	Out io.Writer
}

// loop is graft-agent's watch and render loop: it keeps the application's
// tree as the agent has applied it, renders the templates from it, runs
// the reload actions and the health check, and reports each verdict.
type loop struct {
	cfg        Config
	conn       *connection
	log        *slog.Logger
	metrics    *metrics
	reloaders  []reloader
	supervisor *supervisor
	reporter   *reporter
	creds      *keeper
	brokers    []*brokerListener
	out        io.Writer

	values   map[string][]byte
	times    map[string]time.Time // commit time of each value, for lag
	revision int64
	state    []rendered
	modTimes []time.Time

	// parsed keeps the templates parsed, for renders to come.
	parsed templates

	// What the last reload did, for reports.
	reloads []sdk.ReloadReport
	healthy bool
	reason  string
	// pending holds the watch's responses not yet applied, while follow
	// runs; a reload's retries and health wait give way to them.
	pending chan sdk.WatchResponse
	// reloadPending says a reload or its health check was cut short by
	// a newer revision: the next render reloads even if it writes nothing.
	reloadPending bool

	// reportSoon asks for a report now: a broker's last session as a
	// user ended, which a rotation's retirement may be waiting for.
	reportSoon chan struct{}

	ready   atomic.Bool
	applied atomic.Int64
}

func newLoop(c loopConfig) *loop {
	return &loop{cfg: c.Config, conn: c.Conn, log: c.Log, metrics: c.Metrics, reloaders: c.Reloaders,
		supervisor: c.Supervisor, reporter: c.Reporter, creds: c.Creds, brokers: c.Brokers, out: c.Out, healthy: true,
		values: map[string][]byte{}, times: map[string]time.Time{}, reportSoon: make(chan struct{}, 1),
		state: make([]rendered, len(c.Config.Templates)), modTimes: make([]time.Time, len(c.Config.Templates))}
}

// watch renders and reloads until ctx ends or the application it runs
// exits: a snapshot, a render from it, then the watch after it. A watch
// that ends because its revision was compacted, or because a new token
// replaced its connection, reads a new snapshot at once; any other
// failure (graftd away, access lost) backs off, with jitter. With exec,
// the application is stopped on the way out.
func (l *loop) Run(ctx context.Context) error {
	if l.supervisor != nil {
		defer l.supervisor.close()
	}
	var exit *ExitError
	ctx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	retry.Forever(ctx, l.log, "following the application's tree "+l.cfg.Root(), 100*time.Millisecond, 10*time.Second, func(ctx context.Context) error {
		if err := l.snapshot(ctx); err != nil {
			return err
		}
		l.renderAndReload(ctx, nil, true, false)
		err := l.follow(ctx)
		switch {
		case errors.As(err, &exit):
			stopRun()
			return nil
		case errors.Is(err, sdk.ErrOutOfRange):
			l.log.Info("the revision to resume from was compacted; reading a new snapshot", "revision", l.applied.Load())
			return nil
		case err == nil:
			return nil
		}
		return err
	})
	if exit != nil {
		return exit
	}
	return nil
}

func (l *loop) once(ctx context.Context) error {
	if l.creds != nil {
		l.creds.bind(ctx)
	}
	if err := l.snapshot(ctx); err != nil {
		return err
	}
	if l.cfg.DryRun {
		return l.dryRun()
	}
	failed := 0
	for i := range l.cfg.Templates {
		if _, err := l.renderOne(i); err != nil {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%w: %d of %d templates did not render (see the log)", ErrTemplates, failed, len(l.cfg.Templates))
	}
	return nil
}

// snapshot replaces the agent's view with one consistent read of its tree,
// unless it is older than what the agent has applied.
func (l *loop) snapshot(ctx context.Context) error {
	var tree sdk.Tree
	err := l.conn.call(ctx, func(c *sdk.Client) (err error) {
		tree, err = c.ReadTree(ctx, l.cfg.Root())
		return err
	})
	if err != nil {
		return err
	}
	if tree.Revision < l.revision {
		return fmt.Errorf("graftd answered with revision %d, older than the %d applied; retrying", tree.Revision, l.revision)
	}
	values := make(map[string][]byte, len(tree.Entries))
	times := make(map[string]time.Time, len(tree.Entries))
	for _, e := range tree.Entries {
		values[e.Path] = e.Value
		times[e.Path] = commitTime(e)
	}
	for _, p := range tree.Unreadable {
		l.log.Error("a value in the tree cannot be decrypted by graftd; templates that read it fail", "path", p)
	}
	l.values, l.times, l.revision = values, times, tree.Revision
	l.publish()
	l.applied.Store(tree.Revision)
	l.metrics.revision.Set(float64(tree.Revision))
	return nil
}

// follow applies the watch from the snapshot's revision, debounced, until
// the stream ends (it resumes by itself across graftd restarts; it ends
// when the revision to resume from was compacted, or the agent lost
// access).
func (l *loop) follow(ctx context.Context) error {
	// The stream holds its client until it ends; when the token file's
	// new token replaces that client, the stream starts again on the new
	// one from a new snapshot.
	conn, release := l.conn.hold()
	defer release()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in := readAhead(wctx, conn.client.Watch(wctx, l.cfg.Root(), l.revision+1))
	l.pending = in
	defer func() { l.pending = nil }()
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
		l.renderAndReload(ctx, changed, false, false)
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
				l.conn.refused(ctx, conn, resp.Err)
				return resp.Err
			}
			if resp.Revision <= l.revision {
				continue // never older over newer
			}
			for _, ev := range resp.Events {
				if ev.Type == sdk.EventDelete {
					delete(l.values, ev.Entry.Path)
					delete(l.times, ev.Entry.Path)
				} else {
					l.values[ev.Entry.Path] = ev.Entry.Value
					l.times[ev.Entry.Path] = commitTime(ev.Entry)
				}
				changed[ev.Entry.Path] = true
			}
			l.revision = resp.Revision
			// The brokers' next connections log in with this revision's
			// credential at once: no render or reload is needed.
			l.publish()
			if l.cfg.Wait.Min <= 0 {
				flush()
				continue
			}
			quiet = time.After(l.cfg.Wait.Min)
			if deadline == nil && l.cfg.Wait.Max > 0 {
				deadline = time.After(l.cfg.Wait.Max)
			}
		case <-quiet:
			flush()
		case <-deadline:
			flush()
		case <-tick.C:
			if l.sourcesChanged() {
				l.renderAndReload(ctx, nil, true, false)
			}
		case <-l.creds.Replaced():
			l.renderAndReload(ctx, nil, false, true)
		case <-heartbeat.C:
			l.report(ctx)
		case <-l.reportSoon:
			l.report(ctx)
		case <-reconnected:
			l.report(ctx)
		case <-l.supervisor.done():
			return l.supervisor.exited()
		}
	}
}

// sessionsEnded asks for a report soon: a broker's last session as some
// user ended.
func (l *loop) sessionsEnded() {
	select {
	case l.reportSoon <- struct{}{}:
	default:
	}
}

// publish gives the brokers the credential of the revision applied.
func (l *loop) publish() {
	for _, b := range l.brokers {
		b.publish(l.values, l.revision)
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
func (l *loop) sourcesChanged() bool {
	for i, t := range l.cfg.Templates {
		if t.Source != "" && !t.sourceModTime(l.cfg.base).Equal(l.modTimes[i]) {
			return true
		}
	}
	return false
}

// renderAndReload renders the templates that read a changed path (all with
// every set; with creds, those that use a dynamic credential too), and,
// if a file was written, runs the reload actions and waits for health.
func (l *loop) renderAndReload(ctx context.Context, changed map[string]bool, every, creds bool) {
	wrote, failed := 0, 0
	var newest time.Time
	for p := range changed {
		if t := l.times[p]; t.After(newest) {
			newest = t
		}
	}
	for i := range l.cfg.Templates {
		st := l.state[i]
		if !every && st.err == nil && !touched(st.deps, changed) && (!creds || len(st.deps.creds) == 0) {
			continue
		}
		w, err := l.renderOne(i)
		if err != nil {
			failed++
		}
		if w {
			wrote++
		}
	}
	if wrote > 0 && !newest.IsZero() {
		l.metrics.lag.Observe(time.Since(newest).Seconds())
	}
	// The revision counts as applied, and is reported, only with the
	// verdict of its reload and health check. When a newer revision
	// arrives first, the previous verdict stands and the newer one is
	// rendered at once: a reload's retries or a health wait of a minute
	// never hold back the next credential.
	prevReloads, prevHealthy, prevReason := l.reloads, l.healthy, l.reason
	var err error
	restarted := l.supervisor != nil && l.supervisor.supervise(l.view(), failed == 0, wrote > 0)
	switch {
	case restarted:
		l.reloads, l.healthy, l.reason = []sdk.ReloadReport{{Kind: "exec", OK: true}}, true, ""
		l.metrics.reloads.WithLabelValues("exec", "ok").Inc()
		err = l.checkHealth(ctx)
	case wrote > 0:
		err = l.reload(ctx)
	case l.reloadPending:
		err = l.reload(ctx)
	}
	if errors.Is(err, errSuperseded) {
		l.reloads, l.healthy, l.reason = prevReloads, prevHealthy, prevReason
		l.reloadPending = true
		l.log.Info("a newer revision arrived during the reload; applying it first", "revision", l.revision)
		return
	}
	l.reloadPending = false
	// The credentials this render used are in use once it is healthy:
	// those they replaced are revoked after the grace period.
	l.creds.applied(failed == 0 && l.healthy)
	l.applied.Store(l.revision)
	l.metrics.revision.Set(float64(l.revision))
	// Ready once every template rendered and, with exec, the application
	// runs.
	if failed == 0 && (l.supervisor == nil || l.supervisor.running()) && !l.ready.Load() {
		l.ready.Store(true)
		l.log.Info("first complete render done", "revision", l.revision, "templates", len(l.cfg.Templates))
	}
	l.report(ctx)
}

// report tells graftd what the agent runs, through the reporter.
func (l *loop) report(ctx context.Context) {
	rep := sdk.AgentReport{Revision: l.applied.Load(), Reloads: l.reloads, Healthy: l.healthy, Reason: l.reason, Leases: l.creds.leases()}
	for _, b := range l.brokers {
		rep.Brokers = append(rep.Brokers, b.report())
	}
	for i, t := range l.cfg.Templates {
		st := l.state[i]
		tr := sdk.TemplateReport{Destination: t.Destination, SHA256: st.hash, Keys: st.deps.keys()}
		if st.err != nil {
			tr.Error = st.err.Error()
		}
		rep.Templates = append(rep.Templates, tr)
	}
	l.reporter.send(ctx, rep)
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
func (l *loop) renderOne(i int) (bool, error) {
	t := l.cfg.Templates[i]
	l.modTimes[i] = t.sourceModTime(l.cfg.base)
	data, d, err := l.render(t)
	l.state[i].deps = d
	wrote, sum := false, hashOf(data)
	if err == nil {
		wrote, err = t.write(data, sum, l.state[i].hash)
	}
	if err != nil {
		l.state[i].err = err
		l.metrics.renders.WithLabelValues("failed").Inc()
		l.log.Error("template failed; the previous file stays", "file", t.Destination, "revision", l.revision, "err", err)
		return false, err
	}
	l.state[i].hash, l.state[i].err = sum, nil
	outcome := "unchanged"
	if wrote {
		outcome = "written"
		l.log.Info("file written", "file", t.Destination, "revision", l.revision, "sha256", sum[:12])
	}
	l.metrics.renders.WithLabelValues(outcome).Inc()
	return wrote, nil
}

// render renders template t against the tree as the agent has it.
func (l *loop) render(t Template) ([]byte, deps, error) {
	text, err := t.text(l.cfg.base)
	if err != nil {
		return nil, deps{}, err
	}
	return l.view().render(t.Destination, text)
}

// view is the tree as the agent has applied it, for templates.
func (l *loop) view() *view {
	v := &view{root: l.cfg.Root(), values: l.values, revision: l.revision, parsed: &l.parsed}
	if l.creds != nil {
		v.creds = l.creds
	}
	return v
}

// errSuperseded ends a reload's retries or health wait when a newer
// revision is waiting to be applied.
var errSuperseded = errors.New("superseded by a newer revision")

// superseded reports whether the watch has delivered a response not yet
// applied.
func (l *loop) superseded() bool { return l.pending != nil && len(l.pending) > 0 }

// reload runs the reload actions in order, each retried with backoff
// unless its failure is final (a failed rollout), then waits for the
// health check. It returns errSuperseded when a newer revision arrived
// first; any other outcome is recorded for the report.
func (l *loop) reload(ctx context.Context) error {
	l.reloads, l.healthy, l.reason = nil, true, ""
	for _, act := range l.reloaders {
		var err error
		attempt := 1
		for delay := 500 * time.Millisecond; ; attempt, delay = attempt+1, delay*2 {
			if err = act.Run(ctx); err == nil || attempt == reloadAttempts || ctx.Err() != nil || isFinal(err) {
				break
			}
			l.log.Warn("reload failed; retrying", "action", act.Kind(), "attempt", attempt, "err", err)
			if err := l.pause(ctx, delay); err != nil {
				return err
			}
		}
		if err != nil {
			l.metrics.reloads.WithLabelValues(act.Kind(), "failed").Inc()
			l.log.Error("reload failed", "action", act.Kind(), "attempts", attempt, "err", err)
			l.reloads = append(l.reloads, sdk.ReloadReport{Kind: act.Kind(), Error: err.Error()})
			l.healthy, l.reason = false, fmt.Sprintf("reload (%s) failed: %v", act.Kind(), err)
			continue
		}
		l.reloads = append(l.reloads, sdk.ReloadReport{Kind: act.Kind(), OK: true})
		l.metrics.reloads.WithLabelValues(act.Kind(), "ok").Inc()
		l.log.Info("reloaded", "action", act.Kind(), "revision", l.revision)
	}
	return l.checkHealth(ctx)
}

// pause waits d between a reload's tries, or returns errSuperseded as soon
// as a newer revision is waiting.
func (l *loop) pause(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if l.superseded() {
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
func (l *loop) checkHealth(ctx context.Context) error {
	if err := l.cfg.Health.wait(ctx, l.superseded); err != nil {
		if errors.Is(err, errSuperseded) {
			return err
		}
		l.metrics.health.Set(0)
		l.healthy, l.reason = false, err.Error()
		l.log.Error("the application is unhealthy after the reload", "revision", l.revision, "err", err)
		return nil
	}
	if l.healthy {
		l.metrics.health.Set(1)
	} else {
		l.metrics.health.Set(0)
	}
	return nil
}

// reloadAttempts bounds the tries of one reload action.
const reloadAttempts = 4

// dryRun reports which files would change and which keys they read,
// never the values.
func (l *loop) dryRun() error {
	failed := 0
	for _, t := range l.cfg.Templates {
		data, d, err := l.render(t)
		switch {
		case err != nil:
			failed++
			fmt.Fprintf(l.out, "fail   %s: %v\n", t.Destination, err)
		case onDisk(t.Destination) == hashOf(data):
			fmt.Fprintf(l.out, "same   %s\n", t.Destination)
		default:
			fmt.Fprintf(l.out, "write  %s (reads %s)\n", t.Destination, strings.Join(d.keys(), ", "))
		}
	}
	fmt.Fprintf(l.out, "at revision %d; nothing was written\n", l.revision)
	if failed > 0 {
		return fmt.Errorf("%w: %d of %d templates would not render", ErrTemplates, failed, len(l.cfg.Templates))
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
