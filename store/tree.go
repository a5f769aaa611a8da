package store

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A tree is a path and everything below it, written (PutTree) or read
// (ReadTree, ReadTrees) at one revision.

// MaxTreeWrite is how many values one PutTree may write.
const MaxTreeWrite = 16

// PutTree writes values, by path relative to root, in one transaction:
// every value commits at one revision, or none does. A reader (a watch, a
// replication, an agent) never sees some of them without the others: a
// database user without its password. Each path keeps its own history, as
// with Put; IfRevision is not supported.
func (s *Store) PutTree(ctx context.Context, root string, values map[string][]byte, opts WriteOptions) ([]Entry, error) {
	if _, err := ParsePrefix(root); err != nil {
		return nil, fmt.Errorf("put %s: %w", ShortPath(root), err)
	}
	switch {
	case len(values) == 0:
		return nil, fmt.Errorf("put %s: no values to write", root)
	case len(values) > MaxTreeWrite:
		return nil, fmt.Errorf("put %s: %d values: at most %d are written in one transaction", root, len(values), MaxTreeWrite)
	case opts.IfRevision != nil:
		return nil, fmt.Errorf("put %s: a tree write has no single revision to compare", root)
	}
	rels := slices.Sorted(maps.Keys(values))
	paths := make([]string, len(rels))
	sealed := make([][]byte, len(rels))
	for i, rel := range rels {
		paths[i] = strings.TrimSuffix(root, "/") + "/" + rel
		if _, err := ParsePath(paths[i]); err != nil || paths[i] == root || !Under(paths[i], root) || strings.Contains(rel, "..") {
			return nil, fmt.Errorf("put %s: key %q: want a path relative to it, such as user or db/password", root, rel)
		}
		if len(values[rel]) > s.maxValue {
			return nil, fmt.Errorf("put %s: %w", paths[i], &ValueTooLargeError{Size: len(values[rel]), Max: s.maxValue})
		}
		c, err := s.keyring.Load().Seal(paths[i], values[rel])
		if err != nil {
			return nil, err
		}
		sealed[i] = c
	}
	unlock, err := s.lockPaths(ctx, paths)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// etcd allows maxTxnOps operations a transaction: a put and an archive per
	// path, and what is left for trimming history.
	trim := max(1, (maxTxnOps-2*len(paths))/len(paths))
	for attempt := range maxWriteAttempts {
		if attempt > 0 {
			if err := backoff(ctx, attempt); err != nil {
				return nil, err
			}
		}
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		recs := make([]record, len(paths))
		now := s.now().UnixNano()
		for i, p := range paths {
			c, err := s.readCurrent(ctx, p)
			if err != nil {
				return nil, err
			}
			if c.owner != nil {
				return nil, &DestinationError{Path: p, Owner: *c.owner}
			}
			recs[i] = record{Cipher: sealed[i], Author: opts.Author, Size: len(values[rels[i]]), Origin: opts.Origin, Time: now, Prev: c.latest()}
			cmps = append(cmps, s.unchanged(p, c)...)
			ops = append(ops, clientv3.OpPut(s.kvKey(p), recs[i].encode()))
			if c.exists {
				ops = append(ops, s.archiveTrim(p, c, now, false, "", trim)...)
			}
		}
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("put %s: %w", root, err)
		}
		if resp.Succeeded {
			out := make([]Entry, len(paths))
			for i, p := range paths {
				out[i] = recs[i].entry(p, resp.Header.Revision)
			}
			return out, nil
		}
	}
	return nil, fmt.Errorf("put %s: %w; retry", root, ErrContention)
}

// lockPaths takes the write locks of paths, in stripe order so that two
// tree writes never wait on each other.
func (s *Store) lockPaths(ctx context.Context, paths []string) (func(), error) {
	stripes := make([]int, 0, len(paths))
	for _, p := range paths {
		stripes = append(stripes, stripeOf(p))
	}
	slices.Sort(stripes)
	stripes = slices.Compact(stripes)
	held := 0
	release := func() {
		for _, st := range stripes[:held] {
			<-s.writeLocks[st]
		}
	}
	for _, st := range stripes {
		select {
		case s.writeLocks[st] <- struct{}{}:
			held++
		case <-ctx.Done():
			release()
			return nil, ctx.Err()
		}
	}
	return release, nil
}

