package replicator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/graft-sh/graft/internal/retry"
	"github.com/graft-sh/graft/store"
)

// RelayConfig configures a Relay.
type RelayConfig struct {
	Client    *clientv3.Client
	Prefix    string // the store prefix; default store.DefaultPrefix
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

	events    prometheus.Counter
	errors    prometheus.Counter
	isLeader  prometheus.Gauge
	cursorRev prometheus.Gauge
}

// Relay tuning.
const (
	cursorEvery  = 50 * time.Millisecond
	cursorEvents = 1000
)

// NewRelay returns a Relay; Run starts it.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	if cfg.Client == nil || cfg.JetStream == nil {
		return nil, errors.New("replicator: RelayConfig.Client and JetStream are required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = store.DefaultPrefix
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

// Leader reports whether this replica is relaying.
func (r *Relay) Leader() bool { return r.leader.Load() }

// Run campaigns for the relay and relays while leader, until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	retry.Forever(ctx, r.log, "relaying", 50*time.Millisecond, 2*time.Second, r.lead)
	return nil
}

func (r *Relay) lead(ctx context.Context) error {
	sess, err := concurrency.NewSession(r.cfg.Client, concurrency.WithTTL(r.cfg.SessionTTL), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	defer sess.Close()
	el := concurrency.NewElection(sess, r.cfg.Prefix+"relay/leader")
	if err := el.Campaign(ctx, r.cfg.Holder); err != nil {
		return err
	}
	r.leader.Store(true)
	r.isLeader.Set(1)
	defer func() {
		r.leader.Store(false)
		r.isLeader.Set(0)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		el.Resign(rctx)
		cancel()
	}()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-lctx.Done():
		}
	}()
	// The stream may not exist yet (a fresh NATS, or one whose store was
	// lost): a relay that published into nothing would retry for ever.
	if err := OpenStream(lctx, r.cfg.JetStream, r.cfg.Stream, r.cfg.Client, r.cfg.Prefix); err != nil {
		return err
	}
	guard := clientv3.Compare(clientv3.CreateRevision(el.Key()), "=", el.Rev())
	return r.relay(lctx, guard)
}

func (r *Relay) cursorKey() string { return r.cfg.Prefix + "relay/cursor" }

// relay publishes changes from the cursor on, as long as it leads.
func (r *Relay) relay(ctx context.Context, guard clientv3.Cmp) error {
	cursor, err := r.readCursor(ctx, guard)
	if err != nil {
		return err
	}
	saved := cursor
	save := func(ctx context.Context) error {
		if cursor == saved {
			return nil
		}
		resp, err := r.cfg.Client.Txn(ctx).If(guard).Then(clientv3.OpPut(r.cursorKey(), strconv.FormatInt(cursor, 10))).Commit()
		if err != nil {
			return fmt.Errorf("save relay cursor: %w", err)
		}
		if !resp.Succeeded {
			return errors.New("lost the relay election")
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
	kvPrefix := r.cfg.Prefix + "kv"
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := r.cfg.Client.Watch(wctx, kvPrefix+"/", clientv3.WithPrefix(), clientv3.WithRev(cursor+1), clientv3.WithProgressNotify())
		tick := time.NewTicker(cursorEvery)
		pending := 0
	watch:
		for {
			select {
			case <-ctx.Done():
				break watch
			case <-tick.C:
				if err := save(ctx); err != nil {
					tick.Stop()
					cancel()
					return err
				}
				pending = 0
			case resp, ok := <-wch:
				if !ok {
					break watch
				}
				if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
					if err := r.compacted(ctx, &cursor, guard); err != nil {
						tick.Stop()
						cancel()
						return err
					}
					break watch
				}
				if err := resp.Err(); err != nil {
					r.log.Warn("relay watch failed; resuming from the cursor", "cursor", cursor, "err", err)
					break watch
				}
				if len(resp.Events) == 0 {
					if resp.IsProgressNotify() && resp.Header.Revision > cursor {
						cursor = resp.Header.Revision
					}
					continue
				}
				if err := r.publish(ctx, kvPrefix, resp.Events); err != nil {
					tick.Stop()
					cancel()
					return err
				}
				cursor = resp.Events[len(resp.Events)-1].Kv.ModRevision
				pending += len(resp.Events)
				if pending >= cursorEvents {
					if err := save(ctx); err != nil {
						tick.Stop()
						cancel()
						return err
					}
					pending = 0
				}
			}
		}
		tick.Stop()
		cancel()
	}
	return ctx.Err()
}

