package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/graft-sh/graft/acl"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/rollout"
	"github.com/graft-sh/graft/store"
)

// Agents keeps graft-agents' reports.
type Agents interface {
	Put(ctx context.Context, r rollout.Report, ttl time.Duration) error
	List(ctx context.Context, app string) ([]rollout.Report, error)
	Status(ctx context.Context, copies []rollout.Copy, rev int64) (rollout.Status, error)
}

var _ Agents = (*rollout.Registry)(nil)

// maxHTTPAddress bounds a report's http_address (a host:port).
const maxHTTPAddress = 260

// Report implements graftv1.AgentServiceServer: an agent reports for its
// own application only (admins for any).
func (s *Server) Report(ctx context.Context, req *graftv1.ReportRequest) (*graftv1.ReportResponse, error) {
	if s.agents == nil {
		return nil, toStatus(unavailable("this graftd keeps no agent reports"))
	}
	rep := reportFrom(req.GetReport())
	p := principal(ctx)
	if _, err := store.ParsePath("/app/" + rep.App); err != nil || rep.App == "" || strings.Contains(rep.App, "/") {
		return nil, toStatus(invalid("report: app %q: want the application's name, one path segment", rep.App))
	}
	if len(rep.HTTPAddress) > maxHTTPAddress {
		return nil, toStatus(invalid("report: http_address: want a host:port of at most %d bytes", maxHTTPAddress))
	}
	if app, ok := replicator.AppName(p.Name); (!ok || app != rep.App) && !s.may(ctx, acl.ActionAdmin, adminPath) {
		return nil, toStatus(&acl.DeniedError{Principal: p.Name, Action: "report", Path: "/app/" + rep.App})
	}
	rep.Principal, rep.Time = p.Name, time.Now().UTC()
	if err := s.agents.Put(ctx, rep, time.Duration(req.GetTtlSeconds())*time.Second); err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.ReportResponse{}, nil
}

// ListAgents implements graftv1.AgentServiceServer: the reports of
// applications whose tree the caller may list.
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
		if s.may(ctx, acl.ActionList, "/app/"+r.App) {
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
		resp.Consumers = append(resp.Consumers, &graftv1.Consumer{Agent: reportProto(c.Agent), Reads: c.Reads, Ok: c.OK, Reason: c.Reason, Unhealthy: c.Unhealthy})
	}
	for _, c := range st.Copies {
		resp.Copies = append(resp.Copies, &graftv1.CopyStatus{Path: c.Path, Rule: c.Rule, Reached: c.Reached, Reason: c.Reason})
	}
	return resp, nil
}

func reportFrom(p *graftv1.AgentReport) rollout.Report {
	r := rollout.Report{ID: p.GetId(), App: p.GetApp(), Host: p.GetHost(), Revision: p.GetRevision(), Healthy: p.GetHealthy(), Reason: p.GetReason(),
		HTTPAddress: p.GetHttpAddress()}
	for _, t := range p.GetTemplates() {
		r.Templates = append(r.Templates, rollout.TemplateReport{Destination: t.GetDestination(), SHA256: t.GetSha256(), Keys: t.GetKeys(), Error: t.GetError()})
	}
	for _, l := range p.GetReloads() {
		r.Reloads = append(r.Reloads, rollout.ReloadReport{Kind: l.GetKind(), OK: l.GetOk(), Error: l.GetError()})
	}
	return r
}

func reportProto(r rollout.Report) *graftv1.AgentReport {
	p := &graftv1.AgentReport{Id: r.ID, App: r.App, Host: r.Host, Revision: r.Revision, Healthy: r.Healthy, Reason: r.Reason, Principal: r.Principal, Time: timestamppb.New(r.Time),
		HttpAddress: r.HTTPAddress}
	for _, t := range r.Templates {
		p.Templates = append(p.Templates, &graftv1.TemplateReport{Destination: t.Destination, Sha256: t.SHA256, Keys: t.Keys, Error: t.Error})
	}
	for _, l := range r.Reloads {
		p.Reloads = append(p.Reloads, &graftv1.ReloadReport{Kind: l.Kind, Ok: l.OK, Error: l.Error})
	}
	return p
}
