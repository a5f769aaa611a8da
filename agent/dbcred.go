package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/graft-sh/graft/internal/atomicfile"
	"github.com/graft-sh/graft/sdk"
)

// Credential is what the dbcred template function gives a template: a
// database user of its own, issued from a role shared into the
// application's tree, and kept alive by the agent.
type Credential struct {
	Username string
	Password string
	// LeaseID names the lease in `graft lease ls`.
	LeaseID string
	// Expires is when the lease ends unless renewed; MaxExpires when it
	// ends for good, before which the agent replaces it.
	Expires    time.Time
	MaxExpires time.Time
}

// CredentialError says the dbcred template function could not give a
// credential. It holds graftd's answer, which never holds a value, and
// the role's path unless the template computed it.
type CredentialError struct {
	Template string
	Path     string // "" when withheld
	Err      error
}

func (e *CredentialError) Error() string {
	where := e.Path
	if where == "" {
		where = "a role whose path the template computed (withheld: it may be made of a value)"
	}
	return fmt.Sprintf("template %s: dbcred %s: %v", e.Template, where, e.Err)
}

func (e *CredentialError) Unwrap() error { return e.Err }

// credentialSource gives templates their dynamic credentials.
type credentialSource interface {
	credential(path string) (Credential, error)
}

// Timing of the credential keeper, as the issue asks and Vault Agent
// does: renew at two-thirds of a lease, replace at two-thirds of the time
// left to its max TTL.
const (
	// renewAt and replaceAt are the fractions.
	renewFraction = 2.0 / 3.0
	// credCallTimeout bounds one issue, renew or revoke call.
	credCallTimeout = 30 * time.Second
	// credRetryMin and credRetryMax bound the wait before a failed call
	// is tried again.
	credRetryMin = time.Second
	credRetryMax = time.Minute
	// DefaultCredentialGrace is how long an old credential stays valid
	// after the application runs healthy on its replacement.
	DefaultCredentialGrace = 30 * time.Second
	// stateKind marks the keeper's state file.
	stateKind = "graft.agent.dbcred/v1"
)

// heldCredential is one lease the keeper holds, as its state file keeps
// it (0600, beside the rendered files: it holds the password).
type heldCredential struct {
	Path       string    `json:"path"` // the role's copy in the tree, absolute
	LeaseID    string    `json:"lease_id"`
	Username   string    `json:"username"`
	Password   string    `json:"password"`
	Issued     time.Time `json:"issued"`
	Renewed    time.Time `json:"renewed"`
	Expires    time.Time `json:"expires"`
	MaxExpires time.Time `json:"max_expires"`
	Renewable  bool      `json:"renewable"`
	// Replaces is the lease this one replaces, revoked once the
	// application runs healthy on this one.
	Replaces string `json:"replaces,omitempty"`
	// RevokeAt is when a retired lease is revoked (zero: not yet known,
	// the application does not run on its replacement yet).
	RevokeAt time.Time `json:"revoke_at,omitzero"`

	// verified says graftd confirmed the lease since the agent started
	// (a lease read from the state file is renewed before it is used).
	verified bool
	// brokered says a broker used it since the agent started, and
	// templated that a template did.
	brokered, templated bool
	// retiredAt is when it was replaced.
	retiredAt time.Time
	// retryAt delays the next renew or replace after a failed call.
	retryAt  time.Time
	failures int
}

// used reports whether a template or a broker has used it since the
// agent started: from then on it is renewed and replaced on time.
func (h *heldCredential) used() bool { return h.brokered || h.templated }

func (h *heldCredential) credential() Credential {
	return Credential{Username: h.Username, Password: h.Password, LeaseID: h.LeaseID, Expires: h.Expires, MaxExpires: h.MaxExpires}
}

// renewAt is when the lease is renewed next (zero: never).
func (h *heldCredential) renewAt() time.Time {
	if !h.Renewable || !h.Expires.Before(h.MaxExpires) {
		return time.Time{}
	}
	from := h.Renewed
	if from.IsZero() {
		from = h.Issued
	}
	return from.Add(time.Duration(float64(h.Expires.Sub(from)) * renewFraction))
}

// replaceAt is when a new credential replaces it: two-thirds of the way
// to its end for good (or to its end, when it cannot be renewed).
func (h *heldCredential) replaceAt() time.Time {
	end := h.MaxExpires
	if !h.Renewable || end.IsZero() {
		end = h.Expires
	}
	return h.Issued.Add(time.Duration(float64(end.Sub(h.Issued)) * renewFraction))
}

