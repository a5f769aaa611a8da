package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/graft-sh/graft/internal/retry"
)

// Hub defaults.
const (
	// DefaultHubBufferEvents is how many recent events the hub keeps, so
	// that a watch resuming from a recent revision joins without asking
	// etcd for anything.
	DefaultHubBufferEvents = 65536
	// DefaultHubPrefill is how many revisions before its start the hub
	// reads into its buffer, so that clients of a graftd that just
	// restarted resume from it.
	DefaultHubPrefill = 4096
	// DefaultHubMaxPending is how many changes a subscriber may have
	// waiting before it is cut off.
	DefaultHubMaxPending = 1024
	// DefaultHubProgressEvery is how often an idle subscriber is told the
	// revision the hub has reached, so that it resumes from there.
	DefaultHubProgressEvery = time.Minute
)

// ErrWatchBehind is a subscriber cut off for not keeping up; it resumes
// from the revision it reached. ErrWatchEnded, every subscriber of a hub
// that stopped (graftd shutting down); it resumes on another graftd.
var (
	ErrWatchBehind = errors.New("watch fell behind")
	ErrWatchEnded  = errors.New("graftd's change feed stopped")
)

// BehindError says how far a cut-off subscriber got.
type BehindError struct {
	Prefix  string
	Pending int
	Resume  int64
}

func (e *BehindError) Error() string {
	return fmt.Sprintf("watch %s: fell behind graftd's change feed with %d changes waiting; resume from revision %d (graft-agent and the sdk do so by themselves)", ShortPath(e.Prefix), e.Pending, e.Resume)
}

func (e *BehindError) Unwrap() error { return ErrWatchBehind }

// HubConfig configures a Hub; zero fields take the defaults.
type HubConfig struct {
	Store         *Store
	Logger        *slog.Logger
	BufferEvents  int
	Prefill       int64
	MaxPending    int
	ProgressEvery time.Duration
}

// Hub serves every watch of the key space from one etcd watch: each
// change is read, decoded and (when a subscriber may read it) decrypted
// once, and handed to the subscribers whose prefix it lies under. A watch
// that resumes from a revision the hub's buffer holds joins at once; one
// from an older revision replays from etcd up to where the buffer starts,
// then joins, without a gap or a repeat. A subscriber that does not keep
// up is cut off with a *BehindError rather than holding memory.
type Hub struct {
	s   *Store
	log *slog.Logger
	cfg HubConfig

	ready chan struct{} // closed once the etcd watch is open
	// streamID names the hub's own etcd watch stream, for progress requests.
	streamID string

	mu sync.Mutex
	// buf holds the batches of the revisions (floor, newest], oldest
	// first; bufEvents counts their events.
	buf       []*hubBatch
	bufEvents int
	floor     int64
	newest    int64
	heard     time.Time // when etcd last answered on the hub's watch
	subs      map[string]map[*subscriber]struct{}
	count     int
	seq       uint64
	stopped   error
}

// hubBatch is the events of one revision.
type hubBatch struct {
	seq    uint64
	rev    int64
	events []*hubEvent
}

// hubEvent is one change, decrypted and looked up at most once.
type hubEvent struct {
	typ  EventType
	path string
	rev  int64
	rec  record
	err  error // the record did not decode

	valueOnce sync.Once
	value     []byte
	valueErr  error

	delOnce sync.Once
	del     Entry
}

// NewHub returns a hub over cfg.Store; Run feeds it.
func NewHub(cfg HubConfig) (*Hub, error) {
	if cfg.Store == nil {
		return nil, errors.New("store: HubConfig.Store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.BufferEvents <= 0 {
		cfg.BufferEvents = DefaultHubBufferEvents
	}
	if cfg.Prefill < 0 {
		cfg.Prefill = 0
	} else if cfg.Prefill == 0 {
		cfg.Prefill = DefaultHubPrefill
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultHubMaxPending
	}
	if cfg.ProgressEvery <= 0 {
		cfg.ProgressEvery = DefaultHubProgressEvery
	}
	return &Hub{
		s: cfg.Store, log: cfg.Logger, cfg: cfg,
		ready:    make(chan struct{}),
		streamID: "hub-" + strconv.FormatUint(cfg.Store.watchStreams.Add(1), 10),
		subs:     map[string]map[*subscriber]struct{}{},
	}, nil
}

// streamCtx is ctx on the hub's own etcd watch stream.
func (h *Hub) streamCtx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(clientv3.WithRequireLeader(ctx), watchStreamKey, h.streamID)
}

