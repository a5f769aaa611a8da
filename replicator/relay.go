package replicator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/graft-sh/graft/internal/retry"
	"github.com/graft-sh/graft/store"
)

// RelayConfig configures a Relay.
type RelayConfig struct {
	Store     *store.Store
	JetStream jetstream.JetStream
	Stream    StreamConfig
	// SessionTTL is the election lease in seconds; default 5.
	SessionTTL int
	// Holder names this replica in the election; default host:pid.
	Holder     string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Relay publishes every committed change of the kv range to JetStream: an
// outbox on etcd's own ordered log. One graftd relays at a time (an etcd
// election); the cursor it keeps in etcd lets the next leader resume where
// the last one stopped, and JetStream deduplication drops what is replayed.
type Relay struct {
	cfg    RelayConfig
	log    *slog.Logger
	leader atomic.Bool
	cursor *store.Records[int64]
	// fed is when the change feed last delivered a change or a progress
	// notice (unix nanoseconds), for FeedSilence.
	fed atomic.Int64

	events    prometheus.Counter
	errors    prometheus.Counter
	isLeader  prometheus.Gauge
	cursorRev prometheus.Gauge
}

// Relay tuning.
const (
	cursorEvery  = 50 * time.Millisecond
	cursorEvents = 1000
	cursorKey    = "cursor"
)

// NewRelay returns a Relay; Run starts it.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	if cfg.Store == nil || cfg.JetStream == nil {
		return nil, errors.New("replicator: RelayConfig.Store and JetStream are required")
	}
	cfg.Stream = cfg.Stream.withDefaults()
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 5
	}
	if cfg.Holder == "" {
		host, _ := os.Hostname()
		cfg.Holder = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Relay{
		cfg:       cfg,
		log:       cfg.Logger,
		cursor:    store.NewRecords[int64](cfg.Store, store.SpaceRelay),
		events:    prometheus.NewCounter(prometheus.CounterOpts{Name: "graft_relay_events_total", Help: "Change events the relay published."}),
		errors:    prometheus.NewCounter(prometheus.CounterOpts{Name: "graft_relay_publish_errors_total", Help: "Failed publishes (retried)."}),
		isLeader:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "graft_relay_leader", Help: "1 while this graftd relays."}),
		cursorRev: prometheus.NewGauge(prometheus.GaugeOpts{Name: "graft_relay_cursor_revision", Help: "The last etcd revision published."}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(r.events, r.errors, r.isLeader, r.cursorRev)
	}
	return r, nil
}

// Leader reports whether this replica is relaying: it leads and has its
// cursor, so every change committed from now on will be published.
func (r *Relay) Leader() bool { return r.leader.Load() }

// FeedSilence is how long the change feed has delivered nothing, not even
// a progress notice, while this replica relays; zero when it does not.
// graftd asks etcd for progress notices every few seconds, so a feed
// silent for longer is stuck, and so is replication.
func (r *Relay) FeedSilence() time.Duration {
	if !r.leader.Load() {
		return 0
	}
	return time.Since(time.Unix(0, r.fed.Load()))
}

// Run campaigns for the relay and relays while leader, until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	ttl := time.Duration(r.cfg.SessionTTL) * time.Second
	retry.Forever(ctx, r.log, "relaying", 50*time.Millisecond, 2*time.Second, func(ctx context.Context) error {
		return r.cfg.Store.Lead(ctx, store.ElectionRelay, r.cfg.Holder, ttl, r.lead)
	})
	return nil
}

func (r *Relay) lead(ctx context.Context, l *store.Leader) error {
	defer func() {
		r.leader.Store(false)
		r.isLeader.Set(0)
	}()
	// The stream may not exist yet (a fresh NATS, or one whose store was
	// lost): a relay that published into nothing would retry for ever.
	if err := OpenStream(ctx, r.cfg.JetStream, r.cfg.Stream, r.cfg.Store); err != nil {
		return err
	}
	return r.relay(ctx, l)
}

var errLostElection = errors.New("lost the relay election")

// relay publishes changes from the cursor on, as long as it leads.
func (r *Relay) relay(ctx context.Context, l *store.Leader) error {
	cursor, err := r.readCursor(ctx, l)
	if err != nil {
		return err
	}
	// Leading means relaying: every change after the cursor will be
	// published.
	r.fed.Store(time.Now().UnixNano())
	r.leader.Store(true)
	r.isLeader.Set(1)
	saved := cursor
	save := func(ctx context.Context) error {
		if cursor == saved {
			return nil
		}
		if _, err := r.cursor.Put(ctx, cursorKey, cursor, l.Cond()); err != nil {
			if errors.Is(err, store.ErrRevisionChanged) {
				return errLostElection
			}
			return fmt.Errorf("save relay cursor: %w", err)
		}
		saved = cursor
		r.cursorRev.Set(float64(cursor))
		return nil
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		save(sctx)
		cancel()
	}()
	for ctx.Err() == nil {
		fctx, cancel := context.WithCancel(ctx)
		feed := r.cfg.Store.Changes(fctx, cursor)
		r.fed.Store(time.Now().UnixNano())
		tick := time.NewTicker(cursorEvery)
		err := func() error {
			defer tick.Stop()
			defer cancel()
			pending := 0
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-tick.C:
					if err := save(ctx); err != nil {
						return err
					}
					pending = 0
				case b, ok := <-feed:
					r.fed.Store(time.Now().UnixNano())
					switch {
					case !ok:
						return nil
					case errors.Is(b.Err, store.ErrCompacted):
						return r.compacted(ctx, &cursor, l)
					case b.Err != nil:
						r.log.Warn("relay watch failed; resuming from the cursor", "cursor", cursor, "err", b.Err)
						return nil
					case len(b.Changes) == 0:
						cursor = max(cursor, b.Revision) // a progress notice
						continue
					}
					if err := r.publish(ctx, b.Changes); err != nil {
						return err
					}
					cursor = b.Revision
					if pending += len(b.Changes); pending >= cursorEvents {
						if err := save(ctx); err != nil {
							return err
						}
						pending = 0
					}
				}
			}
		}()
		if err != nil {
			return err
		}
	}
	return ctx.Err()
}

