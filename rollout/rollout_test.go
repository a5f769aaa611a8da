package rollout_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/rollout"
	"github.com/graft-sh/graft/store"
)

// A report lives as long as its agent renews it: a second report renews
// the same lease, and a report not renewed is gone after its TTL.
func TestReportsLiveByTheirLease(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	ctx := t.Context()
	for range 8 { // a store past revision 8, which the reports run
		put(t, env, "/app/mp/config/x")
	}
	rep := rollout.Report{ID: "host-1", App: "mp", Revision: 7}
	if err := reg.Put(ctx, rep, time.Second); err != nil {
		t.Fatal(err)
	}
	first, err := reg.List(ctx, "mp")
	if err != nil || len(first) != 1 || first[0].Revision != 7 {
		t.Fatalf("after one report: %+v, %v", first, err)
	}
	rep.Revision = 8
	if err := reg.Put(ctx, rep, time.Second); err != nil {
		t.Fatal(err)
	}
	second, _ := reg.List(ctx, "mp")
	if len(second) != 1 || second[0].Revision != 8 || second[0].Lease != first[0].Lease {
		t.Fatalf("a second report: %+v; want revision 8 on the same lease %d", second, first[0].Lease)
	}
	// A heartbeat that changes nothing keeps the record and the time of
	// the state; it only renews the lease.
	again := rep
	again.Time = time.Now().Add(time.Hour)
	if err := reg.Put(ctx, again, time.Second); err != nil {
		t.Fatal(err)
	}
	third, _ := reg.List(ctx, "mp")
	if len(third) != 1 || !third[0].Time.Equal(second[0].Time) || third[0].Lease != first[0].Lease {
		t.Fatalf("a heartbeat rewrote the report: %+v, before %+v", third, second)
	}
	if other, _ := reg.List(ctx, "m"); len(other) != 0 {
		t.Fatalf("app m lists mp's agents: %+v", other)
	}
	testenv.WaitFor(t, 10*time.Second, func() bool {
		l, err := reg.List(ctx, "")
		return err == nil && len(l) == 0
	})
	if err := reg.Put(ctx, rollout.Report{ID: "a/b", App: "mp"}, 0); !errors.Is(err, rollout.ErrInvalid) {
		t.Fatalf("an id with a slash: %v", err)
	}
}

// A heartbeat whose report holds a lease that is gone (a local read that
// missed the deletion, or a lease revoked by hand) is not a renewal:
// graftd grants a new lease and stores the report again on it.
func TestReportWhoseLeaseIsLostIsStoredAgain(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	ctx := t.Context()
	put(t, env, "/app/mp/config/x")
	lost, err := env.Store.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := lost.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	rep := rollout.Report{ID: "host-1", App: "mp", Revision: 1, Lease: lost.ID()}
	if _, err := store.NewRecords[rollout.Report](env.Store, store.SpaceAgents).Put(ctx, "mp/host-1", rep); err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(ctx, rep, time.Second); err != nil {
		t.Fatal(err)
	}
	got, err := reg.List(ctx, "mp")
	if err != nil || len(got) != 1 || got[0].Lease == 0 || got[0].Lease == lost.ID() {
		t.Fatalf("after a heartbeat on a lost lease: %+v, %v; want the report on a new lease", got, err)
	}
	// The report lives by its new lease: it goes when that ends.
	if err := env.Store.LeaseByID(got[0].Lease).Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	if left, _ := reg.List(ctx, "mp"); len(left) != 0 {
		t.Fatalf("the report outlived its new lease: %+v", left)
	}
}