// Run follows etcd until ctx ends. A broken watch resumes where it
// stopped; one that can no longer resume (its revision compacted) cuts
// every subscriber off with the *CompactedError, and starts afresh.
func (h *Hub) Run(ctx context.Context) error {
	defer h.stop(fmt.Errorf("watch: %w; resume on another graftd or once it is back", ErrWatchEnded))
	start, err := h.prefillFrom(ctx)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.floor, h.newest = start-1, start-1
	h.mu.Unlock()
	failures := 0
	for ctx.Err() == nil {
		progressed, err := h.follow(ctx, start)
		if ctx.Err() != nil {
			return nil
		}
		var compacted *CompactedError
		if errors.As(err, &compacted) {
			h.log.Warn("graftd's change feed fell behind a compaction; watches restart from current values", "error", err)
			start = h.restart(compacted)
		} else {
			h.log.Warn("graftd's change feed broke; resuming", "error", err)
			h.mu.Lock()
			start = h.newest + 1
			h.mu.Unlock()
		}
		if progressed {
			failures = 0
		}
		if retry.Sleep(ctx, retry.Backoff(50*time.Millisecond, 5*time.Second, failures)) != nil {
			return nil
		}
		failures++
	}
	return nil
}

// prefillFrom is the revision the hub's first watch starts at: Prefill
// revisions back, or the oldest etcd still holds.
func (h *Hub) prefillFrom(ctx context.Context) (int64, error) {
	for {
		cur, err := h.s.Revision(ctx)
		if err == nil {
			start := max(1, cur+1-h.cfg.Prefill)
			compacted, err := h.s.compacted(ctx, start)
			if err == nil && !compacted {
				return start, nil
			}
			if err == nil {
				// Compacted: the oldest revision left is the compaction's.
				var ce *CompactedError
				_, _, werr := h.s.Watch(ctx, "/", start, true)
				if errors.As(werr, &ce) {
					return ce.Oldest, nil
				}
				return cur + 1, nil
			}
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		h.log.Warn("graftd's change feed cannot start yet", "error", err)
		if retry.Sleep(ctx, time.Second) != nil {
			return 0, ctx.Err()
		}
	}
}

// restart drops the buffer and every subscriber after the hub lost its
// place, and returns the revision to follow from: now.
func (h *Hub) restart(cause *CompactedError) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, set := range h.subs {
		for sub := range set {
			sub.cut(cause)
		}
	}
	h.subs = map[string]map[*subscriber]struct{}{}
	h.count = 0
	h.buf, h.bufEvents = nil, 0
	h.floor, h.newest = cause.Oldest-1, cause.Oldest-1
	return cause.Oldest
}

// stop cuts every subscriber off with err and refuses new ones.
func (h *Hub) stop(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = err
	for _, set := range h.subs {
		for sub := range set {
			sub.cut(err)
		}
	}
	h.subs = map[string]map[*subscriber]struct{}{}
	h.count = 0
}

// follow runs one etcd watch of the key space from start, and reports
// whether it delivered anything before it failed.
func (h *Hub) follow(ctx context.Context, start int64) (bool, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	from, end := rangeOf(h.s.kvPrefix, "/")
	wch := h.s.cli.Watch(h.streamCtx(wctx), from, clientv3.WithRange(end), clientv3.WithRev(start),
		clientv3.WithCreatedNotify(), clientv3.WithProgressNotify())
	progressed := false
	for resp := range wch {
		if err := watchErr(resp, start); err != nil {
			return progressed, err
		}
		h.mu.Lock()
		h.heard = time.Now()
		h.mu.Unlock()
		if resp.Created {
			h.markReady()
			continue
		}
		if resp.IsProgressNotify() {
			h.mu.Lock()
			h.newest = max(h.newest, resp.Header.Revision)
			h.mu.Unlock()
			continue
		}
		progressed = true
		h.publish(h.changes(resp.Events))
		start = resp.Events[len(resp.Events)-1].Kv.ModRevision + 1
	}
	if ctx.Err() != nil {
		return progressed, ctx.Err()
	}
	return progressed, errors.New("etcd watch closed")
}

