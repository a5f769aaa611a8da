package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Batching of replica writes. etcd refuses a transaction with more than
// --max-txn-ops (maxTxnOps, 128 by default) operations in any branch, or a request over
// 1.5 MiB; a batch stays inside both.
const (
	replicaReadOps   = 4 // kv, history keys, applied, owner
	replicaBatch     = maxTxnOps / replicaReadOps
	replicaMaxBytes  = 1 << 20
	replicaParallel  = 4
	replicaMaxTrim   = 1 // history trimmed per replica write; the rest on later ones
	replicaWriteOpts = 3 + replicaMaxTrim
)

// ReplicaWrite is one destination the replicator brings up to date.
type ReplicaWrite struct {
	// Path is the destination path; Root the destination subtree of Rule
	// that holds it.
	Path, Root, Rule string
	// Source and SourceRevision are the source path and the revision of
	// the source state written; for a deletion, the revision at which the
	// source was read as absent.
	Source         string
	SourceRevision int64
	// SourceTime is the source version's commit time (unix nanos).
	SourceTime int64
	// Value is the value to write; Delete removes the destination instead.
	Value  []byte
	Delete bool
}

// Replica outcomes.
const (
	ReplicaWritten = "written"
	ReplicaDeleted = "deleted"
	// ReplicaCurrent: the destination already reflects this source
	// revision or a newer one; nothing was written (a destination never
	// goes backwards).
	ReplicaCurrent = "current"
	// ReplicaUnowned: the rule no longer owns the destination (unshared).
	ReplicaUnowned = "unowned"
	// ReplicaAbsent: a deletion of a destination that does not exist.
	ReplicaAbsent = "absent"
)

// ReplicaResult is the outcome of one ReplicaWrite.
type ReplicaResult struct {
	Outcome  string
	Revision int64 // the destination's commit revision, when written or deleted
}

// ApplyReplicas writes destinations, each only if its rule still owns it
// and the source revision is newer than the one it was last written from.
// Writes go in batched transactions (several batches at once); a batch that
// races another writer is read and tried again. Results are in the order of
// ws.
func (s *Store) ApplyReplicas(ctx context.Context, ws []ReplicaWrite) ([]ReplicaResult, error) {
	if err := s.checkReplicas(ws); err != nil {
		return nil, err
	}
	out := make([]ReplicaResult, len(ws))
	batches := s.replicaBatches(ws)
	if len(batches) == 1 {
		return out, s.applyBatch(ctx, ws, batches[0], out)
	}
	// After a failure no further batch starts: the callers retry the
	// whole set, and their results are not read.
	return out, inParallel(ctx, batches, func(ctx context.Context, b []int) error {
		return s.applyBatch(ctx, ws, b, out)
	})
}

// checkReplicas validates writes before any is made.
func (s *Store) checkReplicas(ws []ReplicaWrite) error {
	seen := make(map[string]bool, len(ws))
	for _, w := range ws {
		if seen[w.Path] {
			return fmt.Errorf("replicate to %s: %w: the path appears twice in one call", w.Path, ErrInvalidArgument)
		}
		seen[w.Path] = true
		if _, err := ParsePath(w.Path); err != nil {
			return fmt.Errorf("replicate to %s: %w", ShortPath(w.Path), err)
		}
		if !w.Delete && len(w.Value) > s.maxValue {
			return fmt.Errorf("replicate to %s: %w", w.Path, &ValueTooLargeError{Size: len(w.Value), Max: s.maxValue})
		}
	}
	return nil
}

