package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Destinations: the part of replication the store enforces.
//
//	owned<dest root>    which rule owns a destination subtree (one owner each)
//	applied<dest path>  the source revision a destination was last written from
//
// The store knows rules only by id and the destination roots they own: the
// rules themselves (their records, validation, the index) belong to the
// replicator. The guarantees (one owner per destination, only the
// replicator writes one, a destination never goes backwards) belong here,
// where they are enforced inside the transactions that write.

// DestinationError says that path lies in a destination owned by a rule.
type DestinationError struct {
	Path  string
	Owner Owner
}

func (e *DestinationError) Error() string {
	return fmt.Sprintf("%s is replicated from %s by rule %s: only the replicator writes it; change the source instead (or `graft unshare %s --orphan` to take the copy over)",
		e.Path, e.Owner.Source, e.Owner.Rule, e.Owner.Rule)
}

func (e *DestinationError) Unwrap() error { return ErrDestination }

// NotEmptyError names what a new rule's destination already holds.
type NotEmptyError struct {
	Dest  string
	Paths []string // up to a few examples
	Count int
}

func (e *NotEmptyError) Error() string {
	return fmt.Sprintf("destination %s already holds %d value(s) that no rule wrote (such as %s): graft will not overwrite them; remove them or choose another destination",
		e.Dest, e.Count, strings.Join(e.Paths, ", "))
}

func (e *NotEmptyError) Unwrap() error { return ErrDestinationNotEmpty }

// Owner is the rule that owns a destination subtree.
type Owner struct {
	Rule   string `json:"rule"`
	Source string `json:"source"`
	// Root is the destination subtree the rule owns.
	Root string `json:"root"`
	// SourceRoot is the rule's source; Root mirrors it.
	SourceRoot string `json:"source_root"`
}

// Applied is the source state a destination path was last written from.
type Applied struct {
	Rule           string `json:"rule"`
	Source         string `json:"source"`
	SourceRevision int64  `json:"sr"`
	// SourceTime is when the source version was committed (unix nanos);
	// zero for deletions.
	SourceTime int64 `json:"st,omitempty"`
	// Deleted says the destination was deleted because its source was.
	Deleted bool `json:"d,omitempty"`
	// Time is when the replicator committed this (unix nanos).
	Time int64 `json:"t"`
}

// ownersPerTxn bounds the destinations claimed in one transaction: each
// takes one put and two compares, inside etcd's maxTxnOps limit.
const ownersPerTxn = 60

// CheckDestinationsEmpty refuses, with a *NotEmptyError, a destination
// root that held values at revision rev: a new rule never takes over
// values that no rule wrote.
func (s *Store) CheckDestinationsEmpty(ctx context.Context, roots []string, rev int64) error {
	full, err := s.nonEmpty(ctx, roots, rev, true)
	if err != nil {
		return err
	}
	if len(full) > 0 {
		return full[0]
	}
	return nil
}

// NonEmptyDestinations returns a *NotEmptyError for each destination root
// that held values at revision rev, in the order of roots.
func (s *Store) NonEmptyDestinations(ctx context.Context, roots []string, rev int64) ([]*NotEmptyError, error) {
	return s.nonEmpty(ctx, roots, rev, false)
}

func (s *Store) nonEmpty(ctx context.Context, roots []string, rev int64, first bool) ([]*NotEmptyError, error) {
	// A wide rule has many roots: count what lies at and below each, many
	// roots a transaction, and read the names only of a root that holds
	// something.
	var full []*NotEmptyError
	errFull := errors.New("full")
	err := s.subtrees(ctx, s.kvPrefix, roots, rev, true, func(root string, n int64, _ []*mvccpb.KeyValue) error {
		if n == 0 {
			return nil
		}
		var e *NotEmptyError
		if err := s.checkEmpty(ctx, root, rev); errors.As(err, &e) {
			full = append(full, e)
			if first {
				return errFull
			}
			return nil
		} else if err != nil {
			return err
		}
		return nil
	})
	if err != nil && err != errFull {
		return nil, err
	}
	return full, nil
}

