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
func (e *Engine) install(items []snapshot.Item[PolicyRecord], _ int64) {
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

// Put creates or replaces a role's policy.
func (e *Engine) Put(ctx context.Context, rec PolicyRecord) error {
	if _, err := e.recs.Put(ctx, rec.Role, rec); err != nil {
		return fmt.Errorf("put policy %s: %w", rec.Role, err)
	}
	return nil
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

// Delete removes a role's policy, or returns store.ErrNotFound.
func (e *Engine) Delete(ctx context.Context, role string) error {
	if _, err := e.recs.Delete(ctx, role); err != nil {
		return fmt.Errorf("delete policy %s: %w", role, err)
	}
	return nil
}

// InstallDefaults writes the default policies (admin, dba, app), keeping
// existing ones unless overwrite is set, and reports which it wrote and
// which it kept. graftd --dev calls it at start, `graft policy init`
// through the API.
func (e *Engine) InstallDefaults(ctx context.Context, author string, overwrite bool) (installed, kept []string, err error) {
	for _, p := range DefaultPolicies() {
		rec := PolicyRecord{Role: p.Role, YAML: string(DefaultPolicyYAML()[p.Role]), Author: author, Updated: time.Now().UTC()}
		if overwrite {
			if err := e.Put(ctx, rec); err != nil {
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