// replicaBatches splits ws into index ranges that fit one transaction,
// by count and by bytes (each value is written once and, at most, its
// predecessor once more into history).
func (s *Store) replicaBatches(ws []ReplicaWrite) [][]int {
	var (
		out   [][]int
		cur   []int
		bytes int
	)
	for i, w := range ws {
		size := 2*(len(w.Value)+len(w.Path)) + 512
		if len(cur) > 0 && (len(cur) == replicaBatch || bytes+size > replicaMaxBytes) {
			out, cur, bytes = append(out, cur), nil, 0
		}
		cur = append(cur, i)
		bytes += size
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// replicaState is what one destination looks like before a batch writes.
type replicaState struct {
	current
	applied    Applied
	hasApplied bool
	appliedMod int64
	owner      *Owner
	ownerMod   int64
}

func (s *Store) applyBatch(ctx context.Context, ws []ReplicaWrite, idx []int, out []ReplicaResult) error {
	return s.applyBatchFrom(ctx, ws, idx, out, nil)
}

// applyBatchFrom is applyBatch whose first attempt uses states already
// read (when not nil) instead of reading them.
func (s *Store) applyBatchFrom(ctx context.Context, ws []ReplicaWrite, idx []int, out []ReplicaResult, first []replicaState) error {
	for attempt := range maxWriteAttempts {
		if attempt > 0 {
			if err := backoff(ctx, attempt); err != nil {
				return err
			}
		}
		states := first
		first = nil
		if states == nil {
			var err error
			if states, err = s.readReplicas(ctx, ws, idx); err != nil {
				return fmt.Errorf("replicate: read destinations: %w", err)
			}
		}
		var (
			cmps    []clientv3.Cmp
			ops     []clientv3.Op
			pending []int // positions in idx written by this transaction
			outcome = make(map[int]string, len(idx))
			roots   = map[string]bool{}
		)
		for k, i := range idx {
			w, st := ws[i], states[k]
			switch {
			case st.owner == nil || st.owner.Rule != w.Rule:
				outcome[i] = ReplicaUnowned
				continue
			case st.hasApplied && st.applied.SourceRevision >= w.SourceRevision:
				outcome[i] = ReplicaCurrent
				continue
			case w.Delete && !st.exists:
				outcome[i] = ReplicaAbsent
				continue
			}
			wops, err := s.replicaOps(w, st)
			if err != nil {
				return err
			}
			cmps = append(cmps,
				clientv3.Compare(clientv3.ModRevision(s.kvKey(w.Path)), "=", st.modRev),
				clientv3.Compare(clientv3.ModRevision(s.appliedKey(w.Path)), "=", st.appliedMod))
			// Many destinations of a batch share one root: compare it once.
			if !roots[w.Root] {
				roots[w.Root] = true
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.ownedKey(w.Root)), "=", st.ownerMod))
			}
			ops = append(ops, wops...)
			pending = append(pending, i)
		}
		rev := int64(0)
		if len(ops) > 0 {
			resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
			if err != nil {
				return fmt.Errorf("replicate: %w", err)
			}
			if !resp.Succeeded {
				continue
			}
			rev = resp.Header.Revision
		}
		for _, i := range idx {
			if o, ok := outcome[i]; ok {
				out[i] = ReplicaResult{Outcome: o}
			}
		}
		for _, i := range pending {
			o := ReplicaWritten
			if ws[i].Delete {
				o = ReplicaDeleted
			}
			out[i] = ReplicaResult{Outcome: o, Revision: rev}
		}
		return nil
	}
	return fmt.Errorf("replicate: %w; the replicator retries", ErrContention)
}

// replicaOps returns the operations that write (or delete) one destination
// like an ordinary write, plus its applied record.
func (s *Store) replicaOps(w ReplicaWrite, st replicaState) ([]clientv3.Op, error) {
	now := s.now().UnixNano()
	applied := Applied{Rule: w.Rule, Source: w.Source, SourceRevision: w.SourceRevision, SourceTime: w.SourceTime, Deleted: w.Delete, Time: now}
	ab, _ := json.Marshal(applied)
	ops := []clientv3.Op{clientv3.OpPut(s.appliedKey(w.Path), string(ab))}
	c := st.current
	if w.Delete {
		ops = append(ops, clientv3.OpDelete(s.kvKey(w.Path)))
		return append(ops, s.archiveReplica(w.Path, c, now, true)...), nil
	}
	sealed, err := s.keyring.Load().Seal(w.Path, w.Value)
	if err != nil {
		return nil, err
	}
	rec := record{
		Cipher: sealed, Author: ReplicatorAuthor, Size: len(w.Value), Time: now, Prev: c.latest(),
		Origin: &Origin{Kind: "replication", RuleID: w.Rule, SourcePath: w.Source, SourceRevision: w.SourceRevision, SourceTime: w.SourceTime},
	}
	ops = append(ops, clientv3.OpPut(s.kvKey(w.Path), rec.encode()))
	if c.exists {
		ops = append(ops, s.archiveReplica(w.Path, c, now, false)...)
	}
	return ops, nil
}

// ReplicatorAuthor is the author of every version the replicator writes.
const ReplicatorAuthor = "graft:replicator"

// archiveReplica is archive with at most replicaMaxTrim history deletions,
// so a batch's size stays bounded.
func (s *Store) archiveReplica(path string, c current, now int64, deleted bool) []clientv3.Op {
	author := ""
	if deleted {
		author = ReplicatorAuthor
	}
	if !c.exists {
		return nil
	}
	ops := s.archive(path, c, now, deleted, author)
	if len(ops) > 1+replicaMaxTrim {
		ops = ops[:1+replicaMaxTrim]
	}
	return ops
}