func (h *Hub) markReady() {
	select {
	case <-h.ready:
	default:
		close(h.ready)
	}
}

// changes turns one etcd watch response into per-revision batches.
func (h *Hub) changes(events []*clientv3.Event) []*hubBatch {
	var out []*hubBatch
	for _, ev := range events {
		rev := ev.Kv.ModRevision
		p := string(ev.Kv.Key[len(h.s.kvPrefix):])
		e := &hubEvent{path: p, rev: rev, typ: EventPut}
		if ev.Type == mvccpb.DELETE {
			e.typ = EventDelete
		} else {
			e.rec, e.err = decodeRecord(ev.Kv.Value)
			if e.err == nil && e.rec.Rev != 0 && e.rec.Rev != rev {
				continue // re-encrypted in place; the value did not change
			}
		}
		if n := len(out); n == 0 || out[n-1].rev != rev {
			out = append(out, &hubBatch{rev: rev})
		}
		last := out[len(out)-1]
		last.events = append(last.events, e)
	}
	return out
}

// publish appends batches to the buffer and hands each to the
// subscribers whose prefix one of its events lies under.
func (h *Hub) publish(batches []*hubBatch) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, b := range batches {
		if b.rev <= h.newest {
			continue // a resumed watch repeating what it delivered
		}
		h.seq++
		b.seq = h.seq
		h.buf = append(h.buf, b)
		h.bufEvents += len(b.events)
		for _, e := range b.events {
			for _, p := range append(ancestors(e.path), "/") {
				for sub := range h.subs[p] {
					sub.push(b, h)
				}
			}
		}
		h.newest = b.rev
	}
	h.trim()
}

// trim keeps the buffer within BufferEvents, raising the floor.
func (h *Hub) trim() {
	drop := 0
	for drop < len(h.buf)-1 && h.bufEvents > h.cfg.BufferEvents {
		h.bufEvents -= len(h.buf[drop].events)
		h.floor = h.buf[drop].rev
		drop++
	}
	if drop > 0 {
		clear(h.buf[:drop])
		h.buf = h.buf[drop:]
	}
}

// Watch is Store.WatchFunc served from the hub: the changes under prefix
// from startRev (0: after now), values decrypted only where readable says
// yes (nil: everywhere). The channel closes when ctx ends or the watch
// fails (the last batch then carries Err).
func (h *Hub) Watch(ctx context.Context, prefix string, startRev int64, keysOnly bool, readable func(path string) bool) (int64, <-chan WatchBatch, error) {
	if _, err := ParsePrefix(prefix); err != nil {
		return 0, nil, fmt.Errorf("watch %s: %w", ShortPath(prefix), err)
	}
	if startRev < 0 {
		return 0, nil, fmt.Errorf("watch %s: %w: start revision %d must not be negative", prefix, ErrInvalidArgument, startRev)
	}
	select {
	case <-h.ready:
	case <-ctx.Done():
		return 0, nil, fmt.Errorf("watch %s: %w", prefix, ctx.Err())
	}
	after := startRev - 1
	if startRev == 0 {
		cur, err := h.s.Revision(clientv3.WithRequireLeader(ctx))
		if err != nil {
			return 0, nil, fmt.Errorf("watch %s: %w", prefix, err)
		}
		after = cur
	}
	h.mu.Lock()
	floor := h.floor
	h.mu.Unlock()
	if after < floor {
		// Older than the buffer: etcd must still hold it.
		compacted, err := h.s.compacted(ctx, after+1)
		if err != nil {
			return 0, nil, fmt.Errorf("watch %s: %w", prefix, err)
		}
		if compacted {
			_, _, err := h.s.Watch(ctx, prefix, after+1, true)
			if err == nil {
				err = fmt.Errorf("%w: revision %d is compacted", ErrCompacted, after+1)
			}
			return 0, nil, err
		}
	}
	sub := &subscriber{
		prefix: prefix, keysOnly: keysOnly, readable: readable,
		wake: make(chan struct{}, 1), maxPending: h.cfg.MaxPending,
	}
	sub.next.Store(after + 1)
	if err := h.join(sub); err != nil {
		return 0, nil, fmt.Errorf("watch %s: %w", prefix, err)
	}
	out := make(chan WatchBatch)
	go h.serve(ctx, sub, out)
	return after, out, nil
}

