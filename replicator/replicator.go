package replicator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/graft-sh/graft/internal/retry"
	"github.com/graft-sh/graft/internal/task"
	"github.com/graft-sh/graft/store"
)

// Defaults of the replicator.
const (
	DefaultConsumer   = "graft-replicator"
	DefaultMaxDeliver = 8
	defaultBatch      = 256
	defaultWorkers    = 4
)

// Config configures a Replicator.
type Config struct {
	Store     *store.Store
	JetStream jetstream.JetStream
	Stream    StreamConfig
	Rules     *Rules
	// Consumer is the durable consumer every graftd replica shares.
	Consumer string
	// MaxDeliver is how often a change is tried before it is parked.
	MaxDeliver int
	// Workers process batches concurrently; default 4.
	Workers int
	// DestinationPatterns are where destinations may lie; default
	// DefaultDestinationPattern.
	DestinationPatterns []string
	Logger              *slog.Logger
	Registerer          prometheus.Registerer
}

// Replicator applies change events to the destinations of the rules that
// match them. Every graftd runs one; they share a durable consumer, so each
// event is handled by one of them, and a guard on the source revision
// makes a duplicate or reordered event harmless.
type Replicator struct {
	cfg       Config
	log       *slog.Logger
	metrics   *metrics
	validator *Validator
	parked    *parkedChanges
	apps      *apps
}

type metrics struct {
	events  *prometheus.CounterVec
	writes  *prometheus.CounterVec
	lag     prometheus.Histogram
	parked  prometheus.Counter
	repairs prometheus.Counter
	retries prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "graft_replication_events_total", Help: "Change events the replicator handled, by outcome (applied, no_rule, retried, parked).",
		}, []string{"outcome"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "graft_replication_destination_writes_total", Help: "Destination writes, by outcome (written, deleted, current, unowned, absent).",
		}, []string{"outcome"}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "graft_replication_lag_seconds",
			Help:    "Source commit to destination commit.",
			Buckets: []float64{.0005, .001, .002, .003, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		parked:  prometheus.NewCounter(prometheus.CounterOpts{Name: "graft_replication_parked_total", Help: "Changes parked after failing MaxDeliver times."}),
		repairs: prometheus.NewCounter(prometheus.CounterOpts{Name: "graft_replication_repairs_total", Help: "Destinations the reconciler repaired: each means the event path missed a change."}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{Name: "graft_replication_retries_total", Help: "Batches retried after an error."}),
	}
	if reg != nil {
		reg.MustRegister(m.events, m.writes, m.lag, m.parked, m.repairs, m.retries)
	}
	return m
}

// New returns a Replicator.
func New(cfg Config) (*Replicator, error) {
	if cfg.Store == nil || cfg.JetStream == nil || cfg.Rules == nil {
		return nil, errors.New("replicator: Config.Store, JetStream and Rules are required")
	}
	cfg.Stream = cfg.Stream.withDefaults()
	if cfg.Consumer == "" {
		cfg.Consumer = DefaultConsumer
	}
	if cfg.MaxDeliver <= 0 {
		cfg.MaxDeliver = DefaultMaxDeliver
	}
	if cfg.Workers <= 0 {
		cfg.Workers = defaultWorkers
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	v, err := NewValidator(cfg.DestinationPatterns)
	if err != nil {
		return nil, err
	}
	return &Replicator{cfg: cfg, log: cfg.Logger, metrics: newMetrics(cfg.Registerer), validator: v,
		parked: newParkedChanges(cfg.Store, cfg.Logger), apps: newApps(cfg.Store, cfg.Logger)}, nil
}

// Run consumes change events until ctx ends, reconnecting after errors,
// and follows the parked changes it clears as their sources replicate.
func (r *Replicator) Run(ctx context.Context) error {
	return task.Run(ctx, 0,
		task.New("parked changes", r.parked.snap.Run),
		task.New("applications", r.apps.snap.Run),
		task.New("change events", func(ctx context.Context) error {
			retry.Forever(ctx, r.log, "consuming change events", 100*time.Millisecond, 5*time.Second, r.consume)
			return nil
		}),
	)
}

func (r *Replicator) consume(ctx context.Context) error {
	// The relay (and graftd at start) create the stream, and ask for a
	// reconcile when they do: a stream created here would hide from them
	// that the events of a lost one never arrived.
	if _, err := r.cfg.JetStream.Stream(ctx, r.cfg.Stream.Name); err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("change stream %s does not exist yet; the relay creates it", r.cfg.Stream.Name)
		}
		return err
	}
	cons, err := r.cfg.JetStream.CreateOrUpdateConsumer(ctx, r.cfg.Stream.Name, jetstream.ConsumerConfig{
		Durable:       r.cfg.Consumer,
		Description:   "graft replicator: applies change events to rule destinations; shared by every graftd",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1, // parking, not the server, ends retries: see handle
		MaxAckPending: 20000,
		FilterSubject: r.cfg.Stream.Subject,
	})
	if err != nil {
		return fmt.Errorf("create consumer %s: %w", r.cfg.Consumer, err)
	}
	// A consumer deleted under us (with its stream, or by an operator)
	// delivers nothing more: stop, and let Run create it again.
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	msgs := make(chan jetstream.Msg, defaultBatch*r.cfg.Workers)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-wctx.Done():
		}
	}, jetstream.PullMaxMessages(defaultBatch*r.cfg.Workers), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			cancel(fmt.Errorf("consumer %s is gone: %w", r.cfg.Consumer, err))
		}
	}))
	if err != nil {
		return fmt.Errorf("consume %s: %w", r.cfg.Consumer, err)
	}
	defer cc.Stop()
	done := make(chan struct{})
	for range r.cfg.Workers {
		go func() {
			defer func() { done <- struct{}{} }()
			r.work(wctx, msgs)
		}()
	}
	for range r.cfg.Workers {
		<-done
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return context.Cause(wctx)
}

