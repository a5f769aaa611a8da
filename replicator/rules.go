package replicator

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/graft-sh/graft/internal/snapshot"
	"github.com/graft-sh/graft/internal/task"
	"github.com/graft-sh/graft/store"
)

// storedRule is a rule as kept in the store's rules space. A rule with
// many destinations keeps them out of its record, in chunks in the
// rule-destinations space (written before the record, so a rule record
// that exists has all its chunks): one record must stay well inside
// etcd's request limit, and a rule may have a hundred thousand.
type storedRule struct {
	Data Rule `json:"data"`
	// Owners is what records written before chunking held beside the
	// rule; it is read for nothing and no longer written.
	Owners []store.Owner `json:"owners,omitempty"`
	// With Chunks > 0, Data has no destinations: they are in that many
	// chunk records, Count in all.
	Chunks int `json:"chunks,omitempty"`
	Count  int `json:"count,omitempty"`
	// Deleting is set first by an unshare, so that no application's
	// destinations are added to a rule on its way out.
	Deleting bool `json:"deleting,omitempty"`
}

// appDestinations are the destinations a pattern rule took in one
// application that appeared after the rule was created, kept in the
// rule-apps space as <rule id>/<app name>.
type appDestinations struct {
	App          string   `json:"app"`
	Destinations []string `json:"destinations"`
}

// appKey is the key of rule id's destinations in app.
func appKey(id, app string) string { return id + "/" + app }

// Chunking of destinations: a chunk record is about 50 KB, and a
// transaction of them stays under etcd's 1.5 MiB request limit.
const (
	inlineDestinations = 1000
	destinationsChunk  = 1000
	chunksPerTxn       = 16
)

// chunkKey is the key of chunk n of rule id's destinations.
func chunkKey(id string, n int) string { return fmt.Sprintf("%s/%06d", id, n) }

// split returns the record of rule and, for a wide one, its destination
// chunks.
func split(rule Rule) (storedRule, [][]string) {
	if len(rule.Destinations) <= inlineDestinations {
		return storedRule{Data: rule}, nil
	}
	var chunks [][]string
	for d := rule.Destinations; len(d) > 0; {
		n := min(len(d), destinationsChunk)
		chunks = append(chunks, d[:n])
		d = d[n:]
	}
	rec := storedRule{Data: rule, Chunks: len(chunks), Count: len(rule.Destinations)}
	rec.Data.Destinations = nil
	return rec, chunks
}

// join puts a rule's destinations back from its chunks (by key, in
// order) and the applications it took later, and reports whether the
// chunks are all there.
func join(rec storedRule, chunks [][]string, apps []appDestinations) (Rule, bool) {
	rule := rec.Data
	if rec.Chunks > 0 {
		if len(chunks) != rec.Chunks {
			return Rule{}, false
		}
		rule.Destinations = make([]string, 0, rec.Count)
		for _, c := range chunks {
			rule.Destinations = append(rule.Destinations, c...)
		}
		if len(rule.Destinations) != rec.Count {
			return Rule{}, false
		}
	}
	if len(apps) > 0 {
		rule.Destinations = slices.Clone(rule.Destinations)
		for _, a := range apps {
			rule.Destinations = append(rule.Destinations, a.Destinations...)
		}
	}
	return rule, true
}

// byRule groups records keyed <rule id>/<...> by rule id, in key order.
func byRule[T any](items []store.Record[T]) map[string][]T {
	out := map[string][]T{}
	for _, it := range items { // sorted by key
		id, _, _ := strings.Cut(it.Key, "/")
		out[id] = append(out[id], it.Value)
	}
	return out
}

