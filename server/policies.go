package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/graft-sh/graft/acl"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/store"
)

// PutPolicy implements graftv1.PolicyServiceServer.
func (s *Server) PutPolicy(ctx context.Context, req *graftv1.PutPolicyRequest) (*graftv1.PutPolicyResponse, error) {
	pol, err := acl.ParsePolicy([]byte(req.GetYaml()))
	if err != nil {
		return nil, toStatus(invalid("policy put: %v", err))
	}
	rec := acl.PolicyRecord{Role: pol.Role, YAML: req.GetYaml(), Author: principal(ctx).Name, Updated: time.Now().UTC()}
	if err := s.policies.Put(ctx, rec, req.GetForce()); err != nil {
		return nil, toStatus(err)
	}
	s.refreshPolicies(ctx)
	s.log.Info("policy written", "role", pol.Role, "author", rec.Author)
	return &graftv1.PutPolicyResponse{Policy: policyProto(rec)}, nil
}

// GetPolicy implements graftv1.PolicyServiceServer.
func (s *Server) GetPolicy(ctx context.Context, req *graftv1.GetPolicyRequest) (*graftv1.GetPolicyResponse, error) {
	rec, err := s.policies.Get(ctx, req.GetRole())
	if err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.GetPolicyResponse{Policy: policyProto(rec)}, nil
}

// ListPolicies implements graftv1.PolicyServiceServer.
func (s *Server) ListPolicies(ctx context.Context, _ *graftv1.ListPoliciesRequest) (*graftv1.ListPoliciesResponse, error) {
	recs, err := s.policies.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &graftv1.ListPoliciesResponse{}
	for _, r := range recs {
		resp.Policies = append(resp.Policies, policyProto(r))
	}
	return resp, nil
}

// DeletePolicy implements graftv1.PolicyServiceServer.
func (s *Server) DeletePolicy(ctx context.Context, req *graftv1.DeletePolicyRequest) (*graftv1.DeletePolicyResponse, error) {
	if err := s.policies.Delete(ctx, req.GetRole(), req.GetForce()); err != nil {
		return nil, toStatus(err)
	}
	s.refreshPolicies(ctx)
	s.log.Info("policy deleted", "role", req.GetRole(), "by", principal(ctx).Name)
	return &graftv1.DeletePolicyResponse{}, nil
}

// CheckPolicy implements graftv1.PolicyServiceServer.
func (s *Server) CheckPolicy(ctx context.Context, req *graftv1.CheckPolicyRequest) (*graftv1.CheckPolicyResponse, error) {
	act := acl.Action(req.GetAction())
	if !slices.Contains(acl.Actions(), act) {
		return nil, toStatus(invalid("policy check: unknown action %q; actions are %v", req.GetAction(), acl.Actions()))
	}
	if _, err := store.ParsePrefix(req.GetPath()); err != nil {
		return nil, toStatus(fmt.Errorf("policy check %s: %w", store.ShortPath(req.GetPath()), err))
	}
	if req.GetPrincipal() == "" {
		return nil, toStatus(invalid("policy check: give --principal, such as app:message-processor"))
	}
	p := acl.Principal{Name: req.GetPrincipal(), Roles: req.GetRoles()}
	d := s.policies.Decide(p, act, req.GetPath())
	return &graftv1.CheckPolicyResponse{
		Allowed:        d.Allowed,
		Role:           d.Role,
		Rule:           d.Rule,
		Reason:         d.Reason,
		EffectiveRoles: s.effectiveRoles(p),
	}, nil
}

// InitPolicies implements graftv1.PolicyServiceServer.
func (s *Server) InitPolicies(ctx context.Context, req *graftv1.InitPoliciesRequest) (*graftv1.InitPoliciesResponse, error) {
	installed, kept, err := s.policies.InstallDefaults(ctx, principal(ctx).Name, req.GetOverwrite())
	if len(installed) > 0 {
		s.refreshPolicies(ctx)
	}
	if err != nil {
		return nil, toStatus(err)
	}
	differing, err := s.policies.Differing(ctx, kept)
	if err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.InitPoliciesResponse{Installed: installed, Kept: kept, Differing: differing}, nil
}

// refreshPolicies makes a policy change just made take effect here at
// once. Should it fail, the change still arrives through the watch moments
// later.
func (s *Server) refreshPolicies(ctx context.Context) {
	if err := s.policies.Refresh(ctx); err != nil {
		s.log.Warn("reloading policies after a change failed; the watch will apply it", "err", err)
	}
}

func policyProto(r acl.PolicyRecord) *graftv1.Policy {
	return &graftv1.Policy{Role: r.Role, Yaml: r.YAML, Author: r.Author, Updated: timestamppb.New(r.Updated)}
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }
