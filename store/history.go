package store

import (
	"context"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// HistoryItem is one retained version of a path.
type HistoryItem struct {
	Entry   Entry // without value
	Current bool
	Ended   time.Time // zero for the current version
	Deleted bool      // the version ended with a deletion of the path
	// DeletedAt and Deleter are, for a version that ended with a deletion,
	// the revision of the deletion and who made it.
	DeletedAt int64
	Deleter   string
}

// History returns the retained versions of path, newest first. A path with
// no versions at all is ErrNotFound.
func (s *Store) History(ctx context.Context, path string) ([]HistoryItem, error) {
	if _, err := ParsePath(path); err != nil {
		return nil, fmt.Errorf("history %s: %w", ShortPath(path), err)
	}
	versions, err := s.versions(ctx, path)
	if err != nil {
		return nil, err
	}
	if len(versions) == 0 {
		return nil, fmt.Errorf("history %s: %w", path, ErrNotFound)
	}
	items := make([]HistoryItem, 0, len(versions))
	for _, v := range slices.Backward(versions) {
		item := HistoryItem{Entry: v.rec.entry(path, v.rev), Current: v.current, Deleted: v.rec.Deleted}
		if v.rec.Ended != 0 {
			item.Ended = time.Unix(0, v.rec.Ended).UTC()
		}
		if v.rec.Deleted {
			item.DeletedAt, item.Deleter = v.endRev, v.rec.Deleter
		}
		items = append(items, item)
	}
	return items, nil
}

// RestoreAction is what a prefix restore does to one path.
type RestoreAction int

// Restore actions.
const (
	ActionRestore RestoreAction = iota + 1 // put back the value it had then
	ActionDelete                           // it did not exist then
	ActionSkip                             // its state then is unknown
)

func (a RestoreAction) String() string {
	switch a {
	case ActionRestore:
		return "restore"
	case ActionDelete:
		return "delete"
	case ActionSkip:
		return "skip"
	}
	return "unknown"
}

// RestoreStep is the plan (and, unless a dry run, the outcome) for one path.
type RestoreStep struct {
	Path         string
	Action       RestoreAction
	FromRevision int64 // current revision before, 0 if absent
	ToRevision   int64 // revision whose value is restored, 0 for delete
	NewRevision  int64 // revision written, 0 in a dry run or for skip
	Reason       string
}

// RestorePrefix returns every path under prefix to its state at time at:
// changed paths get their old value back as a new revision, paths that did
// not exist then are deleted. Paths whose state then cannot be known
// because retention trimmed their history are skipped and reported. With
// dryRun nothing is written. Each path is written in its own transaction,
// guarded by the revision the plan was made from, so a concurrent write to
// a path makes its step fail rather than be overwritten.
func (s *Store) RestorePrefix(ctx context.Context, prefix string, at time.Time, dryRun bool, author string) ([]RestoreStep, error) {
	return s.RestorePrefixFunc(ctx, prefix, at, dryRun, author, nil)
}

// RestorePrefixFunc is RestorePrefix over only the paths for which keep
// returns true (all when keep is nil); other paths are neither planned nor
// touched.
func (s *Store) RestorePrefixFunc(ctx context.Context, prefix string, at time.Time, dryRun bool, author string, keep func(path string) bool) ([]RestoreStep, error) {
	if _, err := ParsePrefix(prefix); err != nil {
		return nil, fmt.Errorf("restore %s: %w", ShortPath(prefix), err)
	}
	plan, err := s.planRestore(ctx, prefix, at.UnixNano())
	if err != nil {
		return nil, err
	}
	if keep != nil {
		plan = slices.DeleteFunc(plan, func(st RestoreStep) bool { return !keep(st.Path) })
	}
	if dryRun {
		return plan, nil
	}
	for i := range plan {
		step := &plan[i]
		guard := step.FromRevision
		switch step.Action {
		case ActionRestore:
			old, err := s.GetRevision(ctx, step.Path, step.ToRevision)
			if err != nil {
				return plan[:i], fmt.Errorf("restore %s (%d of %d steps done): %w", prefix, i, len(plan), err)
			}
			e, err := s.Put(ctx, step.Path, old.Value, WriteOptions{
				Author:     author,
				IfRevision: &guard,
				Origin:     &Origin{Kind: "restore", SourcePath: step.Path, SourceRevision: step.ToRevision},
			})
			if err != nil {
				return plan[:i], fmt.Errorf("restore %s (%d of %d steps done): %w", prefix, i, len(plan), err)
			}
			step.NewRevision = e.Revision
		case ActionDelete:
			rev, err := s.Delete(ctx, step.Path, WriteOptions{Author: author, IfRevision: &guard})
			if err != nil {
				return plan[:i], fmt.Errorf("restore %s (%d of %d steps done): %w", prefix, i, len(plan), err)
			}
			step.NewRevision = rev
		}
	}
	return plan, nil
}

func (s *Store) planRestore(ctx context.Context, prefix string, at int64) ([]RestoreStep, error) {
	kvStart, kvEnd := rangeOf(s.kvPrefix, prefix)
	hStart, hEnd := rangeOf(s.hist, prefix)
	if prefix != "/" {
		hEnd = s.hist + prefix + "A" // history keys end in @rev, and 'A' follows '@'
	}
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(kvStart, clientv3.WithRange(kvEnd)),
		clientv3.OpGet(hStart, clientv3.WithRange(hEnd)),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("plan restore of %s: %w", prefix, err)
	}
	// Group history and current keys by path, keeping only real descendants.
	hist := map[string][]*mvccpb.KeyValue{}
	cur := map[string][]*mvccpb.KeyValue{}
	var paths []string
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		p, _, ok := s.parseHistKey(string(kv.Key))
		if !ok || !Under(p, prefix) {
			continue
		}
		if _, seen := hist[p]; !seen {
			paths = append(paths, p)
		}
		hist[p] = append(hist[p], kv)
	}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		p := string(kv.Key[len(s.kvPrefix):])
		if !Under(p, prefix) {
			continue
		}
		if _, seen := hist[p]; !seen {
			paths = append(paths, p)
		}
		cur[p] = []*mvccpb.KeyValue{kv}
	}
	slices.Sort(paths)

	var plan []RestoreStep
	for _, p := range paths {
		versions, err := s.versionsFrom(p, hist[p], cur[p])
		if err != nil {
			return nil, err
		}
		if step, ok := planPath(p, versions, at); ok {
			plan = append(plan, step)
		}
	}
	return plan, nil
}