// readReplicas reads, in one transaction, the state of each destination in
// idx: current version, history, applied record and owner.
func (s *Store) readReplicas(ctx context.Context, ws []ReplicaWrite, idx []int) ([]replicaState, error) {
	ops := make([]clientv3.Op, 0, replicaReadOps*len(idx))
	for _, i := range idx {
		ops = append(ops, s.replicaReads(ws[i].Path, ws[i].Root)...)
	}
	resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, err
	}
	states := make([]replicaState, len(idx))
	for k := range idx {
		if err := s.parseReplicaState(&states[k], resp.Responses[replicaReadOps*k:replicaReadOps*(k+1)], resp.Header.Revision); err != nil {
			return nil, err
		}
	}
	return states, nil
}

// replicaReads are the reads of one destination's state.
func (s *Store) replicaReads(path, root string) []clientv3.Op {
	return []clientv3.Op{
		clientv3.OpGet(s.kvKey(path)),
		clientv3.OpGet(s.histPrefix(path), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)),
		clientv3.OpGet(s.appliedKey(path)),
		clientv3.OpGet(s.ownedKey(root)),
	}
}

// parseReplicaState fills st from the responses of replicaReads, or of
// their first pruneReadOps.
func (s *Store) parseReplicaState(st *replicaState, r []*etcdserverpb.ResponseOp, readRev int64) error {
	st.readRev = readRev
	if kvs := r[0].GetResponseRange().Kvs; len(kvs) > 0 {
		var err error
		if st.rec, err = decodeRecord(kvs[0].Value); err != nil {
			return err
		}
		st.exists, st.modRev = true, kvs[0].ModRevision
		st.rev = st.rec.revision(st.modRev)
	}
	for _, kv := range r[1].GetResponseRange().Kvs {
		if _, rev, ok := s.parseHistKey(string(kv.Key)); ok {
			st.history = append(st.history, rev)
		}
	}
	if kvs := r[2].GetResponseRange().Kvs; len(kvs) > 0 {
		st.hasApplied = json.Unmarshal(kvs[0].Value, &st.applied) == nil
		st.appliedMod = kvs[0].ModRevision
	}
	if len(r) < replicaReadOps {
		return nil // a prune reads no owner
	}
	if o, ok := ownerOf([][]*mvccpb.KeyValue{r[3].GetResponseRange().Kvs}); ok {
		st.owner, st.ownerMod = &o, r[3].GetResponseRange().Kvs[0].ModRevision
	}
	return nil
}

// ReplicaTarget is a destination a source maps to: its path and the root
// its rule owns.
type ReplicaTarget struct{ Path, Root string }

// ReplicateFrom reads sources and, in the same transaction when they fit,
// the state of targets; build turns the sources into destination writes,
// which are then applied as by ApplyReplicas. One round trip fewer than
// ReadSources followed by ApplyReplicas: the replicator's hot path.
func (s *Store) ReplicateFrom(ctx context.Context, sources []string, targets []ReplicaTarget, build func(SourceState) []ReplicaWrite) ([]ReplicaWrite, []ReplicaResult, error) {
	if len(sources)+replicaReadOps*len(targets) > maxTxnOps || len(targets) > replicaBatch {
		st, err := s.ReadSources(ctx, sources)
		if err != nil {
			return nil, nil, err
		}
		ws := build(st)
		res, err := s.ApplyReplicas(ctx, ws)
		return ws, res, err
	}
	ops := make([]clientv3.Op, 0, len(sources)+replicaReadOps*len(targets))
	for _, p := range sources {
		ops = append(ops, clientv3.OpGet(s.kvKey(p)))
	}
	for _, t := range targets {
		ops = append(ops, s.replicaReads(t.Path, t.Root)...)
	}
	resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, nil, fmt.Errorf("read sources: %w", err)
	}
	st := SourceState{Found: make(map[string]Entry, len(sources)), Absent: map[string]int64{}}
	if err := s.parseSources(&st, sources, resp.Responses, resp.Header.Revision); err != nil {
		return nil, nil, err
	}
	states := make(map[string]replicaState, len(targets))
	base := len(sources)
	for k, t := range targets {
		var rs replicaState
		if err := s.parseReplicaState(&rs, resp.Responses[base+replicaReadOps*k:base+replicaReadOps*(k+1)], resp.Header.Revision); err != nil {
			return nil, nil, err
		}
		states[t.Path] = rs
	}
	ws := build(st)
	if len(ws) == 0 {
		return nil, nil, nil
	}
	if err := s.checkReplicas(ws); err != nil {
		return nil, nil, err
	}
	idx := make([]int, len(ws))
	first := make([]replicaState, len(ws))
	for i, w := range ws {
		idx[i] = i
		rs, ok := states[w.Path]
		if !ok || w.Root == "" {
			first = nil // not read with the sources: read it now
			break
		}
		first[i] = rs
	}
	out := make([]ReplicaResult, len(ws))
	if len(s.replicaBatches(ws)) > 1 {
		res, err := s.ApplyReplicas(ctx, ws)
		return ws, res, err
	}
	return ws, out, s.applyBatchFrom(ctx, ws, idx, out, first)
}

