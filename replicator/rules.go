package replicator

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/graft-sh/graft/internal/snapshot"
	"github.com/graft-sh/graft/store"
)

// storedRule is a rule as kept in the store's rules space: the rule and
// the destination subtrees it owns.
type storedRule struct {
	Data   Rule          `json:"data"`
	Owners []store.Owner `json:"owners"`
}

// Rules keeps the replication rules: their records in the store, and an
// in-memory index of them that a store watch keeps current on every
// replica.
type Rules struct {
	store *store.Store
	recs  *store.Records[storedRule]
	snap  *snapshot.Snapshot[storedRule]
	log   *slog.Logger
	cur   atomic.Pointer[Index]

	mu     sync.Mutex
	fp     [sha256.Size]byte // of the rules in cur
	loaded bool
	// changed receives a signal after every change, for the reconciler.
	changed chan struct{}
}

// NewRules returns an empty index; Run fills it and keeps it current.
func NewRules(s *store.Store, log *slog.Logger) *Rules {
	if log == nil {
		log = slog.Default()
	}
	r := &Rules{store: s, recs: store.NewRecords[storedRule](s, store.SpaceRules), log: log, changed: make(chan struct{}, 1)}
	r.cur.Store(NewIndex(nil))
	// A snapshot's only failure is a missing source, which this is not.
	r.snap, _ = snapshot.New(snapshot.Config[storedRule]{Name: "replication rules", Source: r.recs, OnChange: r.install, Logger: log})
	return r
}

// Index returns the current index.
func (r *Rules) Index() *Index { return r.cur.Load() }

// Loaded is closed once the rules have been read.
func (r *Rules) Loaded() <-chan struct{} { return r.snap.Loaded() }

// Changed signals (coalesced) after the rules change.
func (r *Rules) Changed() <-chan struct{} { return r.changed }

// Run loads the rules and follows their changes until ctx ends.
func (r *Rules) Run(ctx context.Context) error { return r.snap.Run(ctx) }

// Refresh reads the rules again, so a change made by this replica applies
// before its caller is answered.
func (r *Rules) Refresh(ctx context.Context) error { return r.snap.Refresh(ctx) }

// install rebuilds the index from the stored rules.
func (r *Rules) install(items []snapshot.Item[storedRule], _ int64) {
	rules := make([]Rule, 0, len(items))
	for _, it := range items {
		if it.Value.Data.ID != it.Key {
			r.log.Error("ignoring a stored rule that does not decode", "rule", it.Key, "err", "id does not match its key")
			continue
		}
		rules = append(rules, it.Value.Data)
	}
	fp := fingerprint(rules)
	r.mu.Lock()
	first := !r.loaded
	r.loaded = true
	changed := fp != r.fp
	if changed {
		r.cur.Store(NewIndex(rules))
		r.fp = fp
	}
	r.mu.Unlock()
	// The first load is what the reconciler's start pass reads; after
	// that, only a different set of rules is news (a Refresh and the
	// watch often read the same change).
	if changed && !first {
		select {
		case r.changed <- struct{}{}:
		default:
		}
	}
}

// fingerprint identifies a set of rules (sorted by id).
func fingerprint(rules []Rule) [sha256.Size]byte {
	h := sha256.New()
	for _, rule := range rules {
		data, _ := json.Marshal(rule)
		fmt.Fprintf(h, "%d:%s%d:", len(rule.ID), rule.ID, len(data))
		h.Write(data)
	}
	var fp [sha256.Size]byte
	h.Sum(fp[:0])
	return fp
}

// owners are the destination subtrees a rule owns.
func owners(rule Rule) []store.Owner {
	out := make([]store.Owner, 0, len(rule.Destinations))
	for _, d := range rule.Destinations {
		out = append(out, store.Owner{Rule: rule.ID, Source: rule.Source, SourceRoot: rule.Source, Root: d})
	}
	return out
}

// create stores a new rule and takes ownership of its destinations. check
// sees every existing rule and may refuse; it runs again if another rule
// changes meanwhile, so rules are validated one after another. The rule is
// stored first; its destinations are then claimed in batches, each only if
// nothing was written below them since they were checked empty. If a
// claim fails the rule is removed again. A destination holding values that
// no rule wrote is refused with a store.NotEmptyError.
func (r *Rules) create(ctx context.Context, rule Rule, check func(existing []Rule) error) error {
	rec := storedRule{Data: rule, Owners: owners(rule)}
	return store.RetryConflicts(ctx, "create rule "+rule.ID, func() (bool, error) {
		stored, readRev, err := r.recs.List(ctx)
		if err != nil {
			return false, err
		}
		existing := make([]Rule, 0, len(stored))
		for _, s := range stored {
			existing = append(existing, s.Value.Data)
		}
		if err := check(existing); err != nil {
			return false, err
		}
		if err := r.store.CheckDestinationsEmpty(ctx, rule.Destinations, readRev); err != nil {
			return false, err
		}
		if _, err := r.recs.Put(ctx, rule.ID, rec, r.recs.Since(readRev)); errors.Is(err, store.ErrRevisionChanged) {
			return false, nil // another rule changed: check again
		} else if err != nil {
			return false, fmt.Errorf("create rule %s: %w", rule.ID, err)
		}
		if _, err := r.store.ClaimDestinations(ctx, rec.Owners, readRev); err != nil {
			r.drop(context.WithoutCancel(ctx), rec)
			return false, err
		}
		return true, nil
	})
}

// get returns one stored rule, or store.ErrNotFound.
func (r *Rules) get(ctx context.Context, id string) (storedRule, error) {
	rec, err := r.recs.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return storedRule{}, fmt.Errorf("rule %s: %w (see `graft rules ls`)", id, store.ErrNotFound)
	}
	if err != nil {
		return storedRule{}, fmt.Errorf("get rule %s: %w", id, err)
	}
	return rec.Value, nil
}

// delete removes a rule and its ownership of its destinations: the owner
// keys first, then the rule, so an interrupted delete leaves a rule that
// a second delete finishes. The destinations' values stay; the caller
// prunes them if it wants.
func (r *Rules) delete(ctx context.Context, id string) (Rule, error) {
	rec, err := r.get(ctx, id)
	if err != nil {
		return Rule{}, err
	}
	if err := r.drop(ctx, rec); err != nil {
		return Rule{}, err
	}
	return rec.Data, nil
}

// drop releases a rule's destinations and removes its record.
func (r *Rules) drop(ctx context.Context, rec storedRule) error {
	if err := r.store.ReleaseDestinations(ctx, rec.Owners); err != nil {
		return err
	}
	if _, err := r.recs.Delete(ctx, rec.Data.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("delete rule %s: %w", rec.Data.ID, err)
	}
	return nil
}
