// Package leases issues dynamic database credentials and keeps their
// leases: a new database user for each request, made from a role in its
// owner's tree, valid for a TTL that renewals extend up to the role's max
// TTL, and dropped when revoked or, by the reaper, when it expires.
//
// A lease is written, pending, before its user exists and confirmed after,
// so a crash between the two leaves no user without a lease: every lease
// is in an index by when it is next due (the end of a pending lease's
// grace, an active lease's expiry, a failed revocation's next attempt),
// and the reaper, one graftd at a time, revokes what is due. Leases are
// records in etcd, indexed by due time, role and holder; graftd keeps
// none in memory.
package leases

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/graft-sh/graft/audit"
	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/store"
)

// The states of a lease.
const (
	StatePending     = "pending"     // its user is being made
	StateActive      = "active"      // its user exists
	StateRevoking    = "revoking"    // its user is being dropped, or a revocation failed and is retried
	StateIrrevocable = "irrevocable" // revocation failed MaxAttempts times; still retried, slowly
)

// Lease is one credential's lease. It never holds the password.
type Lease struct {
	ID        string `json:"id"`
	Role      string `json:"role"`      // the role's path, in its owner's tree
	IssuedAt  string `json:"issued_at"` // the path issued at
	Principal string `json:"principal"`
	Username  string `json:"username"`
	Driver    string `json:"driver"`
	Admin     string `json:"admin"`
	// The role's statements at issue, so the role may change or go.
	RevocationSQL []string      `json:"revocation_sql,omitempty"`
	RenewSQL      []string      `json:"renew_sql,omitempty"`
	DefaultTTL    time.Duration `json:"default_ttl"`
	State         string        `json:"state"`
	Issued        time.Time     `json:"issued"`
	Expires       time.Time     `json:"expires"`
	MaxExpires    time.Time     `json:"max_expires"`
	Attempts      int           `json:"attempts,omitempty"`
	LastError     string        `json:"last_error,omitempty"`
	// Due is the lease's key in the due index.
	Due string `json:"due"`
}

// Renewable reports whether a renewal would extend the lease.
func (l Lease) Renewable() bool {
	return l.State == StateActive && l.Expires.Before(l.MaxExpires)
}

// Issued is a new credential: its lease, and the password, which is
// nowhere else.
type Issued struct {
	Lease    Lease
	Password string
}

// Errors, which graftd maps to status codes.
var (
	ErrNotFound = errors.New("not found")
	ErrQuota    = errors.New("lease quota reached")
	ErrState    = errors.New("lease state")
	ErrDenied   = errors.New("permission denied")
	// ErrDatabase says the database refused a statement or could not be
	// reached.
	ErrDatabase = errors.New("database")
)

// Auditor records what the reaper does.
type Auditor interface {
	AppendAsync(audit.Record)
}

// Config configures New.
type Config struct {
	Store *store.Store
	// MayRead reports whether principal may read path: a role counts
	// only while its author may read its admin DSN.
	MayRead func(principal, path string) bool
	// Open opens a driver on an admin DSN; default OpenDriverConns
	// with PerDatabase connections.
	Open  func(ctx context.Context, driver, dsn string) (dbcred.Dynamic, error)
	Audit Auditor
	Log   *slog.Logger
	Now   func() time.Time
	// PerDatabase bounds the statements run at once on one database
	// (default DefaultPerDatabase).
	PerDatabase int
	// MaxAttempts is how many failed revocations make a lease
	// irrevocable (default 10).
	MaxAttempts int
	// PendingGrace is how long a pending lease may wait for its user
	// before the reaper cleans it up (default 2m). Statements time out
	// within half of it.
	PendingGrace time.Duration
	// Tick is how often the reaper looks for due leases (default 200ms).
	Tick time.Duration
	// Registerer, when set, takes the manager's metrics.
	Registerer prometheus.Registerer
}

// Manager issues credentials and keeps their leases. It is safe for
// concurrent use.
type Manager struct {
	cfg        Config
	leases     *store.Records[Lease]
	due        *store.Records[string]
	roles      *store.Records[string]
	principals *store.Records[string]
	switches   *store.Records[bool]
	pools      *pools
	metrics    *metrics
	// issuing serializes the quota check and the pending write of one
	// role's leases in this process.
	issuing sync.Map // role path → *sync.Mutex
}