// readCursor returns the cursor, starting one at the current revision if
// there is none (the first start: earlier values are the reconciler's).
func (r *Relay) readCursor(ctx context.Context, guard clientv3.Cmp) (int64, error) {
	resp, err := r.cfg.Client.Get(ctx, r.cursorKey())
	if err != nil {
		return 0, fmt.Errorf("read relay cursor: %w", err)
	}
	if len(resp.Kvs) > 0 {
		c, err := strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("relay cursor %q: %w", resp.Kvs[0].Value, err)
		}
		r.log.Info("relaying changes", "from_revision", c+1)
		r.cursorRev.Set(float64(c))
		return c, nil
	}
	// Changes up to c are not relayed: ask the reconciler, in the same
	// transaction, for a pass that copies them.
	c := resp.Header.Revision
	tx, err := r.cfg.Client.Txn(ctx).If(guard).Then(
		clientv3.OpPut(r.cursorKey(), strconv.FormatInt(c, 10)),
		reconcileRequest(r.cfg.Prefix, "the relay started for the first time"),
	).Commit()
	if err != nil {
		return 0, fmt.Errorf("start relay cursor: %w", err)
	}
	if !tx.Succeeded {
		return 0, errors.New("lost the relay election")
	}
	r.log.Info("relaying changes for the first time; the reconciler copies earlier values", "from_revision", c+1)
	return c, nil
}

// compacted moves the cursor past a compaction and, in the same
// transaction, asks the reconciler for the changes in between: they are
// gone from etcd's log. Every later change is still relayed.
func (r *Relay) compacted(ctx context.Context, cursor *int64, guard clientv3.Cmp) error {
	resp, err := r.cfg.Client.Get(ctx, r.cursorKey())
	if err != nil {
		return err
	}
	r.log.Warn("relay cursor was compacted away: changes in between cannot be relayed; asking for a full reconcile", "cursor", *cursor, "now", resp.Header.Revision)
	now := resp.Header.Revision
	tx, err := r.cfg.Client.Txn(ctx).If(guard).Then(
		clientv3.OpPut(r.cursorKey(), strconv.FormatInt(now, 10)),
		reconcileRequest(r.cfg.Prefix, fmt.Sprintf("relay cursor %d was compacted; resumed at %d", *cursor, now)),
	).Commit()
	if err != nil {
		return fmt.Errorf("move the relay cursor past a compaction: %w", err)
	}
	if !tx.Succeeded {
		return errors.New("lost the relay election")
	}
	*cursor = now
	return nil
}

// publish sends one event per change and waits until JetStream has stored
// every one, retrying until it has or leadership ends.
func (r *Relay) publish(ctx context.Context, kvPrefix string, evs []*clientv3.Event) error {
	msgs := make([][]byte, len(evs))
	ids := make([]string, len(evs))
	for i, ev := range evs {
		e := Event{Path: string(ev.Kv.Key[len(kvPrefix):]), Revision: ev.Kv.ModRevision, Op: OpPut}
		if ev.Type == mvccpb.DELETE {
			e.Op = OpDelete
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
			if serr := OpenStream(ctx, r.cfg.JetStream, r.cfg.Stream, r.cfg.Client, r.cfg.Prefix); serr != nil {
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