// Rules keeps the replication rules: their records in the store, and an
// in-memory index of them that store watches keep current on every
// replica.
type Rules struct {
	store  *store.Store
	recs   *store.Records[storedRule]
	dests  *store.Records[[]string]
	apps   *store.Records[appDestinations]
	snap   *snapshot.Snapshot[storedRule]
	dsnap  *snapshot.Snapshot[[]string]
	asnap  *snapshot.Snapshot[appDestinations]
	log    *slog.Logger
	cur    atomic.Pointer[Index]
	loaded chan struct{}
	once   sync.Once

	mu    sync.Mutex
	fp    [sha256.Size]byte // of the rules in cur
	ready bool              // the first full load is in cur
	// have says which of the snapshots has called in: each calls on its
	// first load, and the index is built once all have.
	haveRules, haveDests, haveApps bool
	// changed receives a signal after every change, for the reconciler.
	changed chan struct{}
}

// NewRules returns an empty index; Run fills it and keeps it current.
func NewRules(s *store.Store, log *slog.Logger) *Rules {
	if log == nil {
		log = slog.Default()
	}
	r := &Rules{
		store:   s,
		recs:    store.NewRecords[storedRule](s, store.SpaceRules),
		dests:   store.NewRecords[[]string](s, store.SpaceRuleDestinations),
		apps:    store.NewRecords[appDestinations](s, store.SpaceRuleApps),
		log:     log,
		loaded:  make(chan struct{}),
		changed: make(chan struct{}, 1),
	}
	r.cur.Store(NewIndex(nil))
	// A snapshot's only failure is a missing source, which these are not.
	r.snap, _ = snapshot.New(snapshot.Config[storedRule]{Name: "replication rules", Source: r.recs, OnChange: func(int64) { r.install(&r.haveRules) }, Logger: log})
	r.dsnap, _ = snapshot.New(snapshot.Config[[]string]{Name: "replication rule destinations", Source: r.dests, OnChange: func(int64) { r.install(&r.haveDests) }, Logger: log})
	r.asnap, _ = snapshot.New(snapshot.Config[appDestinations]{Name: "replication rule applications", Source: r.apps, OnChange: func(int64) { r.install(&r.haveApps) }, Logger: log})
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
	return task.Run(ctx, 0,
		task.New("rule destinations", r.dsnap.Run),
		task.New("rule applications", r.asnap.Run),
		task.New("rules", r.snap.Run),
	)
}

// Refresh reads the rules again, so a change made by this replica applies
// before its caller is answered. Destinations first: a rule's chunks are
// written before its record.
func (r *Rules) Refresh(ctx context.Context) error {
	if err := r.dsnap.Refresh(ctx); err != nil {
		return err
	}
	if err := r.asnap.Refresh(ctx); err != nil {
		return err
	}
	return r.snap.Refresh(ctx)
}

// RefreshApps reads again only what pattern rules took in applications
// that appeared after them: the one part an application's arrival
// changes, and cheap beside the chunks of a wide rule.
func (r *Rules) RefreshApps(ctx context.Context) error { return r.asnap.Refresh(ctx) }

