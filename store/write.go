package store

import (
	"context"
	"fmt"
	"hash/fnv"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/graft-sh/graft/internal/retry"
)

// WriteOptions qualify a Put or Delete.
type WriteOptions struct {
	// Author is the principal making the change; recorded with the version.
	Author string
	// IfRevision, when non-nil, makes the write a compare-and-swap against
	// the path's current revision (0: the path must not exist).
	IfRevision *int64
	// Origin says why graft itself wrote the value.
	Origin *Origin
}

// current is what a write reads before it commits.
type current struct {
	exists  bool
	rec     record
	rev     int64 // logical revision of the current version
	modRev  int64 // etcd mod revision of the kv key, 0 if absent
	history []int64
	readRev int64 // etcd revision the read was made at
	// owner is the rule whose destination holds the path, if any.
	owner *Owner
}

// readCurrent reads the current version of path and the revisions kept in
// its history, in one round trip.
func (s *Store) readCurrent(ctx context.Context, path string) (current, error) {
	ops := []clientv3.Op{
		clientv3.OpGet(s.kvKey(path)),
		clientv3.OpGet(s.histPrefix(path), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)),
	}
	for _, a := range ancestors(path) {
		ops = append(ops, clientv3.OpGet(s.ownedKey(a)))
	}
	resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return current{}, err
	}
	c := current{readRev: resp.Header.Revision}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		if c.rec, err = decodeRecord(kvs[0].Value); err != nil {
			return current{}, err
		}
		c.exists = true
		c.modRev = kvs[0].ModRevision
		c.rev = c.rec.revision(c.modRev)
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		if _, rev, ok := s.parseHistKey(string(kv.Key)); ok {
			c.history = append(c.history, rev)
		}
	}
	owned := make([][]*mvccpb.KeyValue, 0, len(resp.Responses)-2)
	for _, r := range resp.Responses[2:] {
		owned = append(owned, r.GetResponseRange().Kvs)
	}
	if o, ok := ownerOf(owned); ok {
		c.owner = &o
	}
	return c, nil
}

// latest is the revision of the newest version of the path, current or in
// history, or 0 if it never had one.
func (c current) latest() int64 {
	if c.exists {
		return c.rev
	}
	if n := len(c.history); n > 0 {
		return c.history[n-1]
	}
	return 0
}

// archive returns the ops that move the current version into history,
// marked as ended now, and trim history to the retention limit.
func (s *Store) archive(path string, c current, now int64, deleted bool, author string) []clientv3.Op {
	return s.archiveTrim(path, c, now, deleted, author, maxTrimPerWrite)
}

// archiveTrim is archive trimming at most maxTrim old versions.
func (s *Store) archiveTrim(path string, c current, now int64, deleted bool, author string, maxTrim int) []clientv3.Op {
	old := c.rec
	old.Rev = 0
	old.Ended = now
	old.Deleted = deleted
	if deleted {
		old.Deleter = author
	}
	ops := []clientv3.Op{clientv3.OpPut(s.histKey(path, c.rev), old.encode())}
	if excess := len(c.history) + 1 - s.histMax; excess > 0 {
		// After the limit is lowered a path may hold far more history
		// than one transaction may delete (etcd's --max-txn-ops defaults
		// to 128), and the write would fail every time. Trim the oldest
		// part now and the rest on the next writes.
		excess = min(excess, maxTrim)
		for _, rev := range c.history[:excess] {
			ops = append(ops, clientv3.OpDelete(s.histKey(path, rev)))
		}
	}
	return ops
}

// commit runs one write of path: it reads the current state, lets build
// decide the ops, and commits them guarded so that a concurrent write makes
// it start over. build returns ErrNotFound-style errors to stop without
// writing.
func (s *Store) commit(ctx context.Context, path string, build func(c current) ([]clientv3.Op, error)) (int64, error) {
	unlock, err := s.lockPath(ctx, path)
	if err != nil {
		return 0, err
	}
	defer unlock()
	for attempt := range maxWriteAttempts {
		if attempt > 0 {
			if err := backoff(ctx, attempt); err != nil {
				return 0, err
			}
		}
		c, err := s.readCurrent(ctx, path)
		if err != nil {
			return 0, err
		}
		if c.owner != nil {
			return 0, &DestinationError{Path: path, Owner: *c.owner}
		}
		ops, err := build(c)
		if err != nil {
			return 0, err
		}
		resp, err := s.cli.Txn(ctx).If(s.unchanged(path, c)...).Then(ops...).Commit()
		if err != nil {
			return 0, err
		}
		if resp.Succeeded {
			return resp.Header.Revision, nil
		}
	}
	return 0, fmt.Errorf("%w on %s; retry", ErrContention, path)
}

// lockPath serializes this process's writes to one path (and, sharing a
// stripe, a few others). Without it, writers in one graftd would race each
// other through the compare-and-swap and a hot path would fail with
// ErrContention under ordinary load; the guard in commit still handles
// writers in other processes.
func (s *Store) lockPath(ctx context.Context, path string) (func(), error) {
	l := s.writeLocks[stripeOf(path)]
	select {
	case l <- struct{}{}:
		return func() { <-l }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// stripeOf is the write lock stripe of path.
func stripeOf(path string) int {
	h := fnv.New32a()
	h.Write([]byte(path))
	return int(h.Sum32() % writeLockStripes)
}

// unchanged is the guard of a write: the path is as c read it. An existing
// kv key's mod revision changes with every write, so it alone suffices. An
// absent key has mod revision 0 both before and after a concurrent create
// and delete, so then the guard also checks that no version was archived
// since the read; otherwise the write would record a stale Prev and a later
// prefix restore could mistake trimmed history for "did not exist".
//
// It also checks that no rule took ownership of a destination since the
// read, so a write never lands in a destination created under its feet.
func (s *Store) unchanged(path string, c current) []clientv3.Cmp {
	cmps := []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(s.kvKey(path)), "=", c.modRev),
		clientv3.Compare(clientv3.ModRevision(s.prefix+ownedBase), "<", c.readRev+1).WithPrefix(),
	}
	if !c.exists {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.histPrefix(path)), "<", c.readRev+1).WithPrefix())
	}
	return cmps
}

