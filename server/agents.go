package server

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/stats"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/graft-sh/graft/acl"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/rollout"
	"github.com/graft-sh/graft/store"
)

// Agents keeps graft-agents' reports. A report that came over a
// connection lives while the connection is open (PutConn); Closed says
// the connection closed.
type Agents interface {
	PutConn(ctx context.Context, r rollout.Report, ttl time.Duration, c rollout.Conn) error
	Closed(c rollout.Conn)
	List(ctx context.Context, app string) ([]rollout.Report, error)
	Status(ctx context.Context, copies []rollout.Copy, rev int64) (rollout.Status, error)
}

var _ Agents = (*rollout.Registry)(nil)

// Report implements graftv1.AgentServiceServer. Reports acknowledge
// rollouts, which retire database users, so a report needs the report
// action on the application's tree (admins may report for any), and every
// key it lists must be a path in that tree the reporter may read.
func (s *Server) Report(ctx context.Context, req *graftv1.ReportRequest) (*graftv1.ReportResponse, error) {
	if s.agents == nil {
		return nil, toStatus(unavailable("this graftd keeps no agent reports"))
	}
	rep := reportFrom(req.GetReport())
	p := principal(ctx)
	if _, err := store.ParsePath("/app/" + rep.App); err != nil || rep.App == "" || strings.Contains(rep.App, "/") {
		return nil, toStatus(invalid("report: app %q: want the application's name, one path segment", rep.App))
	}
	tree := "/app/" + rep.App
	if !s.may(ctx, acl.ActionReport, tree) && !s.may(ctx, acl.ActionAdmin, adminPath) {
		denied := &acl.DeniedError{Principal: p.Name, Action: acl.ActionReport, Path: tree}
		if app, ok := replicator.AppName(p.Name); ok && app == rep.App {
			// Its own tree: most likely policies from before reports
			// needed a grant.
			denied.Reason = "agents need the report action on their tree; a cluster whose policies predate it lacks it in the app role: `graft policy init` names the default roles that differ, and `graft policy init --overwrite` (or `graft policy get app`, then `graft policy put` with report added to the /app/{name}/** rule) grants it"
		}
		return nil, toStatus(denied)
	}
	if err := rep.Validate(); err != nil {
		// The id is not validated yet: quote no more of it than a valid one holds.
		return nil, toStatus(fmt.Errorf("report of agent %q of %s: %w", clip(rep.ID, rollout.MaxNameBytes), rep.App, err))
	}
	for _, t := range rep.Templates {
		for _, k := range t.Keys {
			if path := strings.TrimSuffix(k, "/"); !s.may(ctx, acl.ActionRead, path) {
				return nil, toStatus(fmt.Errorf("report of agent %q of %s: template %s read %s: %w", rep.ID, rep.App, t.Destination, k,
					&acl.DeniedError{Principal: p.Name, Action: acl.ActionRead, Path: path, Reason: "an agent reports only paths it may read"}))
			}
		}
	}
	for _, b := range rep.Brokers {
		for _, k := range b.Keys {
			if !s.may(ctx, acl.ActionRead, k) {
				return nil, toStatus(fmt.Errorf("report of agent %q of %s: broker %s logs in with %s: %w", rep.ID, rep.App, b.Listen, k,
					&acl.DeniedError{Principal: p.Name, Action: acl.ActionRead, Path: k, Reason: "an agent reports only paths it may read"}))
			}
		}
	}
	for _, l := range rep.Leases {
		if !s.may(ctx, acl.ActionRead, l.Path) {
			return nil, toStatus(fmt.Errorf("report of agent %q of %s: lease %s issued at %s: %w", rep.ID, rep.App, l.ID, l.Path,
				&acl.DeniedError{Principal: p.Name, Action: acl.ActionRead, Path: l.Path, Reason: "an agent reports only leases of roles it may read"}))
		}
	}
	rep.Principal, rep.Time = p.Name, time.Now().UTC()
	if err := s.agents.PutConn(ctx, rep, time.Duration(req.GetTtlSeconds())*time.Second, connOf(ctx)); err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.ReportResponse{}, nil
}

