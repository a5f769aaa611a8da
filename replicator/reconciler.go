package replicator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/graft-sh/graft/internal/retry"
	"github.com/graft-sh/graft/store"
)

// DefaultReconcileInterval is how often the reconciler compares every rule's
// sources and destinations when nothing else prompts it.
const DefaultReconcileInterval = 5 * time.Minute

// Reconcile brings every destination of rule up to date with its sources:
// it writes missing and stale destinations and deletes orphaned ones (those
// whose source is gone, unless the rule retains them). It returns how many
// destinations it changed. With repair set, each change is counted and
// logged as a repair: the event path should have made it.
func (r *Replicator) Reconcile(ctx context.Context, rule Rule, repair bool) (int, error) {
	kind := writeFill
	if repair {
		kind = writeRepair
	}
	n, _, err := r.reconcile(ctx, rule, kind)
	return n, err
}

// reconcile is Reconcile that also returns how many source values the
// destinations hold copies of afterwards.
func (r *Replicator) reconcile(ctx context.Context, rule Rule, kind writeKind) (changed, mirrored int, err error) {
	var relayed, progress int64
	if kind == writeRepair {
		// Read before the sources: a change committed after this the
		// relay has not published yet either, and one published after
		// the applier's progress no replicator has handled yet.
		if relayed, err = relayCursor(ctx, r.cfg.Store); err != nil {
			return 0, 0, err
		}
		progress = r.appliedThrough(ctx, relayed)
	}
	entries, readRev, err := r.cfg.Store.ReadTree(ctx, rule.Source)
	var unreadable *store.UnreadableError
	if errors.As(err, &unreadable) {
		// Copy what can be read; leave the copies of what cannot alone
		// (they are not orphans) and report it after.
		defer func() {
			if err == nil {
				err = fmt.Errorf("rule %s: %w", rule.ID, unreadable)
			}
		}()
	} else if err != nil {
		return 0, 0, err
	}
	skip := map[string]bool{}
	if unreadable != nil {
		for _, p := range unreadable.Paths {
			skip[p] = true
		}
	}
	mirrored = len(entries) * len(rule.Destinations)
	found := make(map[string]store.Entry, len(entries))
	for _, e := range entries {
		found[e.Path] = e
	}
	// One read of every destination's applied records, many destinations
	// a round trip: a rule may have a hundred thousand.
	applied, err := r.cfg.Store.AppliedUnderAll(ctx, rule.Destinations)
	if err != nil {
		return 0, 0, err
	}
	var ws []store.ReplicaWrite
	for _, d := range rule.Destinations {
		for _, e := range entries {
			dest, ok := rule.Map(e.Path, d)
			if !ok {
				continue
			}
			if a, ok := applied[dest]; ok && a.Rule == rule.ID && a.SourceRevision >= e.Revision {
				continue
			}
			ws = append(ws, store.ReplicaWrite{Path: dest, Root: d, Rule: rule.ID, Source: e.Path,
				SourceRevision: e.Revision, SourceTime: e.Time.UnixNano(), Value: e.Value})
		}
	}
	if rule.OnDelete != OnDeleteRetain {
		roots := make(map[string]bool, len(rule.Destinations))
		for _, d := range rule.Destinations {
			roots[d] = true
		}
		for dest, a := range applied {
			if a.Rule != rule.ID || a.Deleted {
				continue
			}
			d, ok := rootOf(dest, roots)
			if !ok {
				continue
			}
			src := rule.Source + strings.TrimPrefix(dest, d)
			if _, ok := found[src]; ok || skip[src] || a.SourceRevision >= readRev {
				continue
			}
			ws = append(ws, store.ReplicaWrite{Path: dest, Root: d, Rule: rule.ID, Source: src, SourceRevision: readRev, Delete: true})
		}
	}
	if len(ws) == 0 {
		return 0, mirrored, nil
	}
	res, err := r.cfg.Store.ApplyReplicas(ctx, ws)
	if err != nil {
		return 0, 0, err
	}
	var late func(i int) bool
	if kind == writeRepair && relayed > 0 {
		if late, err = r.lateWrites(ctx, ws, res, progress); err != nil {
			return 0, 0, err
		}
	}
	return r.observe(ws, res, kind, late), mirrored, nil
}

