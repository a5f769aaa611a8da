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
	"slices"
	"time"

	"github.com/graft-sh/graft/internal/snapshot"
	"github.com/graft-sh/graft/store"
)

// RootPrincipal is the name of the all-powerful principal.
const RootPrincipal = "root"

// tokenPrefix marks graft tokens so they are recognisable in a leak scan.
const tokenPrefix = "graft_"

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

// TokenRecord is what graft keeps of a token: never the token itself, only
// its SHA-256 hash (hex) and what it stands for. Records live in the
// store's tokens space, keyed by hash.
type TokenRecord struct {
	Hash string `json:"hash"`
	// Accessor is a non-secret id for listing and revoking the token.
	Accessor  string    `json:"accessor,omitempty"`
	Principal string    `json:"principal"`
	Roles     []string  `json:"roles,omitempty"`
	Created   time.Time `json:"created"`
	Creator   string    `json:"creator,omitempty"`
	Expires   time.Time `json:"expires,omitzero"`
}

// TokensConfig configures Tokens.
type TokensConfig struct {
	Store  *store.Store
	Logger *slog.Logger
	Now    func() time.Time
}

// Tokens keeps the token records and authenticates bearer tokens against
// them. It holds an in-memory copy that a store watch keeps current, so a
// revocation on any replica takes effect here without a restart. Writes
// (Put, Delete, ReplacePrincipal) go to the store and work without Run.
type Tokens struct {
	recs *store.Records[TokenRecord]
	snap *snapshot.Snapshot[TokenRecord]
	now  func() time.Time
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
	recs := store.NewRecords[TokenRecord](cfg.Store, store.SpaceTokens)
	snap, err := snapshot.New(snapshot.Config[TokenRecord]{Name: "tokens", Source: recs, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	return &Tokens{recs: recs, snap: snap, now: cfg.Now}, nil
}

// Run loads the token records and follows their changes until ctx ends,
// reloading whenever the watch breaks.
func (t *Tokens) Run(ctx context.Context) error { return t.snap.Run(ctx) }

// Loaded is closed once the records have been read.
func (t *Tokens) Loaded() <-chan struct{} { return t.snap.Loaded() }

// Authenticate returns the principal a token stands for.
func (t *Tokens) Authenticate(_ context.Context, token string) (Principal, error) {
	if token == "" {
		return Principal{}, ErrNoToken
	}
	select {
	case <-t.snap.Loaded():
	default:
		return Principal{}, ErrNotReady
	}
	hash := HashToken(token)
	rec, ok := t.snap.Get(hash)
	// The lookup is by hash, so timing reveals at most a hash; the
	// constant-time compare keeps the final check free of early exits.
	if !ok || subtle.ConstantTimeCompare([]byte(rec.Hash), []byte(hash)) != 1 {
		return Principal{}, ErrUnknownToken
	}
	if !rec.Expires.IsZero() && !t.now().Before(rec.Expires) {
		return Principal{}, fmt.Errorf("%w at %s", ErrExpiredToken, rec.Expires.UTC().Format(time.RFC3339))
	}
	return Principal{Name: rec.Principal, Roles: rec.Roles, Method: "token", Accessor: rec.Accessor, Expires: rec.Expires}, nil
}

// RolesOf returns the roles of principal's live tokens: what it may do,
// for a check made on its behalf while it is not the caller (the author
// of a dynamic-credential role). Policies that bind roles to it by name
// apply on top, as for a caller.
func (t *Tokens) RolesOf(principal string) []string {
	items, _ := t.snap.Items()
	now := t.now()
	var roles []string
	for _, it := range items {
		rec := it.Value
		if rec.Principal == principal && (rec.Expires.IsZero() || now.Before(rec.Expires)) {
			roles = append(roles, rec.Roles...)
		}
	}
	slices.Sort(roles)
	return slices.Compact(roles)
}

// Put stores a token record. It returns once the token works here, so its
// caller can hand it out; other replicas learn of it from their watch.
func (t *Tokens) Put(ctx context.Context, rec TokenRecord) error {
	rev, err := t.recs.Put(ctx, rec.Hash, rec)
	if err != nil {
		return fmt.Errorf("store token for %s: %w", rec.Principal, err)
	}
	return t.await(ctx, rev)
}

// await makes a change just committed take effect here before it returns.
func (t *Tokens) await(ctx context.Context, rev int64) error {
	if err := t.snap.Await(ctx, rev); err != nil {
		return fmt.Errorf("tokens: apply the change just stored: %w", err)
	}
	return nil
}

// List returns every token record as stored now.
func (t *Tokens) List(ctx context.Context) ([]TokenRecord, error) {
	return t.recs.Values(ctx)
}

// Delete removes the token record with the given hash, or returns
// store.ErrNotFound. It returns once the token no longer works here.
func (t *Tokens) Delete(ctx context.Context, hash string) error {
	rev, err := t.recs.Delete(ctx, hash)
	if err != nil {
		return fmt.Errorf("revoke token: %w", err)
	}
	return t.await(ctx, rev)
}

// ReplacePrincipal atomically removes every token of principal and stores
// rec in their place. Dev mode uses it so that the root token of the
// current run is the only one.
func (t *Tokens) ReplacePrincipal(ctx context.Context, principal string, rec TokenRecord) error {
	return store.RetryConflicts(ctx, "replace tokens of "+principal, func() (bool, error) {
		recs, rev, err := t.recs.List(ctx)
		if err != nil {
			return false, err
		}
		put, err := t.recs.PutOp(rec.Hash, rec)
		if err != nil {
			return false, err
		}
		ops := []store.Op{put}
		for _, r := range recs {
			if r.Value.Principal == principal && r.Key != rec.Hash {
				ops = append(ops, t.recs.DeleteOp(r.Key))
			}
		}
		// Commit only if no token was stored since the list; otherwise one
		// of principal's could be left beside rec.
		_, ok, err := t.recs.Store().Commit(ctx, []store.Cond{t.recs.Since(rev)}, ops...)
		if err != nil {
			return false, fmt.Errorf("replace tokens of %s: %w", principal, err)
		}
		return ok, nil
	})
}