// ListAgents implements graftv1.AgentServiceServer: the reports of
// applications whose tree the caller may list, without keys, file names
// and texts unless it may read the tree too.
func (s *Server) ListAgents(ctx context.Context, req *graftv1.ListAgentsRequest) (*graftv1.ListAgentsResponse, error) {
	if s.agents == nil {
		return &graftv1.ListAgentsResponse{}, nil
	}
	reps, err := s.agents.List(ctx, req.GetApp())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &graftv1.ListAgentsResponse{}
	for _, r := range reps {
		tree := "/app/" + r.App
		switch {
		case !s.may(ctx, acl.ActionList, tree):
		case !s.may(ctx, acl.ActionRead, tree):
			// Listing shows the agent; its keys and texts are for readers.
			resp.Agents = append(resp.Agents, reportProto(hidden(r)))
		default:
			resp.Agents = append(resp.Agents, reportProto(r))
		}
	}
	return resp, nil
}

// RolloutStatus implements graftv1.AgentServiceServer. The guard has
// checked list on the path; the consumers are found through the path's
// copies (the replication rules whose source covers it).
func (s *Server) RolloutStatus(ctx context.Context, req *graftv1.RolloutStatusRequest) (*graftv1.RolloutStatusResponse, error) {
	if s.agents == nil {
		return nil, toStatus(unavailable("this graftd keeps no agent reports"))
	}
	path := req.GetPath()
	copies := []rollout.Copy{{Path: path}}
	for _, rule := range s.replication.Rules().BySource(path) {
		for _, d := range rule.Destinations {
			if c, ok := rule.Map(path, d); ok {
				copies = append(copies, rollout.Copy{Path: c, Rule: rule.ID})
			}
		}
	}
	st, err := s.agents.Status(ctx, copies, req.GetRevision())
	if err != nil {
		return nil, toStatus(fmt.Errorf("rollout status %s: %w", path, err))
	}
	resp := &graftv1.RolloutStatusResponse{Revision: st.Revision, Complete: st.Complete}
	for _, c := range st.Consumers {
		con := &graftv1.Consumer{Agent: reportProto(c.Agent), Reads: c.Reads, Ok: c.OK, Reason: c.Reason, Unhealthy: c.Unhealthy,
			BrokerOnly: c.BrokerOnly, OldSessions: int32(c.OldSessions)}
		if tree := "/app/" + c.Agent.App; !s.may(ctx, acl.ActionList, tree) || !s.may(ctx, acl.ActionRead, tree) {
			// Another principal's agent: whether it runs the revision,
			// not what its templates read, where they write, or what it
			// says went wrong.
			con.Agent = reportProto(hidden(c.Agent))
			con.Reason = c.Summary
			if con.Reason != "" {
				con.Reason += " (details hidden: you may not read " + tree + ")"
			}
		}
		resp.Consumers = append(resp.Consumers, con)
	}
	for _, c := range st.Copies {
		resp.Copies = append(resp.Copies, &graftv1.CopyStatus{Path: c.Path, Rule: c.Rule, Reached: c.Reached, Reason: c.Reason})
	}
	return resp, nil
}

// hidden is a report without the key names, file names and texts of its
// agent, for a caller who may not read the agent's tree.
func hidden(r rollout.Report) rollout.Report {
	r.Reason = ""
	r.Templates = make([]rollout.TemplateReport, len(r.Templates))
	reloads := make([]rollout.ReloadReport, len(r.Reloads))
	for i, l := range r.Reloads {
		reloads[i] = rollout.ReloadReport{Kind: l.Kind, OK: l.OK}
	}
	r.Reloads = reloads
	r.Leases = nil
	r.Brokers = nil
	return r
}

