package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/graft-sh/graft/acl"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/store"
)

// Replication manages replication rules.
type Replication interface {
	Share(ctx context.Context, author, source string, dests []string, onDelete string) (replicator.Rule, int, error)
	Unshare(ctx context.Context, author, id string, orphan bool) (replicator.Rule, int, error)
	Rule(ctx context.Context, id string) (replicator.Rule, error)
	Rules() *replicator.Index
	Status(ctx context.Context, path string) (replicator.Status, error)
	CheckDelete(path string) error
	// AppSeen registers an application whose identity was created or
	// authenticated, and gives it every pattern rule's destinations.
	AppSeen(ctx context.Context, name, via string) error
}

var _ Replication = (*replicator.Replicator)(nil)

// Share implements graftv1.ReplicationServiceServer. The guard has checked
// the share action on the source.
func (s *Server) Share(ctx context.Context, req *graftv1.ShareRequest) (*graftv1.ShareResponse, error) {
	if len(req.GetDestinations()) == 0 {
		return nil, toStatus(invalid("share %s: give at least one destination with --to", req.GetSource()))
	}
	rule, filled, err := s.replication.Share(ctx, principal(ctx).Name, req.GetSource(), req.GetDestinations(), req.GetOnDelete())
	if errors.Is(err, replicator.ErrIncomplete) {
		return nil, toStatus(err)
	}
	if err != nil {
		return nil, toStatus(fmt.Errorf("share %s: %w", req.GetSource(), s.ruleErrorFor(ctx, req, err)))
	}
	return &graftv1.ShareResponse{Rule: ruleProto(rule), Filled: int64(filled)}, nil
}

// ruleErrorFor is err as the caller may see it: a conflict with rules
// whose paths it may not list says so without naming them.
func (s *Server) ruleErrorFor(ctx context.Context, req *graftv1.ShareRequest, err error) error {
	var re *replicator.RuleError
	if !errors.As(err, &re) || len(re.Others) == 0 {
		return err
	}
	for _, p := range re.Others {
		if p == req.GetSource() || slices.Contains(req.GetDestinations(), p) || s.may(ctx, acl.ActionList, p) {
			continue
		}
		if re.Rule == "" {
			return fmt.Errorf("%w: the rule would make a cycle through rules you may not see; a value must not be copied back into its own source", replicator.ErrRuleConflict)
		}
		return fmt.Errorf("%w: a destination overlaps a destination of a rule you may not see, and a destination belongs to one rule; choose another destination, or ask an operator", replicator.ErrRuleConflict)
	}
	return err
}

// maySee reports whether the caller may see a rule: it may list its
// source or one of its destinations.
func (s *Server) maySee(ctx context.Context, r replicator.Rule) bool {
	_, ok := s.visibleRule(ctx, r)
	return ok
}

// visibleRule is rule r as the caller may see it: whole to who may list
// its source (its owner), and otherwise with only the destinations the
// caller may list, so that app:b sees its own copy of a /app/+/... rule
// and not every application's name. ok is false when it may see none.
func (s *Server) visibleRule(ctx context.Context, r replicator.Rule) (replicator.Rule, bool) {
	if s.may(ctx, acl.ActionList, r.Source) {
		return r, true
	}
	var dests []string
	for _, d := range r.Destinations {
		if s.may(ctx, acl.ActionList, d) {
			dests = append(dests, d)
		}
	}
	r.Destinations = dests
	return r, len(dests) > 0
}

// ListRules implements graftv1.ReplicationServiceServer.
func (s *Server) ListRules(ctx context.Context, req *graftv1.ListRulesRequest) (*graftv1.ListRulesResponse, error) {
	resp := &graftv1.ListRulesResponse{}
	for _, r := range s.replication.Rules().Rules() {
		if src := req.GetSource(); src != "" && !replicator.Overlap(src, r.Source) {
			continue
		}
		if dst := req.GetDestination(); dst != "" && !r.DestinationOverlaps(dst) {
			continue
		}
		if v, ok := s.visibleRule(ctx, r); ok {
			resp.Rules = append(resp.Rules, ruleProto(v))
		}
	}
	return resp, nil
}

// GetRule implements graftv1.ReplicationServiceServer.
func (s *Server) GetRule(ctx context.Context, req *graftv1.GetRuleRequest) (*graftv1.GetRuleResponse, error) {
	r, err := s.replication.Rule(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	v, ok := s.visibleRule(ctx, r)
	if !ok {
		// As if it did not exist: its paths are not the caller's to know.
		return nil, toStatus(ruleNotFound(req.GetId()))
	}
	return &graftv1.GetRuleResponse{Rule: ruleProto(v)}, nil
}

// Unshare implements graftv1.ReplicationServiceServer.
func (s *Server) Unshare(ctx context.Context, req *graftv1.UnshareRequest) (*graftv1.UnshareResponse, error) {
	r, err := s.replication.Rule(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	p := principal(ctx)
	if d := s.access.Decide(p, acl.ActionShare, r.Source); !d.Allowed {
		if !s.maySee(ctx, r) {
			return nil, toStatus(ruleNotFound(req.GetId()))
		}
		return nil, toStatus(d.Err(p, acl.ActionShare, r.Source))
	}
	r, pruned, err := s.replication.Unshare(ctx, p.Name, req.GetId(), req.GetOrphan())
	if err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.UnshareResponse{Rule: ruleProto(r), Pruned: int64(pruned)}, nil
}

// ReplicationStatus implements graftv1.ReplicationServiceServer.
func (s *Server) ReplicationStatus(ctx context.Context, req *graftv1.ReplicationStatusRequest) (*graftv1.ReplicationStatusResponse, error) {
	st, err := s.replication.Status(ctx, req.GetPath())
	if err != nil {
		return nil, toStatus(fmt.Errorf("status %s: %w", req.GetPath(), err))
	}
	resp := &graftv1.ReplicationStatusResponse{
		Path:                  st.Path,
		Source:                st.Source,
		SourceRevision:        st.SourceRevision,
		AppliedSourceRevision: st.AppliedSourceRevision,
		DestinationRevision:   st.DestinationRevision,
		InSync:                st.InSync,
	}
	if st.Rule != nil {
		if v, ok := s.visibleRule(ctx, *st.Rule); ok {
			resp.Rule = ruleProto(v)
		}
	}
	if !st.Applied.IsZero() {
		resp.Applied = timestamppb.New(st.Applied)
		resp.Lag = durationpb.New(st.Lag)
	}
	if p := st.Parked; p != nil {
		resp.LastError = p.Error
		resp.Attempts = int32(p.Attempts)
		resp.LastErrorTime = timestamppb.New(timeOf(p.Time))
	}
	for _, r := range st.Feeds {
		if v, ok := s.visibleRule(ctx, r); ok {
			resp.Feeds = append(resp.Feeds, ruleProto(v))
		}
	}
	return resp, nil
}

// ruleNotFound is what a caller who may not see a rule is told of it.
func ruleNotFound(id string) error {
	return fmt.Errorf("rule %s: %w (see `graft rules ls`)", id, store.ErrNotFound)
}

func timeOf(unixNanos int64) time.Time { return time.Unix(0, unixNanos).UTC() }

func ruleProto(r replicator.Rule) *graftv1.Rule {
	return &graftv1.Rule{
		Id:           r.ID,
		Source:       r.Source,
		Destinations: r.Destinations,
		Patterns:     r.Patterns,
		OnDelete:     r.OnDelete,
		Author:       r.Author,
		Created:      timestamppb.New(r.Created),
	}
}