// work takes whatever events are waiting (up to a batch) and handles them
// together: one read of their sources, one batched write of their
// destinations.
func (r *Replicator) work(ctx context.Context, msgs <-chan jetstream.Msg) {
	batch := make([]jetstream.Msg, 0, defaultBatch)
	for {
		batch = batch[:0]
		select {
		case m := <-msgs:
			batch = append(batch, m)
		case <-ctx.Done():
			return
		}
	drain:
		for len(batch) < defaultBatch {
			select {
			case m := <-msgs:
				batch = append(batch, m)
			default:
				break drain
			}
		}
		r.handle(ctx, batch)
	}
}

func (r *Replicator) handle(ctx context.Context, batch []jetstream.Msg) {
	events := make([]Event, 0, len(batch))
	for _, m := range batch {
		var e Event
		if err := json.Unmarshal(m.Data(), &e); err != nil || e.Path == "" {
			r.log.Error("dropping an undecodable change event", "subject", m.Subject(), "err", err)
			m.Term()
			continue
		}
		events = append(events, e)
	}
	paths := make([]string, 0, len(events))
	for _, e := range events {
		paths = append(paths, e.Path)
		paths = append(paths, e.Txn...)
	}
	err := r.Apply(ctx, paths)
	if err == nil {
		for _, m := range batch {
			m.Ack()
		}
		r.metrics.events.WithLabelValues("applied").Add(float64(len(batch)))
		return
	}
	if ctx.Err() != nil {
		return // redelivered after AckWait, to whoever runs then
	}
	r.metrics.retries.Inc()
	// Retry each event on its own, so one bad source does not hold up
	// the rest.
	for i, m := range batch {
		if i >= len(events) {
			break
		}
		r.retry(ctx, m, events[i])
	}
}

func (r *Replicator) retry(ctx context.Context, m jetstream.Msg, e Event) {
	err := r.Apply(ctx, append([]string{e.Path}, e.Txn...))
	if err == nil {
		m.Ack()
		r.metrics.events.WithLabelValues("applied").Inc()
		return
	}
	md, _ := m.Metadata()
	attempts := 1
	if md != nil {
		attempts = int(md.NumDelivered)
	}
	if attempts < r.cfg.MaxDeliver {
		delay := min(100*time.Millisecond<<attempts, 30*time.Second)
		r.log.Warn("replicating a change failed; retrying", "path", e.Path, "revision", e.Revision, "attempt", attempts, "err", err, "retry_in", delay)
		m.NakWithDelay(delay)
		r.metrics.events.WithLabelValues("retried").Inc()
		return
	}
	p := Parked{Path: e.Path, Revision: e.Revision, Op: e.Op, Error: err.Error(), Attempts: attempts, Time: time.Now().UnixNano()}
	if perr := r.parked.put(ctx, p); perr != nil {
		r.log.Error("cannot park a failing change; it will be redelivered", "path", e.Path, "err", perr)
		m.NakWithDelay(30 * time.Second)
		return
	}
	r.log.Error("parked a change that keeps failing; the reconciler retries it, and `graft status` shows it", "path", e.Path, "revision", e.Revision, "attempts", attempts, "err", err)
	r.metrics.parked.Inc()
	r.metrics.events.WithLabelValues("parked").Inc()
	m.Term()
}