// install rebuilds the index from the stored rules and their chunks,
// once both snapshots have loaded (from marks which one calls); a rule
// whose chunks have not all arrived waits for them.
func (r *Rules) install(from *bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	*from = true
	if !r.haveRules || !r.haveDests || !r.haveApps {
		return
	}
	recs, _ := r.snap.Items()
	chunkItems, _ := r.dsnap.Items()
	chunks := byRule(chunkItems)
	appItems, _ := r.asnap.Items()
	apps := byRule(appItems)
	rules := make([]Rule, 0, len(recs))
	for _, it := range recs {
		if it.Value.Data.ID != it.Key {
			r.log.Error("ignoring a stored rule that does not decode", "rule", it.Key, "err", "id does not match its key")
			continue
		}
		rule, complete := join(it.Value, chunks[it.Key], apps[it.Key])
		if !complete {
			continue // its chunks are still on their way
		}
		rules = append(rules, rule)
	}
	fp := fingerprint(rules)
	first := !r.ready
	r.ready = true
	changed := fp != r.fp
	if changed {
		r.cur.Store(NewIndex(rules))
		r.fp = fp
	}
	r.once.Do(func() { close(r.loaded) })
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

// list returns every stored rule with its destinations and the revision
// of the rules read. The chunks and the applications' destinations are
// read after the rules, so every listed rule's chunks (written before its
// record) are among them.
func (r *Rules) list(ctx context.Context) ([]Rule, int64, error) {
	stored, rev, err := r.recs.List(ctx)
	if err != nil {
		return nil, 0, err
	}
	var chunks map[string][][]string
	var apps map[string][]appDestinations
	for _, s := range stored {
		if s.Value.Chunks > 0 && chunks == nil {
			items, _, err := r.dests.List(ctx)
			if err != nil {
				return nil, 0, err
			}
			chunks = byRule(items)
		}
		if len(s.Value.Data.Patterns) > 0 && apps == nil {
			items, _, err := r.apps.List(ctx)
			if err != nil {
				return nil, 0, err
			}
			apps = byRule(items)
		}
	}
	out := make([]Rule, 0, len(stored))
	for _, s := range stored {
		if rule, ok := join(s.Value, chunks[s.Key], apps[s.Key]); ok {
			out = append(out, rule)
		}
	}
	return out, rev, nil
}

// plan decides, from the rules that exist at revision rev, the rule to
// create with all its destinations, and the conditions that decision
// rests on besides the rules themselves; or refuses it.
type plan func(ctx context.Context, existing []Rule, rev int64) (Rule, []store.Cond, error)

// create stores a new rule and takes ownership of its destinations. The
// plan sees every existing rule and may refuse; it runs again if another
// rule changes meanwhile (or one of its conditions fails), so rules are
// validated one after another. A wide rule's destination chunks are
// written first, then the rule record; its destinations are then claimed
// in batches, each only if nothing was written below them since they were
// checked empty. If a claim fails the rule is removed again. A destination
// holding values that no rule wrote is refused with a store.NotEmptyError.
func (r *Rules) create(ctx context.Context, id string, decide plan) (created Rule, err error) {
	var wrote []string // the destinations whose chunks are stored
	defer func() {
		if err != nil && wrote != nil {
			r.dropChunks(context.WithoutCancel(ctx), id)
		}
	}()
	err = store.RetryConflicts(ctx, "create rule "+id, func() (bool, error) {
		existing, readRev, err := r.list(ctx)
		if err != nil {
			return false, err
		}
		rule, conds, err := decide(ctx, existing, readRev)
		if err != nil {
			return false, err
		}
		if err := r.store.CheckDestinationsEmpty(ctx, rule.Destinations, readRev); err != nil {
			return false, err
		}
		rec, chunks := split(rule)
		if len(chunks) > 0 && !slices.Equal(wrote, rule.Destinations) {
			if wrote != nil {
				if err := r.dropChunks(ctx, id); err != nil {
					return false, err
				}
			}
			wrote = nil
			if err := r.putChunks(ctx, id, chunks); err != nil {
				return false, err
			}
			wrote = rule.Destinations
		}
		if _, err := r.recs.Put(ctx, id, rec, append(conds, r.recs.Since(readRev))...); errors.Is(err, store.ErrRevisionChanged) {
			return false, nil // another rule changed: check again
		} else if err != nil {
			return false, fmt.Errorf("create rule %s: %w", id, err)
		}
		if _, err := r.store.ClaimDestinations(ctx, owners(rule), readRev); err != nil {
			r.drop(context.WithoutCancel(ctx), rule)
			wrote = nil // drop removed the chunks too
			return false, err
		}
		created = rule
		return true, nil
	})
	return created, err
}

// putChunks writes a rule's destination chunks, several a transaction.
func (r *Rules) putChunks(ctx context.Context, id string, chunks [][]string) error {
	for i := 0; i < len(chunks); i += chunksPerTxn {
		var ops []store.Op
		for n := i; n < min(i+chunksPerTxn, len(chunks)); n++ {
			op, err := r.dests.PutOp(chunkKey(id, n), chunks[n])
			if err != nil {
				return err
			}
			ops = append(ops, op)
		}
		if _, _, err := r.store.Commit(ctx, nil, ops...); err != nil {
			return fmt.Errorf("create rule %s: store its destinations: %w", id, err)
		}
	}
	return nil
}

// dropChunks removes a rule's destination chunks and what it took in
// applications, if any.
func (r *Rules) dropChunks(ctx context.Context, id string) error {
	if _, _, err := r.store.Commit(ctx, nil, r.dests.DeletePrefixOp(id+"/"), r.apps.DeletePrefixOp(id+"/")); err != nil {
		return fmt.Errorf("delete rule %s: its destinations: %w", id, err)
	}
	return nil
}

// get returns one stored rule with its destinations, or store.ErrNotFound.
func (r *Rules) get(ctx context.Context, id string) (Rule, error) {
	rec, err := r.recs.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Rule{}, fmt.Errorf("rule %s: %w (see `graft rules ls`)", id, store.ErrNotFound)
	}
	if err != nil {
		return Rule{}, fmt.Errorf("get rule %s: %w", id, err)
	}
	var chunks [][]string
	if rec.Value.Chunks > 0 {
		items, _, err := r.dests.ListPrefix(ctx, id+"/")
		if err != nil {
			return Rule{}, fmt.Errorf("get rule %s: %w", id, err)
		}
		chunks = byRule(items)[id]
	}
	var apps []appDestinations
	if len(rec.Value.Data.Patterns) > 0 {
		items, _, err := r.apps.ListPrefix(ctx, id+"/")
		if err != nil {
			return Rule{}, fmt.Errorf("get rule %s: %w", id, err)
		}
		apps = byRule(items)[id]
	}
	rule, ok := join(rec.Value, chunks, apps)
	if !ok {
		return Rule{}, fmt.Errorf("get rule %s: its destinations are incomplete (%d of %d chunks); delete it with `graft unshare %s`", id, len(chunks), rec.Value.Chunks, id)
	}
	return rule, nil
}