// New returns a Manager.
func New(cfg Config) *Manager {
	if cfg.PerDatabase <= 0 {
		cfg.PerDatabase = DefaultPerDatabase
	}
	if cfg.Open == nil {
		conns := cfg.PerDatabase
		cfg.Open = func(ctx context.Context, driver, dsn string) (dbcred.Dynamic, error) {
			return OpenDriverConns(ctx, driver, dsn, conns)
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 10
	}
	if cfg.PendingGrace <= 0 {
		cfg.PendingGrace = 2 * time.Minute
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 200 * time.Millisecond
	}
	m := &Manager{
		cfg:        cfg,
		leases:     store.NewRecords[Lease](cfg.Store, store.SpaceLeases),
		due:        store.NewRecords[string](cfg.Store, store.SpaceLeaseDue),
		roles:      store.NewRecords[string](cfg.Store, store.SpaceLeaseRoles),
		principals: store.NewRecords[string](cfg.Store, store.SpaceLeasePrincipals),
		switches:   store.NewRecords[bool](cfg.Store, store.SpaceLeaseReaper),
		pools:      newPools(cfg.Open, cfg.PerDatabase),
	}
	m.metrics = newMetrics(m, cfg.Registerer)
	return m
}

// Close closes the admin connections.
func (m *Manager) Close() { m.pools.close() }

func (m *Manager) statementTimeout() time.Duration { return m.cfg.PendingGrace / 2 }

func dueKey(t time.Time, id string) string { return fmt.Sprintf("%019d/%s", t.UnixNano(), id) }
func roleKey(l Lease) string               { return l.Role + "@" + l.ID }
func principalKey(l Lease) string          { return l.Principal + "|" + l.Role + "@" + l.ID }

func newID() string { return strings.ToLower(rand.Text()) }

// Role is a role found from a path an issue names.
type Role struct {
	// Path is where the role was written, in its owner's tree.
	Path string
	Role dbcred.Role
	// Author wrote it.
	Author   string
	Revision int64
}

// maxHops bounds the copies of copies a role is followed through.
const maxHops = 8

// Resolve finds the role path names: the role itself, or a copy of one
// (followed to where it was written). The role counts only while its
// author may read its admin DSN: an application that writes a role into
// its own tree gains nothing by it.
func (m *Manager) Resolve(ctx context.Context, path string) (Role, error) {
	p := path
	for hops := 0; ; hops++ {
		e, err := m.cfg.Store.Get(ctx, p)
		if errors.Is(err, store.ErrNotFound) {
			if p == path {
				return Role{}, fmt.Errorf("%w: no role at %s: `graft dbcred role ls` lists the roles you may see", ErrNotFound, path)
			}
			return Role{}, fmt.Errorf("%w: %s is a copy of %s, which no longer exists: ask its owner", ErrNotFound, path, p)
		}
		if err != nil {
			return Role{}, err
		}
		if e.Origin != nil && e.Origin.SourcePath != "" {
			if hops >= maxHops {
				return Role{}, fmt.Errorf("%w: %s: more than %d copies of copies to follow to its role", ErrNotFound, path, maxHops)
			}
			p = e.Origin.SourcePath
			continue
		}
		role, err := dbcred.ParseRole(e.Value)
		if err != nil {
			return Role{}, fmt.Errorf("%s: %w", path, err)
		}
		if dsn := role.Admin + "/" + dsnKey; m.cfg.MayRead != nil && !m.cfg.MayRead(e.Author, dsn) {
			return Role{}, fmt.Errorf("%w: the role at %s was written by %s, who may not read its admin DSN %s: have an owner of the DSN put the role again", ErrDenied, p, e.Author, dsn)
		}
		return Role{Path: p, Role: role, Author: e.Author, Revision: e.Revision}, nil
	}
}

// dsnKey is the key below a role's admin path that holds the admin DSN,
// as for rotations.
const dsnKey = "dsn"

func (m *Manager) dsn(ctx context.Context, admin string) (string, error) {
	e, err := m.cfg.Store.Get(ctx, admin+"/"+dsnKey)
	if errors.Is(err, store.ErrNotFound) {
		return "", fmt.Errorf("%w: the admin DSN %s/%s does not exist: put it (e.g. graft put %s/%s 'postgres://admin:...@db:5432/app?sslmode=verify-full')", ErrNotFound, admin, dsnKey, admin, dsnKey)
	}
	if err != nil {
		return "", err
	}
	return string(e.Value), nil
}

// driver returns a driver on the lease's or role's database and a
// function that gives its slot back.
func (m *Manager) driver(ctx context.Context, driver, admin string) (dbcred.Dynamic, func(), error) {
	dsn, err := m.dsn(ctx, admin)
	if err != nil {
		return nil, nil, err
	}
	return m.pools.get(ctx, driver, dsn)
}

// Issue creates a user from the role path names for principal, with a
// lease of ttl (0: the role's default; at most its max).
func (m *Manager) Issue(ctx context.Context, path, principal string, ttl time.Duration) (issued Issued, err error) {
	defer func() { m.metrics.issues.WithLabelValues(result(err)).Inc() }()
	r, err := m.Resolve(ctx, path)
	if err != nil {
		return Issued{}, err
	}
	defTTL, maxTTL := r.Role.TTLs()
	switch {
	case ttl < 0:
		return Issued{}, fmt.Errorf("%w: issue %s: ttl %s: want a positive duration, or none for the role's default (%s)", ErrState, path, ttl, defTTL)
	case ttl == 0:
		ttl = defTTL
	}
	ttl = min(ttl, maxTTL)
	drv, release, err := m.driver(ctx, r.Role.Driver, r.Role.Admin)
	if err != nil {
		return Issued{}, fmt.Errorf("issue %s: %w", path, err)
	}
	defer release()
	now := m.cfg.Now()
	l := Lease{
		ID: newID(), Role: r.Path, IssuedAt: path, Principal: principal,
		Username: r.Role.Username(principal, r.Path, now, drv.MaxUsername()),
		Driver:   r.Role.Driver, Admin: r.Role.Admin,
		RevocationSQL: r.Role.RevocationSQL, RenewSQL: r.Role.RenewSQL, DefaultTTL: defTTL,
		State: StatePending, Issued: now, Expires: now.Add(ttl), MaxExpires: now.Add(maxTTL),
	}
	l.Due = dueKey(now.Add(m.cfg.PendingGrace), l.ID)
	rev, err := m.createPending(ctx, r, l)
	if err != nil {
		return Issued{}, err
	}
	password, err := r.Role.Password()
	if err != nil {
		m.forget(context.WithoutCancel(ctx), l, rev)
		return Issued{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, m.statementTimeout())
	err = drv.CreateUser(cctx, r.Role.CreationSQL, dbcred.NewUser{Name: l.Username, Password: password, Expiration: l.Expires})
	cancel()
	if err != nil {
		// The statements ran in one transaction (PostgreSQL) or were
		// undone (MariaDB): no user, so no lease. Should the process die
		// first, the reaper finds the pending lease after its grace.
		m.forget(context.WithoutCancel(ctx), l, rev)
		return Issued{}, fmt.Errorf("%w: issue %s: create the user: %w", ErrDatabase, path, dbcred.Redact(err, password))
	}
	confirmed := l
	confirmed.State = StateActive
	confirmed.Due = dueKey(l.Expires, l.ID)
	put, err := m.leases.PutOp(l.ID, confirmed)
	if err != nil {
		return Issued{}, err
	}
	_, ok, err := m.cfg.Store.Commit(context.WithoutCancel(ctx), []store.Cond{m.leases.At(l.ID, rev)}, append(m.moveDue(l.Due, confirmed.Due, l.ID), put)...)
	switch {
	case err != nil:
		return Issued{}, fmt.Errorf("issue %s: confirm lease %s: %w (its user %s is dropped when the lease's grace ends)", path, l.ID, err, l.Username)
	case !ok:
		// Revoked meanwhile (its grace ran out under a slow database):
		// the user just made must go too.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.statementTimeout())
		rerr := drv.RevokeUser(rctx, l.RevocationSQL, l.Username)
		cancel()
		if rerr != nil {
			m.cfg.Log.Error("a user made for a lease revoked meanwhile could not be dropped; drop it by hand", "lease", l.ID, "user", l.Username, "err", rerr)
		}
		return Issued{}, fmt.Errorf("%w: issue %s: lease %s was revoked while its user was being made; issue again", ErrState, path, l.ID)
	}
	return Issued{Lease: confirmed, Password: password}, nil
}

// moveDue returns the ops that move a lease's due index entry from old
// to new: none when they are the same (a renewal capped at the max TTL
// twice), since etcd refuses a transaction that names a key twice.
func (m *Manager) moveDue(old, new, id string) []store.Op {
	if old == new {
		return nil
	}
	put, _ := m.due.PutOp(new, id)
	return []store.Op{m.due.DeleteOp(old), put}
}

// createPending checks the role's quotas and writes the pending lease
// with its index entries, and returns the lease's revision. Only a role
// with a quota has its issues take turns: the count and the write must
// not interleave, but without a quota there is nothing to count, and
// taking turns across an etcd commit would cap the role's issues at one
// commit's latency each.
func (m *Manager) createPending(ctx context.Context, r Role, l Lease) (int64, error) {
	if r.Role.MaxLeases > 0 || r.Role.MaxLeasesPerPrincipal > 0 {
		mu, _ := m.issuing.LoadOrStore(r.Path, &sync.Mutex{})
		mu.(*sync.Mutex).Lock()
		defer mu.(*sync.Mutex).Unlock()
	}
	if max := r.Role.MaxLeases; max > 0 {
		n, err := m.roles.Count(ctx, r.Path+"@")
		if err != nil {
			return 0, err
		}
		if n >= int64(max) {
			return 0, fmt.Errorf("%w: the role %s has %d live leases, its max_leases is %d: revoke some (graft lease revoke), or raise it (graft dbcred role put --max-leases)", ErrQuota, r.Path, n, max)
		}
	}
	if max := r.Role.MaxLeasesPerPrincipal; max > 0 {
		n, err := m.principals.Count(ctx, l.Principal+"|"+r.Path+"@")
		if err != nil {
			return 0, err
		}
		if n >= int64(max) {
			return 0, fmt.Errorf("%w: %s holds %d live leases of the role %s, its max_leases_per_principal is %d: revoke one (graft lease revoke) or let one expire", ErrQuota, l.Principal, n, r.Path, max)
		}
	}
	put, err := m.leases.PutOp(l.ID, l)
	if err != nil {
		return 0, err
	}
	due, _ := m.due.PutOp(l.Due, l.ID)
	role, _ := m.roles.PutOp(roleKey(l), l.ID)
	prin, _ := m.principals.PutOp(principalKey(l), l.ID)
	rev, ok, err := m.cfg.Store.Commit(ctx, []store.Cond{m.leases.Absent(l.ID)}, put, due, role, prin)
	if err == nil && !ok {
		err = fmt.Errorf("lease id %s is taken; issue again", l.ID)
	}
	return rev, err
}

// forget removes a lease and its index entries, while the lease is at
// rev and every cond holds.
func (m *Manager) forget(ctx context.Context, l Lease, rev int64, conds ...store.Cond) (bool, error) {
	_, ok, err := m.cfg.Store.Commit(ctx, append([]store.Cond{m.leases.At(l.ID, rev)}, conds...),
		m.leases.DeleteOp(l.ID), m.due.DeleteOp(l.Due), m.roles.DeleteOp(roleKey(l)), m.principals.DeleteOp(principalKey(l)))
	return ok, err
}

// Get returns a lease.
func (m *Manager) Get(ctx context.Context, id string) (Lease, error) {
	rec, err := m.get(ctx, id)
	return rec.Value, err
}

func (m *Manager) get(ctx context.Context, id string) (store.Record[Lease], error) {
	rec, err := m.leases.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return rec, NotFound(id)
	}
	return rec, err
}

// NotFound is the error for a lease id that names no lease: revoked,
// expired, never issued, or not the caller's to see.
func NotFound(id string) error {
	return fmt.Errorf("%w: no lease %s (revoked, expired, or never issued): graft lease ls lists the live ones", ErrNotFound, clip(id))
}

// Renew extends a lease by increment from now (0: the role's default
// TTL at issue), never past its max TTL.
func (m *Manager) Renew(ctx context.Context, id string, increment time.Duration) (Lease, error) {
	rec, err := m.get(ctx, id)
	if err != nil {
		return Lease{}, err
	}
	l := rec.Value
	if l.State != StateActive {
		return Lease{}, fmt.Errorf("%w: lease %s is %s, not active: it cannot be renewed", ErrState, id, l.State)
	}
	if increment < 0 {
		return Lease{}, fmt.Errorf("%w: renew %s: increment %s: want a positive duration", ErrState, id, increment)
	}
	if increment == 0 {
		increment = l.DefaultTTL
	}
	now := m.cfg.Now()
	exp := now.Add(increment)
	if exp.After(l.MaxExpires) {
		exp = l.MaxExpires
	}
	if !exp.After(now) {
		return Lease{}, fmt.Errorf("%w: lease %s reached its max TTL at %s: issue a new credential", ErrState, id, l.MaxExpires.UTC().Format(time.RFC3339))
	}
	drv, release, err := m.driver(ctx, l.Driver, l.Admin)
	if err != nil {
		return Lease{}, fmt.Errorf("renew %s: %w", id, err)
	}
	defer release()
	rctx, cancel := context.WithTimeout(ctx, m.statementTimeout())
	err = drv.RenewUser(rctx, l.RenewSQL, l.Username, exp)
	cancel()
	if err != nil {
		return Lease{}, fmt.Errorf("%w: renew %s: %w", ErrDatabase, id, err)
	}
	renewed := l
	renewed.Expires = exp
	renewed.Due = dueKey(exp, id)
	put, err := m.leases.PutOp(id, renewed)
	if err != nil {
		return Lease{}, err
	}
	_, ok, err := m.cfg.Store.Commit(ctx, []store.Cond{m.leases.At(id, rec.Revision)}, append(m.moveDue(l.Due, renewed.Due, id), put)...)
	switch {
	case err != nil:
		return Lease{}, err
	case !ok:
		return Lease{}, fmt.Errorf("%w: lease %s changed while it was renewed (revoked?): look again with graft lease ls", ErrState, id)
	}
	return renewed, nil
}

// Revoke drops a lease's user and then the lease.
func (m *Manager) Revoke(ctx context.Context, id string) (Lease, error) {
	rec, err := m.get(ctx, id)
	if err != nil {
		return Lease{}, err
	}
	if rec.Value.State == StatePending {
		return rec.Value, fmt.Errorf("%w: lease %s is being issued: revoke it once it is active", ErrState, id)
	}
	return rec.Value, m.revoke(ctx, rec, nil)
}

// Force forgets a lease without dropping its user.
func (m *Manager) Force(ctx context.Context, id string) (Lease, error) {
	rec, err := m.get(ctx, id)
	if err != nil {
		return Lease{}, err
	}
	ok, err := m.forget(ctx, rec.Value, rec.Revision)
	if err == nil && !ok {
		err = fmt.Errorf("%w: lease %s changed meanwhile: try again", ErrState, id)
	}
	return rec.Value, err
}

// revokeRetryMax bounds the backoff between failed revocations.
const revokeRetryMax = 10 * time.Minute

// revoke claims the lease (state revoking, due again after the pending
// grace should this process die), runs the revocation once, and removes
// the lease; on failure it records why and when to try again. fence holds
// the reaper's writes to its term.
func (m *Manager) revoke(ctx context.Context, rec store.Record[Lease], fence []store.Cond) (err error) {
	defer func() {
		if ctx.Err() == nil {
			m.metrics.revokes.WithLabelValues(result(err)).Inc()
		}
	}()
	l := rec.Value
	now := m.cfg.Now()
	claimed := l
	claimed.State = StateRevoking
	claimed.Due = dueKey(now.Add(m.cfg.PendingGrace), l.ID)
	put, err := m.leases.PutOp(l.ID, claimed)
	if err != nil {
		return err
	}
	rev, ok, err := m.cfg.Store.Commit(ctx, append([]store.Cond{m.leases.At(l.ID, rec.Revision)}, fence...), append(m.moveDue(l.Due, claimed.Due, l.ID), put)...)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: lease %s changed meanwhile (another revocation or a renewal): look again with graft lease ls", ErrState, l.ID)
	}
	drv, release, err := m.driver(ctx, l.Driver, l.Admin)
	if err == nil {
		rctx, cancel := context.WithTimeout(ctx, m.statementTimeout())
		err = drv.RevokeUser(rctx, l.RevocationSQL, l.Username)
		cancel()
		release()
	}
	if err == nil {
		ok, ferr := m.forget(context.WithoutCancel(ctx), claimed, rev, fence...)
		if ferr == nil && !ok {
			ferr = fmt.Errorf("lease %s changed while its user was dropped", l.ID)
		}
		return ferr
	}
	failed := claimed
	failed.Attempts++
	failed.LastError = clipError(err)
	if failed.Attempts >= m.cfg.MaxAttempts {
		failed.State = StateIrrevocable
	}
	failed.Due = dueKey(now.Add(backoff(failed.Attempts)), l.ID)
	if put, perr := m.leases.PutOp(l.ID, failed); perr == nil {
		m.cfg.Store.Commit(context.WithoutCancel(ctx), append([]store.Cond{m.leases.At(l.ID, rev)}, fence...), append(m.moveDue(claimed.Due, failed.Due, l.ID), put)...)
	}
	return fmt.Errorf("%w: revoke lease %s (user %s): %w; retried in %s", ErrDatabase, l.ID, l.Username, err, backoff(failed.Attempts).Round(time.Second))
}