// Apply brings every destination of the given source paths up to date with
// the sources' current state. It is what an event triggers, and safe to
// call any number of times.
func (r *Replicator) Apply(ctx context.Context, paths []string) error {
	ix := r.cfg.Rules.Index()
	slices.Sort(paths)
	paths = slices.Compact(paths)
	matched := paths[:0:0]
	for _, p := range paths {
		if len(ix.BySource(p)) > 0 {
			matched = append(matched, p)
		}
	}
	if len(matched) == 0 {
		return nil
	}
	// The destinations follow from the rules alone, so their state is
	// read together with the sources.
	var targets []store.ReplicaTarget
	for _, p := range matched {
		for _, rule := range ix.BySource(p) {
			for _, d := range rule.Destinations {
				if dest, ok := rule.Map(p, d); ok {
					targets = append(targets, store.ReplicaTarget{Path: dest, Root: d})
				}
			}
		}
	}
	replicated := make(map[string]int64, len(matched))
	ws, res, err := r.cfg.Store.ReplicateFrom(ctx, matched, targets, func(st store.SourceState) []store.ReplicaWrite {
		for p, rev := range st.Absent {
			replicated[p] = rev
		}
		for p, e := range st.Found {
			replicated[p] = e.Revision
		}
		var ws []store.ReplicaWrite
		for _, p := range matched {
			for _, rule := range ix.BySource(p) {
				ws = append(ws, writesFor(rule, p, st.Found, st.Absent)...)
			}
		}
		return ws
	})
	if err != nil {
		return err
	}
	r.observe(ws, res, writeEvent, nil)
	r.parked.clear(ctx, replicated)
	return nil
}

// writesFor returns the destination writes that mirror source path p
// under rule.
func writesFor(rule Rule, p string, found map[string]store.Entry, absent map[string]int64) []store.ReplicaWrite {
	var ws []store.ReplicaWrite
	e, ok := found[p]
	if !ok && rule.OnDelete == OnDeleteRetain {
		return nil
	}
	for _, d := range rule.Destinations {
		dest, in := rule.Map(p, d)
		if !in {
			continue
		}
		w := store.ReplicaWrite{Path: dest, Root: d, Rule: rule.ID, Source: p}
		if ok {
			w.SourceRevision, w.SourceTime, w.Value = e.Revision, e.Time.UnixNano(), e.Value
		} else {
			w.SourceRevision, w.Delete = absent[p], true
		}
		ws = append(ws, w)
	}
	return ws
}

// writeKind says why destinations were written.
type writeKind int

const (
	writeEvent  writeKind = iota // a change event: its delay is replication lag
	writeFill                    // a new rule's first copy: not lag, not a repair
	writeRepair                  // the reconciler found the event path missed it
)

// observe counts the outcomes of replica writes and returns how many
// destinations changed. late, for a repair pass's writes, tells a copy of
// a change the event path had yet to apply (after the relay's cursor, or
// published and waiting in the consumer): not a repair, since its event
// would have made the copy (the event path is late, as after a graftd
// restarted, not wrong).
func (r *Replicator) observe(ws []store.ReplicaWrite, res []store.ReplicaResult, kind writeKind, late func(i int) bool) int {
	now := time.Now()
	n := 0
	for i, x := range res {
		r.metrics.writes.WithLabelValues(x.Outcome).Inc()
		if x.Outcome != store.ReplicaWritten && x.Outcome != store.ReplicaDeleted {
			continue
		}
		n++
		if ws[i].SourceTime > 0 && kind != writeFill {
			r.metrics.lag.Observe(now.Sub(time.Unix(0, ws[i].SourceTime)).Seconds())
		}
		if kind == writeRepair && late != nil && late(i) {
			r.log.Debug("reconciler copied a change before the event path applied it", "destination", ws[i].Path, "source", ws[i].Source,
				"source_revision", ws[i].SourceRevision, "outcome", x.Outcome)
			continue
		}
		if kind == writeRepair {
			r.metrics.repairs.Inc()
			r.log.Warn("reconciler repaired a destination the event path missed", "destination", ws[i].Path, "source", ws[i].Source, "source_revision", ws[i].SourceRevision, "outcome", x.Outcome)
		}
	}
	return n
}
