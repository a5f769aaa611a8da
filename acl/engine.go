package acl

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/graft-sh/graft/internal/retry"
	"github.com/graft-sh/graft/store"
)

// PolicyStore is where policies live.
type PolicyStore interface {
	ListPolicies(ctx context.Context) ([]store.PolicyRecord, int64, error)
	WatchPolicies(ctx context.Context, after int64) <-chan struct{}
}

// EngineConfig configures an Engine.
type EngineConfig struct {
	Store  PolicyStore
	Logger *slog.Logger
}

// Engine decides access with the policies stored in etcd. It rebuilds its
// Authorizer whenever a policy changes on any replica, so a change takes
// effect everywhere within moments and without a restart.
type Engine struct {
	store  PolicyStore
	log    *slog.Logger
	cur    atomic.Pointer[Authorizer]
	loaded chan struct{}

	mu  sync.Mutex // serialises installs
	rev int64      // the store revision cur reflects
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
	e := &Engine{store: cfg.Store, log: cfg.Logger, loaded: make(chan struct{})}
	empty, err := NewAuthorizer(nil)
	if err != nil {
		return nil, err
	}
	e.cur.Store(empty)
	return e, nil
}

// Loaded is closed once the policies have been read.
func (e *Engine) Loaded() <-chan struct{} { return e.loaded }

// Run loads the policies and follows their changes until ctx ends.
func (e *Engine) Run(ctx context.Context) error {
	var once sync.Once
	load := func(ctx context.Context) (int64, error) {
		rev, err := e.reload(ctx)
		if err == nil {
			once.Do(func() { close(e.loaded) })
		}
		return rev, err
	}
	retry.Forever(ctx, e.log, "loading policies", 50*time.Millisecond, 2*time.Second, func(ctx context.Context) error {
		rev, err := load(ctx)
		if err != nil {
			return err
		}
		for range e.store.WatchPolicies(ctx, rev) {
			if _, err := e.reload(ctx); err != nil {
				return err
			}
		}
		return nil
	})
	return nil
}

func (e *Engine) reload(ctx context.Context) (int64, error) {
	recs, rev, err := e.store.ListPolicies(ctx)
	if err != nil {
		return 0, err
	}
	policies := make([]Policy, 0, len(recs))
	for _, r := range recs {
		p, err := ParsePolicy([]byte(r.YAML))
		if err != nil {
			// Policies are validated when written; one that no longer
			// parses (written by another version) grants nothing.
			e.log.Error("ignoring a stored policy that does not parse", "role", r.Role, "err", err)
			continue
		}
		policies = append(policies, p)
	}
	a, err := NewAuthorizer(policies)
	if err != nil {
		return 0, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if rev > e.rev {
		e.cur.Store(a)
		e.rev = rev
	}
	return rev, nil
}

// Refresh reads the policies again, so that every change committed before
// the call is in effect when it returns. graftd calls it after changing a
// policy, so `graft policy put` followed by `graft policy check` agree;
// other replicas learn of the change from the watch.
func (e *Engine) Refresh(ctx context.Context) error {
	_, err := e.reload(ctx)
	return err
}

// Authorizer returns the authorizer built from the current policies.
func (e *Engine) Authorizer() *Authorizer { return e.cur.Load() }

// Decide decides with the current policies.
func (e *Engine) Decide(p Principal, act Action, path string) Decision {
	return e.cur.Load().Decide(p, act, path)
}
