package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/dbcred/leases"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/store"
)

// Leases issues dynamic credentials and keeps their leases.
type Leases interface {
	Issue(ctx context.Context, path, principal string, ttl time.Duration) (leases.Issued, error)
	Get(ctx context.Context, id string) (leases.Lease, error)
	Renew(ctx context.Context, id string, increment time.Duration) (leases.Lease, error)
	Revoke(ctx context.Context, id string) (leases.Lease, error)
	Force(ctx context.Context, id string) (leases.Lease, error)
	RevokePrefix(ctx context.Context, prefix string) (int, []leases.Lease, error)
	List(ctx context.Context, f leases.Filter) ([]leases.Lease, error)
	Paused(ctx context.Context) (bool, error)
	SetPaused(ctx context.Context, paused bool) error
}

var _ Leases = (*leases.Manager)(nil)

func (s *Server) leasesOrUnavailable() (Leases, error) {
	if s.leases == nil {
		return nil, toStatus(unavailable("this graftd issues no dynamic credentials"))
	}
	return s.leases, nil
}

// PutRole implements graftv1.DBCredServiceServer: the caller must be
// able to read the role's admin DSN, so a role never lends anyone a
// connection its author could not use.
func (s *Server) PutRole(ctx context.Context, req *graftv1.PutRoleRequest) (*graftv1.PutRoleResponse, error) {
	role := roleFrom(req.GetRole())
	value, err := role.Encode()
	if err != nil {
		return nil, toStatus(fmt.Errorf("dbcred role put %s: %w", req.GetPath(), err))
	}
	if _, err := store.ParsePath(role.Admin); err != nil {
		return nil, toStatus(fmt.Errorf("dbcred role put %s: admin %s: %w", req.GetPath(), role.Admin, err))
	}
	dsn := role.Admin + "/" + rotation.KeyDSN
	p := principal(ctx)
	if err := s.access.Decide(p, acl.ActionRead, dsn).Err(p, acl.ActionRead, dsn); err != nil {
		var denied *acl.DeniedError
		if errors.As(err, &denied) {
			denied.Reason = "a role's author must be able to read its admin DSN"
		}
		return nil, toStatus(err)
	}
	if _, err := s.store.Get(ctx, dsn); errors.Is(err, store.ErrNotFound) {
		return nil, toStatus(fmt.Errorf("dbcred role put %s: the admin DSN %s: %w: put it first (graft put %s '%s')", req.GetPath(), dsn, store.ErrNotFound, dsn, rotation.ExampleDSN(role.Driver)))
	} else if err != nil {
		return nil, toStatus(err)
	}
	e, err := s.store.Put(ctx, req.GetPath(), value, store.WriteOptions{Author: p.Name})
	if err != nil {
		return nil, toStatus(err)
	}
	noteAudit(ctx, req.GetPath(), fmt.Sprintf("dbcred role, driver %s, admin %s", role.Driver, role.Admin))
	return &graftv1.PutRoleResponse{Revision: e.Revision}, nil
}

// GetRole implements graftv1.DBCredServiceServer.
func (s *Server) GetRole(ctx context.Context, req *graftv1.GetRoleRequest) (*graftv1.GetRoleResponse, error) {
	e, err := s.store.Get(ctx, req.GetPath())
	if err != nil {
		return nil, toStatus(err)
	}
	role, err := dbcred.ParseRole(e.Value)
	if err != nil {
		return nil, toStatus(fmt.Errorf("dbcred role get %s: %w", req.GetPath(), err))
	}
	return &graftv1.GetRoleResponse{Role: roleProto(role), Source: sourceOf(e), Revision: e.Revision}, nil
}

func sourceOf(e store.Entry) string {
	if e.Origin != nil {
		return e.Origin.SourcePath
	}
	return ""
}

// maxRolesListed bounds the values ListRoles reads.
const maxRolesListed = 10000

// ListRoles implements graftv1.DBCredServiceServer: the roles at and
// below the prefix that the caller may read.
func (s *Server) ListRoles(ctx context.Context, req *graftv1.ListRolesRequest) (*graftv1.ListRolesResponse, error) {
	items, _, err := s.store.List(ctx, req.GetPrefix(), true)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &graftv1.ListRolesResponse{}
	read := 0
	for _, it := range items {
		if it.Directory || it.Entry == nil || !s.may(ctx, acl.ActionRead, it.Path) {
			continue
		}
		if read++; read > maxRolesListed {
			return nil, toStatus(invalid("dbcred role ls %s: more than %d values to look through: name a narrower prefix", req.GetPrefix(), maxRolesListed))
		}
		e, err := s.store.Get(ctx, it.Path)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, toStatus(err)
		}
		role, err := dbcred.ParseRole(e.Value)
		if err != nil {
			continue // not a role
		}
		resp.Roles = append(resp.Roles, &graftv1.RoleItem{Path: it.Path, Role: roleProto(role), Source: sourceOf(e)})
	}
	return resp, nil
}

