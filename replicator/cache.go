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
	"time"

	"github.com/graft-sh/graft/internal/retry"
	"github.com/graft-sh/graft/store"
)

// RuleStore is where rules live.
type RuleStore interface {
	ListRules(ctx context.Context) ([]store.RuleRecord, int64, error)
	WatchRules(ctx context.Context, after int64) <-chan struct{}
}

// Rules is an in-memory index of the stored rules that a store watch keeps
// current on every replica.
type Rules struct {
	store  RuleStore
	log    *slog.Logger
	cur    atomic.Pointer[Index]
	loaded chan struct{}
	once   sync.Once

	mu  sync.Mutex
	rev int64
	fp  [sha256.Size]byte // of the rules in cur
	// changed receives a signal after every change, for the reconciler.
	changed chan struct{}
}

// NewRules returns an empty index; Run fills it and keeps it current.
func NewRules(s RuleStore, log *slog.Logger) *Rules {
	if log == nil {
		log = slog.Default()
	}
	r := &Rules{store: s, log: log, loaded: make(chan struct{}), changed: make(chan struct{}, 1)}
	r.cur.Store(NewIndex(nil))
	return r
}

// Index returns the current index.
func (r *Rules) Index() *Index { return r.cur.Load() }

// Loaded is closed once the rules have been read.
func (r *Rules) Loaded() <-chan struct{} { return r.loaded }

// Changed signals (coalesced) after the rules change.
func (r *Rules) Changed() <-chan struct{} { return r.changed }

// Run loads the rules and follows their changes until ctx ends.
func (r *Rules) Run(ctx context.Context) error {
	retry.Forever(ctx, r.log, "loading replication rules", 50*time.Millisecond, 2*time.Second, func(ctx context.Context) error {
		rev, err := r.load(ctx)
		if err != nil {
			return err
		}
		for range r.store.WatchRules(ctx, rev) {
			if _, err := r.load(ctx); err != nil {
				return err
			}
		}
		return nil
	})
	return nil
}

// Refresh reads the rules again, so a change made by this replica applies
// before its caller is answered.
func (r *Rules) Refresh(ctx context.Context) error {
	_, err := r.load(ctx)
	return err
}

func (r *Rules) load(ctx context.Context) (int64, error) {
	recs, rev, err := r.store.ListRules(ctx)
	if err != nil {
		return 0, err
	}
	rules := make([]Rule, 0, len(recs))
	for _, rec := range recs {
		rule, err := decodeRule(rec)
		if err != nil {
			r.log.Error("ignoring a stored rule that does not decode", "rule", rec.ID, "err", err)
			continue
		}
		rules = append(rules, rule)
	}
	fp := fingerprint(recs)
	r.mu.Lock()
	changed := false
	if rev > r.rev {
		changed = fp != r.fp
		if changed {
			r.cur.Store(NewIndex(rules))
			r.fp = fp
		}
		r.rev = rev
	}
	r.mu.Unlock()
	first := false
	r.once.Do(func() { close(r.loaded); first = true })
	// The first load is what the reconciler's start pass reads; after
	// that, only a different set of rules is news (a Refresh and the
	// watch often read the same change).
	if changed && !first {
		select {
		case r.changed <- struct{}{}:
		default:
		}
	}
	return rev, nil
}

// fingerprint identifies a set of rule records (ListRules sorts them).
func fingerprint(recs []store.RuleRecord) [sha256.Size]byte {
	h := sha256.New()
	for _, rec := range recs {
		fmt.Fprintf(h, "%d:%s%d:", len(rec.ID), rec.ID, len(rec.Data))
		h.Write(rec.Data)
	}
	var fp [sha256.Size]byte
	h.Sum(fp[:0])
	return fp
}

func decodeRule(rec store.RuleRecord) (Rule, error) {
	var rule Rule
	if err := json.Unmarshal(rec.Data, &rule); err != nil {
		return Rule{}, err
	}
	if rule.ID != rec.ID {
		return Rule{}, errors.New("id does not match its key")
	}
	return rule, nil
}

// record encodes a rule for the store, with the destinations it owns.
func record(r Rule) (store.RuleRecord, error) {
	data, err := json.Marshal(r)
	if err != nil {
		return store.RuleRecord{}, err
	}
	rec := store.RuleRecord{ID: r.ID, Data: data}
	for _, d := range r.Destinations {
		rec.Owners = append(rec.Owners, store.Owner{Rule: r.ID, Source: r.Source, SourceRoot: r.Source, Root: d})
	}
	return rec, nil
}