// readCursor returns the cursor, starting one at the current revision if
// there is none (the first start: earlier values are the reconciler's).
func (r *Relay) readCursor(ctx context.Context, l *store.Leader) (int64, error) {
	rec, err := r.cursor.Get(ctx, cursorKey)
	if err == nil {
		r.log.Info("relaying changes", "from_revision", rec.Value+1)
		r.cursorRev.Set(float64(rec.Value))
		return rec.Value, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return 0, fmt.Errorf("read relay cursor: %w", err)
	}
	// Changes up to c are not relayed: ask the reconciler, in the same
	// transaction, for a pass that copies them.
	c, err := r.moveCursor(ctx, l, "the relay started for the first time")
	if err != nil {
		return 0, fmt.Errorf("start relay cursor: %w", err)
	}
	r.log.Info("relaying changes for the first time; the reconciler copies earlier values", "from_revision", c+1)
	return c, nil
}

// moveCursor puts the cursor at the current revision and, in the same
// transaction, asks for a reconcile pass, for the changes it skips.
func (r *Relay) moveCursor(ctx context.Context, l *store.Leader, why string) (int64, error) {
	now, err := r.cfg.Store.Revision(ctx)
	if err != nil {
		return 0, err
	}
	put, err := r.cursor.PutOp(cursorKey, now)
	if err != nil {
		return 0, err
	}
	req, err := reconcileRequest(r.cfg.Store, why)
	if err != nil {
		return 0, err
	}
	_, ok, err := r.cfg.Store.Commit(ctx, []store.Cond{l.Cond()}, put, req)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, errLostElection
	}
	r.cursorRev.Set(float64(now))
	return now, nil
}

// compacted moves the cursor past a compaction and, in the same
// transaction, asks the reconciler for the changes in between: they are
// gone from etcd's log. Every later change is still relayed.
func (r *Relay) compacted(ctx context.Context, cursor *int64, l *store.Leader) error {
	old := *cursor
	now, err := r.moveCursor(ctx, l, fmt.Sprintf("relay cursor %d was compacted", old))
	if err != nil {
		return fmt.Errorf("move the relay cursor past a compaction: %w", err)
	}
	r.log.Warn("relay cursor was compacted away: changes in between cannot be relayed; asked for a full reconcile", "cursor", old, "now", now)
	*cursor = now
	return nil
}

// publish sends one event per change and waits until JetStream has stored
// every one, retrying until it has or leadership ends.
func (r *Relay) publish(ctx context.Context, evs []store.Change) error {
	msgs := make([][]byte, len(evs))
	ids := make([]string, len(evs))
	txns := map[int64][]string{}
	for _, ev := range evs {
		txns[ev.Revision] = append(txns[ev.Revision], ev.Path)
	}
	for i, ev := range evs {
		e := Event{Path: ev.Path, Revision: ev.Revision, Op: OpPut}
		if ev.Deleted {
			e.Op = OpDelete
		}
		if t := txns[ev.Revision]; len(t) > 1 && len(t) <= maxTxnSiblings {
			e.Txn = t
		}
		msgs[i], _ = json.Marshal(e)
		ids[i] = e.MsgID()
	}
	backoff := 20 * time.Millisecond
	for {
		err := r.publishOnce(ctx, msgs, ids)
		if err == nil {
			r.events.Add(float64(len(evs)))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.errors.Inc()
		r.log.Warn("publishing change events failed; retrying", "events", len(evs), "err", err, "backoff", backoff)
		if errors.Is(err, jetstream.ErrNoStreamResponse) {
			if serr := OpenStream(ctx, r.cfg.JetStream, r.cfg.Stream, r.cfg.Store); serr != nil {
				r.log.Warn("recreating the change-event stream failed", "err", serr)
			}
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return ctx.Err()
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (r *Relay) publishOnce(ctx context.Context, msgs [][]byte, ids []string) error {
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for i, m := range msgs {
		f, err := r.cfg.JetStream.PublishAsync(r.cfg.Stream.Subject, m, jetstream.WithMsgID(ids[i]))
		if err != nil {
			return err
		}
		futures = append(futures, f)
	}
	timeout := time.NewTimer(5 * time.Second)
	defer timeout.Stop()
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-timeout.C:
			return errors.New("no acknowledgement from JetStream within 5s")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
