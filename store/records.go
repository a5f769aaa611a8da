package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/graft-sh/graft/internal/snapshot"
)

// Record is one typed record: its key within its space, its value, and
// the revision it was last written at.
type Record[T any] = snapshot.Item[T]

// RecordChange is a record written or, with Deleted, removed.
type RecordChange[T any] = snapshot.Change[T]

// Records are the typed records of one Space, each stored as JSON under
// <prefix><space><key>. Domain packages keep their state this way (tokens,
// policies, rules, the relay cursor), so new state needs a Space, not new
// methods on Store. Records satisfies snapshot.Source, so a watch-fed
// in-memory copy of a space is one snapshot.New away.
type Records[T any] struct {
	s     *Store
	space Space
	base  string
}

var _ snapshot.Source[int64] = (*Records[int64])(nil)

// NewRecords returns the records of space, of type T.
func NewRecords[T any](s *Store, space Space) *Records[T] {
	return &Records[T]{s: s, space: space, base: s.prefix + string(space)}
}

func (r *Records[T]) key(k string) string { return r.base + k }

// Get returns the record with key, or ErrNotFound.
func (r *Records[T]) Get(ctx context.Context, key string) (Record[T], error) {
	return r.get(ctx, key)
}

// GetLocal is Get answered by the etcd member graftd talks to, without
// the round to a quorum that makes a read linearizable: it may miss a
// write of the last moments. For frequent reads whose caller writes
// anyway when in doubt (an agent's heartbeat).
func (r *Records[T]) GetLocal(ctx context.Context, key string) (Record[T], error) {
	return r.get(ctx, key, clientv3.WithSerializable())
}

func (r *Records[T]) get(ctx context.Context, key string, opts ...clientv3.OpOption) (Record[T], error) {
	resp, err := r.s.cli.Get(ctx, r.key(key), opts...)
	if err != nil {
		return Record[T]{}, err
	}
	if len(resp.Kvs) == 0 {
		return Record[T]{}, ErrNotFound
	}
	return r.decode(resp.Kvs[0])
}

func (r *Records[T]) decode(kv *mvccpb.KeyValue) (Record[T], error) {
	rec := Record[T]{Key: string(kv.Key[len(r.base):]), Revision: kv.ModRevision}
	if err := json.Unmarshal(kv.Value, &rec.Value); err != nil {
		return Record[T]{}, fmt.Errorf("decode %s%s: %w", r.space, rec.Key, err)
	}
	return rec, nil
}

// List returns every record of the space, sorted by key, and the revision
// read at. A record that does not decode (written by another version) is
// left out and logged: it must not hide the others.
func (r *Records[T]) List(ctx context.Context) ([]Record[T], int64, error) {
	return r.ListPrefix(ctx, "")
}

// ListPrefix is List over the keys that start with keyPrefix.
func (r *Records[T]) ListPrefix(ctx context.Context, keyPrefix string) ([]Record[T], int64, error) {
	resp, err := r.s.cli.Get(ctx, r.key(keyPrefix), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", strings.TrimSuffix(string(r.space), "/"), err)
	}
	return r.decodeAll(resp.Kvs), resp.Header.Revision, nil
}

// decodeAll decodes kvs. A record that does not decode (written by
// another version) is left out and logged: it must not hide the others.
func (r *Records[T]) decodeAll(kvs []*mvccpb.KeyValue) []Record[T] {
	out := make([]Record[T], 0, len(kvs))
	for _, kv := range kvs {
		rec, err := r.decode(kv)
		if err != nil {
			r.s.log.Warn("skipping a record that does not decode", "err", err)
			continue
		}
		out = append(out, rec)
	}
	return out
}

// Count returns how many records have keys that start with keyPrefix,
// without reading them.
func (r *Records[T]) Count(ctx context.Context, keyPrefix string) (int64, error) {
	resp, err := r.s.cli.Get(ctx, r.key(keyPrefix), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", strings.TrimSuffix(string(r.space), "/"), err)
	}
	return resp.Count, nil
}

// CountRange counts the records with from <= key < to.
func (r *Records[T]) CountRange(ctx context.Context, from, to string) (int64, error) {
	resp, err := r.s.cli.Get(ctx, r.key(from), clientv3.WithRange(r.key(to)), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", strings.TrimSuffix(string(r.space), "/"), err)
	}
	return resp.Count, nil
}

// Range returns up to limit records with from <= key < to, sorted by
// key: the first due of an index keyed by time.
func (r *Records[T]) Range(ctx context.Context, from, to string, limit int64) ([]Record[T], error) {
	resp, err := r.s.cli.Get(ctx, r.key(from), clientv3.WithRange(r.key(to)), clientv3.WithLimit(limit),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("range %s: %w", strings.TrimSuffix(string(r.space), "/"), err)
	}
	return r.decodeAll(resp.Kvs), nil
}

