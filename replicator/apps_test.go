package replicator_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/store"
)

func (e *replEnv) value(t testing.TB, path string) (string, bool) {
	t.Helper()
	v, err := e.Store.Get(e.ctx, path)
	if errors.Is(err, store.ErrNotFound) {
		return "", false
	}
	if err != nil {
		t.Fatalf("get %s: %v", path, err)
	}
	return string(v.Value), true
}

// A pattern destination copies to every application known when the rule
// is created, and to an application that appears afterwards before
// AppSeen returns: with no reconciler and no event consumer running, so
// nothing else could have put the copy there.
func TestPatternRuleReachesApplicationsNowAndLater(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	if err := e.repl.AppSeen(e.ctx, "early", "token"); err != nil {
		t.Fatal(err)
	}
	e.put(t, "/shared/datadog/api-key", "k1")
	rule, filled, err := e.repl.Share(e.ctx, "user:ops", "/shared/datadog", []string{"/app/+/replicated/datadog"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rule.Patterns, []string{"/app/+/replicated/datadog"}) || !slices.Equal(rule.Destinations, []string{"/app/early/replicated/datadog"}) || filled != 1 {
		t.Fatalf("rule = %+v, filled %d", rule, filled)
	}
	if v, ok := e.value(t, "/app/early/replicated/datadog/api-key"); v != "k1" {
		t.Fatalf("early app's copy = %q, %v", v, ok)
	}
	if _, ok := e.value(t, "/app/late/replicated/datadog/api-key"); ok {
		t.Fatal("an application graft does not know yet has a copy")
	}

	start := time.Now()
	if err := e.repl.AppSeen(e.ctx, "late", "certificate"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if v, ok := e.value(t, "/app/late/replicated/datadog/api-key"); v != "k1" {
		t.Fatalf("late app's copy right after AppSeen = %q, %v", v, ok)
	}
	t.Logf("a new application had its copy %s after it appeared", took)

	got, err := e.repl.Rule(e.ctx, rule.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/app/early/replicated/datadog", "/app/late/replicated/datadog"}
	if !slices.Equal(got.Destinations, want) {
		t.Fatalf("rule's destinations = %v, want %v", got.Destinations, want)
	}
	testenv.WaitFor(t, 5*time.Second, func() bool {
		_, dest, ok := e.repl.Rules().ByDestination("/app/late/replicated/datadog/api-key")
		return ok && dest == "/app/late/replicated/datadog"
	})
	st, err := e.repl.Status(e.ctx, "/app/late/replicated/datadog/api-key")
	if err != nil || st.Rule == nil || st.Rule.ID != rule.ID || !st.InSync {
		t.Fatalf("status of the late app's copy: %+v, %v", st, err)
	}
	// Seen again: nothing changes, and it costs no store round trip.
	if err := e.repl.AppSeen(e.ctx, "late", "token-auth"); err != nil {
		t.Fatal(err)
	}

	// The pattern holds for applications not yet known: a concrete rule
	// into one is refused.
	if _, _, err := e.repl.Share(e.ctx, "user:ops", "/dba/other", []string{"/app/future/replicated/datadog/x"}, ""); !errors.Is(err, replicator.ErrRuleConflict) {
		t.Fatalf("share into a future app's pattern destination: %v, want a conflict", err)
	}

	// Unshare removes every copy, those of the late app included, and
	// what the rule took in it.
	if _, pruned, err := e.repl.Unshare(e.ctx, "user:ops", rule.ID, false); err != nil || pruned != 2 {
		t.Fatalf("unshare: pruned %d, %v", pruned, err)
	}
	for _, p := range []string{"/app/early/replicated/datadog/api-key", "/app/late/replicated/datadog/api-key"} {
		if _, ok := e.value(t, p); ok {
			t.Fatalf("%s survived unshare", p)
		}
	}
	if _, err := e.Store.Owner(e.ctx, "/app/late/replicated/datadog"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the late app's destination is still owned after unshare: %v", err)
	}
	resp, err := e.Client.Get(e.ctx, "/graft/ruleapps/", clientv3.WithPrefix())
	if err != nil || resp.Count != 0 {
		t.Fatalf("%d rule-application records left after unshare (%v)", resp.Count, err)
	}
	if err := e.repl.AppSeen(e.ctx, "after", "token"); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.value(t, "/app/after/replicated/datadog/api-key"); ok {
		t.Fatal("an application that appeared after unshare got a copy")
	}
}

// Applications appearing while a pattern rule is created all get their
// copy by the time both are done, each from one side or the other: the
// share sees an application that registered before its rule was stored,
// and an application registering after reads the rule.
func TestPatternShareRacesApplications(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	e.put(t, "/shared/ca/pem", "pem")
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n+1)
	for i := range n {
		wg.Go(func() {
			errs <- e.repl.AppSeen(e.ctx, fmt.Sprintf("app%02d", i), "token")
		})
	}
	wg.Go(func() {
		_, _, err := e.repl.Share(e.ctx, "user:ops", "/shared/ca", []string{"/app/+/replicated/ca"}, "")
		errs <- err
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		p := fmt.Sprintf("/app/app%02d/replicated/ca/pem", i)
		if v, ok := e.value(t, p); v != "pem" {
			t.Errorf("%s = %q, %v after the share and the registration both returned", p, v, ok)
		}
	}
}

// An application whose registration stopped before it got its
// destinations (its graftd died) gets them from the reconciler.
func TestReconcilerGivesMissedApplicationsTheirPatterns(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	e.put(t, "/shared/ca/pem", "pem")
	if _, _, err := e.repl.Share(e.ctx, "user:ops", "/shared/ca", []string{"/app/+/replicated/ca"}, ""); err != nil {
		t.Fatal(err)
	}
	// The record alone, as a registrar that died right after writing it
	// leaves it.
	if _, err := e.Client.Put(e.ctx, "/graft/apps/orphan", `{"name":"orphan","via":"token"}`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, ok := e.value(t, "/app/orphan/replicated/ca/pem"); ok {
		t.Fatal("the copy is there before the reconciler ran: the test proves nothing")
	}
	go e.repl.RunReconciler(e.ctx, replicator.ReconcilerConfig{Interval: time.Hour})
	testenv.WaitFor(t, 5*time.Second, func() bool {
		v, ok := e.value(t, "/app/orphan/replicated/ca/pem")
		return ok && v == "pem"
	})
}

// A destination that already holds values no rule wrote is left out for
// that one application (graft never overwrites them) and taken once the
// values are gone; the other applications are not held up.
func TestPatternLeavesOutAFullDestination(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	e.put(t, "/shared/ca/pem", "pem")
	if _, _, err := e.repl.Share(e.ctx, "user:ops", "/shared/ca", []string{"/app/+/replicated/ca"}, ""); err != nil {
		t.Fatal(err)
	}
	e.put(t, "/app/busy/replicated/ca/pem", "hand-written")
	for _, app := range []string{"busy", "free"} {
		if err := e.repl.AppSeen(e.ctx, app, "token"); err != nil {
			t.Fatal(err)
		}
	}
	if v, _ := e.value(t, "/app/busy/replicated/ca/pem"); v != "hand-written" {
		t.Fatalf("a hand-written value was replaced by %q", v)
	}
	if v, _ := e.value(t, "/app/free/replicated/ca/pem"); v != "pem" {
		t.Fatalf("the other application's copy = %q", v)
	}
	if _, err := e.Store.Delete(e.ctx, "/app/busy/replicated/ca/pem", store.WriteOptions{Author: "user:ops"}); err != nil {
		t.Fatal(err)
	}
	go e.repl.RunReconciler(e.ctx, replicator.ReconcilerConfig{Interval: 200 * time.Millisecond})
	testenv.WaitFor(t, 5*time.Second, func() bool {
		v, ok := e.value(t, "/app/busy/replicated/ca/pem")
		return ok && v == "pem"
	})
}

// Applications whose identities predate the registry (tokens created
// before graft kept applications) are registered by the reconciler's
// start pass, and pattern rules reach them.
func TestReconcilerRegistersApplicationsWithIdentities(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	e.put(t, "/shared/ca/pem", "pem")
	if _, _, err := e.repl.Share(e.ctx, "user:ops", "/shared/ca", []string{"/app/+/replicated/ca"}, ""); err != nil {
		t.Fatal(err)
	}
	identities := func(context.Context) ([]string, error) { return []string{"legacy", "../bad"}, nil }
	go e.repl.RunReconciler(e.ctx, replicator.ReconcilerConfig{Interval: time.Hour, Identities: identities})
	testenv.WaitFor(t, 5*time.Second, func() bool {
		v, ok := e.value(t, "/app/legacy/replicated/ca/pem")
		return ok && v == "pem"
	})
	apps, err := e.repl.Apps(e.ctx)
	if err != nil || len(apps) != 1 || apps[0].Name != "legacy" {
		t.Fatalf("applications = %+v, %v; want legacy alone (../bad is no name)", apps, err)
	}
}

// BenchmarkApplicationAppears measures what a new application waits for
// before its first request goes on (or its token is printed): its
// registration, its destinations in three pattern rules, and their fill.
func BenchmarkApplicationAppears(b *testing.B) {
	e := newReplEnv(b, replicator.Config{})
	for i := range 3 {
		src := fmt.Sprintf("/shared/s%d", i)
		e.put(b, src+"/k", "v")
		if _, _, err := e.repl.Share(e.ctx, "user:ops", src, []string{fmt.Sprintf("/app/+/replicated/s%d", i)}, ""); err != nil {
			b.Fatal(err)
		}
	}
	n := 0
	for b.Loop() {
		n++
		if err := e.repl.AppSeen(e.ctx, fmt.Sprintf("app%06d", n), "token"); err != nil {
			b.Fatal(err)
		}
	}
	if _, ok := e.value(b, fmt.Sprintf("/app/app%06d/replicated/s2/k", n)); !ok {
		b.Fatal("the last application has no copy")
	}
}

// BenchmarkSharePatternOverManyApplications measures a pattern share when
// 10,000 applications are known: it becomes 10,000 destinations, claimed
// and filled before Share returns.
func BenchmarkSharePatternOverManyApplications(b *testing.B) {
	const apps = 10000
	e := newReplEnv(b, replicator.Config{})
	for i := 0; i < apps; i += 100 {
		var ops []clientv3.Op
		for j := i; j < i+100; j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/graft/apps/app%05d", j), fmt.Sprintf(`{"name":"app%05d","via":"token"}`, j)))
		}
		if _, err := e.Client.Txn(e.ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
	}
	e.put(b, "/shared/dd/key", "v")
	n := 0
	for b.Loop() {
		n++
		rule, filled, err := e.repl.Share(e.ctx, "user:ops", "/shared/dd", []string{fmt.Sprintf("/app/+/replicated/dd%d", n)}, "")
		if err != nil || len(rule.Destinations) != apps || filled != apps {
			b.Fatalf("share: %d destinations, %d filled, %v", len(rule.Destinations), filled, err)
		}
	}
}

// With the reconciler running (it gives applications their destinations
// too, when it sees them appear), an application still finds its copy the
// moment AppSeen returns, whichever of the two claimed it.
func TestAppSeenWithTheReconcilerRunning(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	e.put(t, "/shared/ca/pem", "pem")
	if _, _, err := e.repl.Share(e.ctx, "user:ops", "/shared/ca", []string{"/app/+/replicated/ca"}, ""); err != nil {
		t.Fatal(err)
	}
	go e.repl.Run(e.ctx)
	go e.repl.RunReconciler(e.ctx, replicator.ReconcilerConfig{Interval: time.Hour})
	for i := range 40 {
		app := fmt.Sprintf("app%02d", i)
		if err := e.repl.AppSeen(e.ctx, app, "certificate"); err != nil {
			t.Fatal(err)
		}
		if v, ok := e.value(t, "/app/"+app+"/replicated/ca/pem"); v != "pem" {
			t.Fatalf("%s's copy right after AppSeen = %q, %v", app, v, ok)
		}
		time.Sleep(time.Duration(i%5) * time.Millisecond) // let the reconciler get ahead now and then
	}
}
