package server

import (
	"context"
	"fmt"
	"time"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/dbcred/leases"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/replicator"
)

// mayManage reports whether the caller may renew and revoke l: its
// holder, whoever may write its role, and admins.
func (s *Server) mayManage(ctx context.Context, l leases.Lease) bool {
	return principal(ctx).Name == l.Principal || s.may(ctx, acl.ActionWrite, l.Role) || s.may(ctx, acl.ActionAdmin, adminPath)
}

// lease returns the lease id names if the caller may manage it; to
// anyone else it does not exist.
func (s *Server) lease(ctx context.Context, ls Leases, id string) (leases.Lease, error) {
	l, err := ls.Get(ctx, id)
	if err == nil && !s.mayManage(ctx, l) {
		return leases.Lease{}, leases.NotFound(id)
	}
	return l, err
}

// ListLeases implements graftv1.LeaseServiceServer: the leases the caller
// holds, and those of roles it may list.
func (s *Server) ListLeases(ctx context.Context, req *graftv1.ListLeasesRequest) (*graftv1.ListLeasesResponse, error) {
	ls, err := s.leasesOrUnavailable()
	if err != nil {
		return nil, err
	}
	all, err := ls.List(ctx, leases.Filter{Prefix: req.GetPrefix(), Principal: req.GetPrincipal()})
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &graftv1.ListLeasesResponse{}
	holders := s.leaseHolders(ctx)
	for _, l := range all {
		if principal(ctx).Name == l.Principal || s.may(ctx, acl.ActionList, l.Role) {
			p := leaseProto(l)
			p.Holder = holders.of(ctx, l)
			resp.Leases = append(resp.Leases, p)
		}
	}
	if resp.ReaperPaused, err = ls.Paused(ctx); err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

// leaseHolders finds the agents that report holding leases, reading
// each application's reports once per listing.
type leaseHolders struct {
	s    *Server
	byID map[string]map[string]string // app → lease id → holder
}

func (s *Server) leaseHolders(context.Context) *leaseHolders {
	return &leaseHolders{s: s, byID: map[string]map[string]string{}}
}

// of names the agent that holds l: "<agent id> on <host>", when an agent
// of the lease's own principal reports it (an agent cannot claim another
// principal's lease), and "" otherwise.
func (h *leaseHolders) of(ctx context.Context, l leases.Lease) string {
	app, ok := replicator.AppName(l.Principal)
	if !ok || h.s.agents == nil {
		return ""
	}
	ids, ok := h.byID[app]
	if !ok {
		ids = map[string]string{}
		reps, err := h.s.agents.List(ctx, app)
		if err != nil {
			h.s.log.Warn("lease ls: cannot read the agents' reports; holders not shown", "app", app, "err", err)
		}
		for _, r := range reps {
			for _, rl := range r.Leases {
				ids[rl.ID+"\x00"+r.Principal] = r.ID + " on " + r.Host
			}
		}
		h.byID[app] = ids
	}
	return ids[l.ID+"\x00"+l.Principal]
}

// RenewLease implements graftv1.LeaseServiceServer.
func (s *Server) RenewLease(ctx context.Context, req *graftv1.RenewLeaseRequest) (*graftv1.RenewLeaseResponse, error) {
	ls, err := s.leasesOrUnavailable()
	if err != nil {
		return nil, err
	}
	var inc time.Duration
	if req.GetIncrement() != nil {
		if inc = req.GetIncrement().AsDuration(); inc <= 0 {
			return nil, toStatus(invalid("lease renew %s: increment %s: want a positive duration, or none for the role's default TTL", req.GetId(), inc))
		}
	}
	l, err := s.lease(ctx, ls, req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	renewed, err := ls.Renew(ctx, req.GetId(), inc)
	if err != nil {
		return nil, toStatus(err)
	}
	noteAudit(ctx, l.Role, fmt.Sprintf("lease %s user %s renewed until %s", l.ID, l.Username, renewed.Expires.UTC().Format(time.RFC3339)))
	return &graftv1.RenewLeaseResponse{Lease: leaseProto(renewed)}, nil
}

// RevokeLease implements graftv1.LeaseServiceServer.
func (s *Server) RevokeLease(ctx context.Context, req *graftv1.RevokeLeaseRequest) (*graftv1.RevokeLeaseResponse, error) {
	ls, err := s.leasesOrUnavailable()
	if err != nil {
		return nil, err
	}
	if req.GetForce() {
		p := principal(ctx)
		if err := s.access.Decide(p, acl.ActionAdmin, adminPath).Err(p, acl.ActionAdmin, adminPath); err != nil {
			return nil, toStatus(fmt.Errorf("lease revoke --force: %w", err))
		}
		l, err := ls.Force(ctx, req.GetId())
		if err != nil {
			return nil, toStatus(err)
		}
		noteAudit(ctx, l.Role, fmt.Sprintf("lease %s forgotten by force; user %s not dropped", l.ID, l.Username))
		return &graftv1.RevokeLeaseResponse{Lease: leaseProto(l), Warning: fmt.Sprintf("lease %s is forgotten without dropping its user %s: drop the user by hand if it still exists", l.ID, l.Username)}, nil
	}
	l, err := s.lease(ctx, ls, req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	noteAudit(ctx, l.Role, fmt.Sprintf("lease %s user %s", l.ID, l.Username))
	if _, err := ls.Revoke(ctx, req.GetId()); err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.RevokeLeaseResponse{Lease: leaseProto(l)}, nil
}

// RevokePrefix implements graftv1.LeaseServiceServer.
func (s *Server) RevokePrefix(ctx context.Context, req *graftv1.RevokePrefixRequest) (*graftv1.RevokePrefixResponse, error) {
	ls, err := s.leasesOrUnavailable()
	if err != nil {
		return nil, err
	}
	n, failed, err := ls.RevokePrefix(ctx, req.GetPrefix())
	if err != nil {
		return nil, toStatus(err)
	}
	noteAudit(ctx, req.GetPrefix(), fmt.Sprintf("%d leases revoked, %d failed", n, len(failed)))
	resp := &graftv1.RevokePrefixResponse{Revoked: int32(n)}
	for _, l := range failed {
		resp.Failed = append(resp.Failed, leaseProto(l))
	}
	return resp, nil
}

// SetReaper implements graftv1.LeaseServiceServer.
func (s *Server) SetReaper(ctx context.Context, req *graftv1.SetReaperRequest) (*graftv1.SetReaperResponse, error) {
	ls, err := s.leasesOrUnavailable()
	if err != nil {
		return nil, err
	}
	if err := ls.SetPaused(ctx, req.GetPaused()); err != nil {
		return nil, toStatus(err)
	}
	noteAudit(ctx, adminPath, fmt.Sprintf("lease reaper paused: %t", req.GetPaused()))
	return &graftv1.SetReaperResponse{Paused: req.GetPaused()}, nil
}
