package replicator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/graft-sh/graft/internal/snapshot"
	"github.com/graft-sh/graft/store"
)

// App is an application graft knows. An application appears when an
// identity for app:<name> is created (`graft token create app:<name>`) or
// first authenticates (a token made before graft kept applications, or a
// client certificate, which graftd never issues): from then on every
// pattern rule copies to its tree as well.
type App struct {
	Name string `json:"name"`
	// Since is when it appeared, Via how: "token" (created), or the
	// method it first authenticated with ("token-auth", "certificate").
	Since time.Time `json:"since"`
	Via   string    `json:"via"`
}

// App identities, as principals name them.
const appKind = "app:"

// AppName returns the application a principal is, if it is one.
func AppName(principal string) (string, bool) {
	name, ok := strings.CutPrefix(principal, appKind)
	return name, ok && name != ""
}

// apps are the applications graft knows: their records, a snapshot that
// answers "is this one new?" without reading etcd, and the names this
// replica has given their pattern destinations.
type apps struct {
	recs *store.Records[App]
	snap *snapshot.Snapshot[App]
	done sync.Map // name → struct{}: registered and expanded here
	// changed signals (coalesced) when the snapshot changes, for the
	// reconciler; the replicator's Run runs the snapshot.
	changed chan struct{}
}

func newApps(s *store.Store, log *slog.Logger) *apps {
	a := &apps{recs: store.NewRecords[App](s, store.SpaceApps), changed: make(chan struct{}, 1)}
	a.snap, _ = snapshot.New(snapshot.Config[App]{Name: "applications", Source: a.recs, Logger: log,
		OnChange: func(int64) {
			select {
			case a.changed <- struct{}{}:
			default:
			}
		}})
	return a
}

// Apps returns the applications graft knows, by name.
func (r *Replicator) Apps(ctx context.Context) ([]App, error) {
	items, _, err := r.apps.recs.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list applications: %w", err)
	}
	out := make([]App, len(items))
	for i, it := range items {
		out[i] = it.Value
	}
	return out, nil
}

// AppSeen registers application name if graft did not know it, and
// before it returns gives the application the destinations of every
// pattern rule, filled: a new application's first request finds its
// copies. via says what made it known. For an application already known
// it costs a map lookup.
func (r *Replicator) AppSeen(ctx context.Context, name, via string) error {
	if _, ok := r.apps.done.Load(name); ok {
		return nil
	}
	if _, ok := r.apps.snap.Get(name); ok {
		r.apps.done.Store(name, struct{}{})
		return nil
	}
	if _, err := store.ParsePath(appsRoot + "/" + name); err != nil {
		return fmt.Errorf("application %q: %w", name, err)
	}
	created, err := r.apps.recs.Create(ctx, name, App{Name: name, Since: time.Now().UTC(), Via: via})
	if err != nil {
		return fmt.Errorf("register application %s: %w", name, err)
	}
	if created {
		r.log.Info("application appeared", "app", name, "via", via)
	}
	// Rules read after the application's record: a pattern rule created
	// after it saw it (its creation is conditional on no application
	// appearing while it was planned), and one created before is read here.
	if _, err := r.expandApp(ctx, name); err != nil {
		return err
	}
	r.apps.done.Store(name, struct{}{})
	return nil
}

// registerApps records those of names graft does not know yet, and
// returns how many; the reconciler's pass gives them their destinations.
func (r *Replicator) registerApps(ctx context.Context, names []string, via string) (int, error) {
	known, _, err := r.apps.recs.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("list applications: %w", err)
	}
	have := make(map[string]bool, len(known))
	for _, a := range known {
		have[a.Key] = true
	}
	n := 0
	for _, name := range names {
		if have[name] {
			continue
		}
		if _, err := store.ParsePath(appsRoot + "/" + name); err != nil {
			continue
		}
		have[name] = true
		created, err := r.apps.recs.Create(ctx, name, App{Name: name, Since: time.Now().UTC(), Via: via})
		if err != nil {
			return n, fmt.Errorf("register application %s: %w", name, err)
		}
		if created {
			n++
		}
	}
	return n, nil
}

// expandApp gives app the destinations of every pattern rule it lacks and
// fills them, and returns how many it added.
func (r *Replicator) expandApp(ctx context.Context, app string) (int, error) {
	recs, _, err := r.cfg.Rules.recs.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("application %s: read rules: %w", app, err)
	}
	var held []Rule
	var errs []error
	for _, rec := range recs {
		if len(rec.Value.Data.Patterns) == 0 || rec.Value.Deleting {
			continue
		}
		_, in, err := r.expandRule(ctx, rec.Key, app)
		if err != nil {
			errs = append(errs, err)
		}
		if len(in.Destinations) > 0 {
			held = append(held, in)
		}
	}
	// Fill what the rules hold in app, not only what this call claimed:
	// the reconciler may have claimed it a moment before and not filled
	// it yet, and the caller answers the application only after this.
	n, err := r.fillAdded(ctx, held)
	return n, errors.Join(append(errs, err)...)
}