// subtreesPerTxn bounds the roots one subtree read covers: two range reads
// each, inside etcd's default of maxTxnOps operations a transaction.
const subtreesPerTxn = maxTxnOps / 2

// subtrees reads, for each root, what lies under base at the root itself
// and below it (never beside it: /a-x is not under /a), many roots a
// transaction, and calls f with each root's count and, unless countOnly,
// its keys and values. rev 0 reads the current revision.
func (s *Store) subtrees(ctx context.Context, base string, roots []string, rev int64, countOnly bool, f func(root string, n int64, kvs []*mvccpb.KeyValue) error) error {
	for len(roots) > 0 {
		n := min(len(roots), subtreesPerTxn)
		chunk := roots[:n]
		roots = roots[n:]
		var opts []clientv3.OpOption
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		if countOnly {
			opts = append(opts, clientv3.WithCountOnly())
		}
		ops := make([]clientv3.Op, 0, 2*n)
		for _, root := range chunk {
			below := base + root + "/"
			if root == "/" {
				below = base + "/"
			}
			ops = append(ops,
				clientv3.OpGet(base+root, opts...),
				clientv3.OpGet(below, append(opts, clientv3.WithPrefix())...))
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return err
		}
		for i, root := range chunk {
			at, under := resp.Responses[2*i].GetResponseRange(), resp.Responses[2*i+1].GetResponseRange()
			count := at.Count + under.Count
			if root == "/" {
				count = under.Count
			}
			if err := f(root, count, append(at.Kvs, under.Kvs...)); err != nil {
				return err
			}
		}
	}
	return nil
}

// ClaimDestinations takes ownership of each owner's Root for its rule, in
// batches of one transaction each, every root only if it has no owner yet
// and nothing was written below it after rev (when the caller checked it
// empty with CheckDestinationsEmpty). From then on only the replicator
// writes there. On a failed batch the caller releases what was claimed.
func (s *Store) ClaimDestinations(ctx context.Context, owners []Owner, rev int64) (int64, error) {
	return s.claim(ctx, owners, rev)
}

// ClaimDestinationsWith is ClaimDestinations in a single transaction
// that also holds conds and applies ops, for a claim that must happen
// together with a record of it (a pattern rule's destinations for a new
// application). It reports whether it applied: false when a cond failed,
// a root already has an owner or something was written below one after
// rev. It takes at most ownersPerTxn-len(ops) owners.
func (s *Store) ClaimDestinationsWith(ctx context.Context, owners []Owner, rev int64, conds []Cond, ops ...Op) (int64, bool, error) {
	if len(owners)+len(ops) > ownersPerTxn {
		return 0, false, fmt.Errorf("claim %d destinations in one transaction: at most %d", len(owners), ownersPerTxn-len(ops))
	}
	cmps := make([]clientv3.Cmp, 0, len(conds)+2*len(owners))
	for _, c := range conds {
		cmps = append(cmps, c.cmp)
	}
	eops := make([]clientv3.Op, 0, len(ops)+len(owners))
	for _, o := range ops {
		eops = append(eops, o.op)
	}
	for _, o := range owners {
		cmps, eops = s.claimOf(o, rev, cmps, eops)
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(eops...).Commit()
	if err != nil {
		return 0, false, err
	}
	return resp.Header.Revision, resp.Succeeded, nil
}

// ReleaseDestinations gives up the owners' claims, each only if its rule
// still holds it (another rule may own a root this one failed to claim).
// The values stay.
func (s *Store) ReleaseDestinations(ctx context.Context, owners []Owner) error {
	return s.release(ctx, owners)
}

// claim writes the owner keys of owners in batches.
func (s *Store) claim(ctx context.Context, owners []Owner, readRev int64) (int64, error) {
	var rev int64
	for len(owners) > 0 {
		n := min(len(owners), ownersPerTxn)
		batch := owners[:n]
		owners = owners[n:]
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		for _, o := range batch {
			cmps, ops = s.claimOf(o, readRev, cmps, ops)
		}
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return 0, fmt.Errorf("create rule %s: claim destinations: %w", batch[0].Rule, err)
		}
		if !resp.Succeeded {
			return 0, fmt.Errorf("create rule %s: %w: a destination was written to while the rule was being created; retry", batch[0].Rule, ErrContention)
		}
		rev = resp.Header.Revision
	}
	return rev, nil
}