// put writes a value and returns its revision.
func put(t *testing.T, env *testenv.Env, path string) int64 {
	t.Helper()
	e, err := env.Store.Put(t.Context(), path, []byte("v"), store.WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return e.Revision
}

// A report's revision is at most the store's: an agent reports the
// revision it rendered from (issue 18: 1,000,000 and 2^40 were accepted,
// and acknowledged any rollout).
func TestReportRevisionIsCappedAtTheStores(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	ctx := t.Context()
	cur := put(t, env, "/app/pet/config/x")
	for _, rev := range []int64{1_000_000, 1 << 40, cur + 100, -1} {
		err := reg.Put(ctx, rollout.Report{ID: "a", App: "pet", Revision: rev}, 0)
		if !errors.Is(err, rollout.ErrInvalid) {
			t.Fatalf("revision %d (the store is at %d): %v, want ErrInvalid", rev, cur, err)
		}
	}
	if err := reg.Put(ctx, rollout.Report{ID: "a", App: "pet", Revision: cur}, 0); err != nil {
		t.Fatalf("the store's current revision: %v", err)
	}
	// A revision past the last one the registry saw, which the store has
	// reached since, is accepted.
	later := put(t, env, "/app/pet/config/x")
	if err := reg.Put(ctx, rollout.Report{ID: "a", App: "pet", Revision: later}, 0); err != nil {
		t.Fatalf("the store's new revision %d: %v", later, err)
	}
}

// A report's keys are paths or tree prefixes in the reporter's own tree,
// and its size is bounded (issue 18: keys ["/"] made every path's rollout
// wait for app:evil, and 1 MiB reports broke rollout status).
func TestReportValidate(t *testing.T) {
	tmpl := func(keys ...string) []rollout.TemplateReport {
		return []rollout.TemplateReport{{Destination: "/etc/x", Keys: keys}}
	}
	many := func(n int, f func(int) string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	ok := rollout.Report{ID: "a", App: "evil", Host: "h", Templates: tmpl("/app/evil/", "/app/evil/replicated/db/password")}
	if err := ok.Validate(); err != nil {
		t.Fatalf("a report of its own tree: %v", err)
	}
	tests := []struct {
		name string
		edit func(r *rollout.Report)
	}{
		{"the root", func(r *rollout.Report) { r.Templates = tmpl("/") }},
		{"another tree", func(r *rollout.Report) { r.Templates = tmpl("/dba/svc/b/pg/password") }},
		{"another app", func(r *rollout.Report) { r.Templates = tmpl("/app/b/replicated/pg/password") }},
		{"a sibling by prefix", func(r *rollout.Report) { r.Templates = tmpl("/app/evil-twin/x") }},
		{"all apps", func(r *rollout.Report) { r.Templates = tmpl("/app/") }},
		{"not a path", func(r *rollout.Report) { r.Templates = tmpl("/app/evil/../b/x") }},
		{"no id", func(r *rollout.Report) { r.ID = "" }},
		{"an id with a slash", func(r *rollout.Report) { r.ID = "a/b" }},
		{"too many templates", func(r *rollout.Report) {
			r.Templates = make([]rollout.TemplateReport, rollout.MaxTemplates+1)
		}},
		{"too many keys in a template", func(r *rollout.Report) {
			r.Templates = tmpl(many(rollout.MaxKeysPerTemplate+1, func(i int) string { return fmt.Sprintf("/app/evil/k%d", i) })...)
		}},
		{"too many keys", func(r *rollout.Report) {
			r.Templates = nil
			for i := range rollout.MaxKeys/rollout.MaxKeysPerTemplate + 1 {
				r.Templates = append(r.Templates, rollout.TemplateReport{Destination: fmt.Sprint(i),
					Keys: many(rollout.MaxKeysPerTemplate, func(j int) string { return fmt.Sprintf("/app/evil/k%d", j) })})
			}
		}},
		{"a long reason", func(r *rollout.Report) { r.Reason = strings.Repeat("x", rollout.MaxTextBytes+1) }},
		{"a large report", func(r *rollout.Report) {
			r.Templates = nil
			for range rollout.MaxTemplates {
				r.Templates = append(r.Templates, rollout.TemplateReport{Destination: strings.Repeat("d", rollout.MaxDestinationBytes)})
			}
		}},
		// Issue 18, low 7: escape sequences an app chose reached terminals.
		{"escape in the host", func(r *rollout.Report) { r.Host = "h\x1b]0;owned\x07" }},
		{"escape in the reason", func(r *rollout.Report) { r.Reason = "\x1b[2J" }},
		{"newline in the id", func(r *rollout.Report) { r.ID = "a\nb" }},
		{"escape in the instance", func(r *rollout.Report) { r.Instance = "\x1b" }},
		{"escape in the http address", func(r *rollout.Report) { r.HTTPAddress = "127.0.0.1:1\r" }},
		{"escape in a destination", func(r *rollout.Report) { r.Templates[0].Destination = "/etc/\x1b[1Ax" }},
		{"escape in a template error", func(r *rollout.Report) { r.Templates[0].Error = "bad\u009b" }},
		{"escape in a reload kind", func(r *rollout.Report) { r.Reloads = []rollout.ReloadReport{{Kind: "sig\x00nal"}} }},
		{"escape in a reload error", func(r *rollout.Report) { r.Reloads = []rollout.ReloadReport{{Kind: "signal", Error: "\r"}} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ok
			r.Templates = append([]rollout.TemplateReport(nil), ok.Templates...)
			tt.edit(&r)
			if err := r.Validate(); !errors.Is(err, rollout.ErrInvalid) {
				t.Fatalf("Validate = %v, want ErrInvalid", err)
			}
		})
	}
}

// An application has at most MaxAgentsPerApp live agent ids.
func TestReportsPerAppAreBounded(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	ctx := t.Context()
	for i := range rollout.MaxAgentsPerApp {
		if err := reg.Put(ctx, rollout.Report{ID: fmt.Sprint("a", i), App: "evil"}, 0); err != nil {
			t.Fatal(err)
		}
	}
	err := reg.Put(ctx, rollout.Report{ID: "one-more", App: "evil"}, 0)
	if !errors.Is(err, rollout.ErrTooManyAgents) || !strings.Contains(err.Error(), "stable ids") {
		t.Fatalf("agent %d of one app: %v, want ErrTooManyAgents saying what to do", rollout.MaxAgentsPerApp+1, err)
	}
	if err := reg.Put(ctx, rollout.Report{ID: "a0", App: "evil", Healthy: true}, 0); err != nil {
		t.Fatalf("a known agent reporting again: %v", err)
	}
	if err := reg.Put(ctx, rollout.Report{ID: "a0", App: "other"}, 0); err != nil {
		t.Fatalf("another app's agent: %v", err)
	}
}

// Two agent processes under one id do not overwrite each other's report:
// the second is refused while the first one's report lives (issue 18,
// defect 12), and a report without instance (an older agent) is
// accepted as before.
func TestReportUnderAnIdAnotherProcessHolds(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	ctx := t.Context()
	first := rollout.Report{ID: "web-1", App: "pet", Instance: "i-one"}
	if err := reg.Put(ctx, first, time.Second); err != nil {
		t.Fatal(err)
	}
	second := rollout.Report{ID: "web-1", App: "pet", Instance: "i-two", Healthy: true}
	err := reg.Put(ctx, second, time.Second)
	if !errors.Is(err, rollout.ErrAgentConflict) || !strings.Contains(err.Error(), "its own id:") || !strings.Contains(err.Error(), "expires") {
		t.Fatalf("a second process under the id: %v, want ErrAgentConflict saying what to do", err)
	}
	if l, _ := reg.List(ctx, "pet"); len(l) != 1 || l[0].Instance != "i-one" || l[0].Healthy {
		t.Fatalf("the first process's report was overwritten: %+v", l)
	}
	first.Healthy = true
	if err := reg.Put(ctx, first, time.Second); err != nil {
		t.Fatalf("the first process reporting again: %v", err)
	}
	if err := reg.Put(ctx, rollout.Report{ID: "web-1", App: "pet"}, time.Second); err != nil {
		t.Fatalf("a report without instance: %v", err)
	}
	// Once the first process's report has expired, another takes the id.
	testenv.WaitFor(t, 10*time.Second, func() bool { return reg.Put(ctx, second, time.Second) == nil })
}

// graftd sets since_revision when it first stores an agent process's
// report, and keeps it while that process renews.
func TestReportSinceRevision(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	ctx := t.Context()
	before := put(t, env, "/app/pet/config/x")
	rep := rollout.Report{ID: "a", App: "pet", Instance: "i", Since: 1}
	if err := reg.Put(ctx, rep, 0); err != nil {
		t.Fatal(err)
	}
	l, _ := reg.List(ctx, "pet")
	since := l[0].Since
	if since <= before {
		t.Fatalf("since_revision %d, want past %d (an agent cannot choose it)", since, before)
	}
	put(t, env, "/app/pet/config/x")
	rep.Healthy, rep.Since = true, 0
	if err := reg.Put(ctx, rep, 0); err != nil {
		t.Fatal(err)
	}
	if l, _ := reg.List(ctx, "pet"); l[0].Since != since || !l[0].Healthy {
		t.Fatalf("after a renewal: %+v, want since_revision %d kept", l[0], since)
	}
}

// Rollout status considers only agents in the tree of a copy, and counts
// only acknowledgements stored past the publish (issue 18: a report made
// before the publish was counted, and one of app:evil reading "/" made
// every path's rollout wait).
func TestStatusCountsOnlyConsumersOfThePath(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	ctx := t.Context()
	path := "/app/pet/replicated/db/password"
	put(t, env, path)
	// Reports made before the publish, as high as the store allowed.
	cur, err := env.Store.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pet := rollout.Report{ID: "web", App: "pet", Revision: cur, Healthy: true,
		Templates: []rollout.TemplateReport{{Destination: "/etc/pet/db", Keys: []string{"/app/pet/replicated/db/"}}}}
	if err := reg.Put(ctx, pet, 0); err != nil {
		t.Fatal(err)
	}
	evil := rollout.Report{ID: "x", App: "evil", Revision: cur, Healthy: false,
		Templates: []rollout.TemplateReport{{Destination: "/x", Keys: []string{"/app/evil/"}}}}
	if err := reg.Put(ctx, evil, 0); err != nil {
		t.Fatal(err)
	}
	published := put(t, env, path)
	st, err := reg.Status(ctx, []rollout.Copy{{Path: path}}, published)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Consumers) != 1 || st.Consumers[0].Agent.App != "pet" || st.Consumers[0].OK || st.Complete {
		t.Fatalf("before the agent ran the publish: %+v; want pet's agent alone, not ok", st)
	}
	pet.Revision = published
	if err := reg.Put(ctx, pet, 0); err != nil {
		t.Fatal(err)
	}
	st, err = reg.Status(ctx, []rollout.Copy{{Path: path}}, published)
	if err != nil || len(st.Consumers) != 1 || !st.Consumers[0].OK || !st.Complete {
		t.Fatalf("after the agent ran the publish: %+v, %v", st, err)
	}
	if got := st.Consumers[0].Agent.Since; got >= published {
		t.Fatalf("since_revision %d: want before the publish %d", got, published)
	}
}