// UnreadableError lists paths whose values could not be decrypted.
type UnreadableError struct {
	Paths []string
	Err   error // the first decryption error
}

func (e *UnreadableError) Error() string {
	return fmt.Sprintf("%d value(s) cannot be decrypted, such as %s: %v", len(e.Paths), e.Paths[0], e.Err)
}

func (e *UnreadableError) Unwrap() error { return e.Err }

// ReadTree returns every current version at or below root with its value,
// and the revision it was read at, in one etcd read: a consistent snapshot
// of a subtree, as PutTree writes one. The reconciler reads a rule's
// sources with it. Values that cannot be decrypted are left out and named
// by an *UnreadableError returned with the rest.
func (s *Store) ReadTree(ctx context.Context, root string) ([]Entry, int64, error) {
	return s.ReadTrees(ctx, root, []string{root})
}

// maxSubtrees is how many subtrees ReadTrees reads in one transaction
// (etcd allows maxTxnOps operations); with more it reads root whole.
const maxSubtrees = 64

// ReadTrees is ReadTree of root limited to subtrees, each at or below
// root, all read at one revision: what a caller may reach of root, so that
// nothing else is read or decrypted. KVService.ReadTree serves every
// caller's tree read with it, the subtrees narrowed to what the caller may
// reach. With no subtrees it reads nothing but the revision.
func (s *Store) ReadTrees(ctx context.Context, root string, subtrees []string) ([]Entry, int64, error) {
	if _, err := ParsePath(root); err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", ShortPath(root), err)
	}
	var (
		out        []Entry
		unreadable *UnreadableError
	)
	rev, err := s.readSubtrees(ctx, "read", root, subtrees, func(p string, kv *mvccpb.KeyValue) error {
		r, err := decodeRecord(kv.Value)
		if err == nil {
			e := r.entry(p, r.revision(kv.ModRevision))
			if e.Value, err = s.open(p, r); err == nil {
				out = append(out, e)
				return nil
			}
		}
		if unreadable == nil {
			unreadable = &UnreadableError{Err: err}
		}
		unreadable.Paths = append(unreadable.Paths, p)
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	if len(subtrees) > 1 {
		slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Path, b.Path) })
	}
	if unreadable != nil {
		return out, rev, unreadable
	}
	return out, rev, nil
}

// readSubtrees reads the subtrees of top (all of top when there are more
// than maxSubtrees) in one transaction, and calls each for every value
// under them, subtree by subtree in key order. verb names the read in
// errors. It returns the revision read at.
func (s *Store) readSubtrees(ctx context.Context, verb, top string, subtrees []string, each func(path string, kv *mvccpb.KeyValue) error) (int64, error) {
	var ops []clientv3.Op
	for _, sub := range subtrees {
		if !Under(sub, top) {
			return 0, fmt.Errorf("%s %s: %w: %s is not below it", verb, top, ErrInvalidArgument, ShortPath(sub))
		}
		start, end := rangeOf(s.kvPrefix, sub)
		ops = append(ops, clientv3.OpGet(start, withRange(end)...))
	}
	if len(ops) > maxSubtrees {
		start, end := rangeOf(s.kvPrefix, top)
		ops, subtrees = []clientv3.Op{clientv3.OpGet(start, withRange(end)...)}, []string{top}
	}
	if len(ops) == 0 {
		ops = []clientv3.Op{clientv3.OpGet(s.kvPrefix, clientv3.WithCountOnly())}
	}
	resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", verb, top, err)
	}
	for i, r := range resp.Responses {
		if i >= len(subtrees) {
			break
		}
		for _, kv := range r.GetResponseRange().Kvs {
			p := string(kv.Key[len(s.kvPrefix):])
			if !Under(p, subtrees[i]) {
				continue
			}
			if err := each(p, kv); err != nil {
				return 0, err
			}
		}
	}
	return resp.Header.Revision, nil
}