// lateWrites tells which of the writes a repair pass made copied a change
// the event path had yet to apply (after applied, the applier's progress):
// late, not missed. A deletion's change is when its source was deleted,
// which the write does not carry (it holds the revision the source was
// read absent at): that is read from the source's history.
func (r *Replicator) lateWrites(ctx context.Context, ws []store.ReplicaWrite, res []store.ReplicaResult, applied int64) (func(i int) bool, error) {
	var gone []string
	for i, w := range ws {
		if w.Delete && res[i].Outcome == store.ReplicaDeleted {
			gone = append(gone, w.Source)
		}
	}
	var deletedAt map[string]int64
	if len(gone) > 0 {
		var err error
		if deletedAt, err = r.cfg.Store.DeletedAt(ctx, gone); err != nil {
			return nil, err
		}
	}
	return func(i int) bool {
		if ws[i].Delete {
			return deletedAt[ws[i].Source] > applied
		}
		return ws[i].SourceRevision > applied
	}, nil
}

// appliedThrough is the applier's progress: the revision up to which
// every change the relay published (up to relayed, its cursor) has been
// handled by a replicator, applied or parked. It is relayed when the
// shared consumer has nothing pending, else just before the change of its
// oldest unacknowledged event. Without a consumer to ask it is relayed,
// as if every published change had been applied: a repair pass then
// counts what it cannot tell apart.
func (r *Replicator) appliedThrough(ctx context.Context, relayed int64) int64 {
	if relayed == 0 {
		return 0
	}
	progress := func() (int64, error) {
		stream, err := r.cfg.JetStream.Stream(ctx, r.cfg.Stream.Name)
		if err != nil {
			return 0, err
		}
		cons, err := stream.Consumer(ctx, r.cfg.Consumer)
		if err != nil {
			return 0, err
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return 0, err
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			return relayed, nil
		}
		// Events are in revision order in the stream, and every one
		// up to the ack floor is acknowledged.
		m, err := stream.GetMsg(ctx, info.AckFloor.Stream+1)
		if err != nil {
			return 0, err
		}
		var ev Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			return 0, err
		}
		return min(relayed, ev.Revision-1), nil
	}
	applied, err := progress()
	if err != nil {
		r.log.Debug("reading the applier's progress failed; counting every change the relay published as applied", "err", err)
		return relayed
	}
	return applied
}

// relayCursor is the revision up to which the relay has published
// changes as events (its saved cursor), or 0 when no relay has run.
func relayCursor(ctx context.Context, s *store.Store) (int64, error) {
	rec, err := store.NewRecords[int64](s, store.SpaceRelay).Get(ctx, cursorKey)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the relay's cursor: %w", err)
	}
	return rec.Value, nil
}

// rootOf returns the root among roots that holds dest (dest itself or its
// nearest ancestor there).
func rootOf(dest string, roots map[string]bool) (string, bool) {
	for _, a := range ancestors(dest) {
		if roots[a] {
			return a, true
		}
	}
	return "", false
}

// ReconcileAll reconciles every rule and returns the number of
// destinations it changed; with repair set each counts as a repair.
func (r *Replicator) ReconcileAll(ctx context.Context, repair bool) (int, error) {
	total := 0
	var errs []error
	for _, rule := range r.cfg.Rules.Index().Rules() {
		n, err := r.Reconcile(ctx, rule, repair)
		total += n
		if err != nil {
			errs = append(errs, fmt.Errorf("rule %s: %w", rule.ID, err))
		}
	}
	return total, errors.Join(errs...)
}

// ReconcilerConfig configures RunReconciler.
type ReconcilerConfig struct {
	Interval time.Duration
	// Identities, if set, returns the application names that have an
	// identity (graftd: the app:<name> principals of its tokens). The
	// start pass registers those graft does not know yet, so that pattern
	// rules reach applications whose tokens predate the registry.
	Identities func(ctx context.Context) ([]string, error)
}

// reconcileKey is the record in store.SpaceReconcile where anyone asks the
// reconciling graftd, on whichever replica it runs, for a pass now; its
// value says why.
const reconcileKey = "request"

func reconcileRequests(s *store.Store) *store.Records[string] {
	return store.NewRecords[string](s, store.SpaceReconcile)
}

