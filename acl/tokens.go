// Package acl decides who a caller is and what it may do: it turns bearer
// tokens into principals. Tokens are stored hashed; the token itself is
// shown once, when it is created, and never kept.
package acl

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/graft-sh/graft/internal/retry"
	"github.com/graft-sh/graft/store"
)

// RootPrincipal is the name of the all-powerful principal.
const RootPrincipal = "root"

// tokenPrefix marks graft tokens so they are recognisable in a leak scan.
const tokenPrefix = "graft_"

// Errors.
var (
	ErrNoToken      = errors.New("no token: pass one as `authorization: Bearer <token>` (graft: --token or GRAFT_TOKEN)")
	ErrUnknownToken = errors.New("unknown or revoked token")
	ErrExpiredToken = errors.New("token expired")
	ErrNotReady     = errors.New("token cache not loaded yet; retry")
)

// Principal is an authenticated caller.
type Principal struct {
	// Name is "<kind>:<name>", such as "app:message-processor" or
	// "user:alice", or "root".
	Name string
	// Roles are the roles its credential grants; policies may bind more.
	Roles []string
	// Method says how it authenticated: "token" or "certificate".
	Method string
	// Accessor identifies the token used, if any.
	Accessor string
	// Expires is when the credential expires; zero for never.
	Expires time.Time
}

// IsRoot reports whether the principal is root.
func (p Principal) IsRoot() bool { return p.Name == RootPrincipal }

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the principal carried by ctx.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// NewToken returns a fresh random token.
func NewToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// NewAccessor returns a fresh non-secret token id.
func NewAccessor() string {
	b := make([]byte, 9)
	rand.Read(b)
	return "acc_" + base64.RawURLEncoding.EncodeToString(b)
}

// HashToken returns the hex SHA-256 of a token, the form in which it is
// stored and looked up.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// TokenStore is where token records live.
type TokenStore interface {
	ListTokens(ctx context.Context) ([]store.TokenRecord, int64, error)
	WatchTokens(ctx context.Context, after int64) <-chan store.TokenChange
}

// TokensConfig configures Tokens.
type TokensConfig struct {
	Store  TokenStore
	Logger *slog.Logger
	Now    func() time.Time
}

// Tokens authenticates bearer tokens against the stored records. It keeps
// an in-memory copy that a store watch keeps current, so a revocation on
// any replica takes effect here without a restart.
type Tokens struct {
	store TokenStore
	log   *slog.Logger
	now   func() time.Time

	mu     sync.RWMutex
	byHash map[string]store.TokenRecord
	rev    int64 // the store revision byHash reflects
	loaded chan struct{}
	once   sync.Once
}

// NewTokens returns a Tokens; call Run to load and follow the records.
func NewTokens(cfg TokensConfig) (*Tokens, error) {
	if cfg.Store == nil {
		return nil, errors.New("acl: TokensConfig.Store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Tokens{store: cfg.Store, log: cfg.Logger, now: cfg.Now, byHash: map[string]store.TokenRecord{}, loaded: make(chan struct{})}, nil
}

// Run loads the token records and follows their changes until ctx ends,
// reloading whenever the watch breaks.
func (t *Tokens) Run(ctx context.Context) error {
	retry.Forever(ctx, t.log, "loading tokens", 50*time.Millisecond, 2*time.Second, func(ctx context.Context) error {
		rev, err := t.load(ctx)
		if err != nil {
			return err
		}
		t.apply(ctx, rev)
		return nil
	})
	return nil
}

func (t *Tokens) load(ctx context.Context) (int64, error) {
	recs, rev, err := t.store.ListTokens(ctx)
	if err != nil {
		return 0, err
	}
	t.replace(recs, rev)
	t.once.Do(func() { close(t.loaded) })
	return rev, nil
}

// apply applies the changes after rev until the watch ends.
func (t *Tokens) apply(ctx context.Context, rev int64) {
	for c := range t.store.WatchTokens(ctx, rev) {
		t.mu.Lock()
		// A Refresh may already have applied this change.
		if c.Revision > t.rev {
			if c.Deleted {
				delete(t.byHash, c.Record.Hash)
			} else {
				t.byHash[c.Record.Hash] = c.Record
			}
			t.rev = c.Revision
		}
		t.mu.Unlock()
	}
}

// Refresh reads the records again, so that every change committed before
// the call is in effect when it returns. graftd calls it after creating or
// revoking a token, so its caller can use the result at once; other
// replicas learn of the change from the watch.
func (t *Tokens) Refresh(ctx context.Context) error {
	_, err := t.load(ctx)
	return err
}

// replace installs the records read at rev unless newer ones are in place.
func (t *Tokens) replace(recs []store.TokenRecord, rev int64) {
	m := make(map[string]store.TokenRecord, len(recs))
	for _, r := range recs {
		m[r.Hash] = r
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if rev > t.rev {
		t.byHash, t.rev = m, rev
	}
}

// Loaded is closed once the records have been read.
func (t *Tokens) Loaded() <-chan struct{} { return t.loaded }

// Authenticate returns the principal a token stands for.
func (t *Tokens) Authenticate(_ context.Context, token string) (Principal, error) {
	if token == "" {
		return Principal{}, ErrNoToken
	}
	select {
	case <-t.loaded:
	default:
		return Principal{}, ErrNotReady
	}
	hash := HashToken(token)
	t.mu.RLock()
	rec, ok := t.byHash[hash]
	t.mu.RUnlock()
	// The map lookup is by hash, so timing reveals at most a hash; the
	// constant-time compare keeps the final check free of early exits.
	if !ok || subtle.ConstantTimeCompare([]byte(rec.Hash), []byte(hash)) != 1 {
		return Principal{}, ErrUnknownToken
	}
	if !rec.Expires.IsZero() && !t.now().Before(rec.Expires) {
		return Principal{}, fmt.Errorf("%w at %s", ErrExpiredToken, rec.Expires.UTC().Format(time.RFC3339))
	}
	return Principal{Name: rec.Principal, Roles: rec.Roles, Method: "token", Accessor: rec.Accessor, Expires: rec.Expires}, nil
}