// fillAdded makes the index know the destinations just added to rules (a
// change to their sources from now on reaches them) and fills them.
func (r *Replicator) fillAdded(ctx context.Context, added []Rule) (int, error) {
	if len(added) == 0 {
		return 0, nil
	}
	if err := r.cfg.Rules.RefreshApps(ctx); err != nil {
		r.log.Warn("reloading rules after an application appeared failed; the watch will apply it", "err", err)
	}
	n := 0
	var errs []error
	for _, rule := range added {
		if _, _, err := r.reconcile(ctx, rule, writeFill); err != nil {
			errs = append(errs, fmt.Errorf("rule %s: fill %s (the reconciler retries): %w", rule.ID, strings.Join(rule.Destinations, ", "), err))
		}
		n += len(rule.Destinations)
		r.log.Info("filled an application's pattern destinations", "rule", rule.ID, "source", rule.Source, "destinations", rule.Destinations)
	}
	return n, errors.Join(errs...)
}

// expandRule claims for rule id the destinations its patterns stand for
// in app that it does not have yet, together with the record of them. It
// returns the rule with just the destinations it claimed, and with all it
// holds in app (claimed now, by another replica, or at its creation). It claims nothing for a
// rule on its way out, and leaves out (and logs) a destination that holds
// values no rule wrote, or that another rule owns: the reconciler tries
// again on each pass, so removing the values is enough.
func (r *Replicator) expandRule(ctx context.Context, id, app string) (added, in Rule, err error) {
	rules := r.cfg.Rules
	key := appKey(id, app)
	err = store.RetryConflicts(ctx, "rule "+id+": add application "+app, func() (bool, error) {
		added, in = Rule{}, Rule{}
		rec, err := rules.recs.Get(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		if rec.Value.Deleting {
			return true, nil
		}
		rule := rec.Value.Data
		in = Rule{ID: id, Source: rule.Source, OnDelete: rule.OnDelete, Created: rule.Created}
		cur, err := rules.apps.Get(ctx, key)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return false, err
		}
		readRev, err := r.cfg.Store.Revision(ctx)
		if err != nil {
			return false, err
		}
		var todo []string
		for _, d := range rule.For(app) {
			if slices.Contains(cur.Value.Destinations, d) {
				in.Destinations = append(in.Destinations, d)
				continue
			}
			if !r.validator.allowed(d) {
				continue
			}
			if _, err := store.ParsePath(d); err != nil {
				continue
			}
			o, err := r.cfg.Store.Owner(ctx, d)
			if err == nil {
				if o.Rule != id {
					r.log.Warn("a pattern rule cannot take an application's destination: another rule owns it", "rule", id, "app", app, "destination", d, "owner", o.Rule)
				} else {
					in.Destinations = append(in.Destinations, d) // taken when the rule was created
				}
				continue
			}
			if !errors.Is(err, store.ErrNotFound) {
				return false, err
			}
			todo = append(todo, d)
		}
		full, err := r.cfg.Store.NonEmptyDestinations(ctx, todo, readRev)
		if err != nil {
			return false, err
		}
		for _, e := range full {
			r.log.Warn("a pattern rule leaves out an application's destination until it is empty", "rule", id, "app", app, "err", e)
			todo = slices.DeleteFunc(todo, func(d string) bool { return d == e.Dest })
		}
		if len(todo) == 0 {
			return true, nil
		}
		op, err := rules.apps.PutOp(key, appDestinations{App: app, Destinations: append(slices.Clip(cur.Value.Destinations), todo...)})
		if err != nil {
			return false, err
		}
		part := Rule{ID: id, Source: rule.Source, OnDelete: rule.OnDelete, Created: rule.Created, Destinations: todo}
		_, ok, err := r.cfg.Store.ClaimDestinationsWith(ctx, owners(part), readRev,
			[]store.Cond{rules.recs.At(id, rec.Revision), rules.apps.At(key, cur.Revision)}, op)
		if err != nil {
			return false, fmt.Errorf("rule %s: add application %s: %w", id, app, err)
		}
		if ok {
			added = part
			in.Destinations = append(in.Destinations, todo...)
		}
		return ok, nil
	})
	return added, in, err
}

// expandAll gives every known application the pattern destinations it
// lacks: the backstop behind AppSeen, run by the reconciler.
func (r *Replicator) expandAll(ctx context.Context) (int, error) {
	var patterns []Rule
	for _, rule := range r.cfg.Rules.Index().Rules() {
		if len(rule.Patterns) > 0 {
			patterns = append(patterns, rule)
		}
	}
	if len(patterns) == 0 {
		return 0, nil // nothing to expand: not even a read of the applications
	}
	known, _, err := r.apps.recs.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("list applications: %w", err)
	}
	if len(known) == 0 {
		return 0, nil
	}
	var added []Rule
	var errs []error
	for _, rule := range patterns {
		has := make(map[string]bool, len(rule.Destinations))
		for _, d := range rule.Destinations {
			has[d] = true
		}
		for _, a := range known {
			missing := slices.ContainsFunc(rule.For(a.Key), func(d string) bool { return !has[d] && r.validator.allowed(d) })
			if !missing {
				continue
			}
			part, _, err := r.expandRule(ctx, rule.ID, a.Key)
			if err != nil {
				errs = append(errs, err)
			}
			if len(part.Destinations) > 0 {
				added = append(added, part)
			}
		}
	}
	n, err := r.fillAdded(ctx, added)
	return n, errors.Join(append(errs, err)...)
}
