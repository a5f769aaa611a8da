// Package rollout owns what graft-agents report they run, and the answer
// to "has this value rolled out to every application that uses it?".
// Reports are records in the store's agents space, each bound to a lease
// its agent renews by reporting again, so a dead agent's report is gone
// within its TTL.
package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	pathpkg "path"
	"reflect"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

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
	// Time is when the agent first reported this state: a report that
	// changes nothing only renews the lease.
	Time      time.Time `json:"time"`
	Principal string    `json:"principal"`
	// Lease is the etcd lease the report lives by.
	Lease int64 `json:"lease"`
	// Instance is the random id the agent process picked at its start
	// ("" from older agents); HTTPAddress its HTTP endpoints' address.
	Instance    string `json:"instance,omitempty"`
	HTTPAddress string `json:"http_address,omitempty"`
	// Since is the store revision at which graftd first stored this agent
	// process's report (a lower bound: writes racing the first report
	// may commit in between). An agent with Since below a value's
	// published revision was reporting before the publish.
	Since int64 `json:"since_revision"`
	// Leases are the dynamic credentials' leases the agent holds.
	Leases []LeaseReport `json:"leases,omitempty"`
	// Brokers are the listeners of its credential broker.
	Brokers []BrokerReport `json:"brokers,omitempty"`
	// Stored is the store revision at which this state was stored (the
	// record's modification revision; set by List).
	Stored int64 `json:"-"`
}

// TemplateReport is one rendered file: its content hash and the paths its
// last render read (a tree prefix ends in "/").
type TemplateReport struct {
	Destination string   `json:"destination"`
	SHA256      string   `json:"sha256,omitempty"`
	Keys        []string `json:"keys,omitempty"`
	Error       string   `json:"error,omitempty"`
}

// LeaseReport is one lease an agent holds: its id, the role's copy in the
// agent's tree it was issued from, and its database user.
type LeaseReport struct {
	ID       string `json:"id"`
	Path     string `json:"path"`
	Username string `json:"username"`
	Retiring bool   `json:"retiring,omitempty"`
}

// BrokerReport is one listener of an agent's credential broker: the
// credential's paths it logs in with (the agent consumes them as a
// template that read them does), the user new connections log in as,
// and the sessions open by user.
type BrokerReport struct {
	Listen   string         `json:"listen"`
	Keys     []string       `json:"keys"`
	User     string         `json:"user,omitempty"`
	Sessions []SessionCount `json:"sessions,omitempty"`
}

// SessionCount is how many sessions one database user has open.
type SessionCount struct {
	User  string `json:"user"`
	Count int    `json:"count"`
}

// oldSessions counts the sessions open as users other than b.User.
func (b BrokerReport) oldSessions() int {
	n := 0
	for _, s := range b.Sessions {
		if s.User != b.User {
			n += s.Count
		}
	}
	return n
}

