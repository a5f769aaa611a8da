package sdk

import (
	"context"
	"time"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// Rule is a replication rule: Source and every path below it appear at
// the same relative paths under each destination.
type Rule struct {
	ID     string
	Source string
	// Destinations are concrete paths; for a rule with Patterns they
	// include what the patterns stand for in every application known.
	Destinations []string
	// Patterns are the pattern destinations given (/app/+/...).
	Patterns []string
	OnDelete string // "delete" or "retain": what a source deletion does to the copies
	Author   string
	Created  time.Time
}

// ShareOptions qualify Share.
type ShareOptions struct {
	// OnDelete is "delete" (default: a source deletion deletes its copies)
	// or "retain".
	OnDelete string
}

// RuleFilter selects rules; empty fields select all.
type RuleFilter struct {
	Source      string // rules whose source overlaps this path
	Destination string // rules with a destination overlapping this path
}

// ReplicationStatus is how a path takes part in replication.
type ReplicationStatus struct {
	Path string
	// As a destination: the rule writing it (nil if none) and its source.
	Rule                  *Rule
	Source                string
	SourceRevision        int64 // 0 if the source does not exist
	AppliedSourceRevision int64 // the source revision last copied
	Applied               time.Time
	DestinationRevision   int64 // 0 if the destination does not exist
	InSync                bool
	Lag                   time.Duration // source commit to destination commit, last copy
	// LastError is the last change of the source the replicator parked
	// after retrying; Attempts and LastErrorTime go with it.
	LastError     string
	Attempts      int
	LastErrorTime time.Time
	// As a source: the rules copying it.
	Feeds []Rule
}

// Share creates a replication rule copying source to dests and returns it
// with the number of values written to fill the destinations, which is
// done before Share returns. Needs the share action on source. A rule that
// conflicts with another (overlapping destinations, a cycle) or a
// destination holding hand-written values is an error matching
// ErrFailedPrecondition; a malformed one matches ErrInvalidArgument. A
// destination /app/+/PATH stands for PATH in every application graft
// knows, and in each that appears later (a token is created for it, or it
// first authenticates).
func (c *Client) Share(ctx context.Context, source string, dests []string, opts ShareOptions) (Rule, int, error) {
	resp, err := c.repl.Share(ctx, &graftv1.ShareRequest{Source: source, Destinations: dests, OnDelete: opts.OnDelete})
	if err != nil {
		return Rule{}, 0, wrap(ctx, err)
	}
	return ruleFrom(resp.GetRule()), int(resp.GetFilled()), nil
}

// ListRules returns the rules f selects that the caller may see (it may
// list their source or a destination), by id.
func (c *Client) ListRules(ctx context.Context, f RuleFilter) ([]Rule, error) {
	resp, err := c.repl.ListRules(ctx, &graftv1.ListRulesRequest{Source: f.Source, Destination: f.Destination})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	rules := make([]Rule, 0, len(resp.GetRules()))
	for _, r := range resp.GetRules() {
		rules = append(rules, ruleFrom(r))
	}
	return rules, nil
}

// GetRule returns one rule; an unknown id matches ErrNotFound.
func (c *Client) GetRule(ctx context.Context, id string) (Rule, error) {
	resp, err := c.repl.GetRule(ctx, &graftv1.GetRuleRequest{Id: id})
	if err != nil {
		return Rule{}, wrap(ctx, err)
	}
	return ruleFrom(resp.GetRule()), nil
}

// Unshare deletes a rule and returns it with the number of copies deleted.
// With orphan the copies stay, as ordinary values. Needs the share action
// on the rule's source.
func (c *Client) Unshare(ctx context.Context, id string, orphan bool) (Rule, int, error) {
	resp, err := c.repl.Unshare(ctx, &graftv1.UnshareRequest{Id: id, Orphan: orphan})
	if err != nil {
		return Rule{}, 0, wrap(ctx, err)
	}
	return ruleFrom(resp.GetRule()), int(resp.GetPruned()), nil
}

// ReplicationStatus reports path's part in replication. Needs read on path.
func (c *Client) ReplicationStatus(ctx context.Context, path string) (ReplicationStatus, error) {
	resp, err := c.repl.ReplicationStatus(ctx, &graftv1.ReplicationStatusRequest{Path: path})
	if err != nil {
		return ReplicationStatus{}, wrap(ctx, err)
	}
	st := ReplicationStatus{
		Path:                  resp.GetPath(),
		Source:                resp.GetSource(),
		SourceRevision:        resp.GetSourceRevision(),
		AppliedSourceRevision: resp.GetAppliedSourceRevision(),
		DestinationRevision:   resp.GetDestinationRevision(),
		InSync:                resp.GetInSync(),
		Lag:                   resp.GetLag().AsDuration(),
		LastError:             resp.GetLastError(),
		Attempts:              int(resp.GetAttempts()),
	}
	if r := resp.GetRule(); r != nil {
		rule := ruleFrom(r)
		st.Rule = &rule
	}
	if t := resp.GetApplied(); t != nil {
		st.Applied = t.AsTime()
	}
	if t := resp.GetLastErrorTime(); t != nil {
		st.LastErrorTime = t.AsTime()
	}
	for _, r := range resp.GetFeeds() {
		st.Feeds = append(st.Feeds, ruleFrom(r))
	}
	return st, nil
}

func ruleFrom(r *graftv1.Rule) Rule {
	return Rule{
		ID:           r.GetId(),
		Source:       r.GetSource(),
		Destinations: r.GetDestinations(),
		Patterns:     r.GetPatterns(),
		OnDelete:     r.GetOnDelete(),
		Author:       r.GetAuthor(),
		Created:      r.GetCreated().AsTime(),
	}
}
