package sdk

import (
	"context"
	"time"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// Policy is one role's access policy.
type Policy struct {
	Role    string
	YAML    []byte // the policy document as stored
	Author  string // who last wrote it
	Updated time.Time
}

// PolicyDecision explains whether a principal may do an action on a path.
type PolicyDecision struct {
	Allowed        bool
	Role           string   // the role whose rule decided; empty when none matched
	Rule           string   // the rule that decided, e.g. "allow [read list] /dba/**"; empty when none matched
	Reason         string   // a sentence explaining the decision
	EffectiveRoles []string // the roles the principal was evaluated with
}

// PutPolicy creates or replaces the policy of the role its role: field
// names. graftd validates it first: a bad document is an error matching
// ErrInvalidArgument whose message names the line. Changes apply on every
// replica within a second. Taking admin on / away from the last policy
// that grants it is an error matching ErrFailedPrecondition, unless
// Force() is given. Needs the admin action.
func (c *Client) PutPolicy(ctx context.Context, yaml []byte, opts ...WriteOption) (Policy, error) {
	var o writeOptions
	for _, opt := range opts {
		opt(&o)
	}
	resp, err := c.policies.PutPolicy(ctx, &graftv1.PutPolicyRequest{Yaml: string(yaml), Force: o.force})
	if err != nil {
		return Policy{}, wrap(ctx, err)
	}
	return policyFrom(resp.GetPolicy()), nil
}

// GetPolicy returns role's policy. A role without one is an error matching
// ErrNotFound.
func (c *Client) GetPolicy(ctx context.Context, role string) (Policy, error) {
	resp, err := c.policies.GetPolicy(ctx, &graftv1.GetPolicyRequest{Role: role})
	if err != nil {
		return Policy{}, wrap(ctx, err)
	}
	return policyFrom(resp.GetPolicy()), nil
}

// ListPolicies returns every policy, sorted by role.
func (c *Client) ListPolicies(ctx context.Context) ([]Policy, error) {
	resp, err := c.policies.ListPolicies(ctx, &graftv1.ListPoliciesRequest{})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	pols := make([]Policy, 0, len(resp.GetPolicies()))
	for _, p := range resp.GetPolicies() {
		pols = append(pols, policyFrom(p))
	}
	return pols, nil
}

// DeletePolicy removes role's policy. Removing the last policy that grants
// admin on / is an error matching ErrFailedPrecondition, unless Force() is
// given. Needs the admin action.
func (c *Client) DeletePolicy(ctx context.Context, role string, opts ...WriteOption) error {
	var o writeOptions
	for _, opt := range opts {
		opt(&o)
	}
	if _, err := c.policies.DeletePolicy(ctx, &graftv1.DeletePolicyRequest{Role: role, Force: o.force}); err != nil {
		return wrap(ctx, err)
	}
	return nil
}

// CheckPolicy asks whether principal, holding roles in addition to those
// policies bind to it, may do action (read, list, write, delete, share,
// admin, ...) on path, and which rule decides. A denial is an answer, not
// an error.
func (c *Client) CheckPolicy(ctx context.Context, principal string, roles []string, action, path string) (PolicyDecision, error) {
	resp, err := c.policies.CheckPolicy(ctx, &graftv1.CheckPolicyRequest{Principal: principal, Roles: roles, Action: action, Path: path})
	if err != nil {
		return PolicyDecision{}, wrap(ctx, err)
	}
	return PolicyDecision{
		Allowed:        resp.GetAllowed(),
		Role:           resp.GetRole(),
		Rule:           resp.GetRule(),
		Reason:         resp.GetReason(),
		EffectiveRoles: resp.GetEffectiveRoles(),
	}, nil
}

// InitPolicies installs the default policies (admin, dba, app) and returns
// what it did (PolicyInit); with overwrite every default is written.
// Needs the admin action.
func (c *Client) InitPolicies(ctx context.Context, overwrite bool) (PolicyInit, error) {
	resp, err := c.policies.InitPolicies(ctx, &graftv1.InitPoliciesRequest{Overwrite: overwrite})
	if err != nil {
		return PolicyInit{}, wrap(ctx, err)
	}
	return PolicyInit{Installed: resp.GetInstalled(), Kept: resp.GetKept(), Differing: resp.GetDiffering()}, nil
}

// PolicyInit is what InitPolicies did.
type PolicyInit struct {
	// Installed are the roles whose default policy was written.
	Installed []string
	// Kept are the roles left alone because they had a policy.
	Kept []string
	// Differing are the kept roles whose policy is not the default the
	// server ships now (edited, or installed by an older graftd).
	Differing []string
}

func policyFrom(p *graftv1.Policy) Policy {
	if p == nil {
		return Policy{}
	}
	return Policy{Role: p.GetRole(), YAML: []byte(p.GetYaml()), Author: p.GetAuthor(), Updated: timeFrom(p.GetUpdated())}
}