// ReloadReport is one reload action's outcome.
type ReloadReport struct {
	Kind  string `json:"kind"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// TTL bounds of a report once its connection closed (or for a report
// over no connection): a minute outlives any pause an agent recovers
// from, and a dead agent's report (which holds rollouts up) goes within
// it.
const (
	DefaultTTL = 15 * time.Second
	MaxTTL     = time.Minute
)

// Bounds of what one application's agents report: rollout status and
// agents ls read them for every caller, so one application must not make
// them slow or too large to answer.
const (
	MaxAgentsPerApp     = 64       // live agent ids of one application
	MaxTemplates        = 64       // templates in a report
	MaxKeysPerTemplate  = 256      // paths one template read
	MaxKeys             = 1024     // paths all templates read
	MaxReloads          = 16       // reload actions
	MaxLeases           = 32       // leases one agent holds
	MaxBrokers          = 16       // broker listeners
	MaxBrokerKeys       = 4        // credential paths of one listener
	MaxSessionUsers     = 16       // users with open sessions, per listener
	MaxTextBytes        = 1024     // reason and error texts
	MaxNameBytes        = 253      // id, host, instance, kind, http address
	MaxDestinationBytes = 4096     // a template's destination
	MaxReportBytes      = 32 << 10 // the whole report, encoded
)

var (
	// ErrInvalid says a report is malformed or past its bounds.
	ErrInvalid = errors.New("invalid agent report")
	// ErrTooManyAgents says an application has MaxAgentsPerApp live
	// agent ids already.
	ErrTooManyAgents = errors.New("too many agents")
	// ErrAgentConflict says another agent process holds the live report
	// under an id.
	ErrAgentConflict = errors.New("agent id in use")
)

// Registry keeps the agents' reports.
type Registry struct {
	store *store.Store
	recs  *store.Records[Report]
	// known is the highest store revision the registry has seen: a
	// report's revision up to it needs no read of the store.
	known atomic.Int64
	// conns keeps the reports that came over open connections (conn.go).
	conns *conns
	// writes batches the reports' writes (writer.go).
	writes writer
	// work admits one report at a time to the work of a changed report
	// over an open connection (see putBound).
	work chan struct{}
}

// New returns the registry of the store's agent reports.
func New(s *store.Store) *Registry {
	return &Registry{store: s, recs: store.NewRecords[Report](s, store.SpaceAgents), conns: newConns(), work: make(chan struct{}, 1)}
}

func key(app, id string) string { return app + "/" + id }

// seen raises the highest store revision known to the registry.
func (r *Registry) seen(rev int64) {
	for {
		k := r.known.Load()
		if rev <= k || r.known.CompareAndSwap(k, rev) {
			return
		}
	}
}

// checkRevision refuses a revision past the store's current one: an
// agent reports the revision it rendered from, which the store reached.
// Most reports are at or below the last revision seen and cost nothing;
// one past it costs a linearizable read.
func (r *Registry) checkRevision(ctx context.Context, rev int64) error {
	if rev < 0 {
		return fmt.Errorf("%w: revision %d: want the store revision the agent rendered from", ErrInvalid, rev)
	}
	if rev <= r.known.Load() {
		return nil
	}
	cur, err := r.store.Revision(ctx)
	if err != nil {
		return err
	}
	r.seen(cur)
	if rev > cur {
		return fmt.Errorf("%w: revision %d is past the store's current revision %d: an agent reports the revision it rendered from", ErrInvalid, rev, cur)
	}
	return nil
}

// Put stores a report for ttl, renewing the lease of the agent's previous
// report when it is still alive. It refuses a report past the bounds
// above, with a revision past the store's, under an id whose live report
// another agent process holds, or for a new id of an application that
// has MaxAgentsPerApp already.
func (r *Registry) Put(ctx context.Context, rep Report, ttl time.Duration) error {
	return r.PutConn(ctx, rep, ttl, 0)
}

// PutConn is Put of a report that came over connection c: while c is
// open the report lives by the registry's lease (see Conn), and a report
// that says what the last one over c said costs nothing.
func (r *Registry) PutConn(ctx context.Context, rep Report, ttl time.Duration, c Conn) error {
	if err := rep.Validate(); err != nil {
		return err
	}
	if err := r.checkRevision(ctx, rep.Revision); err != nil {
		return err
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	ttl = min(ttl, MaxTTL)
	k := key(rep.App, rep.ID)
	rep.Since, rep.Stored = 0, 0
	if c != 0 && r.unchanged(c, k, rep) {
		return nil
	}
	if c != 0 {
		if done, err := r.putBound(ctx, c, k, rep, ttl); done {
			return err
		}
	}
	var lease *store.Lease
	if c != 0 {
		var err error
		if lease, err = r.sharedLease(ctx); err != nil {
			return err
		}
	}
	// A local read: most reports are heartbeats, and should it miss a
	// report another replica just stored, the next heartbeat sees it.
	old, err := r.recs.GetLocal(ctx, k)
	if err == nil && old.Value.Instance != "" && rep.Instance != "" && old.Value.Instance != rep.Instance {
		return fmt.Errorf("%w: another graft-agent process (instance %s) holds the live report of agent %s of %s: give each agent its own id: in its configuration; a dead agent's report expires within its TTL (at most %s)",
			ErrAgentConflict, old.Value.Instance, rep.ID, rep.App, MaxTTL)
	}
	if err == nil && c != 0 {
		// A live record: the same agent process goes on.
		rep.Since = old.Value.Since
		if old.Value.Lease == lease.ID() && sameState(old.Value, rep) {
			r.bind(c, k, old.Value, old.Revision, ttl)
			return nil
		}
	} else if err == nil && old.Value.Lease != 0 {
		l := r.store.LeaseByID(old.Value.Lease)
		// Every heartbeat renews: the store sends the renewals of all
		// agents together on one etcd stream, not a stream each.
		if err := l.Renew(ctx); err == nil {
			// The same agent process (or an older agent, which sends no
			// instance) renews: it keeps the revision it began at.
			rep.Since = old.Value.Since
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
	if errors.Is(err, store.ErrNotFound) {
		if err := r.checkRoom(ctx, rep.App); err != nil {
			return err
		}
	}
	if rep.Since == 0 {
		// First stored now: at a revision past the store's current one.
		cur, err := r.store.Revision(ctx)
		if err != nil {
			return err
		}
		r.seen(cur)
		rep.Since = cur + 1
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
	rev, err := r.commit(ctx, op.WithLease(lease))
	if err != nil {
		return fmt.Errorf("store the report of agent %s of %s: %w", rep.ID, rep.App, err)
	}
	r.seen(rev)
	if c != 0 {
		r.bind(c, k, rep, rev, ttl)
	}
	return nil
}

// putBound stores a changed report of k over connection c, which holds
// k's report: from what the registry keeps of it, without reading it,
// guarded by the revision it was stored at. It reports false when the
// report is not c's to update that way (another write came between, or
// the lease changed): PutConn then reads it.
//
// One change reaches every agent at once, and every agent reports it at
// once: 10,000 reports while graftd is still delivering the change to the
// agents that have yet to render it. Their work up to the write, which
// they share in batches, is admitted one report at a time, so that they
// queue behind the deliveries instead of taking the cores from them; it
// does no I/O, and one core does 10,000 in well under a second.
func (r *Registry) putBound(ctx context.Context, c Conn, k string, rep Report, ttl time.Duration) (bool, error) {
	select {
	case r.work <- struct{}{}:
	case <-ctx.Done():
		return true, ctx.Err()
	}
	b, lease, ok := r.boundTo(c, k)
	// Only the process whose report c holds goes on this way; another
	// one under the id (over the same connection, as a test may do) is
	// judged by PutConn.
	ok = ok && rep.Instance == b.rep.Instance
	var op store.Op
	var err error
	if ok {
		rep.Since, rep.Lease = b.rep.Since, lease.ID()
		op, err = r.recs.PutOp(k, rep)
	}
	<-r.work
	if !ok || err != nil {
		return ok, err
	}
	rev, err := r.commit(ctx, op.WithLease(lease), r.recs.At(k, b.rev))
	if errors.Is(err, store.ErrRevisionChanged) {
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("store the report of agent %s of %s: %w", rep.ID, rep.App, err)
	}
	r.seen(rev)
	r.bind(c, k, rep, rev, ttl)
	return true, nil
}

// checkRoom refuses a new agent id of an application that has
// MaxAgentsPerApp live ones already. New ids are rare (an agent keeps
// its id across restarts), so the count can afford a read.
func (r *Registry) checkRoom(ctx context.Context, app string) error {
	items, rev, err := r.recs.ListPrefix(ctx, app+"/")
	if err != nil {
		return err
	}
	r.seen(rev)
	if len(items) >= MaxAgentsPerApp {
		return fmt.Errorf("%w: %s has %d live agent reports, the most graftd keeps for one application: give agents stable ids (an agent reuses its id when it restarts); a dead agent's report expires within its TTL (at most %s)",
			ErrTooManyAgents, app, len(items), MaxTTL)
	}
	return nil
}

// Validate checks a report against the bounds above and refuses control
// characters in its texts, which `graft agents ls` and `rollout status`
// print: an application must not choose what other terminals show. Each
// key must be a path or a tree prefix (ending "/") in the application's
// own tree /app/<app>.
func (rep Report) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
	}
	if rep.ID == "" || strings.Contains(rep.ID, "/") || len(rep.ID) > MaxNameBytes {
		id := rep.ID
		if len(id) > MaxNameBytes { // quote no more of it than a valid id holds
			id = id[:MaxNameBytes] + "…"
		}
		return bad("agent id %q (%d bytes): want a name of at most %d bytes without / (the default is the host name)", id, len(rep.ID), MaxNameBytes)
	}
	// Each text is checked where it is; its field's name is formatted
	// only for an error (most reports are valid, and come by the
	// thousand after a change).
	checkText := func(value string, max int, field func() string) error {
		if len(value) > max {
			return bad("%s is %d bytes: at most %d", field(), len(value), max)
		}
		if i := strings.IndexFunc(value, unicode.IsControl); i >= 0 {
			return bad("%s holds a control character at byte %d: reports are printed on terminals, so escape or drop it", field(), i)
		}
		return nil
	}
	named := func(name string) func() string { return func() string { return name } }
	if len(rep.Templates) > MaxTemplates {
		return bad("%d templates: at most %d per agent; split the application's templates among more agents", len(rep.Templates), MaxTemplates)
	}
	if len(rep.Reloads) > MaxReloads {
		return bad("%d reload actions: at most %d", len(rep.Reloads), MaxReloads)
	}
	for _, t := range []struct {
		field, value string
		max          int
	}{
		{"id", rep.ID, MaxNameBytes},
		{"host", rep.Host, MaxNameBytes},
		{"instance", rep.Instance, MaxNameBytes},
		{"http_address", rep.HTTPAddress, MaxNameBytes},
		{"reason", rep.Reason, MaxTextBytes},
	} {
		if err := checkText(t.value, t.max, named(t.field)); err != nil {
			return err
		}
	}
	tree := "/app/" + rep.App + "/"
	keys := 0
	for i, t := range rep.Templates {
		if len(t.Keys) > MaxKeysPerTemplate {
			return bad("template %s read %d paths: at most %d per template are reported; read a tree (its prefix is one path) instead", t.Destination, len(t.Keys), MaxKeysPerTemplate)
		}
		keys += len(t.Keys)
		for _, f := range []struct {
			name, value string
			max         int
		}{{"destination", t.Destination, MaxDestinationBytes}, {"error", t.Error, MaxTextBytes}, {"sha256", t.SHA256, 64}} {
			if err := checkText(f.value, f.max, func() string { return fmt.Sprintf("templates[%d].%s", i, f.name) }); err != nil {
				return err
			}
		}
	}
	if keys > MaxKeys {
		return bad("%d paths read: at most %d per report", keys, MaxKeys)
	}
	for i, l := range rep.Reloads {
		if err := checkText(l.Kind, MaxNameBytes, func() string { return fmt.Sprintf("reloads[%d].kind", i) }); err != nil {
			return err
		}
		if err := checkText(l.Error, MaxTextBytes, func() string { return fmt.Sprintf("reloads[%d].error", i) }); err != nil {
			return err
		}
	}
	for i, t := range rep.Templates {
		for _, k := range t.Keys {
			if err := checkKey(k, tree); err != nil {
				return bad("templates[%d]: %v", i, err)
			}
		}
	}
	if len(rep.Brokers) > MaxBrokers {
		return bad("%d broker listeners: at most %d", len(rep.Brokers), MaxBrokers)
	}
	for i, b := range rep.Brokers {
		if len(b.Keys) > MaxBrokerKeys || len(b.Sessions) > MaxSessionUsers {
			return bad("brokers[%d]: %d keys and %d users with sessions: at most %d and %d", i, len(b.Keys), len(b.Sessions), MaxBrokerKeys, MaxSessionUsers)
		}
		for _, f := range []struct{ name, value string }{{"listen", b.Listen}, {"user", b.User}} {
			if err := checkText(f.value, MaxNameBytes, func() string { return fmt.Sprintf("brokers[%d].%s", i, f.name) }); err != nil {
				return err
			}
		}
		for _, k := range b.Keys {
			if err := checkKey(k, tree); err != nil {
				return bad("brokers[%d]: %v", i, err)
			}
		}
		for j, sc := range b.Sessions {
			if err := checkText(sc.User, MaxNameBytes, func() string { return fmt.Sprintf("brokers[%d].sessions[%d].user", i, j) }); err != nil {
				return err
			}
			if sc.Count < 0 || sc.Count > 1<<20 {
				return bad("brokers[%d].sessions[%d].count %d: want 0 to %d", i, j, sc.Count, 1<<20)
			}
		}
	}
	if len(rep.Leases) > MaxLeases {
		return bad("%d leases: at most %d per agent", len(rep.Leases), MaxLeases)
	}
	for i, l := range rep.Leases {
		if len(l.ID) == 0 || len(l.ID) > 64 || strings.IndexFunc(l.ID, func(r rune) bool { return !('a' <= r && r <= 'z' || '0' <= r && r <= '9') }) >= 0 {
			return bad("leases[%d]: id: want the lease id graftd gave (lower-case letters and digits, at most 64)", i)
		}
		if err := checkText(l.Username, MaxNameBytes, func() string { return fmt.Sprintf("leases[%d].username", i) }); err != nil {
			return err
		}
		if err := checkKey(l.Path, tree); err != nil || strings.HasSuffix(l.Path, "/") {
			return bad("leases[%d]: path %.200q: want the path of a role's copy under %s, the agent's own tree", i, l.Path, tree)
		}
	}
	if encodedBound(rep) > MaxReportBytes {
		// It may be too large: measure.
		if b, err := json.Marshal(rep); err != nil || len(b) > MaxReportBytes {
			return bad("the report is %d bytes encoded: at most %d", len(b), MaxReportBytes)
		}
	}
	return nil
}

// encodedBound bounds the size of rep's JSON encoding from above, without
// encoding it: no byte of a text encodes to more than 6 (\u003c), the
// fields of the report itself and their numbers take under 512, and
// those of a template, a key or a reload under 64.
func encodedBound(rep Report) int {
	n := 512 + 6*(len(rep.ID)+len(rep.App)+len(rep.Host)+len(rep.Instance)+len(rep.HTTPAddress)+len(rep.Reason)+len(rep.Principal))
	for _, t := range rep.Templates {
		n += 64 + 6*(len(t.Destination)+len(t.SHA256)+len(t.Error))
		for _, k := range t.Keys {
			n += 8 + 6*len(k)
		}
	}
	for _, l := range rep.Reloads {
		n += 64 + 6*(len(l.Kind)+len(l.Error))
	}
	for _, l := range rep.Leases {
		n += 64 + 6*(len(l.ID)+len(l.Path)+len(l.Username))
	}
	for _, b := range rep.Brokers {
		n += 64 + 6*(len(b.Listen)+len(b.User))
		for _, k := range b.Keys {
			n += 8 + 6*len(k)
		}
		for _, sc := range b.Sessions {
			n += 32 + 6*len(sc.User)
		}
	}
	return n
}

// checkKey says whether k is a path or a tree prefix (ending "/") in
// tree, the reporting application's own.
func checkKey(k, tree string) error {
	p := strings.TrimSuffix(k, "/")
	if _, err := store.ParsePath(p); err != nil || p+"/" != tree && !strings.HasPrefix(p, tree) {
		return fmt.Errorf("key %.200q: want a path or a tree prefix ending in / under %s, the agent's own tree (it reads only copies there)", k, tree)
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
	items, rev, err := r.recs.ListPrefix(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	r.seen(rev)
	out := make([]Report, len(items))
	for i, it := range items {
		out[i] = it.Value
		out[i].Stored = it.Revision
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
	// BrokerOnly: the agent uses the value only through its credential
	// broker, which logs new connections in with the revision it runs;
	// OldSessions are the sessions it still has open as other users.
	BrokerOnly  bool
	OldSessions int
	// Summary is Reason without the texts the agent chose (a template's
	// error, why it is unhealthy) or its key and file names, for callers
	// who may not read the agent's tree.
	Summary string
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
	// Only the agents of applications whose tree holds a copy can
	// consume it: an agent reports only keys in its own tree.
	var reports []Report
	listed := map[string]bool{}
	for _, c := range copies {
		app, ok := appOf(c.Path)
		if !ok || listed[app] {
			continue
		}
		listed[app] = true
		reps, err := r.List(ctx, app)
		if err != nil {
			return Status{}, err
		}
		reports = append(reports, reps...)
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
			brokerOnly, oldSessions := false, 0
			if b, byBroker := brokerReads(rep, c.Path); byBroker {
				oldSessions = b.oldSessions()
				if !ok {
					t, ok, brokerOnly = TemplateReport{Destination: "broker " + b.Listen, Keys: b.Keys}, true, true
				}
			}
			if !ok {
				continue
			}
			n, err := needOf(c)
			if err != nil {
				return Status{}, err
			}
			// The consumer, with only the template that reads the copy.
			agent := rep
			agent.Templates = []TemplateReport{t}
			con := Consumer{Agent: agent, Reads: c.Path, BrokerOnly: brokerOnly, OldSessions: oldSessions}
			switch {
			case n.reason != "":
				con.Reason = n.reason
			case t.Error != "":
				con.Reason = "template " + t.Destination + " failed: " + t.Error
				con.Summary = "a template that reads it failed"
			case rep.Revision < n.rev:
				con.Reason = fmt.Sprintf("the agent runs revision %d of its tree; %s changed at %d", rep.Revision, c.Path, n.rev)
			case rep.Since >= rev && rep.Stored < n.rev:
				// An acknowledgement counts only from an agent that was
				// reporting before the revision was published, or whose
				// report was stored once the copy it read existed.
				con.Reason = fmt.Sprintf("the agent began reporting at revision %d, after %d was published, and has not reported since %s changed at %d", rep.Since, rev, c.Path, n.rev)
			case !rep.Healthy:
				con.Reason, con.Unhealthy = "unhealthy: "+rep.Reason, true
				con.Summary = "unhealthy"
			default:
				con.OK = true
			}
			if con.Summary == "" {
				con.Summary = con.Reason
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

// appOf returns the application whose tree holds path.
func appOf(path string) (string, bool) {
	rest, ok := strings.CutPrefix(path, "/app/")
	if !ok {
		return "", false
	}
	app, _, _ := strings.Cut(rest, "/")
	return app, app != ""
}

// brokerReads returns the broker listener of rep that logs in with path,
// if one does.
func brokerReads(rep Report, path string) (BrokerReport, bool) {
	if !strings.HasPrefix(path, "/app/"+rep.App+"/") {
		return BrokerReport{}, false
	}
	for _, b := range rep.Brokers {
		for _, k := range b.Keys {
			if k == path {
				return b, true
			}
		}
	}
	return BrokerReport{}, false
}

// reads returns the template of rep that read path, if one did. Only a
// path in the agent's own tree counts: a key outside it (which graftd
// refuses since, but an older report may hold) consumes nothing.
func reads(rep Report, path string) (TemplateReport, bool) {
	if !strings.HasPrefix(path, "/app/"+rep.App+"/") {
		return TemplateReport{}, false
	}
	for _, t := range rep.Templates {
		for _, k := range t.Keys {
			if k == path || (strings.HasSuffix(k, "/") && strings.HasPrefix(path, k)) {
				return t, true
			}
		}
	}
	return TemplateReport{}, false
}