// join registers sub with the buffered batches after its start; a start
// below the buffer is replayed from etcd first, up to the floor.
func (h *Hub) join(sub *subscriber) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped != nil {
		return h.stopped
	}
	next := sub.next.Load()
	if next <= h.floor {
		sub.replayTo = h.floor
	}
	i := sort.Search(len(h.buf), func(i int) bool { return h.buf[i].rev >= next })
	for _, b := range h.buf[i:] {
		for _, e := range b.events {
			if Under(e.path, sub.prefix) {
				sub.queue = append(sub.queue, b)
				break
			}
		}
	}
	set := h.subs[sub.prefix]
	if set == nil {
		set = map[*subscriber]struct{}{}
		h.subs[sub.prefix] = set
	}
	set[sub] = struct{}{}
	h.count++
	return nil
}

func (h *Hub) leave(sub *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if set, ok := h.subs[sub.prefix]; ok {
		if _, ok := set[sub]; ok {
			delete(set, sub)
			h.count--
		}
		if len(set) == 0 {
			delete(h.subs, sub.prefix)
		}
	}
}

// Subscribers is how many watches the hub serves.
func (h *Hub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count
}

// Silence is how long etcd has not answered on the hub's watch (0 before
// it started): with RequestProgress asked every few seconds, a long
// silence is a stuck feed.
func (h *Hub) Silence() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.heard.IsZero() {
		return 0
	}
	return time.Since(h.heard)
}

// RequestProgress asks etcd for a progress notice on the hub's watch.
func (h *Hub) RequestProgress(ctx context.Context) error {
	return h.s.cli.RequestProgress(h.streamCtx(ctx))
}

// subscriber is one watch served by the hub.
type subscriber struct {
	prefix   string
	keysOnly bool
	readable func(string) bool

	mu sync.Mutex
	// queue is what the hub handed over and serve has not yet sent.
	queue      []*hubBatch
	lastSeq    uint64
	maxPending int
	err        error
	wake       chan struct{}
	// replayTo, when set, is the revision up to which serve replays from
	// etcd before the queue.
	replayTo int64
	// next is the oldest revision not yet sent.
	next atomic.Int64
}

// push hands b over (the hub's lock is held), or cuts sub off when it has
// too much waiting.
func (sub *subscriber) push(b *hubBatch, h *Hub) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.err != nil || sub.lastSeq == b.seq {
		return
	}
	sub.lastSeq = b.seq
	if len(sub.queue) >= sub.maxPending {
		sub.err = &BehindError{Prefix: sub.prefix, Pending: len(sub.queue)}
		sub.queue = nil
		delete(h.subs[sub.prefix], sub)
		h.count--
	} else {
		sub.queue = append(sub.queue, b)
	}
	sub.signal()
}

// cut ends sub with err (the hub's lock is held).
func (sub *subscriber) cut(err error) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.err == nil {
		sub.err = err
	}
	sub.signal()
}

func (sub *subscriber) signal() {
	select {
	case sub.wake <- struct{}{}:
	default:
	}
}

// take returns what waits, or the error that ended sub.
func (sub *subscriber) take() ([]*hubBatch, error) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.err != nil {
		return nil, sub.err
	}
	q := sub.queue
	sub.queue = nil
	return q, nil
}