// backoff waits before retry attempt (1 for the first retry) a jittered
// time that grows with it, so that writers that keep colliding on one path
// spread out instead of retrying in lockstep until their attempts run out:
// from about 1 ms up to about 50 ms (at most 75).
func backoff(ctx context.Context, attempt int) error {
	return retry.Sleep(ctx, retry.Backoff(time.Millisecond, 50*time.Millisecond, attempt-1))
}

// Put writes value at path and returns the new version (without value).
func (s *Store) Put(ctx context.Context, path string, value []byte, opts WriteOptions) (Entry, error) {
	if _, err := ParsePath(path); err != nil {
		return Entry{}, fmt.Errorf("put %s: %w", ShortPath(path), err)
	}
	if len(value) > s.maxValue {
		return Entry{}, fmt.Errorf("put %s: %w", path, &ValueTooLargeError{Size: len(value), Max: s.maxValue})
	}
	sealed, err := s.keyring.Load().Seal(path, value)
	if err != nil {
		return Entry{}, err
	}
	rec := record{Cipher: sealed, Author: opts.Author, Size: len(value), Origin: opts.Origin}
	rev, err := s.commit(ctx, path, func(c current) ([]clientv3.Op, error) {
		if err := checkRevision(path, c, opts.IfRevision); err != nil {
			return nil, err
		}
		// Read the clock only now, after waiting for the path's lock, so
		// that a version never starts before the one it replaces.
		rec.Time = s.now().UnixNano()
		rec.Prev = c.latest()
		ops := []clientv3.Op{clientv3.OpPut(s.kvKey(path), rec.encode())}
		if c.exists {
			ops = append(ops, s.archive(path, c, rec.Time, false, "")...)
		}
		return ops, nil
	})
	if err != nil {
		return Entry{}, fmt.Errorf("put %s: %w", path, err)
	}
	return rec.entry(path, rev), nil
}

// Delete removes path, keeping its history, and returns the revision of the
// deletion.
func (s *Store) Delete(ctx context.Context, path string, opts WriteOptions) (int64, error) {
	if _, err := ParsePath(path); err != nil {
		return 0, fmt.Errorf("delete %s: %w", ShortPath(path), err)
	}
	rev, err := s.commit(ctx, path, func(c current) ([]clientv3.Op, error) {
		if !c.exists {
			return nil, ErrNotFound
		}
		if err := checkRevision(path, c, opts.IfRevision); err != nil {
			return nil, err
		}
		ops := []clientv3.Op{clientv3.OpDelete(s.kvKey(path))}
		return append(ops, s.archive(path, c, s.now().UnixNano(), true, opts.Author)...), nil
	})
	if err != nil {
		return 0, fmt.Errorf("delete %s: %w", path, err)
	}
	return rev, nil
}

func checkRevision(path string, c current, want *int64) error {
	if want == nil {
		return nil
	}
	have := int64(0)
	if c.exists {
		have = c.rev
	}
	if *want != have {
		return &RevisionMismatchError{Path: path, Expected: *want, Current: have}
	}
	return nil
}

// Restore writes a new version of path holding the value it had at rev.
func (s *Store) Restore(ctx context.Context, path string, rev int64, author string) (Entry, error) {
	old, err := s.GetRevision(ctx, path, rev)
	if err != nil {
		return Entry{}, err
	}
	return s.Put(ctx, path, old.Value, WriteOptions{
		Author: author,
		Origin: &Origin{Kind: "restore", SourcePath: path, SourceRevision: rev},
	})
}

// version is one version of a path as read from etcd.
type version struct {
	rev     int64
	rec     record
	current bool
	// endRev is the revision the version ended at (history only).
	endRev int64
}

// versions returns every retained version of path, oldest first, the
// current one last.
func (s *Store) versions(ctx context.Context, path string) ([]version, error) {
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.histPrefix(path), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)),
		clientv3.OpGet(s.kvKey(path)),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("read history of %s: %w", path, err)
	}
	return s.versionsFrom(path, resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs)
}

func (s *Store) versionsFrom(path string, hist, cur []*mvccpb.KeyValue) ([]version, error) {
	var out []version
	for _, kv := range hist {
		_, rev, ok := s.parseHistKey(string(kv.Key))
		if !ok {
			continue
		}
		r, err := decodeRecord(kv.Value)
		if err != nil {
			return nil, fmt.Errorf("read history of %s: %w", path, err)
		}
		end := r.EndRev
		if end == 0 {
			end = kv.ModRevision
		}
		out = append(out, version{rev: rev, rec: r, endRev: end})
	}
	if len(cur) > 0 {
		r, err := decodeRecord(cur[0].Value)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		out = append(out, version{rev: r.revision(cur[0].ModRevision), rec: r, current: true})
	}
	return out, nil
}
