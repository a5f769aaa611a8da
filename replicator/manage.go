package replicator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/graft-sh/graft/store"
)

// Share creates a rule copying source to dests and fills the destinations
// before it returns. It returns the rule and how many values the
// destinations then hold copies of. A pattern destination (/app/+/...)
// stands for that path in every application known now, and in each that
// appears later (see AppSeen).
//
// A share that repeats an existing rule exactly (source, destinations and
// on-delete) answers with that rule, filled again, rather than failing on
// its own destinations: scripts and tours may share twice. One that
// differs is refused as any overlapping rule is.
func (r *Replicator) Share(ctx context.Context, author, source string, dests []string, onDelete string) (Rule, int, error) {
	if onDelete == "" {
		onDelete = OnDeleteDelete
	}
	concrete, patterns := patternsOf(dests)
	given := Rule{ID: NewRuleID(), Source: source, Destinations: concrete, Patterns: patterns, OnDelete: onDelete, Author: author, Created: time.Now().UTC()}
	// Check the rule's own shape before touching the store.
	if err := r.validator.Check(nil, given); err != nil {
		return Rule{}, 0, err
	}
	rule, err := r.cfg.Rules.create(ctx, given.ID, func(ctx context.Context, existing []Rule, _ int64) (Rule, []store.Cond, error) {
		for _, e := range existing {
			if e.sameShare(given) {
				return Rule{}, nil, &alreadySharedError{rule: e}
			}
		}
		if err := r.validator.Check(existing, given); err != nil {
			return Rule{}, nil, err
		}
		if len(patterns) == 0 {
			return given, nil, nil
		}
		// The applications known now, and a condition that no other
		// appears before the rule is stored: one that does is read on the
		// next try, or reads the rule when it registers.
		known, appsRev, err := r.apps.recs.List(ctx)
		if err != nil {
			return Rule{}, nil, fmt.Errorf("list applications: %w", err)
		}
		rule := given
		rule.Destinations = slices.Clone(concrete)
		for _, a := range known {
			for _, d := range rule.For(a.Key) {
				if _, err := store.ParsePath(d); err == nil && r.validator.allowed(d) {
					rule.Destinations = append(rule.Destinations, d)
				}
			}
		}
		return rule, []store.Cond{r.apps.recs.Since(appsRev)}, nil
	})
	var same *alreadySharedError
	if errors.As(err, &same) {
		rule = same.rule
		// Fill again, as the first share did: the answer is the same.
		_, n, err := r.reconcile(ctx, rule, writeFill)
		if err != nil {
			return rule, n, &IncompleteError{Msg: fmt.Sprintf("rule %s already shares this, but filling its destinations failed (the reconciler retries): %v", rule.ID, err), Err: err}
		}
		r.log.Info("share repeats a rule", "rule", rule.ID, "source", rule.Source, "author", author, "filled", n)
		return rule, n, nil
	}
	if err != nil {
		return Rule{}, 0, err
	}
	if err := r.cfg.Rules.Refresh(ctx); err != nil {
		r.log.Warn("reloading rules after share failed; the watch will apply it", "err", err)
	}
	_, n, err := r.reconcile(ctx, rule, writeFill)
	if err != nil {
		// The rule stands; the reconciler finishes filling it.
		return rule, n, &IncompleteError{Msg: fmt.Sprintf("rule %s created, but filling its destinations failed (the reconciler retries): %v", rule.ID, err), Err: err}
	}
	r.log.Info("rule created", "rule", rule.ID, "source", rule.Source, "destinations", len(rule.Destinations), "patterns", rule.Patterns, "author", author, "filled", n)
	return rule, n, nil
}