// backoff is the wait before revocation attempt n+1.
func backoff(n int) time.Duration {
	d := time.Second << min(n, 20)
	return min(d, revokeRetryMax)
}

// Filter narrows List.
type Filter struct {
	// Prefix: only leases of roles at or below it.
	Prefix string
	// Principal: only leases it holds.
	Principal string
}

// List returns the leases f selects, by role and id.
func (m *Manager) List(ctx context.Context, f Filter) ([]Lease, error) {
	var ids []string
	switch {
	case f.Principal != "":
		recs, _, err := m.principals.ListPrefix(ctx, f.Principal+"|")
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			role, _, _ := strings.Cut(strings.TrimPrefix(r.Key, f.Principal+"|"), "@")
			if f.Prefix == "" || under(role, f.Prefix) {
				ids = append(ids, r.Value)
			}
		}
	case f.Prefix != "":
		keys, err := m.roleLeases(ctx, f.Prefix)
		if err != nil {
			return nil, err
		}
		ids = keys
	default:
		recs, _, err := m.leases.List(ctx)
		if err != nil {
			return nil, err
		}
		out := make([]Lease, len(recs))
		for i, r := range recs {
			out[i] = r.Value
		}
		return out, nil
	}
	out := make([]Lease, 0, len(ids))
	for _, id := range ids {
		rec, err := m.leases.Get(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			continue // gone meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, rec.Value)
	}
	return out, nil
}