// reportFrom takes what an agent reports; since_revision and principal
// are graftd's to set.
func reportFrom(p *graftv1.AgentReport) rollout.Report {
	r := rollout.Report{ID: p.GetId(), App: p.GetApp(), Host: p.GetHost(), Revision: p.GetRevision(), Healthy: p.GetHealthy(), Reason: p.GetReason(),
		Instance: p.GetInstance(), HTTPAddress: p.GetHttpAddress()}
	for _, t := range p.GetTemplates() {
		r.Templates = append(r.Templates, rollout.TemplateReport{Destination: t.GetDestination(), SHA256: t.GetSha256(), Keys: t.GetKeys(), Error: t.GetError()})
	}
	for _, l := range p.GetReloads() {
		r.Reloads = append(r.Reloads, rollout.ReloadReport{Kind: l.GetKind(), OK: l.GetOk(), Error: l.GetError()})
	}
	for _, l := range p.GetLeases() {
		r.Leases = append(r.Leases, rollout.LeaseReport{ID: l.GetId(), Path: l.GetPath(), Username: l.GetUsername(), Retiring: l.GetRetiring()})
	}
	for _, b := range p.GetBrokers() {
		br := rollout.BrokerReport{Listen: b.GetListen(), Keys: b.GetKeys(), User: b.GetUser()}
		for _, sc := range b.GetSessions() {
			br.Sessions = append(br.Sessions, rollout.SessionCount{User: sc.GetUser(), Count: int(sc.GetCount())})
		}
		r.Brokers = append(r.Brokers, br)
	}
	return r
}

func reportProto(r rollout.Report) *graftv1.AgentReport {
	p := &graftv1.AgentReport{Id: r.ID, App: r.App, Host: r.Host, Revision: r.Revision, Healthy: r.Healthy, Reason: r.Reason, Principal: r.Principal, Time: timestamppb.New(r.Time),
		Instance: r.Instance, HttpAddress: r.HTTPAddress, SinceRevision: r.Since}
	for _, t := range r.Templates {
		p.Templates = append(p.Templates, &graftv1.TemplateReport{Destination: t.Destination, Sha256: t.SHA256, Keys: t.Keys, Error: t.Error})
	}
	for _, l := range r.Reloads {
		p.Reloads = append(p.Reloads, &graftv1.ReloadReport{Kind: l.Kind, Ok: l.OK, Error: l.Error})
	}
	for _, l := range r.Leases {
		p.Leases = append(p.Leases, &graftv1.LeaseReport{Id: l.ID, Path: l.Path, Username: l.Username, Retiring: l.Retiring})
	}
	for _, b := range r.Brokers {
		bp := &graftv1.BrokerReport{Listen: b.Listen, Keys: b.Keys, User: b.User}
		for _, sc := range b.Sessions {
			bp.Sessions = append(bp.Sessions, &graftv1.SessionCount{User: sc.User, Count: int32(sc.Count)})
		}
		p.Brokers = append(p.Brokers, bp)
	}
	return p
}

// clip returns s cut to at most n bytes, marked when cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// connKey holds the id of the connection a call came over.
type connKey struct{}

// conns numbers connections and tells the agent registry when one
// closes, so that the reports that came over it get leases of their own.
type conns struct {
	last   atomic.Uint64
	closed func(rollout.Conn)
}

func (c *conns) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return context.WithValue(ctx, connKey{}, rollout.Conn(c.last.Add(1)))
}

func (c *conns) HandleConn(ctx context.Context, s stats.ConnStats) {
	if _, end := s.(*stats.ConnEnd); end && c.closed != nil {
		if id, ok := ctx.Value(connKey{}).(rollout.Conn); ok {
			c.closed(id)
		}
	}
}

func (c *conns) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (c *conns) HandleRPC(context.Context, stats.RPCStats)                       {}

// connOf is the connection ctx's call came over (0: none known).
func connOf(ctx context.Context) rollout.Conn {
	id, _ := ctx.Value(connKey{}).(rollout.Conn)
	return id
}