// Unshare deletes a rule. Unless orphan is set it deletes the values the
// rule wrote; with orphan they stay, as ordinary values.
//
// It first records the unshare (the unshares space), then drops the rule
// and cleans its destinations, and removes the record only when that is
// done: an unshare interrupted anywhere is finished by the next unshare
// of the same rule, or by the reconciler (finishUnshares).
func (r *Replicator) Unshare(ctx context.Context, author, id string, orphan bool) (Rule, int, error) {
	pending := unshares(r.cfg.Store)
	prev, err := pending.Get(ctx, id)
	interrupted := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return Rule{}, 0, fmt.Errorf("delete rule %s: %w", id, err)
	}
	if interrupted {
		author, orphan = prev.Value.Author, prev.Value.Orphan
	} else if _, err := pending.Put(ctx, id, pendingUnshare{Author: author, Orphan: orphan, Since: time.Now().UTC()}); err != nil {
		return Rule{}, 0, fmt.Errorf("delete rule %s: %w", id, err)
	}
	rule, err := r.cfg.Rules.delete(ctx, id)
	var roots []string
	switch {
	case errors.Is(err, store.ErrNotFound) && interrupted:
		// Dropped by the unshare that was interrupted: what it had left
		// to clean is what the applied records still give the rule.
		rule = Rule{ID: id}
		if roots, err = r.cfg.Store.AppliedPathsOf(ctx, id); err != nil {
			return rule, 0, fmt.Errorf("delete rule %s: %w", id, err)
		}
	case err != nil:
		if !interrupted && errors.Is(err, store.ErrNotFound) {
			pending.Delete(context.WithoutCancel(ctx), id)
		}
		return Rule{}, 0, err
	default:
		roots = rule.Destinations
		if err := r.cfg.Rules.Refresh(ctx); err != nil {
			r.log.Warn("reloading rules after unshare failed; the watch will apply it", "err", err)
		}
	}
	pruned := 0
	if orphan {
		err = r.cfg.Store.ForgetAppliedAll(ctx, roots)
	} else {
		pruned, err = r.cfg.Store.PruneDestinations(ctx, roots, id, author)
	}
	if err != nil {
		return rule, pruned, &IncompleteError{Msg: fmt.Sprintf("rule %s deleted, but cleaning its destinations failed after %d copies: %v; unshare it again, or the reconciler, finishes it", id, pruned, err), Err: err}
	}
	if _, err := pending.Delete(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		r.log.Warn("removing the record of a finished unshare failed; the reconciler removes it", "rule", id, "err", err)
	}
	r.log.Info("rule deleted", "rule", id, "author", author, "orphan", orphan, "pruned", pruned, "finished_interrupted", interrupted)
	return rule, pruned, nil
}

// pendingUnshare is an unshare whose cleaning has not finished, kept in
// the unshares space by rule id.
type pendingUnshare struct {
	Author string    `json:"author"`
	Orphan bool      `json:"orphan,omitempty"`
	Since  time.Time `json:"since"`
}

func unshares(s *store.Store) *store.Records[pendingUnshare] {
	return store.NewRecords[pendingUnshare](s, store.SpaceUnshares)
}

// unshareGrace is how long the reconciler leaves an unshare to the call
// that made it before finishing it itself: a wide prune takes seconds.
const unshareGrace = time.Minute

// finishUnshares finishes every unshare recorded more than grace ago
// that is still pending (its graftd died, or its caller went away): the
// rule is dropped if it still stands, and its destinations cleaned.
func (r *Replicator) finishUnshares(ctx context.Context, grace time.Duration) (int, error) {
	items, _, err := unshares(r.cfg.Store).List(ctx)
	if err != nil {
		return 0, fmt.Errorf("list unshares: %w", err)
	}
	done := 0
	var errs []error
	for _, it := range items {
		if time.Since(it.Value.Since) < grace {
			continue
		}
		if _, n, err := r.Unshare(ctx, it.Value.Author, it.Key, it.Value.Orphan); err != nil {
			errs = append(errs, err)
		} else {
			done++
			r.log.Info("finished an interrupted unshare", "rule", it.Key, "pruned", n)
		}
	}
	return done, errors.Join(errs...)
}

// Rule returns a rule by id.
func (r *Replicator) Rule(ctx context.Context, id string) (Rule, error) {
	return r.cfg.Rules.get(ctx, id)
}

// Rules returns the rule index.
func (r *Replicator) Rules() *Index { return r.cfg.Rules.Index() }

// Status is how a path takes part in replication.
type Status struct {
	Path string
	// As a destination.
	Rule                  *Rule
	Source                string
	SourceRevision        int64
	AppliedSourceRevision int64
	Applied               time.Time
	DestinationRevision   int64
	InSync                bool
	// Lag is how long after the source change (or, for a copy of a value
	// older than its rule, after the rule's creation) the copy was made.
	Lag    time.Duration
	Parked *Parked
	// As a source.
	Feeds []Rule
}

