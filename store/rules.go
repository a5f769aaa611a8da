package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Replication state in etcd:
//
//	rules/<id>          a replication rule, as its owner package encodes it
//	owned<dest root>    which rule owns a destination subtree (one owner each)
//	applied<dest path>  the source revision a destination was last written from
//	parked<source path> the last change of a source the replicator gave up on
//
// The store knows rules only as opaque records plus the destination roots
// they own: the rule language belongs to the replicator, the guarantees
// (one owner per destination, only the replicator writes one) belong here,
// where they can be enforced inside the transactions that write.

// ErrDestination marks a write into a replicated destination by anyone but
// the replicator.
var ErrDestination = errors.New("replicated destination")

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

// ErrDestinationNotEmpty marks a new rule whose destination already holds
// values that no rule wrote.
var ErrDestinationNotEmpty = errors.New("destination not empty")

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

// RuleRecord is a stored rule: its id, the owner package's encoding, and
// the destinations it owns.
type RuleRecord struct {
	ID     string
	Data   []byte
	Owners []Owner
	// Revision is the etcd revision the rule was last written at.
	Revision int64
}

type storedRule struct {
	Data   json.RawMessage `json:"data"`
	Owners []Owner         `json:"owners"`
}

func (s *Store) rulesPrefix() string          { return s.prefix + "rules/" }
func (s *Store) parkedKey(path string) string { return s.prefix + string(SpaceParked) + path }

// ownersPerTxn bounds the destinations claimed in one transaction: each
// takes one put and two compares, inside etcd's 128-operation limit.
const ownersPerTxn = 60

// CreateRule stores a new rule and takes ownership of its destinations.
// check sees every existing rule and may refuse; it runs again if another
// rule changes meanwhile, so rules are validated one after another. The
// rule is stored first; its destinations are then claimed in batches, each
// only if nothing was written below them since they were checked empty.
// If a claim fails the rule is removed again. A destination holding values
// that no rule wrote is refused with a NotEmptyError.
func (s *Store) CreateRule(ctx context.Context, rec RuleRecord, check func(existing []RuleRecord) error) (int64, error) {
	data, err := json.Marshal(storedRule{Data: rec.Data, Owners: rec.Owners})
	if err != nil {
		return 0, err
	}
	for attempt := range maxWriteAttempts {
		if attempt > 0 {
			if err := backoff(ctx, attempt); err != nil {
				return 0, err
			}
		}
		existing, readRev, err := s.ListRules(ctx)
		if err != nil {
			return 0, err
		}
		if err := check(existing); err != nil {
			return 0, err
		}
		for _, o := range rec.Owners {
			if err := s.checkEmpty(ctx, o.Root, readRev); err != nil {
				return 0, err
			}
		}
		resp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(s.rulesPrefix()), "<", readRev+1).WithPrefix()).
			Then(clientv3.OpPut(s.rulesPrefix()+rec.ID, string(data))).Commit()
		if err != nil {
			return 0, fmt.Errorf("create rule %s: %w", rec.ID, err)
		}
		if !resp.Succeeded {
			continue // another rule changed: check again
		}
		rev, err := s.claim(ctx, rec, readRev)
		if err != nil {
			s.dropRule(context.WithoutCancel(ctx), rec)
			return 0, err
		}
		return rev, nil
	}
	return 0, fmt.Errorf("create rule %s: %w; retry", rec.ID, ErrContention)
}

// claim writes the owner keys of rec's destinations in batches.
func (s *Store) claim(ctx context.Context, rec RuleRecord, readRev int64) (int64, error) {
	var rev int64
	for owners := rec.Owners; len(owners) > 0; {
		n := min(len(owners), ownersPerTxn)
		batch := owners[:n]
		owners = owners[n:]
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		for _, o := range batch {
			start, end := rangeOf(s.kvPrefix, o.Root)
			cmps = append(cmps,
				clientv3.Compare(clientv3.CreateRevision(s.ownedKey(o.Root)), "=", 0),
				clientv3.Compare(clientv3.ModRevision(start), "<", readRev+1).WithRange(end))
			ops = append(ops, clientv3.OpPut(s.ownedKey(o.Root), ownerJSON(o)))
		}
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return 0, fmt.Errorf("create rule %s: claim destinations: %w", rec.ID, err)
		}
		if !resp.Succeeded {
			return 0, fmt.Errorf("create rule %s: %w: a destination was written to while the rule was being created; retry", rec.ID, ErrContention)
		}
		rev = resp.Header.Revision
	}
	return rev, nil
}

// dropRule removes a rule and whatever owner keys of it exist.
func (s *Store) dropRule(ctx context.Context, rec RuleRecord) error {
	for owners := rec.Owners; len(owners) > 0; {
		n := min(len(owners), ownersPerTxn)
		var ops []clientv3.Op
		for _, o := range owners[:n] {
			// Only this rule's claims: another rule may own a root this
			// one failed to claim.
			ops = append(ops, clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.Value(s.ownedKey(o.Root)), "=", ownerJSON(o))},
				[]clientv3.Op{clientv3.OpDelete(s.ownedKey(o.Root))}, nil))
		}
		owners = owners[n:]
		if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("delete rule %s: release destinations: %w", rec.ID, err)
		}
	}
	if _, err := s.cli.Delete(ctx, s.rulesPrefix()+rec.ID); err != nil {
		return fmt.Errorf("delete rule %s: %w", rec.ID, err)
	}
	return nil
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