// claimOf appends the claim of o's root to a transaction: the root has
// no owner, nothing at or below it changed after rev, and the owner key.
func (s *Store) claimOf(o Owner, rev int64, cmps []clientv3.Cmp, ops []clientv3.Op) ([]clientv3.Cmp, []clientv3.Op) {
	start, end := rangeOf(s.kvPrefix, o.Root)
	cmps = append(cmps,
		clientv3.Compare(clientv3.CreateRevision(s.ownedKey(o.Root)), "=", 0),
		clientv3.Compare(clientv3.ModRevision(start), "<", rev+1).WithRange(end))
	return cmps, append(ops, clientv3.OpPut(s.ownedKey(o.Root), ownerJSON(o)))
}

// release removes whatever owner keys of owners exist, several batches
// at once: unsharing a wide rule releases a hundred thousand.
func (s *Store) release(ctx context.Context, owners []Owner) error {
	var batches [][]Owner
	for len(owners) > 0 {
		n := min(len(owners), ownersPerTxn)
		batches = append(batches, owners[:n])
		owners = owners[n:]
	}
	return inParallel(ctx, batches, func(ctx context.Context, batch []Owner) error {
		var ops []clientv3.Op
		for _, o := range batch {
			// Only this rule's claims: another rule may own a root this
			// one failed to claim.
			ops = append(ops, clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.Value(s.ownedKey(o.Root)), "=", ownerJSON(o))},
				[]clientv3.Op{clientv3.OpDelete(s.ownedKey(o.Root))}, nil))
		}
		if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("delete rule %s: release destinations: %w", batch[0].Rule, err)
		}
		return nil
	})
}

// inParallel calls f for each batch, replicaParallel at a time, and
// returns the first error; after one, no further batch starts.
func inParallel[T any](ctx context.Context, batches []T, f func(context.Context, T) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		sem   = make(chan struct{}, replicaParallel)
	)
	for _, b := range batches {
		sem <- struct{}{}
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed {
			<-sem
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := f(ctx, b); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}

func ownerJSON(o Owner) string {
	b, _ := json.Marshal(o)
	return string(b)
}

// checkEmpty refuses a destination that holds values no rule wrote.
func (s *Store) checkEmpty(ctx context.Context, root string, rev int64) error {
	start, end := rangeOf(s.kvPrefix, root)
	resp, err := s.cli.Get(ctx, start, append(withRange(end), clientv3.WithRev(rev), clientv3.WithKeysOnly())...)
	if err != nil {
		return err
	}
	e := &NotEmptyError{Dest: root}
	for _, kv := range resp.Kvs {
		p := string(kv.Key[len(s.kvPrefix):])
		if !Under(p, root) {
			continue
		}
		e.Count++
		if len(e.Paths) < 3 {
			e.Paths = append(e.Paths, p)
		}
	}
	if e.Count > 0 {
		return e
	}
	return nil
}

// ownerOf returns the owner of path from the owned keys read for its
// ancestors, if any.
func ownerOf(kvs [][]*mvccpb.KeyValue) (Owner, bool) {
	for _, k := range kvs {
		if len(k) == 0 {
			continue
		}
		var o Owner
		if json.Unmarshal(k[0].Value, &o) == nil {
			return o, true
		}
	}
	return Owner{}, false
}

// ancestors returns path and each of its ancestors below the root,
// nearest first.
func ancestors(path string) []string {
	out := []string{path}
	for p := path; ; {
		i := strings.LastIndexByte(p, '/')
		if i <= 0 {
			return out
		}
		p = p[:i]
		out = append(out, p)
	}
}

// Applied returns what a destination was last written from, or ErrNotFound.
func (s *Store) Applied(ctx context.Context, path string) (Applied, error) {
	resp, err := s.cli.Get(ctx, s.appliedKey(path))
	if err != nil {
		return Applied{}, err
	}
	if len(resp.Kvs) == 0 {
		return Applied{}, fmt.Errorf("%s: %w", path, ErrNotFound)
	}
	var a Applied
	if err := json.Unmarshal(resp.Kvs[0].Value, &a); err != nil {
		return Applied{}, fmt.Errorf("%s: %w", path, err)
	}
	return a, nil
}

// AppliedUnderAll returns the applied records of every destination path
// at or below any of roots, reading many roots a transaction and several
// transactions at once: the state of a wide rule's destinations in a few
// round trips.
func (s *Store) AppliedUnderAll(ctx context.Context, roots []string) (map[string]Applied, error) {
	base := s.prefix + appliedBase
	var (
		mu      sync.Mutex
		out     = map[string]Applied{}
		batches [][]string
	)
	for len(roots) > 0 {
		n := min(len(roots), subtreesPerTxn)
		batches = append(batches, roots[:n])
		roots = roots[n:]
	}
	err := inParallel(ctx, batches, func(ctx context.Context, batch []string) error {
		return s.subtrees(ctx, base, batch, 0, false, func(_ string, _ int64, kvs []*mvccpb.KeyValue) error {
			mu.Lock()
			defer mu.Unlock()
			for _, kv := range kvs {
				var a Applied
				if err := json.Unmarshal(kv.Value, &a); err == nil {
					out[string(kv.Key[len(base):])] = a
				}
			}
			return nil
		})
	})
	return out, err
}

// AppliedPathsOf returns every destination path whose applied record
// names rule, reading them all: how an unshare interrupted after its rule
// was dropped finds what it had left to clean.
func (s *Store) AppliedPathsOf(ctx context.Context, rule string) ([]string, error) {
	all, err := s.AppliedUnder(ctx, "/")
	if err != nil {
		return nil, err
	}
	var out []string
	for p, a := range all {
		if a.Rule == rule {
			out = append(out, p)
		}
	}
	return out, nil
}

// AppliedUnder returns the applied records of every destination path at or
// below root.
func (s *Store) AppliedUnder(ctx context.Context, root string) (map[string]Applied, error) {
	start, end := rangeOf(s.prefix+appliedBase, root)
	resp, err := s.cli.Get(ctx, start, withRange(end)...)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Applied, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		p := string(kv.Key[len(s.prefix+appliedBase):])
		if !Under(p, root) {
			continue
		}
		var a Applied
		if err := json.Unmarshal(kv.Value, &a); err == nil {
			out[p] = a
		}
	}
	return out, nil
}

// Owner returns the rule owning path (path is a destination root or lies
// below one), or ErrNotFound.
func (s *Store) Owner(ctx context.Context, path string) (Owner, error) {
	var ops []clientv3.Op
	for _, a := range ancestors(path) {
		ops = append(ops, clientv3.OpGet(s.ownedKey(a)))
	}
	resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return Owner{}, err
	}
	kvs := make([][]*mvccpb.KeyValue, len(resp.Responses))
	for i, r := range resp.Responses {
		kvs[i] = r.GetResponseRange().Kvs
	}
	if o, ok := ownerOf(kvs); ok {
		return o, nil
	}
	return Owner{}, fmt.Errorf("%s: %w", path, ErrNotFound)
}
