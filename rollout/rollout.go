// Package rollout owns what graft-agents report they run, and the answer
// to "has this value rolled out to every application that uses it?".
// Reports are records in the store's agents space, each bound to a lease
// its agent renews by reporting again, so a dead agent's report is gone
// within its TTL.
package rollout

import (
	"context"
	"errors"
	"fmt"
	pathpkg "path"
	"reflect"
	"strings"
	"time"

	"github.com/graft-sh/graft/store"
)

// Report is what one agent runs.
type Report struct {
	ID        string           `json:"id"`
	App       string           `json:"app"`
	Host      string           `json:"host"`
	Revision  int64            `json:"revision"`
	Templates []TemplateReport `json:"templates"`
	Reloads   []ReloadReport   `json:"reloads,omitempty"`
	Healthy   bool             `json:"healthy"`
	Reason    string           `json:"reason,omitempty"`
	// HTTPAddress is where the agent serves /healthz, /readyz and
	// /metrics ("" when off).
	HTTPAddress string `json:"http_address,omitempty"`
	// Time is when the agent first reported this state: a report that
	// changes nothing only renews the lease.
	Time      time.Time `json:"time"`
	Principal string    `json:"principal"`
	// Lease is the etcd lease the report lives by.
	Lease int64 `json:"lease"`
}

// TemplateReport is one rendered file: its content hash and the paths its
// last render read (a tree prefix ends in "/").
type TemplateReport struct {
	Destination string   `json:"destination"`
	SHA256      string   `json:"sha256,omitempty"`
	Keys        []string `json:"keys,omitempty"`
	Error       string   `json:"error,omitempty"`
}