// Values returns the value of every record of the space, sorted by key.
func (r *Records[T]) Values(ctx context.Context) ([]T, error) {
	recs, _, err := r.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]T, len(recs))
	for i, rec := range recs {
		out[i] = rec.Value
	}
	return out, nil
}

// Watch delivers the changes of the space after revision after, one batch
// per etcd watch response. The channel closes when ctx ends or the watch
// fails; list again then. Undecodable records are skipped and logged.
func (r *Records[T]) Watch(ctx context.Context, after int64) <-chan []RecordChange[T] {
	out := make(chan []RecordChange[T])
	wch := r.s.cli.Watch(clientv3.WithRequireLeader(ctx), r.base, clientv3.WithPrefix(), clientv3.WithRev(after+1))
	go func() {
		defer close(out)
		for resp := range wch {
			if resp.Err() != nil {
				return
			}
			batch := make([]RecordChange[T], 0, len(resp.Events))
			for _, ev := range resp.Events {
				if ev.Type == mvccpb.DELETE {
					batch = append(batch, RecordChange[T]{Item: Record[T]{Key: string(ev.Kv.Key[len(r.base):]), Revision: ev.Kv.ModRevision}, Deleted: true})
					continue
				}
				rec, err := r.decode(ev.Kv)
				if err != nil {
					r.s.log.Warn("skipping a record that does not decode", "err", err)
					continue
				}
				batch = append(batch, RecordChange[T]{Item: rec})
			}
			if len(batch) == 0 {
				continue
			}
			select {
			case out <- batch:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// Put writes the record with key if every cond holds, and returns the
// revision written at; a cond that does not hold is ErrRevisionChanged.
func (r *Records[T]) Put(ctx context.Context, key string, v T, conds ...Cond) (int64, error) {
	op, err := r.PutOp(key, v)
	if err != nil {
		return 0, err
	}
	return r.s.commitOrFail(ctx, conds, op)
}

// Create writes the record only if key has none, and reports whether it
// did.
func (r *Records[T]) Create(ctx context.Context, key string, v T) (bool, error) {
	op, err := r.PutOp(key, v)
	if err != nil {
		return false, err
	}
	_, ok, err := r.s.Commit(ctx, []Cond{r.Absent(key)}, op)
	return ok, err
}

// Delete removes the record with key if every cond holds; an absent
// record is ErrNotFound.
func (r *Records[T]) Delete(ctx context.Context, key string, conds ...Cond) (int64, error) {
	rev, err := r.s.commitOrFail(ctx, append(conds, r.Present(key)), r.DeleteOp(key))
	if err == ErrRevisionChanged && len(conds) == 0 {
		return 0, ErrNotFound
	}
	return rev, err
}

// Op is one write to commit with others in one transaction (Store.Commit).
type Op struct {
	op clientv3.Op
	// key and value, kept to re-build the op with a lease.
	key, value string
	del        bool
}

// PutOp is the write of the record with key.
func (r *Records[T]) PutOp(key string, v T) (Op, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return Op{}, fmt.Errorf("encode %s%s: %w", r.space, key, err)
	}
	k := r.key(key)
	return Op{op: clientv3.OpPut(k, string(data)), key: k, value: string(data)}, nil
}

// DeleteOp is the removal of the record with key.
func (r *Records[T]) DeleteOp(key string) Op {
	k := r.key(key)
	return Op{op: clientv3.OpDelete(k), key: k, del: true}
}

// DeletePrefixOp is the removal of every record whose key starts with
// keyPrefix.
func (r *Records[T]) DeletePrefixOp(keyPrefix string) Op {
	k := r.key(keyPrefix)
	return Op{op: clientv3.OpDelete(k, clientv3.WithPrefix()), key: k, del: true}
}

// WithLease binds a put to l: the record disappears when the lease ends
// (its holder died or revoked it). It has no effect on a delete.
func (o Op) WithLease(l *Lease) Op {
	if o.del || l == nil {
		return o
	}
	o.op = clientv3.OpPut(o.key, o.value, clientv3.WithLease(l.id))
	return o
}

// Cond is a condition a Commit holds to.
type Cond struct{ cmp clientv3.Cmp }

// Absent holds while key has no record.
func (r *Records[T]) Absent(key string) Cond {
	return Cond{clientv3.Compare(clientv3.CreateRevision(r.key(key)), "=", 0)}
}

// Present holds while key has a record.
func (r *Records[T]) Present(key string) Cond {
	return Cond{clientv3.Compare(clientv3.CreateRevision(r.key(key)), ">", 0)}
}

// At holds while the record with key was last written at rev (a
// compare-and-swap against a Get; rev 0: there is no record).
func (r *Records[T]) At(key string, rev int64) Cond {
	return Cond{clientv3.Compare(clientv3.ModRevision(r.key(key)), "=", rev)}
}

// Since holds while no record of the space changed after rev, for a
// decision made from a List at rev. A deletion is not seen by it.
func (r *Records[T]) Since(rev int64) Cond {
	return Cond{clientv3.Compare(clientv3.ModRevision(r.base), "<", rev+1).WithPrefix()}
}

// Commit applies ops in one transaction if every cond holds. It returns
// the revision of the transaction and whether it applied.
func (s *Store) Commit(ctx context.Context, conds []Cond, ops ...Op) (int64, bool, error) {
	cmps := make([]clientv3.Cmp, len(conds))
	for i, c := range conds {
		cmps[i] = c.cmp
	}
	eops := make([]clientv3.Op, len(ops))
	for i, o := range ops {
		eops[i] = o.op
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(eops...).Commit()
	if err != nil {
		return 0, false, err
	}
	return resp.Header.Revision, resp.Succeeded, nil
}

func (s *Store) commitOrFail(ctx context.Context, conds []Cond, ops ...Op) (int64, error) {
	rev, ok, err := s.Commit(ctx, conds, ops...)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, ErrRevisionChanged
	}
	return rev, nil
}

// Revision returns the store's current revision, read with a quorum.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	resp, err := s.cli.Get(ctx, s.prefix+pingKey, clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// RetryConflicts runs attempt until it reports done, backing off between
// tries: the loop around a read-decide-commit whose commit is guarded and
// may lose to a concurrent writer. After too many losses it gives up with
// ErrContention, prefixed by what.
func RetryConflicts(ctx context.Context, what string, attempt func() (done bool, err error)) error {
	for n := range maxWriteAttempts {
		if n > 0 {
			if err := backoff(ctx, n); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
		}
		done, err := attempt()
		if err != nil || done {
			return err
		}
	}
	return fmt.Errorf("%s: %w; retry", what, ErrContention)
}

// Lease is an etcd lease: records put with it (Op.WithLease) live as long
// as it does.
type Lease struct {
	s  *Store
	id clientv3.LeaseID
}

// GrantLease returns a lease that expires ttl after its last keep-alive.
func (s *Store) GrantLease(ctx context.Context, ttl time.Duration) (*Lease, error) {
	secs := max(int64((ttl+time.Second-1)/time.Second), 1)
	resp, err := s.cli.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("grant a lease: %w", err)
	}
	return &Lease{s: s, id: resp.ID}, nil
}

// KeepAlive keeps the lease alive until ctx ends, then revokes it, so
// that its records go at once. If the lease is lost first (expired, or
// revoked elsewhere) it returns ErrLeaseLost.
func (l *Lease) KeepAlive(ctx context.Context) error {
	ch, err := l.s.cli.KeepAlive(ctx, l.id)
	if err != nil {
		return fmt.Errorf("keep a lease alive: %w", err)
	}
	for range ch {
	}
	if ctx.Err() != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		l.Revoke(rctx)
		return nil
	}
	return ErrLeaseLost
}

// ID identifies the lease, for renewing it from another replica
// (LeaseByID).
func (l *Lease) ID() int64 { return int64(l.id) }

// LeaseByID is the lease with id, granted earlier, perhaps by another
// graftd.
func (s *Store) LeaseByID(id int64) *Lease { return &Lease{s: s, id: clientv3.LeaseID(id)} }

// Renew refreshes the lease once; a lease that has expired is
// ErrLeaseLost. Renewals from many callers at once share one etcd
// keep-alive stream (renew.go).
func (l *Lease) Renew(ctx context.Context) error {
	if l.s.renew != nil {
		return l.s.renew.renew(ctx, int64(l.id))
	}
	if _, err := l.s.cli.KeepAliveOnce(ctx, l.id); errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return ErrLeaseLost
	} else if err != nil {
		return fmt.Errorf("renew a lease: %w", err)
	}
	return nil
}

// Revoke ends the lease and removes its records.
func (l *Lease) Revoke(ctx context.Context) error {
	if _, err := l.s.cli.Revoke(ctx, l.id); err != nil {
		return fmt.Errorf("revoke a lease: %w", err)
	}
	return nil
}

// Store is the store the records are in, for a Commit of them.
func (r *Records[T]) Store() *Store { return r.s }
