package acl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/graft-sh/graft/internal/snapshot"
	"github.com/graft-sh/graft/store"
)

// PolicyRecord is one role's access policy as stored: its YAML source and
// who wrote it. Records live in the store's policies space, keyed by role.
type PolicyRecord struct {
	Role    string    `json:"role"`
	YAML    string    `json:"yaml"`
	Author  string    `json:"author"`
	Updated time.Time `json:"updated"`
}

// EngineConfig configures an Engine.
type EngineConfig struct {
	Store  *store.Store
	Logger *slog.Logger
}

// Engine keeps the policies and decides access with them. It rebuilds its
// Authorizer whenever a policy changes on any replica, so a change takes
// effect everywhere within moments and without a restart. Writes (Put,
// Delete, InstallDefaults) go to the store and work without Run.
type Engine struct {
	recs *store.Records[PolicyRecord]
	snap *snapshot.Snapshot[PolicyRecord]
	log  *slog.Logger
	cur  atomic.Pointer[Authorizer]
}

// NewEngine returns an Engine that denies everything but root until Run
// has loaded the policies.
func NewEngine(cfg EngineConfig) (*Engine, error) {
	if cfg.Store == nil {
		return nil, errors.New("acl: EngineConfig.Store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	e := &Engine{recs: store.NewRecords[PolicyRecord](cfg.Store, store.SpacePolicies), log: cfg.Logger}
	empty, err := NewAuthorizer(nil)
	if err != nil {
		return nil, err
	}
	e.cur.Store(empty)
	e.snap, err = snapshot.New(snapshot.Config[PolicyRecord]{Name: "policies", Source: e.recs, OnChange: e.install, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	return e, nil
}

// install builds the authorizer of the policies read at rev.
func (e *Engine) install(int64) {
	items, _ := e.snap.Items()
	policies := make([]Policy, 0, len(items))
	for _, it := range items {
		p, err := ParsePolicy([]byte(it.Value.YAML))
		if err != nil {
			// Policies are validated when written; one that no longer
			// parses (written by another version) grants nothing.
			e.log.Error("ignoring a stored policy that does not parse", "role", it.Key, "err", err)
			continue
		}
		policies = append(policies, p)
	}
	a, err := NewAuthorizer(policies)
	if err != nil {
		e.log.Error("stored policies do not build an authorizer; keeping the previous one", "err", err)
		return
	}
	e.cur.Store(a)
}

// Loaded is closed once the policies have been read.
func (e *Engine) Loaded() <-chan struct{} { return e.snap.Loaded() }

// Run loads the policies and follows their changes until ctx ends.
func (e *Engine) Run(ctx context.Context) error { return e.snap.Run(ctx) }

// Refresh reads the policies again, so that every change committed before
// the call is in effect when it returns. graftd calls it after changing a
// policy, so `graft policy put` followed by `graft policy check` agree;
// other replicas learn of the change from the watch.
func (e *Engine) Refresh(ctx context.Context) error { return e.snap.Refresh(ctx) }

// Authorizer returns the authorizer built from the current policies.
func (e *Engine) Authorizer() *Authorizer { return e.cur.Load() }

// Decide decides with the current policies.
func (e *Engine) Decide(p Principal, act Action, path string) Decision {
	return e.cur.Load().Decide(p, act, path)
}

// MayBelow asks the current policies whether p may do act on some path at
// or below prefix (see Authorizer.MayBelow).
func (e *Engine) MayBelow(p Principal, act Action, prefix string) bool {
	return e.cur.Load().MayBelow(p, act, prefix)
}

// Reachable asks the current policies for the subtrees at or below prefix
// where p may do act (see Authorizer.Reachable).
func (e *Engine) Reachable(p Principal, act Action, prefix string) []string {
	return e.cur.Load().Reachable(p, act, prefix)
}

// Put creates or replaces a role's policy. Unless force is set, it refuses
// with a *LastAdminError to take admin on / away from the last policy that
// grants it.
func (e *Engine) Put(ctx context.Context, rec PolicyRecord, force bool) error {
	p, err := ParsePolicy([]byte(rec.YAML))
	if err != nil {
		return fmt.Errorf("put policy %s: %w", rec.Role, err)
	}
	return e.change(ctx, "put policy "+rec.Role, rec.Role, &p, force, func(conds []store.Cond) error {
		_, err := e.recs.Put(ctx, rec.Role, rec, conds...)
		return err
	})
}

// Get returns a role's policy as stored, or store.ErrNotFound.
func (e *Engine) Get(ctx context.Context, role string) (PolicyRecord, error) {
	rec, err := e.recs.Get(ctx, role)
	if err != nil {
		return PolicyRecord{}, fmt.Errorf("get policy %s: %w", role, err)
	}
	return rec.Value, nil
}

// List returns every policy as stored, sorted by role.
func (e *Engine) List(ctx context.Context) ([]PolicyRecord, error) {
	return e.recs.Values(ctx)
}

// Delete removes a role's policy, or returns store.ErrNotFound. Unless
// force is set, it refuses with a *LastAdminError to remove the last
// policy that grants admin on /.
func (e *Engine) Delete(ctx context.Context, role string, force bool) error {
	return e.change(ctx, "delete policy "+role, role, nil, force, func(conds []store.Cond) error {
		if _, err := e.recs.Get(ctx, role); err != nil {
			return err
		}
		_, err := e.recs.Delete(ctx, role, conds...)
		return err
	})
}

// change makes one change of role's policy to next (nil: deleted). Unless
// force is set it first checks, against the policies as stored, that some
// policy still grants admin on / afterwards if one did before, and commits
// only if no policy changed since that check.
func (e *Engine) change(ctx context.Context, what, role string, next *Policy, force bool, commit func(conds []store.Cond) error) error {
	if force {
		if err := commit(nil); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
	return store.RetryConflicts(ctx, what, func() (bool, error) {
		recs, rev, err := e.recs.List(ctx)
		if err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
		var before, after []Policy
		for _, r := range recs {
			p, err := ParsePolicy([]byte(r.Value.YAML))
			if err != nil {
				continue // grants nothing, as in the engine
			}
			before = append(before, p)
			if r.Key != role {
				after = append(after, p)
			}
		}
		if next != nil {
			after = append(after, *next)
		}
		if grantsAdmin(before) && !grantsAdmin(after) {
			return false, &LastAdminError{Role: role, Deleting: next == nil}
		}
		err = commit([]store.Cond{e.recs.Since(rev)})
		switch {
		case errors.Is(err, store.ErrRevisionChanged):
			return false, nil // a policy changed meanwhile: check again
		case err != nil:
			return false, fmt.Errorf("%s: %w", what, err)
		}
		return true, nil
	})
}

// grantsAdmin reports whether any of policies lets a holder of its role
// administer / (tokens, policies, the keyring).
func grantsAdmin(policies []Policy) bool {
	a, err := NewAuthorizer(policies)
	if err != nil {
		return false
	}
	for _, p := range policies {
		if a.Decide(Principal{Name: "user:admin-check", Roles: []string{p.Role}}, ActionAdmin, "/").Allowed {
			return true
		}
	}
	return false
}

// LastAdminError refuses a change that would leave no policy granting
// admin on /: nobody but root could then manage tokens and policies.
type LastAdminError struct {
	Role     string
	Deleting bool
}

func (e *LastAdminError) Error() string {
	if e.Deleting {
		return fmt.Sprintf("policy rm %s: it is the last policy that grants admin on /; without it nobody but root can manage tokens and policies. Give another role admin first, or repeat with --force", e.Role)
	}
	return fmt.Sprintf("policy put %s: it would take admin on / away from the last policy that grants it; without it nobody but root can manage tokens and policies. Give another role admin first, or repeat with --force", e.Role)
}

func (e *LastAdminError) Unwrap() error { return ErrLastAdmin }

// InstallDefaults writes the default policies (admin, dba, app), keeping
// existing ones unless overwrite is set, and reports which it wrote and
// which it kept. graftd --dev calls it at start, `graft policy init`
// through the API.
// Differing returns, of roles, those whose stored policy is not the
// default graft ships now: edited by an operator, or installed by an
// older graftd (whose dba role, say, could not rotate yet).
func (e *Engine) Differing(ctx context.Context, roles []string) ([]string, error) {
	defaults := DefaultPolicyYAML()
	var out []string
	for _, role := range roles {
		def, ok := defaults[role]
		if !ok {
			continue
		}
		rec, err := e.recs.Get(ctx, role)
		if err != nil {
			return out, fmt.Errorf("read policy %s: %w", role, err)
		}
		if rec.Value.YAML != string(def) {
			out = append(out, role)
		}
	}
	return out, nil
}

func (e *Engine) InstallDefaults(ctx context.Context, author string, overwrite bool) (installed, kept []string, err error) {
	for _, p := range DefaultPolicies() {
		rec := PolicyRecord{Role: p.Role, YAML: string(DefaultPolicyYAML()[p.Role]), Author: author, Updated: time.Now().UTC()}
		if overwrite {
			if err := e.Put(ctx, rec, false); err != nil {
				return installed, kept, err
			}
			installed = append(installed, p.Role)
			continue
		}
		ok, err := e.recs.Create(ctx, rec.Role, rec)
		if err != nil {
			return installed, kept, fmt.Errorf("put policy %s: %w", rec.Role, err)
		}
		if ok {
			installed = append(installed, p.Role)
		} else {
			kept = append(kept, p.Role)
		}
	}
	return installed, kept, nil
}