// ReadSource returns the current version of path with its value, or
// found=false if it does not exist; either way, the revision of the read.
func (s *Store) ReadSource(ctx context.Context, path string) (e Entry, found bool, readRev int64, err error) {
	resp, err := s.cli.Get(ctx, s.kvKey(path))
	if err != nil {
		return Entry{}, false, 0, fmt.Errorf("read %s: %w", path, err)
	}
	if len(resp.Kvs) == 0 {
		return Entry{}, false, resp.Header.Revision, nil
	}
	kv := resp.Kvs[0]
	r, err := decodeRecord(kv.Value)
	if err != nil {
		return Entry{}, false, 0, fmt.Errorf("read %s: %w", path, err)
	}
	e = r.entry(path, r.revision(kv.ModRevision))
	if e.Value, err = s.open(path, r); err != nil {
		return Entry{}, false, 0, err
	}
	return e, true, resp.Header.Revision, nil
}

// Batching of prunes: a pruned copy takes three reads (value, history
// keys, applied record), two compares and up to replicaWriteOpts
// operations (delete the value, archive it, trim one old version, delete
// the applied record), so 32 fit one transaction of etcd's maxTxnOps.
const (
	pruneReadOps = 3
	pruneBatch   = maxTxnOps / replicaWriteOpts
)

// PruneDestinations deletes, as the author, every value at or below roots
// that rule wrote, with its applied record; `graft unshare` calls it after
// the rule is gone. Values others wrote since stay, and so do their
// applied records if another rule wrote them. Copies go in batched
// transactions, several at once, each guarded by the revisions it read,
// so that a write racing the prune is read and decided again. It returns
// how many values it deleted.
func (s *Store) PruneDestinations(ctx context.Context, roots []string, rule, author string) (int, error) {
	applied, err := s.AppliedUnderAll(ctx, roots)
	if err != nil {
		return 0, err
	}
	paths := make([]string, 0, len(applied))
	for p, a := range applied {
		if a.Rule == rule {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	var batches [][]string
	for len(paths) > 0 {
		n := min(len(paths), pruneBatch)
		batches = append(batches, paths[:n])
		paths = paths[n:]
	}
	var (
		mu     sync.Mutex
		pruned int
	)
	err = inParallel(ctx, batches, func(ctx context.Context, batch []string) error {
		n, err := s.pruneBatch(ctx, batch, rule, author)
		mu.Lock()
		pruned += n
		mu.Unlock()
		return err
	})
	return pruned, err
}

// pruneState is what one copy looks like before a prune batch deletes it.
type pruneState struct {
	current
	applied    Applied
	appliedMod int64
}

// pruneBatch prunes paths in one transaction, or in halves when their
// values would make it larger than an etcd request may be.
func (s *Store) pruneBatch(ctx context.Context, paths []string, rule, author string) (int, error) {
	for attempt := range maxWriteAttempts {
		if attempt > 0 {
			if err := backoff(ctx, attempt); err != nil {
				return 0, err
			}
		}
		states, err := s.readPrunes(ctx, paths)
		if err != nil {
			return 0, fmt.Errorf("prune: read destinations: %w", err)
		}
		var (
			cmps  []clientv3.Cmp
			ops   []clientv3.Op
			n     int
			bytes int
			now   = s.now().UnixNano()
		)
		for k, p := range paths {
			st := states[k]
			if st.appliedMod == 0 || st.applied.Rule != rule {
				continue // pruned already, or another rule wrote it since
			}
			cmps = append(cmps,
				clientv3.Compare(clientv3.ModRevision(s.kvKey(p)), "=", st.modRev),
				clientv3.Compare(clientv3.ModRevision(s.appliedKey(p)), "=", st.appliedMod))
			ops = append(ops, clientv3.OpDelete(s.appliedKey(p)))
			if o := st.rec.Origin; st.exists && o != nil && o.Kind == "replication" && o.RuleID == rule {
				ops = append(ops, clientv3.OpDelete(s.kvKey(p)))
				ops = append(ops, s.archiveTrim(p, st.current, now, true, author, replicaMaxTrim)...)
				bytes += len(st.rec.Cipher) + 2*len(p) + 512
				n++
			}
		}
		if bytes > replicaMaxBytes && len(paths) > 1 {
			half := len(paths) / 2
			a, err := s.pruneBatch(ctx, paths[:half], rule, author)
			if err != nil {
				return a, err
			}
			b, err := s.pruneBatch(ctx, paths[half:], rule, author)
			return a + b, err
		}
		if len(ops) == 0 {
			return 0, nil
		}
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return 0, fmt.Errorf("prune: %w", err)
		}
		if resp.Succeeded {
			return n, nil
		}
	}
	return 0, fmt.Errorf("prune: %w; unshare again to finish", ErrContention)
}

// readPrunes reads, in one transaction, each path's current version,
// history keys and applied record.
func (s *Store) readPrunes(ctx context.Context, paths []string) ([]pruneState, error) {
	ops := make([]clientv3.Op, 0, pruneReadOps*len(paths))
	for _, p := range paths {
		ops = append(ops, s.replicaReads(p, "")[:pruneReadOps]...)
	}
	resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, err
	}
	states := make([]pruneState, len(paths))
	for k := range paths {
		r := resp.Responses[pruneReadOps*k : pruneReadOps*(k+1)]
		var rs replicaState
		if err := s.parseReplicaState(&rs, r, resp.Header.Revision); err != nil {
			return nil, err
		}
		states[k] = pruneState{current: rs.current, applied: rs.applied, appliedMod: rs.appliedMod}
	}
	return states, nil
}