// keeperState is the state file.
type keeperState struct {
	Kind        string            `json:"kind"`
	Credentials []*heldCredential `json:"credentials"`
	Retiring    []*heldCredential `json:"retiring,omitempty"`
}

// keeperConfig is what the credential keeper is given.
type keeperConfig struct {
	Conn *connection
	Log  *slog.Logger
	// StateFile keeps the leases across restarts.
	StateFile string
	// Grace is how long an old credential stays valid after the
	// application runs healthy on its replacement.
	Grace time.Duration
	// DryRun hands out only what the state file holds, never issuing.
	DryRun bool
	Now    func() time.Time
}

// keeper issues the dynamic credentials the templates ask for, renews
// them, and replaces each before its max TTL: a new one is issued, the
// loop renders it and reloads the application, and the old lease is
// revoked only after the application is healthy on the new one and a
// grace period has passed. It keeps its leases in a 0600 state file so
// that a restarted agent goes on with them instead of issuing new users.
type keeper struct {
	cfg keeperConfig

	mu       sync.Mutex
	ctx      context.Context // for calls made from renders
	loaded   bool
	held     map[string]*heldCredential // by path
	retiring []*heldCredential
	// replaced is signalled when a credential a render used was replaced:
	// the loop renders the templates that use credentials again.
	replaced chan struct{}
	wake     chan struct{}
	// sessions counts the brokers' open sessions as a database user (nil
	// without brokers).
	sessions func(user string) int
}

func newKeeper(c keeperConfig) *keeper {
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Grace < 0 {
		c.Grace = 0
	}
	return &keeper{cfg: c, ctx: context.Background(), held: map[string]*heldCredential{},
		replaced: make(chan struct{}, 1), wake: make(chan struct{}, 1)}
}

// bind sets the context of the calls renders make.
func (k *keeper) bind(ctx context.Context) {
	k.mu.Lock()
	k.ctx = ctx
	k.mu.Unlock()
}

// Replaced is signalled when the templates that use credentials must be
// rendered again.
func (k *keeper) Replaced() <-chan struct{} {
	if k == nil {
		return nil
	}
	return k.replaced
}

