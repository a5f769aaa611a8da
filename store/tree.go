package store

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

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