// ForgetAppliedAll removes the applied records at or below roots, many a
// transaction: `graft unshare --orphan` keeps the values as ordinary ones.
func (s *Store) ForgetAppliedAll(ctx context.Context, roots []string) error {
	applied, err := s.AppliedUnderAll(ctx, roots)
	if err != nil {
		return err
	}
	paths := make([]string, 0, len(applied))
	for p := range applied {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for len(paths) > 0 {
		n := min(len(paths), maxTxnOps)
		ops := make([]clientv3.Op, 0, n)
		for _, p := range paths[:n] {
			ops = append(ops, clientv3.OpDelete(s.appliedKey(p)))
		}
		paths = paths[n:]
		if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return err
		}
	}
	return nil
}

// SourceState is what ReadSources found.
type SourceState struct {
	// Found holds the paths that exist, with values.
	Found map[string]Entry
	// Absent holds the paths that do not exist, with the revision at which
	// each was read as absent.
	Absent map[string]int64
}

// ReadSources reads the current versions of paths, with values,
// in as few transactions as etcd allows.
func (s *Store) ReadSources(ctx context.Context, paths []string) (SourceState, error) {
	st := SourceState{Found: make(map[string]Entry, len(paths)), Absent: map[string]int64{}}
	for len(paths) > 0 {
		n := min(len(paths), maxTxnOps)
		chunk := paths[:n]
		paths = paths[n:]
		ops := make([]clientv3.Op, 0, n)
		for _, p := range chunk {
			ops = append(ops, clientv3.OpGet(s.kvKey(p)))
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return SourceState{}, fmt.Errorf("read sources: %w", err)
		}
		if err := s.parseSources(&st, chunk, resp.Responses, resp.Header.Revision); err != nil {
			return SourceState{}, err
		}
	}
	return st, nil
}

// parseSources fills st from the read of each source path
// at the start of r.
func (s *Store) parseSources(st *SourceState, paths []string, r []*etcdserverpb.ResponseOp, readRev int64) error {
	for i, p := range paths {
		kvs := r[i].GetResponseRange().Kvs
		if len(kvs) == 0 {
			st.Absent[p] = readRev
			continue
		}
		rec, err := decodeRecord(kvs[0].Value)
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		e := rec.entry(p, rec.revision(kvs[0].ModRevision))
		if e.Value, err = s.open(p, rec); err != nil {
			return err
		}
		st.Found[p] = e
	}
	return nil
}
