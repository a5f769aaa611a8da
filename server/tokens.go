package server

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/graft-sh/graft/acl"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/store"
)

var principalRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}:[A-Za-z0-9._-]{1,255}$`)

// CreateToken implements graftv1.TokenServiceServer.
func (s *Server) CreateToken(ctx context.Context, req *graftv1.CreateTokenRequest) (*graftv1.CreateTokenResponse, error) {
	name := req.GetPrincipal()
	switch {
	case name == acl.RootPrincipal:
		return nil, toStatus(invalid("token create: root tokens come only from `graftd --dev` or the audited `graftd break-glass`"))
	case !principalRE.MatchString(name) || strings.HasSuffix(name, ":.") || strings.HasSuffix(name, ":.."):
		return nil, toStatus(invalid("token create: principal %q: want <kind>:<name>, such as app:message-processor or user:alice", name))
	}
	roles := slices.Compact(slices.Sorted(slices.Values(req.GetRoles())))
	if len(roles) == 0 {
		return nil, toStatus(invalid("token create %s: give at least one --role (see `graft policy ls`)", name))
	}
	for _, role := range roles {
		if _, err := s.policies.Get(ctx, role); err != nil {
			if isNotFound(err) {
				return nil, toStatus(invalid("token create %s: role %q has no policy; create it with `graft policy put` or pick one from `graft policy ls`", name, role))
			}
			return nil, toStatus(err)
		}
	}
	var expires time.Time
	if ttl := req.GetTtl(); ttl != nil {
		if err := ttl.CheckValid(); err != nil || ttl.AsDuration() < 0 {
			return nil, toStatus(invalid("token create %s: --ttl must be a positive duration such as 720h", name))
		}
		if d := ttl.AsDuration(); d > 0 {
			expires = time.Now().Add(d).UTC()
		}
	}
	token := acl.NewToken()
	rec := acl.TokenRecord{
		Hash:      acl.HashToken(token),
		Accessor:  acl.NewAccessor(),
		Principal: name,
		Roles:     roles,
		Created:   time.Now().UTC(),
		Creator:   principal(ctx).Name,
		Expires:   expires,
	}
	if err := s.auth.Put(ctx, rec); err != nil {
		return nil, toStatus(err)
	}
	s.log.Info("token created", "principal", name, "roles", roles, "accessor", rec.Accessor, "creator", rec.Creator)
	if app, ok := replicator.AppName(name); ok {
		// The application's copies are in place before its token is handed
		// out; should that fail, the reconciler puts them there.
		if err := s.replication.AppSeen(ctx, app, "token"); err != nil {
			s.log.Warn("a new application's pattern destinations are not all in place yet; the reconciler retries", "app", app, "err", err)
		}
	}
	return &graftv1.CreateTokenResponse{Token: token, Info: tokenInfo(rec)}, nil
}

// ListTokens implements graftv1.TokenServiceServer.
func (s *Server) ListTokens(ctx context.Context, req *graftv1.ListTokensRequest) (*graftv1.ListTokensResponse, error) {
	recs, err := s.auth.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	slices.SortFunc(recs, func(a, b acl.TokenRecord) int {
		if c := strings.Compare(a.Principal, b.Principal); c != 0 {
			return c
		}
		return a.Created.Compare(b.Created)
	})
	resp := &graftv1.ListTokensResponse{}
	for _, r := range recs {
		if req.GetPrincipal() == "" || r.Principal == req.GetPrincipal() {
			resp.Tokens = append(resp.Tokens, tokenInfo(r))
		}
	}
	return resp, nil
}

// RevokeToken implements graftv1.TokenServiceServer.
func (s *Server) RevokeToken(ctx context.Context, req *graftv1.RevokeTokenRequest) (*graftv1.RevokeTokenResponse, error) {
	arg := strings.TrimSpace(req.GetTokenOrAccessor())
	if arg == "" {
		return nil, toStatus(invalid("token revoke: give the token or its accessor (see `graft token ls`)"))
	}
	recs, err := s.auth.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	hash := acl.HashToken(arg)
	for _, r := range recs {
		if r.Hash == hash || (r.Accessor != "" && r.Accessor == arg) {
			if err := s.auth.Delete(ctx, r.Hash); err != nil {
				return nil, toStatus(err)
			}
			s.log.Info("token revoked", "principal", r.Principal, "accessor", r.Accessor, "by", principal(ctx).Name)
			return &graftv1.RevokeTokenResponse{Info: tokenInfo(r)}, nil
		}
	}
	// Never echo the argument: it may be a token.
	return nil, toStatus(fmt.Errorf("token revoke: %w: no token or accessor matches (see `graft token ls`)", store.ErrNotFound))
}

// WhoAmI implements graftv1.TokenServiceServer.
func (s *Server) WhoAmI(ctx context.Context, _ *graftv1.WhoAmIRequest) (*graftv1.WhoAmIResponse, error) {
	p := principal(ctx)
	method := p.Method
	if p.IsRoot() {
		method = "root"
	}
	resp := &graftv1.WhoAmIResponse{
		Principal: p.Name,
		Roles:     s.effectiveRoles(p),
		Method:    method,
		Accessor:  p.Accessor,
	}
	if !p.Expires.IsZero() {
		resp.Expires = timestamppb.New(p.Expires)
	}
	return resp, nil
}

// effectiveRoles is the principal's roles plus those that policies bind
// to it by name.
func (s *Server) effectiveRoles(p acl.Principal) []string {
	roles := slices.Clone(p.Roles)
	for _, pol := range s.policies.Authorizer().Policies() {
		if slices.Contains(pol.Principals, p.Name) {
			roles = append(roles, pol.Role)
		}
	}
	slices.Sort(roles)
	return slices.Compact(roles)
}

func tokenInfo(r acl.TokenRecord) *graftv1.TokenInfo {
	info := &graftv1.TokenInfo{
		Accessor:  r.Accessor,
		Principal: r.Principal,
		Roles:     r.Roles,
		Creator:   r.Creator,
		Created:   timestamppb.New(r.Created),
	}
	if !r.Expires.IsZero() {
		info.Expires = timestamppb.New(r.Expires)
	}
	return info
}