// ListRules returns every rule and the revision they were read at.
func (s *Store) ListRules(ctx context.Context) ([]RuleRecord, int64, error) {
	resp, err := s.cli.Get(ctx, s.rulesPrefix(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, 0, fmt.Errorf("list rules: %w", err)
	}
	out := make([]RuleRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		r, err := s.decodeRule(kv)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, r)
	}
	return out, resp.Header.Revision, nil
}

func (s *Store) decodeRule(kv *mvccpb.KeyValue) (RuleRecord, error) {
	var sr storedRule
	id := strings.TrimPrefix(string(kv.Key), s.rulesPrefix())
	if err := json.Unmarshal(kv.Value, &sr); err != nil {
		return RuleRecord{}, fmt.Errorf("rule %s: %w", id, err)
	}
	return RuleRecord{ID: id, Data: sr.Data, Owners: sr.Owners, Revision: kv.ModRevision}, nil
}

// GetRule returns one rule, or ErrNotFound.
func (s *Store) GetRule(ctx context.Context, id string) (RuleRecord, error) {
	resp, err := s.cli.Get(ctx, s.rulesPrefix()+id)
	if err != nil {
		return RuleRecord{}, fmt.Errorf("get rule %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return RuleRecord{}, fmt.Errorf("rule %s: %w (see `graft rules ls`)", id, ErrNotFound)
	}
	return s.decodeRule(resp.Kvs[0])
}

// DeleteRule removes a rule and its ownership of its destinations: the
// owner keys first (in batches), then the rule, so an interrupted delete
// leaves a rule that a second delete finishes. The destinations' values
// stay; the caller prunes them if it wants.
func (s *Store) DeleteRule(ctx context.Context, id string) (RuleRecord, error) {
	rec, err := s.GetRule(ctx, id)
	if err != nil {
		return RuleRecord{}, err
	}
	if err := s.dropRule(ctx, rec); err != nil {
		return RuleRecord{}, err
	}
	return rec, nil
}

// WatchRules signals whenever any rule changes after revision after.
// Bursts coalesce. The channel closes when ctx ends or the watch fails.
func (s *Store) WatchRules(ctx context.Context, after int64) <-chan struct{} {
	return s.watchSignal(ctx, s.rulesPrefix(), after)
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

// Parked is a source change the replicator gave up on after retrying.
type Parked struct {
	Path     string `json:"path"`
	Revision int64  `json:"rev"`
	Op       string `json:"op"`
	Error    string `json:"error"`
	Attempts int    `json:"attempts"`
	Time     int64  `json:"t"` // unix nanos
}

// PutParked records a parked change of a source path, replacing an earlier
// one of the same path.
func (s *Store) PutParked(ctx context.Context, p Parked) error {
	b, _ := json.Marshal(p)
	_, err := s.cli.Put(ctx, s.parkedKey(p.Path), string(b))
	return err
}

// ClearParked removes the parked change of a source path, if it is no newer
// than rev: the source has since been replicated.
func (s *Store) ClearParked(ctx context.Context, path string, rev int64) error {
	resp, err := s.cli.Get(ctx, s.parkedKey(path))
	if err != nil || len(resp.Kvs) == 0 {
		return err
	}
	var p Parked
	if json.Unmarshal(resp.Kvs[0].Value, &p) == nil && p.Revision > rev {
		return nil
	}
	_, err = s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.parkedKey(path)), "=", resp.Kvs[0].ModRevision)).
		Then(clientv3.OpDelete(s.parkedKey(path))).Commit()
	return err
}

// ListParked returns the parked changes of sources at or below root.
func (s *Store) ListParked(ctx context.Context, root string) ([]Parked, error) {
	start, end := rangeOf(s.prefix+string(SpaceParked), root)
	resp, err := s.cli.Get(ctx, start, withRange(end)...)
	if err != nil {
		return nil, err
	}
	var out []Parked
	for _, kv := range resp.Kvs {
		var p Parked
		if json.Unmarshal(kv.Value, &p) == nil && Under(p.Path, root) {
			out = append(out, p)
		}
	}
	return out, nil
}

// watchSignal signals whenever a key under prefix changes after revision
// after, coalescing bursts, until ctx ends or the watch fails.
func (s *Store) watchSignal(ctx context.Context, prefix string, after int64) <-chan struct{} {
	out := make(chan struct{}, 1)
	wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(after+1))
	go func() {
		defer close(out)
		for resp := range wch {
			if resp.Err() != nil {
				return
			}
			if len(resp.Events) == 0 {
				continue
			}
			select {
			case out <- struct{}{}:
			default: // a signal is already pending
			}
		}
	}()
	return out
}