// roleLeases returns the ids of the leases of the roles at or below
// prefix.
func (m *Manager) roleLeases(ctx context.Context, prefix string) ([]string, error) {
	var ids []string
	for _, p := range []string{prefix + "@", strings.TrimSuffix(prefix, "/") + "/"} {
		recs, _, err := m.roles.ListPrefix(ctx, p)
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			ids = append(ids, r.Value)
		}
	}
	return ids, nil
}

func under(path, prefix string) bool {
	prefix = strings.TrimSuffix(prefix, "/")
	return path == prefix || strings.HasPrefix(path, prefix+"/") || prefix == ""
}

// RevokePrefix revokes every lease of the roles at or below prefix, a
// few at a time, and returns how many it revoked and the leases it could
// not.
func (m *Manager) RevokePrefix(ctx context.Context, prefix string) (int, []Lease, error) {
	ids, err := m.roleLeases(ctx, prefix)
	if err != nil {
		return 0, nil, err
	}
	var (
		mu      sync.Mutex
		revoked int
		failed  []Lease
		wg      sync.WaitGroup
		slots   = make(chan struct{}, 8)
	)
	for _, id := range ids {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			rec, err := m.leases.Get(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				return
			}
			if err == nil {
				err = m.revoke(ctx, rec, nil)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				l := rec.Value
				if l.ID == "" {
					l.ID = id
				}
				l.LastError = clipError(err)
				failed = append(failed, l)
				return
			}
			revoked++
		})
	}
	wg.Wait()
	return revoked, failed, ctx.Err()
}

func clip(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

func clipError(err error) string {
	s := err.Error()
	if len(s) > 512 {
		s = s[:512] + "…"
	}
	return s
}