// Status reports path's part in replication.
func (r *Replicator) Status(ctx context.Context, path string) (Status, error) {
	st := Status{Path: path, Feeds: r.cfg.Rules.Index().BySource(path)}
	owner, err := r.cfg.Store.Owner(ctx, path)
	if errors.Is(err, store.ErrNotFound) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	rule, err := r.Rule(ctx, owner.Rule)
	if err != nil {
		return st, err
	}
	st.Rule = &rule
	st.Source = rule.Source + strings.TrimPrefix(path, owner.Root)
	src, srcFound, _, err := r.cfg.Store.ReadSource(ctx, st.Source)
	unreadable := errors.Is(err, store.ErrDecrypt) // shown through its parked change
	if err != nil && !unreadable {
		return st, err
	}
	if srcFound {
		st.SourceRevision = src.Revision
	}
	a, err := r.cfg.Store.Applied(ctx, path)
	hasApplied := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return st, err
	}
	if hasApplied {
		st.AppliedSourceRevision = a.SourceRevision
		st.Applied = time.Unix(0, a.Time).UTC()
		if a.SourceTime > 0 {
			// A copy cannot lag behind a change made before its rule
			// existed: measure from the later of the two.
			from := max(a.SourceTime, rule.Created.UnixNano())
			st.Lag = max(time.Duration(a.Time-from), 0)
		}
	}
	dst, dstFound, _, err := r.cfg.Store.ReadSource(ctx, path)
	if err != nil {
		return st, err
	}
	if dstFound {
		st.DestinationRevision = dst.Revision
	}
	switch {
	case unreadable:
		st.InSync = false
	case srcFound:
		st.InSync = dstFound && hasApplied && a.SourceRevision >= src.Revision
	case rule.OnDelete == OnDeleteRetain:
		st.InSync = true
	default:
		st.InSync = !dstFound
	}
	parked, err := r.parked.get(ctx, st.Source)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return st, err
	}
	if err == nil {
		st.Parked = &parked
	}
	return st, nil
}

// CheckDelete refuses, with a *SourceInUseError, deleting a source that
// rules still copy: the delete guard of `graft rm` without --force.
func (r *Replicator) CheckDelete(path string) error {
	rules := r.cfg.Rules.Index().BySource(path)
	if len(rules) == 0 {
		return nil
	}
	e := &SourceInUseError{Path: path}
	for _, rule := range rules {
		for _, d := range rule.Destinations {
			if dest, ok := rule.Map(path, d); ok {
				e.Copies = append(e.Copies, fmt.Sprintf("%s (rule %s)", dest, rule.ID))
			}
		}
	}
	return e
}

// alreadySharedError stops the creation of a rule that an existing rule
// already is; Share answers with that rule.
type alreadySharedError struct{ rule Rule }

func (e *alreadySharedError) Error() string { return "rule " + e.rule.ID + " already shares this" }

// sameShare reports whether r is what a share of given would create:
// the same source, on-delete, patterns and given concrete destinations
// (r's destinations less what its patterns stand for).
func (r Rule) sameShare(given Rule) bool {
	if r.Source != given.Source || r.OnDelete != given.OnDelete {
		return false
	}
	sameSet := func(a, b []string) bool {
		a, b = slices.Clone(a), slices.Clone(b)
		slices.Sort(a)
		slices.Sort(b)
		return slices.Equal(slices.Compact(a), slices.Compact(b))
	}
	var concrete []string
	for _, d := range r.Destinations {
		if !slices.ContainsFunc(r.Patterns, func(p string) bool { return isExpansion(d, p) }) {
			concrete = append(concrete, d)
		}
	}
	return sameSet(r.Patterns, given.Patterns) && sameSet(concrete, given.Destinations)
}

// isExpansion reports whether d is what pattern p stands for in some
// application.
func isExpansion(d, p string) bool {
	app, ok := strings.CutPrefix(d, appsRoot+"/")
	if !ok {
		return false
	}
	name, _, _ := strings.Cut(app, "/")
	return name != "" && name != wildcard && expand(p, name) == d
}