// serve sends sub's batches to out until ctx ends or sub is cut off.
func (h *Hub) serve(ctx context.Context, sub *subscriber, out chan<- WatchBatch) {
	defer close(out)
	defer h.leave(sub)
	send := func(b WatchBatch) bool {
		select {
		case out <- b:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if sub.replayTo > 0 {
		if err := h.replay(ctx, sub, send); err != nil {
			if ctx.Err() == nil {
				send(WatchBatch{Err: fmt.Errorf("watch %s: %w", sub.prefix, err)})
			}
			return
		}
	}
	// Idle subscribers learn the revision reached now and then; spread
	// over the period so that thousands do not all send at once.
	idle := time.NewTimer(h.cfg.ProgressEvery/2 + rand.N(h.cfg.ProgressEvery))
	defer idle.Stop()
	for {
		q, err := sub.take()
		if behind, ok := err.(*BehindError); ok {
			// Resume after what was sent, a batch in flight at the cut
			// included.
			err = &BehindError{Prefix: behind.Prefix, Pending: behind.Pending, Resume: sub.next.Load()}
		}
		if err != nil {
			send(WatchBatch{Err: err})
			return
		}
		for _, b := range q {
			if b.rev < sub.next.Load() {
				continue
			}
			wb, err := h.view(ctx, sub, b)
			if err != nil {
				send(WatchBatch{Err: err})
				return
			}
			if len(wb.Events) == 0 {
				continue
			}
			if !send(wb) {
				return
			}
			sub.next.Store(wb.Revision + 1)
		}
		select {
		case <-ctx.Done():
			return
		case <-sub.wake:
		case <-idle.C:
			idle.Reset(h.cfg.ProgressEvery)
			if rev := h.reached(sub); rev >= sub.next.Load() {
				if !send(WatchBatch{Revision: rev}) {
					return
				}
				sub.next.Store(rev + 1)
			}
		}
	}
}

// reached is the revision sub has everything up to: the hub's newest, if
// nothing waits for sub.
func (h *Hub) reached(sub *subscriber) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if len(sub.queue) > 0 || sub.err != nil {
		return 0
	}
	return h.newest
}

// view is what sub sees of b: its events under sub's prefix, values
// decrypted (once for all subscribers) where sub may read them.
func (h *Hub) view(ctx context.Context, sub *subscriber, b *hubBatch) (WatchBatch, error) {
	wb := WatchBatch{Revision: b.rev}
	for _, e := range b.events {
		if !Under(e.path, sub.prefix) {
			continue
		}
		if e.err != nil {
			return wb, fmt.Errorf("watch %s: %s: %w", sub.prefix, e.path, e.err)
		}
		if e.typ == EventDelete {
			e.delOnce.Do(func() { e.del = h.s.deletion(context.WithoutCancel(ctx), e.path, e.rev) })
			wb.Events = append(wb.Events, Event{Type: EventDelete, Entry: e.del})
			continue
		}
		ev := Event{Type: EventPut, Entry: e.rec.entry(e.path, e.rev)}
		if !sub.keysOnly && (sub.readable == nil || sub.readable(e.path)) {
			e.valueOnce.Do(func() { e.value, e.valueErr = h.s.open(e.path, e.rec) })
			if e.valueErr != nil {
				return wb, e.valueErr
			}
			ev.Entry.Value = e.value
		}
		wb.Events = append(wb.Events, ev)
	}
	return wb, nil
}

// replay sends sub's changes from sub.next up to sub.replayTo from etcd,
// on a watch stream of its own: the events, then (asked for until it
// comes) a progress notice at or past replayTo, after which etcd has sent
// everything up to it.
func (h *Hub) replay(ctx context.Context, sub *subscriber, send func(WatchBatch) bool) error {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, watchStreamKey, strconv.FormatUint(h.s.watchStreams.Add(1), 10))
	from, end := rangeOf(h.s.kvPrefix, sub.prefix)
	wch := h.s.cli.Watch(ctx, from, clientv3.WithRange(end), clientv3.WithRev(sub.next.Load()), clientv3.WithCreatedNotify())
	ask := time.NewTicker(50 * time.Millisecond)
	defer ask.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ask.C:
			h.s.cli.RequestProgress(ctx)
		case resp, ok := <-wch:
			if !ok {
				return errors.New("etcd watch closed during replay")
			}
			if err := watchErr(resp, sub.next.Load()); err != nil {
				return err
			}
			if resp.Created {
				h.s.cli.RequestProgress(ctx)
				continue
			}
			if resp.IsProgressNotify() {
				if resp.Header.Revision >= sub.replayTo {
					return nil
				}
				continue
			}
			batches, err := h.s.batches(ctx, sub.prefix, resp, sub.keysOnly, sub.readable)
			if err != nil {
				return err
			}
			for _, b := range batches {
				if b.Revision > sub.replayTo {
					return nil
				}
				if len(b.Events) == 0 || b.Revision < sub.next.Load() {
					continue
				}
				if !send(b) {
					return ctx.Err()
				}
				sub.next.Store(b.Revision + 1)
			}
		}
	}
}