func (k *keeper) poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// load reads the state file once. A missing file is an empty state; one
// that cannot be read is logged and set aside (its leases expire at the
// reaper), never fatal.
func (k *keeper) load() {
	if k.loaded {
		return
	}
	k.loaded = true
	data, err := os.ReadFile(k.cfg.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var st keeperState
	if err == nil {
		err = json.Unmarshal(data, &st)
		if err == nil && st.Kind != stateKind {
			err = fmt.Errorf("kind %q, want %q", st.Kind, stateKind)
		}
	}
	if err != nil {
		// The error never quotes the file's contents: json's messages
		// name offsets and types only.
		k.cfg.Log.Error("the dynamic-credential state file cannot be read; issuing new credentials (the old leases expire by themselves)", "file", k.cfg.StateFile, "err", err)
		return
	}
	now := k.cfg.Now()
	for _, h := range st.Credentials {
		if h.Path != "" && h.LeaseID != "" && h.Expires.After(now) {
			k.held[h.Path] = h
		}
	}
	for _, h := range st.Retiring {
		if h.LeaseID != "" && h.Expires.After(now) {
			k.retiring = append(k.retiring, h)
		}
	}
}

// save writes the state file, 0600. Callers hold mu.
func (k *keeper) save() {
	if k.cfg.DryRun {
		return
	}
	st := keeperState{Kind: stateKind, Retiring: k.retiring}
	for _, h := range k.held {
		st.Credentials = append(st.Credentials, h)
	}
	slices.SortFunc(st.Credentials, func(a, b *heldCredential) int { return strings.Compare(a.Path, b.Path) })
	data, err := json.MarshalIndent(st, "", "  ")
	if err == nil {
		if err = os.MkdirAll(filepath.Dir(k.cfg.StateFile), 0o700); err == nil {
			err = atomicfile.Write(k.cfg.StateFile, data, 0o600)
		}
	}
	if err != nil {
		k.cfg.Log.Error("cannot write the dynamic-credential state file; a restart will issue new credentials", "file", k.cfg.StateFile, "err", err)
	}
}

// credential implements credentialSource: the credential held for path,
// renewed first when it was read from the state file, or a new one.
func (k *keeper) credential(path string) (Credential, error) {
	return k.get(path, false)
}

// brokerCredential is the credential a broker logs in with for path.
// A broker needs no reload: the next connection takes a replacement, so
// the old lease's grace starts when it is replaced (unless a template
// uses it too).
func (k *keeper) brokerCredential(path string) (Credential, error) {
	return k.get(path, true)
}

func (k *keeper) get(path string, byBroker bool) (Credential, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.load()
	ctx := k.ctx
	now := k.cfg.Now()
	if h, ok := k.held[path]; ok && h.Expires.After(now) {
		if !h.verified && !k.cfg.DryRun {
			if err := k.renew(ctx, h); err != nil {
				if !gone(err) {
					// graftd is away: the database still takes the
					// user until the lease's end.
					k.cfg.Log.Warn("cannot confirm the dynamic credential's lease with graftd; using it until it expires", "path", path, "lease", h.LeaseID, "err", err)
					k.use(h, byBroker)
					return h.credential(), nil
				}
				k.cfg.Log.Info("the dynamic credential's lease is gone; issuing a new one", "path", path, "lease", h.LeaseID, "err", err)
				delete(k.held, path)
			}
		}
		if h, ok := k.held[path]; ok {
			k.use(h, byBroker)
			return h.credential(), nil
		}
	}
	if k.cfg.DryRun {
		return Credential{Username: "(not issued in --dry-run)", Password: "(not issued in --dry-run)"}, nil
	}
	h, err := k.issue(ctx, path)
	if err != nil {
		return Credential{}, err
	}
	if old, ok := k.held[path]; ok {
		// Expired while the agent was away: the reaper drops its user.
		k.cfg.Log.Info("the dynamic credential expired while the agent was away; issued a new one", "path", path, "old_lease", old.LeaseID)
	}
	k.held[path] = h
	k.save()
	k.use(h, byBroker)
	return h.credential(), nil
}

// use marks h as used by a render or a broker: from then on it is
// renewed and replaced on time. Callers hold mu.
func (k *keeper) use(h *heldCredential, byBroker bool) {
	if !h.used() {
		k.poke(k.wake)
	}
	if byBroker {
		h.brokered = true
	} else {
		h.templated = true
	}
}

// sessionsEnded wakes the keeper: a broker's last session as some user
// ended, and an old lease may be revoked before its grace is over.
func (k *keeper) sessionsEnded() {
	if k != nil {
		k.poke(k.wake)
	}
}

// peek returns the credential held for path, without issuing one.
func (k *keeper) peek(path string) (Credential, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if h, ok := k.held[path]; ok {
		return h.credential(), true
	}
	return Credential{}, false
}

// gone reports whether graftd says a lease cannot go on: it does not
// exist (revoked, reaped) or is not active.
func gone(err error) bool {
	return errors.Is(err, sdk.ErrNotFound) || errors.Is(err, sdk.ErrFailedPrecondition)
}

// issue asks graftd for a new credential from the role at path.
func (k *keeper) issue(ctx context.Context, path string) (*heldCredential, error) {
	cctx, cancel := context.WithTimeout(ctx, credCallTimeout)
	defer cancel()
	var got sdk.IssuedCredential
	err := k.cfg.Conn.call(cctx, func(c *sdk.Client) (err error) {
		got, err = c.Issue(cctx, path, 0)
		return err
	})
	if err != nil {
		return nil, err
	}
	k.cfg.Log.Info("dynamic credential issued", "path", path, "lease", got.Lease.ID, "user", got.Username,
		"expires", got.Lease.ExpireTime.UTC().Format(time.RFC3339), "max_expires", got.Lease.MaxExpireTime.UTC().Format(time.RFC3339))
	l := got.Lease
	return &heldCredential{Path: path, LeaseID: l.ID, Username: got.Username, Password: got.Password, Issued: l.IssueTime,
		Expires: l.ExpireTime, MaxExpires: l.MaxExpireTime, Renewable: l.Renewable, verified: true}, nil
}

// renew extends h's lease. Callers hold mu.
func (k *keeper) renew(ctx context.Context, h *heldCredential) error {
	cctx, cancel := context.WithTimeout(ctx, credCallTimeout)
	defer cancel()
	var l sdk.Lease
	err := k.cfg.Conn.call(cctx, func(c *sdk.Client) (err error) {
		l, err = c.RenewLease(cctx, h.LeaseID, 0)
		return err
	})
	if err != nil {
		return err
	}
	h.Expires, h.MaxExpires, h.Renewable, h.Renewed, h.verified = l.ExpireTime, l.MaxExpireTime, l.Renewable, k.cfg.Now(), true
	k.save()
	return nil
}

// revoke revokes a retired lease; one already gone counts as revoked.
func (k *keeper) revoke(ctx context.Context, h *heldCredential) error {
	cctx, cancel := context.WithTimeout(ctx, credCallTimeout)
	defer cancel()
	err := k.cfg.Conn.call(cctx, func(c *sdk.Client) error {
		_, _, err := c.RevokeLease(cctx, h.LeaseID, false)
		return err
	})
	if errors.Is(err, sdk.ErrNotFound) {
		return nil
	}
	return err
}

// applied tells the keeper the verdict of a render and reload: healthy
// when every template rendered and the application passed its health
// check. The leases replaced by credentials that render used are then
// revoked after the grace period; an unhealthy application keeps them
// until it is healthy, or until they expire.
func (k *keeper) applied(healthy bool) {
	if k == nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if !healthy {
		for _, r := range k.retiring {
			if r.RevokeAt.IsZero() {
				k.cfg.Log.Warn("the application is not healthy since its new credential; the old one stays valid until it is, or until its lease expires",
					"path", r.Path, "old_lease", r.LeaseID)
			}
		}
		return
	}
	now, changed := k.cfg.Now(), false
	for _, r := range k.retiring {
		if r.RevokeAt.IsZero() && k.replacementRendered(r) {
			r.RevokeAt, changed = now.Add(k.cfg.Grace), true
			k.cfg.Log.Info("the application runs on its new credential; the old one is revoked after the grace period",
				"path", r.Path, "old_lease", r.LeaseID, "user", r.Username, "grace", k.cfg.Grace)
		}
	}
	if changed {
		k.save()
		k.poke(k.wake)
	}
}

// replacementRendered reports whether the credential that replaced r has
// been rendered. Callers hold mu.
func (k *keeper) replacementRendered(r *heldCredential) bool {
	for _, h := range k.held {
		if h.Replaces == r.LeaseID {
			return h.used()
		}
	}
	return true // its replacement is itself gone: nothing uses r
}

// leases are the leases the agent holds, for its reports.
func (k *keeper) leases() []sdk.LeaseReport {
	if k == nil {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []sdk.LeaseReport
	for _, h := range k.held {
		out = append(out, sdk.LeaseReport{ID: h.LeaseID, Path: h.Path, Username: h.Username})
	}
	for _, h := range k.retiring {
		out = append(out, sdk.LeaseReport{ID: h.LeaseID, Path: h.Path, Username: h.Username, Retiring: true})
	}
	slices.SortFunc(out, func(a, b sdk.LeaseReport) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Run renews, replaces and revokes on time until ctx ends. Leases are
// left alive when it ends: a restarted agent goes on with them.
func (k *keeper) Run(ctx context.Context) error {
	k.bind(ctx)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-k.wake:
		case <-timer.C:
		}
		next := k.step(ctx)
		timer.Reset(max(time.Until(next), 10*time.Millisecond))
	}
}

// step does what is due and returns when to look again.
func (k *keeper) step(ctx context.Context) time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.load()
	now := k.cfg.Now()
	next := now.Add(time.Hour)
	soon := func(t time.Time) {
		if !t.IsZero() && t.Before(next) {
			next = t
		}
	}
	for _, path := range slices.Sorted(maps.Keys(k.held)) {
		h := k.held[path]
		if now.Before(h.retryAt) {
			soon(h.retryAt)
			continue
		}
		if !h.used() {
			// Read from the state file, not used by any template yet.
			continue
		}
		var err error
		switch replace, renew := h.replaceAt(), h.renewAt(); {
		case !now.Before(replace):
			err = k.replace(ctx, h)
		case !renew.IsZero() && !now.Before(renew):
			if err = k.renew(ctx, h); gone(err) {
				k.cfg.Log.Warn("the dynamic credential's lease is gone (revoked?); replacing it", "path", path, "lease", h.LeaseID, "err", err)
				err = k.replace(ctx, h)
			} else if err == nil {
				k.cfg.Log.Info("dynamic credential renewed", "path", path, "lease", h.LeaseID, "expires", h.Expires.UTC().Format(time.RFC3339))
			}
		}
		if err != nil {
			h.failures++
			wait := min(credRetryMin<<min(h.failures-1, 6), credRetryMax)
			// Never wait past the lease's end to try again.
			if left := time.Until(h.Expires) / 4; left > 0 && left < wait {
				wait = max(left, credRetryMin)
			}
			h.retryAt = now.Add(wait)
			k.cfg.Log.Warn("dynamic credential: graftd call failed; trying again", "path", path, "lease", h.LeaseID, "in", wait.Round(time.Millisecond), "err", err)
			soon(h.retryAt)
			continue
		}
		h.failures, h.retryAt = 0, time.Time{}
		if cur := k.held[path]; cur != nil {
			soon(cur.replaceAt())
			soon(cur.renewAt())
		}
	}
	kept := k.retiring[:0]
	for _, r := range k.retiring {
		if k.retire(ctx, r, now, soon) {
			kept = append(kept, r)
		}
	}
	if len(kept) != len(k.retiring) {
		k.retiring = kept
		k.save()
	}
	return next
}

// retire looks after a replaced lease: renewed while the application may
// still use it, revoked once the grace after its replacement is over. It
// reports whether the lease is still kept. Callers hold mu.
func (k *keeper) retire(ctx context.Context, r *heldCredential, now time.Time, soon func(time.Time)) bool {
	if !r.Expires.After(now) {
		return false // expired: graftd's reaper revokes it
	}
	if now.Before(r.retryAt) {
		soon(r.retryAt)
		return true
	}
	failed := func(what string, err error) bool {
		r.failures++
		r.retryAt = now.Add(min(credRetryMin<<min(r.failures-1, 6), credRetryMax))
		k.cfg.Log.Warn("cannot "+what+" the old dynamic credential; trying again (graftd's reaper revokes it at its expiry in any case)",
			"path", r.Path, "lease", r.LeaseID, "err", err)
		soon(r.retryAt)
		return true
	}
	if !r.RevokeAt.IsZero() && now.Before(r.RevokeAt) && r.brokered && !r.templated && k.sessions != nil &&
		now.Sub(r.retiredAt) >= min(k.cfg.Grace, time.Second) && k.sessions(r.Username) == 0 {
		// Only brokers used it, and none has a session left as its user
		// (a second after the replacement, for logins under way): the
		// grace has nothing left to wait for.
		r.RevokeAt = now
	}
	if r.RevokeAt.IsZero() || now.Before(r.RevokeAt) {
		// The application may still use it: keep it alive until then.
		if at := r.renewAt(); !at.IsZero() && !now.Before(at) {
			if err := k.renew(ctx, r); gone(err) {
				return false
			} else if err != nil {
				return failed("renew", err)
			}
		}
		r.failures = 0
		soon(r.renewAt())
		soon(r.RevokeAt)
		if r.RevokeAt.IsZero() {
			soon(r.Expires)
		}
		return true
	}
	if err := k.revoke(ctx, r); err != nil {
		return failed("revoke", err)
	}
	k.cfg.Log.Info("old dynamic credential revoked", "path", r.Path, "lease", r.LeaseID, "user", r.Username)
	return false
}

// replace issues h's successor and retires h; the loop renders the new
// one. Callers hold mu.
func (k *keeper) replace(ctx context.Context, h *heldCredential) error {
	n, err := k.issue(ctx, h.Path)
	if err != nil {
		return err
	}
	n.Replaces = h.LeaseID
	k.held[h.Path] = n
	h.Replaces, h.RevokeAt = "", time.Time{}
	h.retiredAt = k.cfg.Now()
	if h.brokered && !h.templated {
		// Only brokers use it: the next connection takes the new one,
		// and the sessions open on the old one have the grace to end.
		n.brokered = true
		h.RevokeAt = h.retiredAt.Add(k.cfg.Grace)
		if k.sessions != nil {
			soonAt := h.retiredAt.Add(min(k.cfg.Grace, time.Second))
			time.AfterFunc(time.Until(soonAt), func() { k.poke(k.wake) })
		}
	}
	k.retiring = append(k.retiring, h)
	k.save()
	k.cfg.Log.Info("dynamic credential replaced before its max TTL; rendering the new one", "path", h.Path, "old_lease", h.LeaseID, "lease", n.LeaseID)
	k.poke(k.replaced)
	return nil
}
