package sdk

import (
	"context"
	"maps"
	"slices"
	"time"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// AgentReport is what one graft-agent runs.
type AgentReport struct {
	ID        string // unique within its application; graft-agent: the host and a hash of its config path by default
	App       string
	Host      string
	Revision  int64 // the store revision of the tree it last rendered from
	Templates []TemplateReport
	Reloads   []ReloadReport // of its last reload
	Healthy   bool
	Reason    string    // why not healthy, or why a reload failed; never a value
	Time      time.Time // set by graftd
	Principal string    // set by graftd
	// SinceRevision is the store revision at which graftd first stored
	// this agent process's report (set by graftd).
	SinceRevision int64
	// Instance is a random id the agent process picks when it starts:
	// graftd tells two live agents under one ID apart by it.
	Instance string
	// HTTPAddress is where the agent serves /healthz, /readyz and
	// /metrics; empty when they are off.
	HTTPAddress string
	// Leases are the dynamic credentials' leases the agent holds.
	Leases []LeaseReport
	// Brokers are the listeners of its credential broker.
	Brokers []BrokerReport
}

// BrokerReport is one listener of an agent's credential broker.
type BrokerReport struct {
	Listen string
	// Keys are the paths of the credential it logs in with, in the
	// agent's tree.
	Keys []string
	// User is the database user new connections log in as.
	User string
	// Sessions are the sessions open through it, by database user.
	Sessions map[string]int
}

// LeaseReport is one lease an agent holds; never the password.
type LeaseReport struct {
	ID       string
	Path     string // the role's copy in the agent's tree it was issued from
	Username string
	// Retiring: replaced, revoked once the application runs healthy on
	// its replacement and the grace period has passed.
	Retiring bool
}

// TemplateReport is one rendered file.
type TemplateReport struct {
	Destination string
	SHA256      string   // of its content, hex
	Keys        []string // paths its last render read; a tree prefix ends in "/"
	Error       string   // why its last render failed; the file holds the last good content
}

// ReloadReport is one reload action's outcome.
type ReloadReport struct {
	Kind  string // the reload action's key (signal, http, command, docker, ...), or exec
	OK    bool
	Error string
}

// Report records what an agent runs, for ttl (0: graftd's default, 15s);
// report again before it ends to stay listed. An application may report
// only for itself.
func (c *Client) Report(ctx context.Context, r AgentReport, ttl time.Duration) error {
	p := &graftv1.AgentReport{Id: r.ID, App: r.App, Host: r.Host, Revision: r.Revision, Healthy: r.Healthy, Reason: r.Reason,
		Instance: r.Instance, HttpAddress: r.HTTPAddress}
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
		for _, u := range slices.Sorted(maps.Keys(b.Sessions)) {
			bp.Sessions = append(bp.Sessions, &graftv1.SessionCount{User: u, Count: int32(min(b.Sessions[u], 1<<20))})
		}
		p.Brokers = append(p.Brokers, bp)
	}
	_, err := c.agents.Report(ctx, &graftv1.ReportRequest{Report: p, TtlSeconds: int64(ttl / time.Second)})
	return wrap(ctx, err)
}

// ListAgents returns the live reports of the agents the caller may see
// (of applications whose tree it may list), of one application if app is
// set.
func (c *Client) ListAgents(ctx context.Context, app string) ([]AgentReport, error) {
	resp, err := c.agents.ListAgents(ctx, &graftv1.ListAgentsRequest{App: app})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	out := make([]AgentReport, 0, len(resp.GetAgents()))
	for _, a := range resp.GetAgents() {
		out = append(out, reportFrom(a))
	}
	return out, nil
}

func reportFrom(p *graftv1.AgentReport) AgentReport {
	r := AgentReport{ID: p.GetId(), App: p.GetApp(), Host: p.GetHost(), Revision: p.GetRevision(), Healthy: p.GetHealthy(), Reason: p.GetReason(), Principal: p.GetPrincipal(),
		SinceRevision: p.GetSinceRevision(), Instance: p.GetInstance(), HTTPAddress: p.GetHttpAddress()}
	if t := p.GetTime(); t != nil {
		r.Time = t.AsTime()
	}
	for _, t := range p.GetTemplates() {
		r.Templates = append(r.Templates, TemplateReport{Destination: t.GetDestination(), SHA256: t.GetSha256(), Keys: t.GetKeys(), Error: t.GetError()})
	}
	for _, l := range p.GetReloads() {
		r.Reloads = append(r.Reloads, ReloadReport{Kind: l.GetKind(), OK: l.GetOk(), Error: l.GetError()})
	}
	for _, l := range p.GetLeases() {
		r.Leases = append(r.Leases, LeaseReport{ID: l.GetId(), Path: l.GetPath(), Username: l.GetUsername(), Retiring: l.GetRetiring()})
	}
	for _, b := range p.GetBrokers() {
		br := BrokerReport{Listen: b.GetListen(), Keys: b.GetKeys(), User: b.GetUser()}
		if len(b.GetSessions()) > 0 {
			br.Sessions = map[string]int{}
			for _, sc := range b.GetSessions() {
				br.Sessions[sc.GetUser()] = int(sc.GetCount())
			}
		}
		r.Brokers = append(r.Brokers, br)
	}
	return r
}

// Consumer is an agent that reads a value or a copy of it.
type Consumer struct {
	Agent  AgentReport
	Reads  string // the path it reads
	OK     bool   // it runs the revision asked for or newer, rendered, healthy
	Reason string // why not
	// Unhealthy: it runs the revision, but its application failed its
	// health check.
	Unhealthy bool
	// BrokerOnly: the agent uses the value only through its credential
	// broker; OldSessions are the sessions the broker still has open as
	// users other than the one it now logs in with.
	BrokerOnly  bool
	OldSessions int
}

// CopyStatus is whether replication has brought the revision to a copy.
type CopyStatus struct {
	Path, Rule string
	Reached    bool
	Reason     string
}

// Rollout says where a value has rolled out.
type Rollout struct {
	Revision  int64
	Consumers []Consumer
	Complete  bool // every consumer is OK
	// Copies are the value's replicated copies, read by an agent or not.
	Copies []CopyStatus
}

// RolloutStatus lists every consumer of path (an agent whose templates
// read it or a copy of it) and whether each runs revision rev of it or a
// newer one (0: its current revision) and is healthy.
func (c *Client) RolloutStatus(ctx context.Context, path string, rev int64) (Rollout, error) {
	resp, err := c.agents.RolloutStatus(ctx, &graftv1.RolloutStatusRequest{Path: path, Revision: rev})
	if err != nil {
		return Rollout{}, wrap(ctx, err)
	}
	out := Rollout{Revision: resp.GetRevision(), Complete: resp.GetComplete()}
	for _, con := range resp.GetConsumers() {
		out.Consumers = append(out.Consumers, Consumer{Agent: reportFrom(con.GetAgent()), Reads: con.GetReads(), OK: con.GetOk(), Reason: con.GetReason(), Unhealthy: con.GetUnhealthy(),
			BrokerOnly: con.GetBrokerOnly(), OldSessions: int(con.GetOldSessions())})
	}
	for _, cp := range resp.GetCopies() {
		out.Copies = append(out.Copies, CopyStatus{Path: cp.GetPath(), Rule: cp.GetRule(), Reached: cp.GetReached(), Reason: cp.GetReason()})
	}
	return out, nil
}
