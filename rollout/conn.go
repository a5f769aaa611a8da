package rollout

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/graft-sh/graft/store"
)

// Conn identifies the connection a report came over; 0 is none.
//
// A report that came over a connection lives, while the connection is
// open, by one lease of the registry's, renewed once for all of them
// (Run): an agent need not report again only to stay listed, and 10,000
// idle agents cost one lease renewal every few seconds, not 2,000 a
// second. When the connection closes (Closed) the report gets a lease of
// its own TTL, so a dead agent's report is gone within it, as before;
// should this graftd die, its lease lapses within DefaultTTL and with it
// the reports it kept.
type Conn uint64

// bound is a report kept alive by the registry's lease.
type bound struct {
	rep Report // as stored
	rev int64  // the revision it was stored at
	ttl time.Duration
}

// conns is what the registry knows of reports bound to connections.
type conns struct {
	mu     sync.Mutex
	lease  *store.Lease
	byConn map[Conn]map[string]bound
	byKey  map[string]Conn
	// detached are the leases of reports whose connection closed, by
	// TTL, each shared by the reports detached within a second of its
	// grant.
	detached map[time.Duration]detachedLease
	closed   chan Conn
}

type detachedLease struct {
	lease   *store.Lease
	granted time.Time
}

func newConns() *conns {
	return &conns{
		byConn:   map[Conn]map[string]bound{},
		byKey:    map[string]Conn{},
		detached: map[time.Duration]detachedLease{},
		closed:   make(chan Conn, 4096),
	}
}

// unchanged reports whether k's report, bound to c, already says what rep
// says: then the report stays as it is, and costs no read or write.
func (r *Registry) unchanged(c Conn, k string, rep Report) bool {
	b, _, ok := r.boundTo(c, k)
	if !ok {
		return false
	}
	rep.Since = b.rep.Since
	return sameState(b.rep, rep)
}

// boundTo returns what c holds of k's report, and the shared lease it
// lives by, while it does.
func (r *Registry) boundTo(c Conn, k string) (bound, *store.Lease, bool) {
	r.conns.mu.Lock()
	defer r.conns.mu.Unlock()
	b, ok := r.conns.byConn[c][k]
	if !ok || r.conns.lease == nil || b.rep.Lease != r.conns.lease.ID() {
		return bound{}, nil, false
	}
	return b, r.conns.lease, true
}

// sharedLease is the lease of reports on open connections, granted on
// first use.
func (r *Registry) sharedLease(ctx context.Context) (*store.Lease, error) {
	r.conns.mu.Lock()
	defer r.conns.mu.Unlock()
	if r.conns.lease != nil {
		return r.conns.lease, nil
	}
	l, err := r.store.GrantLease(ctx, DefaultTTL)
	if err != nil {
		return nil, err
	}
	r.conns.lease = l
	return l, nil
}

// bind records that k's report, stored at rev, is kept by c.
func (r *Registry) bind(c Conn, k string, rep Report, rev int64, ttl time.Duration) {
	r.conns.mu.Lock()
	defer r.conns.mu.Unlock()
	if prev, ok := r.conns.byKey[k]; ok && prev != c {
		delete(r.conns.byConn[prev], k)
		if len(r.conns.byConn[prev]) == 0 {
			delete(r.conns.byConn, prev)
		}
	}
	m := r.conns.byConn[c]
	if m == nil {
		m = map[string]bound{}
		r.conns.byConn[c] = m
	}
	m[k] = bound{rep: rep, rev: rev, ttl: ttl}
	r.conns.byKey[k] = c
}

// Closed says that connection c closed: its reports get leases of their
// own TTL (Run does the work). It never blocks.
func (r *Registry) Closed(c Conn) {
	select {
	case r.conns.closed <- c:
	default:
		// Run is far behind: the reports stay on the shared lease until
		// their agent reports again elsewhere, or this graftd stops.
	}
}