// reconcileRequest is the write that asks for a reconcile pass; the relay
// commits it in the same transaction as the cursor move that needs it.
func reconcileRequest(s *store.Store, reason string) (store.Op, error) {
	return reconcileRequests(s).PutOp(reconcileKey, reason)
}

// RequestReconcile asks the reconciler for a full pass as soon as it can,
// on whichever graftd it runs.
func RequestReconcile(ctx context.Context, s *store.Store, reason string) error {
	if _, err := reconcileRequests(s).Put(ctx, reconcileKey, reason); err != nil {
		return fmt.Errorf("request a reconcile: %w", err)
	}
	return nil
}

// RunReconciler reconciles on one graftd at a time (an etcd election): at
// start, after every rule change, on every RequestReconcile and every
// cfg.Interval.
func (r *Replicator) RunReconciler(ctx context.Context, cfg ReconcilerConfig) error {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultReconcileInterval
	}
	retry.Forever(ctx, r.log, "reconciling", 100*time.Millisecond, 5*time.Second, func(ctx context.Context) error {
		return r.cfg.Store.Lead(ctx, store.ElectionReconciler, "reconciler", 5*time.Second, func(ctx context.Context, _ *store.Leader) error {
			return r.leadReconciler(ctx, cfg)
		})
	})
	return nil
}

func (r *Replicator) leadReconciler(ctx context.Context, cfg ReconcilerConfig) error {
	select {
	case <-r.cfg.Rules.Loaded():
	case <-ctx.Done():
		return nil
	}
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	// After a rule change the pass fills new rules (should their creator
	// have failed to) and is not a repair; the others are.
	pass := func(why string) {
		start := time.Now()
		// Applications that pattern rules missed first (their registrar
		// died, or a destination held values); the pass then fills them.
		if added, err := r.expandAll(ctx); err != nil && ctx.Err() == nil {
			r.log.Error("giving applications their pattern destinations failed; the next pass retries", "why", why, "added", added, "err", err)
		} else if added > 0 {
			r.log.Info("gave applications their pattern destinations", "why", why, "added", added)
		}
		if n, err := r.finishUnshares(ctx, unshareGrace); err != nil && ctx.Err() == nil {
			r.log.Error("finishing interrupted unshares failed; the next pass retries", "why", why, "finished", n, "err", err)
		}
		if why == "applications changed" {
			return // what changed in the rules is a pass of its own
		}
		n, err := r.ReconcileAll(ctx, why != "rules changed")
		if err != nil && ctx.Err() == nil {
			r.log.Error("reconcile pass failed; the next one retries", "why", why, "repairs", n, "err", err)
			return
		}
		r.log.Debug("reconcile pass", "why", why, "repairs", n, "took", time.Since(start))
	}
	// Requests made before the start pass are answered by it; watch for
	// the ones after.
	reqs := reconcileRequests(r.cfg.Store)
	_, rev, err := reqs.List(ctx)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	requests := reqs.Watch(wctx, rev)
	if cfg.Identities != nil {
		if names, err := cfg.Identities(ctx); err != nil {
			r.log.Warn("reading application identities failed; their applications appear when they next authenticate", "err", err)
		} else if n, err := r.registerApps(ctx, names, "token"); err != nil {
			r.log.Warn("registering applications with identities failed; they appear when they next authenticate", "err", err)
		} else if n > 0 {
			r.log.Info("registered applications that had identities", "apps", n)
		}
	}
	// The start pass covers every change made before it: a signal still
	// pending from one would only run the same pass again (and, coming
	// late, copy as a fill what a later pass should count as a repair).
	for _, ch := range []<-chan struct{}{r.cfg.Rules.Changed(), r.apps.changed} {
		select {
		case <-ch:
		default:
		}
	}
	pass("start")
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.cfg.Rules.Changed():
			pass("rules changed")
		case <-r.apps.changed:
			pass("applications changed")
		case batch, ok := <-requests:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("the watch of reconcile requests ended")
			}
			for _, req := range batch {
				r.log.Info("reconciling on request", "reason", req.Value)
			}
			if len(batch) > 0 {
				pass("requested")
			}
		case <-tick.C:
			pass("interval")
		}
	}
}
