package sdk

import (
	"context"
	"math"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// DBCredRole says how graftd makes and drops the database users of a
// dynamic credential: one new user for each Issue, valid for a lease.
// Zero fields take graftd's defaults.
type DBCredRole struct {
	// Driver is the database: "postgres" or "mysql" (MariaDB 10.4 and
	// later).
	Driver string
	// Admin is the path below which key dsn holds the admin connection,
	// in the owner's tree. It is never copied with the role.
	Admin string
	// CreationSQL are the statements that create a user; {{name}},
	// {{password}} and {{expiration}} are replaced. Required. One element
	// may hold several statements.
	CreationSQL []string
	// RevocationSQL drop a user ({{name}}); empty for the driver's
	// default, which works when the user owns objects or holds grants.
	RevocationSQL []string
	// RenewSQL extend a user's validity ({{name}}, {{expiration}});
	// empty for the driver's default.
	RenewSQL []string
	// DefaultTTL is a lease's TTL when Issue names none (0: 1h).
	DefaultTTL time.Duration
	// MaxTTL is how long a lease may live with renewals (0: 24h).
	MaxTTL time.Duration
	// UsernameTemplate makes user names from {{principal}}, {{role}},
	// {{random}} (required) and {{unix}} (empty:
	// v-{{principal}}-{{role}}-{{random}}-{{unix}}).
	UsernameTemplate string
	// PasswordLength is the length of passwords (0: 32).
	PasswordLength int
	// PasswordAlphabet is what passwords are drawn from (empty: letters
	// and digits).
	PasswordAlphabet string
	// MaxLeases bounds the role's live leases (0: no limit).
	MaxLeases int
	// MaxLeasesPerPrincipal bounds one principal's live leases of the
	// role (0: no limit).
	MaxLeasesPerPrincipal int
}

// RoleInfo is a role where it is stored, or a copy of it.
type RoleInfo struct {
	// Path is where the role, or the copy, is.
	Path string
	Role DBCredRole
	// Source is where the role was written, when Path is a copy.
	Source string
	// Revision is the store revision of the value; ListRoles leaves it
	// 0.
	Revision int64
}

// Lease states.
const (
	LeasePending  = "pending"  // the user is being made
	LeaseActive   = "active"   // the user exists and may log in
	LeaseRevoking = "revoking" // the user is being dropped
	// LeaseIrrevocable: revocation failed too often; revoke it again,
	// or forget it with RevokeLease(ctx, id, true) once the user is gone.
	LeaseIrrevocable = "irrevocable"
)

// Lease is one dynamic credential's lease. It never holds the password.
type Lease struct {
	ID string
	// Role is the path of the role it was issued from, in its owner's
	// tree.
	Role string
	// IssuedAt is the path it was issued at: the caller's copy of the
	// role, or the role.
	IssuedAt string
	// Principal issued it, and may renew and revoke it.
	Principal string
	// Username is the database user.
	Username string
	// State is LeasePending, LeaseActive, LeaseRevoking or
	// LeaseIrrevocable.
	State string
	// IssueTime is when it was issued; ExpireTime when it expires unless
	// renewed; MaxExpireTime when it ends for good (issue time plus the
	// role's max TTL).
	IssueTime, ExpireTime, MaxExpireTime time.Time
	// Renewable says whether a renewal would extend it.
	Renewable bool
	// RevokeAttempts counts failed revocations so far, LastError says why
	// the last failed (never a password or a DSN).
	RevokeAttempts int
	LastError      string
	// Holder is where the agent that holds it runs, when one reported it.
	Holder string
}

// IssuedCredential is a new database user and its lease. The password is
// in this answer only: graftd keeps none.
type IssuedCredential struct {
	Lease    Lease
	Username string
	Password string
}

// PutRole writes role at path and returns the store revision of the
// write; graftd fills in its defaults and reports every problem of the
// role at once. Needs write on path and read on the role's admin DSN
// (<admin>/dsn), which must exist.
func (c *Client) PutRole(ctx context.Context, path string, role DBCredRole) (int64, error) {
	resp, err := c.dbcred.PutRole(ctx, &graftv1.PutRoleRequest{Path: path, Role: role.proto()})
	if err != nil {
		return 0, wrap(ctx, err)
	}
	return resp.GetRevision(), nil
}

// GetRole returns the role at path, a role or a copy of one. Needs read
// on path.
func (c *Client) GetRole(ctx context.Context, path string) (RoleInfo, error) {
	resp, err := c.dbcred.GetRole(ctx, &graftv1.GetRoleRequest{Path: path})
	if err != nil {
		return RoleInfo{}, wrap(ctx, err)
	}
	return RoleInfo{Path: path, Role: roleFrom(resp.GetRole()), Source: resp.GetSource(), Revision: resp.GetRevision()}, nil
}

// ListRoles returns the roles, and copies of roles, at and below prefix
// that the caller may read, by path.
func (c *Client) ListRoles(ctx context.Context, prefix string) ([]RoleInfo, error) {
	resp, err := c.dbcred.ListRoles(ctx, &graftv1.ListRolesRequest{Prefix: prefix})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	out := make([]RoleInfo, 0, len(resp.GetRoles()))
	for _, r := range resp.GetRoles() {
		out = append(out, RoleInfo{Path: r.GetPath(), Role: roleFrom(r.GetRole()), Source: r.GetSource()})
	}
	return out, nil
}

// DeleteRole deletes the role at path and returns the store revision of
// the deletion. Its live leases stay until they expire or are revoked
// (RevokePrefix). Needs delete on path.
func (c *Client) DeleteRole(ctx context.Context, path string) (int64, error) {
	resp, err := c.dbcred.DeleteRole(ctx, &graftv1.DeleteRoleRequest{Path: path})
	if err != nil {
		return 0, wrap(ctx, err)
	}
	return resp.GetRevision(), nil
}

// Issue creates a database user from the role at path (the role, or the
// caller's copy of it) for a lease of ttl (0: the role's default TTL; at
// most its max TTL) and returns it with its password, which graftd does
// not keep. Needs issue on path.
func (c *Client) Issue(ctx context.Context, path string, ttl time.Duration) (IssuedCredential, error) {
	resp, err := c.dbcred.Issue(ctx, &graftv1.IssueRequest{Path: path, Ttl: optDuration(ttl)})
	if err != nil {
		return IssuedCredential{}, wrap(ctx, err)
	}
	return IssuedCredential{Lease: leaseFrom(resp.GetLease()), Username: resp.GetUsername(), Password: resp.GetPassword()}, nil
}

// ListLeases returns the leases the caller holds and those of roles it
// may write, only those of roles at or below prefix and held by
// principal when they are set, by role and id; and whether the reaper,
// which revokes expired leases, is paused.
func (c *Client) ListLeases(ctx context.Context, prefix, principal string) (leases []Lease, reaperPaused bool, err error) {
	resp, err := c.leases.ListLeases(ctx, &graftv1.ListLeasesRequest{Prefix: prefix, Principal: principal})
	if err != nil {
		return nil, false, wrap(ctx, err)
	}
	leases = make([]Lease, 0, len(resp.GetLeases()))
	for _, l := range resp.GetLeases() {
		leases = append(leases, leaseFrom(l))
	}
	return leases, resp.GetReaperPaused(), nil
}

// RenewLease extends lease id to increment from now (0: the role's
// default TTL), never past its MaxExpireTime, and returns it renewed.
// Its holder may renew it.
func (c *Client) RenewLease(ctx context.Context, id string, increment time.Duration) (Lease, error) {
	resp, err := c.leases.RenewLease(ctx, &graftv1.RenewLeaseRequest{Id: id, Increment: optDuration(increment)})
	if err != nil {
		return Lease{}, wrap(ctx, err)
	}
	return leaseFrom(resp.GetLease()), nil
}

// RevokeLease drops lease id's database user, then the lease, and
// returns the lease as it was. With force (admins only) graftd forgets a
// lease whose user cannot be dropped; warning then says that the user
// may still exist. Its holder, and who may write its role, may revoke
// it.
func (c *Client) RevokeLease(ctx context.Context, id string, force bool) (lease Lease, warning string, err error) {
	resp, err := c.leases.RevokeLease(ctx, &graftv1.RevokeLeaseRequest{Id: id, Force: force})
	if err != nil {
		return Lease{}, "", wrap(ctx, err)
	}
	return leaseFrom(resp.GetLease()), resp.GetWarning(), nil
}

// RevokePrefix revokes every lease of the roles at and below prefix and
// returns how many it revoked and the leases whose revocation failed,
// each with its LastError. Needs write on prefix.
func (c *Client) RevokePrefix(ctx context.Context, prefix string) (revoked int, failed []Lease, err error) {
	resp, err := c.leases.RevokePrefix(ctx, &graftv1.RevokePrefixRequest{Prefix: prefix})
	if err != nil {
		return 0, nil, wrap(ctx, err)
	}
	for _, l := range resp.GetFailed() {
		failed = append(failed, leaseFrom(l))
	}
	return int(resp.GetRevoked()), failed, nil
}

// SetReaper pauses (true) or resumes (false) the revocation of expired
// leases by every graftd, and returns whether it is now paused: pause it
// while, say, a restored copy of the store points at a live database.
// Needs admin.
func (c *Client) SetReaper(ctx context.Context, paused bool) (bool, error) {
	resp, err := c.leases.SetReaper(ctx, &graftv1.SetReaperRequest{Paused: paused})
	if err != nil {
		return false, wrap(ctx, err)
	}
	return resp.GetPaused(), nil
}

func (r DBCredRole) proto() *graftv1.DBCredRole {
	return &graftv1.DBCredRole{
		Driver:                r.Driver,
		Admin:                 r.Admin,
		CreationSql:           r.CreationSQL,
		RevocationSql:         r.RevocationSQL,
		RenewSql:              r.RenewSQL,
		DefaultTtl:            optDuration(r.DefaultTTL),
		MaxTtl:                optDuration(r.MaxTTL),
		UsernameTemplate:      r.UsernameTemplate,
		PasswordLength:        clamp32(r.PasswordLength),
		PasswordAlphabet:      r.PasswordAlphabet,
		MaxLeases:             clamp32(r.MaxLeases),
		MaxLeasesPerPrincipal: clamp32(r.MaxLeasesPerPrincipal),
	}
}

func roleFrom(p *graftv1.DBCredRole) DBCredRole {
	return DBCredRole{
		Driver:                p.GetDriver(),
		Admin:                 p.GetAdmin(),
		CreationSQL:           p.GetCreationSql(),
		RevocationSQL:         p.GetRevocationSql(),
		RenewSQL:              p.GetRenewSql(),
		DefaultTTL:            p.GetDefaultTtl().AsDuration(),
		MaxTTL:                p.GetMaxTtl().AsDuration(),
		UsernameTemplate:      p.GetUsernameTemplate(),
		PasswordLength:        int(p.GetPasswordLength()),
		PasswordAlphabet:      p.GetPasswordAlphabet(),
		MaxLeases:             int(p.GetMaxLeases()),
		MaxLeasesPerPrincipal: int(p.GetMaxLeasesPerPrincipal()),
	}
}

func leaseFrom(p *graftv1.Lease) Lease {
	return Lease{
		ID:             p.GetId(),
		Role:           p.GetRole(),
		IssuedAt:       p.GetIssuedAt(),
		Principal:      p.GetPrincipal(),
		Username:       p.GetUsername(),
		State:          p.GetState(),
		IssueTime:      timeFrom(p.GetIssueTime()),
		ExpireTime:     timeFrom(p.GetExpireTime()),
		MaxExpireTime:  timeFrom(p.GetMaxExpireTime()),
		Renewable:      p.GetRenewable(),
		RevokeAttempts: int(p.GetRevokeAttempts()),
		LastError:      p.GetLastError(),
		Holder:         p.GetHolder(),
	}
}

// optDuration leaves an unset duration unset, for graftd's default; a
// negative one is sent as it is, for graftd to reject.
func optDuration(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

// clamp32 keeps a count out of int32's range out of range, for graftd to
// reject, rather than wrapping it into a valid one.
func clamp32(n int) int32 {
	return int32(max(math.MinInt32, min(n, math.MaxInt32)))
}