// Run renews the lease of the reports on open connections, and detaches
// the reports of connections that closed, until ctx ends. It leaves the
// lease to lapse: graftd is stopping, and its agents report to another.
func (r *Registry) Run(ctx context.Context, log *slog.Logger) error {
	// Renewing does not wait for detaching, which may take a while when
	// thousands of connections closed at once.
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		t := time.NewTicker(DefaultTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := r.renewShared(ctx); err != nil && ctx.Err() == nil {
					log.Warn("renewing the lease of agent reports failed", "error", err)
				}
			}
		}
	}()
	defer func() { <-renewed }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case c := <-r.conns.closed:
			if err := r.detach(ctx, c); err != nil && ctx.Err() == nil {
				log.Warn("agent reports of a closed connection keep the shared lease", "error", err)
			}
		}
	}
}

// renewShared renews the shared lease; a lost one (graftd stalled past its
// TTL) is granted anew, and the reports it kept are stored again with it.
func (r *Registry) renewShared(ctx context.Context) error {
	r.conns.mu.Lock()
	l := r.conns.lease
	r.conns.mu.Unlock()
	if l == nil {
		return nil
	}
	err := l.Renew(ctx)
	if !errors.Is(err, store.ErrLeaseLost) {
		return err
	}
	nl, err := r.store.GrantLease(ctx, DefaultTTL)
	if err != nil {
		return err
	}
	r.conns.mu.Lock()
	r.conns.lease = nl
	var keys []string
	var reps []Report
	for k, c := range r.conns.byKey {
		b := r.conns.byConn[c][k]
		b.rep.Lease = nl.ID()
		keys, reps = append(keys, k), append(reps, b.rep)
	}
	r.conns.mu.Unlock()
	return r.putAll(ctx, keys, reps, nl, nil)
}

// detach gives each report of c a lease of its own TTL, unless it was
// stored again since (its agent reported over another connection).
func (r *Registry) detach(ctx context.Context, c Conn) error {
	r.conns.mu.Lock()
	m := r.conns.byConn[c]
	delete(r.conns.byConn, c)
	for k := range m {
		delete(r.conns.byKey, k)
	}
	r.conns.mu.Unlock()
	byTTL := map[time.Duration][]string{}
	for k, b := range m {
		byTTL[b.ttl] = append(byTTL[b.ttl], k)
	}
	var errs []error
	for ttl, keys := range byTTL {
		l, err := r.detachedLease(ctx, ttl)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		reps := make([]Report, len(keys))
		revs := make([]int64, len(keys))
		for i, k := range keys {
			reps[i], revs[i] = m[k].rep, m[k].rev
			reps[i].Lease = l.ID()
		}
		errs = append(errs, r.putAll(ctx, keys, reps, l, revs))
	}
	return errors.Join(errs...)
}

// detachedLease is a lease of ttl for reports detached now: one granted
// within the last second is shared, so that many connections closing at
// once cost one grant a second.
func (r *Registry) detachedLease(ctx context.Context, ttl time.Duration) (*store.Lease, error) {
	r.conns.mu.Lock()
	d, ok := r.conns.detached[ttl]
	r.conns.mu.Unlock()
	if ok && time.Since(d.granted) < time.Second {
		return d.lease, nil
	}
	l, err := r.store.GrantLease(ctx, ttl)
	if err != nil {
		return nil, err
	}
	r.conns.mu.Lock()
	r.conns.detached[ttl] = detachedLease{lease: l, granted: time.Now()}
	r.conns.mu.Unlock()
	return l, nil
}

// putAll stores reps under keys with lease l, in transactions of at most
// putBatch, each report only if it is still at its revision in revs (nil:
// unconditionally); one whose record changed is left alone.
func (r *Registry) putAll(ctx context.Context, keys []string, reps []Report, l *store.Lease, revs []int64) error {
	const putBatch = 64
	var errs []error
	for i := 0; i < len(keys); i += putBatch {
		j := min(i+putBatch, len(keys))
		if revs == nil {
			ops := make([]store.Op, 0, j-i)
			for n := i; n < j; n++ {
				op, err := r.recs.PutOp(keys[n], reps[n])
				if err != nil {
					return err
				}
				ops = append(ops, op.WithLease(l))
			}
			if _, _, err := r.store.Commit(ctx, nil, ops...); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		// Guarded one by one: a guard that fails would fail the whole
		// transaction.
		for n := i; n < j; n++ {
			op, err := r.recs.PutOp(keys[n], reps[n])
			if err != nil {
				return err
			}
			if _, _, err := r.store.Commit(ctx, []store.Cond{r.recs.At(keys[n], revs[n])}, op.WithLease(l)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