// delete removes a rule and its ownership of its destinations: the owner
// keys first, then the rule, then its chunks, so an interrupted delete
// leaves a rule that a second delete finishes. A pattern rule is first
// marked as going, so that no application that appears meanwhile adds a
// destination the delete would miss. The destinations' values stay; the
// caller prunes them if it wants.
func (r *Rules) delete(ctx context.Context, id string) (Rule, error) {
	err := store.RetryConflicts(ctx, "delete rule "+id, func() (bool, error) {
		rec, err := r.recs.Get(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			return false, fmt.Errorf("rule %s: %w (see `graft rules ls`)", id, store.ErrNotFound)
		}
		if err != nil {
			return false, fmt.Errorf("delete rule %s: %w", id, err)
		}
		if len(rec.Value.Data.Patterns) == 0 || rec.Value.Deleting {
			return true, nil
		}
		rec.Value.Deleting = true
		if _, err := r.recs.Put(ctx, id, rec.Value, r.recs.At(id, rec.Revision)); errors.Is(err, store.ErrRevisionChanged) {
			return false, nil
		} else if err != nil {
			return false, fmt.Errorf("delete rule %s: %w", id, err)
		}
		return true, nil
	})
	if err != nil {
		return Rule{}, err
	}
	rule, err := r.get(ctx, id)
	if err != nil {
		return Rule{}, err
	}
	if err := r.drop(ctx, rule); err != nil {
		return Rule{}, err
	}
	return rule, nil
}

// drop releases a rule's destinations and removes its record, its chunks
// and what it took in applications.
func (r *Rules) drop(ctx context.Context, rule Rule) error {
	if err := r.store.ReleaseDestinations(ctx, owners(rule)); err != nil {
		return err
	}
	if _, err := r.recs.Delete(ctx, rule.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("delete rule %s: %w", rule.ID, err)
	}
	return r.dropChunks(ctx, rule.ID)
}