// planPath decides what a restore to time at does to one path, given its
// versions oldest first. It returns false when the path is already as it was.
func planPath(path string, versions []version, at int64) (RestoreStep, bool) {
	step := RestoreStep{Path: path}
	var now *version
	if last := versions[len(versions)-1]; last.current {
		now = &last
		step.FromRevision = last.rev
	}
	var then *version
	for i := range versions {
		v := versions[i]
		if v.rec.Time <= at && (v.current || at < v.rec.Ended) {
			then = &v
			break
		}
	}
	switch {
	case then != nil && now != nil && (then.rev == now.rev || restoredFrom(path, now, then.rev)):
		// Already as it was, or already restored to it: running a restore
		// again, say after a concurrent write stopped it half way, redoes
		// only what is left.
		return step, false
	case then != nil:
		step.Action = ActionRestore
		step.ToRevision = then.rev
		return step, true
	case versions[0].rec.Prev != 0 && at < versions[0].rec.Time:
		step.Action = ActionSkip
		step.Reason = fmt.Sprintf("history before %s was trimmed by retention", time.Unix(0, versions[0].rec.Time).UTC().Format(time.RFC3339))
		return step, true
	case now != nil:
		step.Action = ActionDelete
		return step, true
	}
	return step, false
}

// restoredFrom reports whether version v was written by restoring path to
// revision rev, so that it holds the value rev held.
func restoredFrom(path string, v *version, rev int64) bool {
	o := v.rec.Origin
	return o != nil && o.Kind == "restore" && o.SourcePath == path && o.SourceRevision == rev
}

// DeletedAt returns, for each of paths that does not exist now and has
// history, the revision of the deletion that ended its last version,
// many paths a transaction: when a source went, so that the reconciler
// can tell the relay's backlog from a missed deletion.
func (s *Store) DeletedAt(ctx context.Context, paths []string) (map[string]int64, error) {
	out := make(map[string]int64, len(paths))
	const perTxn = maxTxnOps / 2 // a get of the kv key and one of its history each
	for len(paths) > 0 {
		n := min(len(paths), perTxn)
		chunk := paths[:n]
		paths = paths[n:]
		ops := make([]clientv3.Op, 0, 2*n)
		for _, p := range chunk {
			ops = append(ops,
				clientv3.OpGet(s.kvKey(p), clientv3.WithCountOnly()),
				clientv3.OpGet(s.histPrefix(p), clientv3.WithPrefix(),
					clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(1)))
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read deletions: %w", err)
		}
		for i, p := range chunk {
			if resp.Responses[2*i].GetResponseRange().Count > 0 {
				continue
			}
			// The deletion wrote the newest version into history; its
			// record pins the revision it ended at once a sweep rewrote it.
			if kvs := resp.Responses[2*i+1].GetResponseRange().Kvs; len(kvs) > 0 {
				end := kvs[0].ModRevision
				if r, err := decodeRecord(kvs[0].Value); err == nil && r.EndRev > 0 {
					end = r.EndRev
				}
				out[p] = end
			}
		}
	}
	return out, nil
}