// ReloadReport is one reload action's outcome.
type ReloadReport struct {
	Kind  string `json:"kind"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// TTL bounds of a report.
const (
	DefaultTTL = 15 * time.Second
	MaxTTL     = 5 * time.Minute
)

// ErrInvalid says a report is malformed.
var ErrInvalid = errors.New("invalid agent report")

// Registry keeps the agents' reports.
type Registry struct {
	store *store.Store
	recs  *store.Records[Report]
}

// New returns the registry of the store's agent reports.
func New(s *store.Store) *Registry {
	return &Registry{store: s, recs: store.NewRecords[Report](s, store.SpaceAgents)}
}

func key(app, id string) string { return app + "/" + id }

// Put stores a report for ttl, renewing the lease of the agent's previous
// report when it is still alive.
func (r *Registry) Put(ctx context.Context, rep Report, ttl time.Duration) error {
	if rep.ID == "" || strings.ContainsAny(rep.ID, "/\n") || len(rep.ID) > 253 {
		return fmt.Errorf("%w: agent id %q: want a name of at most 253 characters without / (the default is the host name)", ErrInvalid, rep.ID)
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	ttl = min(ttl, MaxTTL)
	k := key(rep.App, rep.ID)
	var lease *store.Lease
	// A local read: most reports are heartbeats, and should it miss a
	// report another replica just stored, the next heartbeat sees it.
	if old, err := r.recs.GetLocal(ctx, k); err == nil && old.Value.Lease != 0 {
		l := r.store.LeaseByID(old.Value.Lease)
		if err := l.Renew(ctx); err == nil {
			// Most reports are heartbeats: with the state unchanged the
			// renewed lease is all, and no write reaches etcd's log.
			if sameState(old.Value, rep) {
				return nil
			}
			lease = l
		} else if !errors.Is(err, store.ErrLeaseLost) {
			return err
		}
	} else if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if lease == nil {
		var err error
		if lease, err = r.store.GrantLease(ctx, ttl); err != nil {
			return err
		}
	}
	rep.Lease = lease.ID()
	op, err := r.recs.PutOp(k, rep)
	if err != nil {
		return err
	}
	if _, _, err := r.store.Commit(ctx, nil, op.WithLease(lease)); err != nil {
		return fmt.Errorf("store the report of agent %s of %s: %w", rep.ID, rep.App, err)
	}
	return nil
}

// sameState reports whether two reports of one agent say the same, apart
// from when they were sent and the lease.
func sameState(a, b Report) bool {
	a.Time, b.Time, a.Lease, b.Lease = time.Time{}, time.Time{}, 0, 0
	return reflect.DeepEqual(a, b)
}

// List returns the live reports, of one application's agents if app is
// set, by application and id.
func (r *Registry) List(ctx context.Context, app string) ([]Report, error) {
	prefix := ""
	if app != "" {
		prefix = app + "/"
	}
	items, _, err := r.recs.ListPrefix(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	out := make([]Report, len(items))
	for i, it := range items {
		out[i] = it.Value
	}
	return out, nil
}

// Copy is a path that holds a value: the value's own path, or a
// destination a replication rule copies it to.
type Copy struct {
	Path string
	Rule string // "" for the value's own path
}

// Consumer is an agent that reads a copy of the value.
type Consumer struct {
	Agent  Report
	Reads  string
	OK     bool
	Reason string
	// Unhealthy: the agent runs the revision, but its application
	// failed its health check.
	Unhealthy bool
}

// CopyStatus is whether replication brought the revision to a copy.
type CopyStatus struct {
	Path, Rule string
	Reached    bool
	Reason     string
}

// Status is where a value has rolled out.
type Status struct {
	Revision  int64
	Consumers []Consumer
	Complete  bool
	// Copies are the value's replicated copies, read by an agent or not.
	Copies []CopyStatus
}

// Status finds every agent that reads one of copies (copies[0] is the
// value's own path) and says whether it runs revision rev of the value or
// a newer one (0: the current revision), rendered without error, and is
// healthy.
func (r *Registry) Status(ctx context.Context, copies []Copy, rev int64) (Status, error) {
	path := copies[0].Path
	cur, err := r.store.Get(ctx, path)
	if errors.Is(err, store.ErrNotFound) {
		return Status{}, fmt.Errorf("%s has no value, so nothing can run it (see `graft ls %s`): %w", path, pathpkg.Dir(path), store.ErrNotFound)
	}
	if err != nil {
		return Status{}, err
	}
	if rev <= 0 {
		rev = cur.Revision
	}
	if rev > cur.Revision {
		return Status{}, fmt.Errorf("%w: %s is at revision %d; revision %d is in the future", ErrInvalid, path, cur.Revision, rev)
	}
	reports, err := r.List(ctx, "")
	if err != nil {
		return Status{}, err
	}
	st := Status{Revision: rev, Complete: true}
	// What each copy must have reached: the copy's revision that holds
	// the value at rev or newer.
	type need struct {
		rev    int64
		reason string
	}
	needs := map[string]need{}
	needOf := func(c Copy) (need, error) {
		if n, ok := needs[c.Path]; ok {
			return n, nil
		}
		n := need{rev: rev}
		if c.Rule != "" {
			a, err := r.store.Applied(ctx, c.Path)
			switch {
			case errors.Is(err, store.ErrNotFound):
				n = need{reason: fmt.Sprintf("replication (rule %s) has not written %s yet", c.Rule, c.Path)}
			case err != nil:
				return need{}, err
			case a.SourceRevision < rev:
				n = need{reason: fmt.Sprintf("replication (rule %s) has not brought revision %d to %s yet", c.Rule, rev, c.Path)}
			default:
				e, err := r.store.Get(ctx, c.Path)
				if err != nil {
					return need{}, err
				}
				n = need{rev: e.Revision}
			}
		}
		needs[c.Path] = n
		return n, nil
	}
	for _, rep := range reports {
		for _, c := range copies {
			t, ok := reads(rep, c.Path)
			if !ok {
				continue
			}
			n, err := needOf(c)
			if err != nil {
				return Status{}, err
			}
			con := Consumer{Agent: rep, Reads: c.Path}
			switch {
			case n.reason != "":
				con.Reason = n.reason
			case t.Error != "":
				con.Reason = "template " + t.Destination + " failed: " + t.Error
			case rep.Revision < n.rev:
				con.Reason = fmt.Sprintf("the agent runs revision %d of its tree; %s changed at %d", rep.Revision, c.Path, n.rev)
			case !rep.Healthy:
				con.Reason, con.Unhealthy = "unhealthy: "+rep.Reason, true
			default:
				con.OK = true
			}
			st.Complete = st.Complete && con.OK
			st.Consumers = append(st.Consumers, con)
			break // one consumer per agent
		}
	}
	for _, c := range copies[1:] {
		n, err := needOf(c)
		if err != nil {
			return Status{}, err
		}
		st.Copies = append(st.Copies, CopyStatus{Path: c.Path, Rule: c.Rule, Reached: n.reason == "", Reason: n.reason})
	}
	return st, nil
}

// reads returns the template of rep that read path, if one did.
func reads(rep Report, path string) (TemplateReport, bool) {
	for _, t := range rep.Templates {
		for _, k := range t.Keys {
			if k == path || (strings.HasSuffix(k, "/") && strings.HasPrefix(path, k)) {
				return t, true
			}
		}
	}
	return TemplateReport{}, false
}
