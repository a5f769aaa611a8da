package sdk

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// TokenInfo describes a token without revealing it.
type TokenInfo struct {
	Accessor  string // a non-secret id of the token, to list and revoke it by
	Principal string // whom the token stands for, e.g. "app:message-processor"
	Roles     []string
	Created   time.Time
	Creator   string    // the principal that created it
	Expires   time.Time // zero: the token does not expire
}

// Identity is the caller as graftd sees it.
type Identity struct {
	Principal string
	Roles     []string  // effective: from the token or certificate and from policy bindings
	Method    string    // "token", "certificate" or "root"
	Accessor  string    // the token's accessor, when a token was used
	Expires   time.Time // zero: the credential does not expire
}

// CreateToken issues a token for principal ("<kind>:<name>") holding roles,
// each of which must have a policy. A ttl of 0 means no expiry. The token
// is returned only this once: graftd keeps only its hash. Needs the admin
// action.
func (c *Client) CreateToken(ctx context.Context, principal string, roles []string, ttl time.Duration) (string, TokenInfo, error) {
	req := &graftv1.CreateTokenRequest{Principal: principal, Roles: roles}
	if ttl != 0 {
		// A negative ttl is sent as it is, for graftd to reject.
		req.Ttl = durationpb.New(ttl)
	}
	resp, err := c.tokens.CreateToken(ctx, req)
	if err != nil {
		return "", TokenInfo{}, wrap(ctx, err)
	}
	return resp.GetToken(), tokenInfoFrom(resp.GetInfo()), nil
}

// ListTokens returns the token records, of one principal if principal is
// set, sorted by principal then creation time. Tokens themselves are never
// listed. Needs the admin action.
func (c *Client) ListTokens(ctx context.Context, principal string) ([]TokenInfo, error) {
	resp, err := c.tokens.ListTokens(ctx, &graftv1.ListTokensRequest{Principal: principal})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	infos := make([]TokenInfo, 0, len(resp.GetTokens()))
	for _, t := range resp.GetTokens() {
		infos = append(infos, tokenInfoFrom(t))
	}
	return infos, nil
}

// RevokeToken revokes a token, named by the token itself or its accessor,
// and returns its record. Every graftd replica refuses it within a second.
// No match is an error matching ErrNotFound; its message does not repeat
// the argument. Needs the admin action.
func (c *Client) RevokeToken(ctx context.Context, tokenOrAccessor string) (TokenInfo, error) {
	resp, err := c.tokens.RevokeToken(ctx, &graftv1.RevokeTokenRequest{TokenOrAccessor: tokenOrAccessor})
	if err != nil {
		return TokenInfo{}, wrap(ctx, err)
	}
	return tokenInfoFrom(resp.GetInfo()), nil
}

// WhoAmI describes the caller: principal, roles and how it authenticated.
func (c *Client) WhoAmI(ctx context.Context) (Identity, error) {
	resp, err := c.tokens.WhoAmI(ctx, &graftv1.WhoAmIRequest{})
	if err != nil {
		return Identity{}, wrap(ctx, err)
	}
	return Identity{
		Principal: resp.GetPrincipal(),
		Roles:     resp.GetRoles(),
		Method:    resp.GetMethod(),
		Accessor:  resp.GetAccessor(),
		Expires:   timeFrom(resp.GetExpires()),
	}, nil
}

func tokenInfoFrom(p *graftv1.TokenInfo) TokenInfo {
	if p == nil {
		return TokenInfo{}
	}
	return TokenInfo{
		Accessor:  p.GetAccessor(),
		Principal: p.GetPrincipal(),
		Roles:     p.GetRoles(),
		Created:   timeFrom(p.GetCreated()),
		Creator:   p.GetCreator(),
		Expires:   timeFrom(p.GetExpires()),
	}
}

// timeFrom is the zero time for an unset timestamp.
func timeFrom(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}
