package store

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ListItem is one result of List: an entry, or in a non-recursive listing a
// directory that holds paths below it. A path can be both.
type ListItem struct {
	Path      string
	Entry     *Entry // nil for a pure directory
	Directory bool
}

// List returns what lies under prefix, sorted by path, without values, and
// the revision it was read at. Recursive lists every path below the
// prefix; otherwise only direct children, with deeper paths folded into
// their first segment as directories. A path equal to prefix is included.
func (s *Store) List(ctx context.Context, prefix string, recursive bool) ([]ListItem, int64, error) {
	return s.ListFunc(ctx, prefix, recursive, nil)
}

// ListFunc is List over only the paths for which keep returns true (all
// when keep is nil). Directories are folded from kept paths only, so a
// listing never reveals the name of a path that keep hides.
func (s *Store) ListFunc(ctx context.Context, prefix string, recursive bool, keep func(path string) bool) ([]ListItem, int64, error) {
	return s.ListTrees(ctx, prefix, []string{prefix}, recursive, keep)
}

// ListTrees is ListFunc that reads only subtrees, each at or below
// prefix, at one revision: what a caller may reach of prefix.
func (s *Store) ListTrees(ctx context.Context, prefix string, subtrees []string, recursive bool, keep func(path string) bool) ([]ListItem, int64, error) {
	if _, err := ParsePrefix(prefix); err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", ShortPath(prefix), err)
	}
	var items []ListItem
	index := map[string]int{}
	rev, err := s.readSubtrees(ctx, "list", prefix, subtrees, func(p string, kv *mvccpb.KeyValue) error {
		if keep != nil && !keep(p) {
			return nil
		}
		r, err := decodeRecord(kv.Value)
		if err != nil {
			return fmt.Errorf("list %s: %s: %w", prefix, p, err)
		}
		e := r.entry(p, r.revision(kv.ModRevision))
		name, dir := p, false
		if !recursive && p != prefix {
			name, dir = child(prefix, p)
		}
		i, seen := index[name]
		if !seen {
			i = len(items)
			index[name] = i
			items = append(items, ListItem{Path: name})
		}
		if dir {
			items[i].Directory = true
		} else {
			items[i].Entry = &e
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	if !recursive || len(subtrees) > 1 {
		// Folding breaks etcd's key order: the directory /a (from /a/x)
		// first shows up after the entry /a-b, since '-' sorts before '/'.
		// Subtrees read one after another break it too.
		slices.SortFunc(items, func(a, b ListItem) int { return strings.Compare(a.Path, b.Path) })
	}
	return items, rev, nil
}

// child returns the direct child of prefix on the way to p, and whether p
// lies deeper than that child.
func child(prefix, p string) (string, bool) {
	base := len(prefix)
	if prefix == "/" {
		base = 0
	}
	rest := p[base+1:]
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return p[:base+1+i], true
	}
	return p, false
}

func withRange(end string) []clientv3.OpOption {
	return []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
}

// HasBelow reports whether any path lies below p (p itself not counted):
// whether p is a prefix.
func (s *Store) HasBelow(ctx context.Context, p string) (bool, error) {
	if _, err := ParsePrefix(p); err != nil {
		return false, fmt.Errorf("list %s: %w", ShortPath(p), err)
	}
	base := s.kvKey(p) + "/"
	if p == "/" {
		base = s.kvKey("/")
	}
	resp, err := s.cli.Get(ctx, base, clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithLimit(1))
	if err != nil {
		return false, err
	}
	return resp.Count > 0, nil
}