// DeleteRole implements graftv1.DBCredServiceServer.
func (s *Server) DeleteRole(ctx context.Context, req *graftv1.DeleteRoleRequest) (*graftv1.DeleteRoleResponse, error) {
	e, err := s.store.Get(ctx, req.GetPath())
	if err != nil {
		return nil, toStatus(err)
	}
	if _, err := dbcred.ParseRole(e.Value); errors.Is(err, dbcred.ErrNotRole) {
		return nil, toStatus(fmt.Errorf("dbcred role rm %s: %w: delete it with graft rm", req.GetPath(), err))
	}
	var inUse *replicator.SourceInUseError
	if err := s.replication.CheckDelete(req.GetPath()); errors.As(err, &inUse) {
		return nil, toStatus(fmt.Errorf("%w: dbcred role rm %s: it is replicated to %s: unshare it first (graft unshare); the leases issued from it stay until they expire or are revoked", replicator.ErrSourceInUse, req.GetPath(), strings.Join(inUse.Copies, ", ")))
	} else if err != nil {
		return nil, toStatus(err)
	}
	rev, err := s.store.Delete(ctx, req.GetPath(), store.WriteOptions{Author: principal(ctx).Name})
	if err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.DeleteRoleResponse{Revision: rev}, nil
}

// Issue implements graftv1.DBCredServiceServer.
func (s *Server) Issue(ctx context.Context, req *graftv1.IssueRequest) (*graftv1.IssueResponse, error) {
	ls, err := s.leasesOrUnavailable()
	if err != nil {
		return nil, err
	}
	var ttl time.Duration
	if req.GetTtl() != nil {
		if ttl = req.GetTtl().AsDuration(); ttl <= 0 {
			return nil, toStatus(invalid("dbcred issue %s: ttl %s: want a positive duration, or none for the role's default", req.GetPath(), ttl))
		}
	}
	got, err := ls.Issue(ctx, req.GetPath(), principal(ctx).Name, ttl)
	if err != nil {
		return nil, toStatus(err)
	}
	noteAudit(ctx, req.GetPath(), fmt.Sprintf("lease %s user %s of role %s, expires %s", got.Lease.ID, got.Lease.Username, got.Lease.Role, got.Lease.Expires.UTC().Format(time.RFC3339)))
	return &graftv1.IssueResponse{Lease: leaseProto(got.Lease), Username: got.Lease.Username, Password: got.Password}, nil
}

func roleFrom(p *graftv1.DBCredRole) dbcred.Role {
	return dbcred.Role{
		Driver: p.GetDriver(), Admin: p.GetAdmin(),
		CreationSQL: p.GetCreationSql(), RevocationSQL: p.GetRevocationSql(), RenewSQL: p.GetRenewSql(),
		DefaultTTL: dbcred.Duration(p.GetDefaultTtl().AsDuration()), MaxTTL: dbcred.Duration(p.GetMaxTtl().AsDuration()),
		UsernameTemplate: p.GetUsernameTemplate(), PasswordLength: int(p.GetPasswordLength()), PasswordAlphabet: p.GetPasswordAlphabet(),
		MaxLeases: int(p.GetMaxLeases()), MaxLeasesPerPrincipal: int(p.GetMaxLeasesPerPrincipal()),
	}
}

func roleProto(r dbcred.Role) *graftv1.DBCredRole {
	ttl, maxTTL := r.TTLs()
	return &graftv1.DBCredRole{
		Driver: r.Driver, Admin: r.Admin,
		CreationSql: r.CreationSQL, RevocationSql: r.RevocationSQL, RenewSql: r.RenewSQL,
		DefaultTtl: durationpb.New(ttl), MaxTtl: durationpb.New(maxTTL),
		UsernameTemplate: r.UsernameTemplate, PasswordLength: int32(r.PasswordLength), PasswordAlphabet: r.PasswordAlphabet,
		MaxLeases: int32(r.MaxLeases), MaxLeasesPerPrincipal: int32(r.MaxLeasesPerPrincipal),
	}
}

func leaseProto(l leases.Lease) *graftv1.Lease {
	return &graftv1.Lease{
		Id: l.ID, Role: l.Role, IssuedAt: l.IssuedAt, Principal: l.Principal, Username: l.Username, State: l.State,
		IssueTime: timestamppb.New(l.Issued), ExpireTime: timestamppb.New(l.Expires), MaxExpireTime: timestamppb.New(l.MaxExpires),
		Renewable: l.Renewable(), RevokeAttempts: int32(l.Attempts), LastError: l.LastError,
	}
}
