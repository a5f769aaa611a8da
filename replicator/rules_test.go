package replicator_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/store"
)

// Changed signals once per change of the rule set: not for the first load
// (the reconciler's start pass reads that), and once, not twice, when the
// replica that made a change refreshes and then sees it on its watch.
func TestRulesSignalEachChangeOnce(t *testing.T) {
	env := testenv.Start(t)
	_, js := testenv.StartJetStream(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rules := replicator.NewRules(env.Store, testenv.Logger(t))
	go rules.Run(ctx)
	<-rules.Loaded()
	repl, err := replicator.New(replicator.Config{Store: env.Store, JetStream: js, Rules: rules, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	signals := func() int {
		n := 0
		for {
			select {
			case <-rules.Changed():
				n++
			case <-time.After(300 * time.Millisecond):
				return n
			}
		}
	}
	if n := signals(); n != 0 {
		t.Fatalf("%d signals after the first load, want 0", n)
	}
	rule, _, err := repl.Share(ctx, "user:dba", "/dba/a", []string{"/app/a/replicated/a"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if n := signals(); n != 1 {
		t.Fatalf("%d signals after one share, want 1", n)
	}
	if len(rules.Index().Rules()) != 1 {
		t.Fatalf("index holds %d rules after a share", len(rules.Index().Rules()))
	}
	// Writes that are not rule changes move etcd's revision but are no news.
	if _, err := env.Client.Put(ctx, "/graft/kv/dba/a/x", "not a rule"); err != nil {
		t.Fatal(err)
	}
	if err := rules.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if n := signals(); n != 0 {
		t.Fatalf("%d signals after a refresh that found no change, want 0", n)
	}
	if _, _, err := repl.Unshare(ctx, "user:dba", rule.ID, true); err != nil {
		t.Fatal(err)
	}
	if n := signals(); n != 1 {
		t.Fatalf("%d signals after one unshare, want 1", n)
	}
}

// A share refused by the store (hand-written values in the destination) or
// by validation (a destination another rule owns) stores no rule.
func TestRefusedShareStoresNoRule(t *testing.T) {
	env := testenv.Start(t)
	_, js := testenv.StartJetStream(t)
	ctx := t.Context()
	rules := replicator.NewRules(env.Store, testenv.Logger(t))
	repl, err := replicator.New(replicator.Config{Store: env.Store, JetStream: js, Rules: rules, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Store.Put(ctx, "/app/mp/replicated/mongo/user", []byte("hand-written"), store.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	_, _, err = repl.Share(ctx, "user:dba", "/dba/m", []string{"/app/mp/replicated/mongo"}, "")
	var ne *store.NotEmptyError
	if !errors.As(err, &ne) || ne.Count != 1 || ne.Paths[0] != "/app/mp/replicated/mongo/user" {
		t.Fatalf("Share over a hand-written value: %v", err)
	}
	if _, _, err := repl.Share(ctx, "user:dba", "/dba/m", []string{"/app/mp/replicated/other"}, ""); err != nil {
		t.Fatal(err)
	}
	if _, _, err := repl.Share(ctx, "user:dba", "/dba/n", []string{"/app/mp/replicated/other/x"}, ""); !errors.Is(err, replicator.ErrRuleConflict) {
		t.Fatalf("Share into another rule's destination: %v", err)
	}
	if err := rules.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rules.Index().Rules(); len(got) != 1 || got[0].Source != "/dba/m" {
		t.Fatalf("rules after two refused shares: %+v", got)
	}
}

// The first fill of a new rule is not lag: status measures from the later
// of the source change and the rule's creation (it used to report the age
// of the source value).
func TestStatusLagOfTheFirstFill(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	e.put(t, "/dba/old/k", "v")
	time.Sleep(300 * time.Millisecond) // the value is this old when shared
	if _, _, err := e.repl.Share(e.ctx, "user:dba", "/dba/old", []string{"/app/a/replicated/old"}, ""); err != nil {
		t.Fatal(err)
	}
	st, err := e.repl.Status(e.ctx, "/app/a/replicated/old/k")
	if err != nil || !st.InSync {
		t.Fatalf("status after share: %+v, %v", st, err)
	}
	if st.Lag >= 300*time.Millisecond {
		t.Fatalf("lag of the first fill = %s; the share itself took far less", st.Lag)
	}
}

// A rule with more destinations than one record holds keeps them in
// chunks: it is created, indexed, replicated to every destination,
// validated against as a whole, and removed with its chunks.
func TestWideRule(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	const n = 1100 // two chunks
	dests := make([]string, n)
	for i := range dests {
		dests[i] = fmt.Sprintf("/app/a%04d/replicated/dd", i)
	}
	e.put(t, "/shared/dd/key", "v1")
	rule, filled, err := e.repl.Share(e.ctx, "user:dba", "/shared/dd", dests, "")
	if err != nil {
		t.Fatal(err)
	}
	if filled != n {
		t.Fatalf("share filled %d copies, want %d", filled, n)
	}
	got, err := e.repl.Rule(e.ctx, rule.ID)
	if err != nil || len(got.Destinations) != n || got.Destinations[n-1] != dests[n-1] {
		t.Fatalf("Rule = %d destinations, %v", len(got.Destinations), err)
	}
	if ix := e.repl.Rules(); len(ix.Rules()) != 1 || len(ix.Rules()[0].Destinations) != n {
		t.Fatalf("index after a wide share: %+v", ix.Rules())
	}
	// Validation sees every chunk: the last destination is taken.
	if _, _, err := e.repl.Share(e.ctx, "user:dba", "/dba/other", []string{dests[n-1] + "/x"}, ""); !errors.Is(err, replicator.ErrRuleConflict) {
		t.Fatalf("a share into the wide rule's last destination: %v", err)
	}
	// Every destination gets the next change.
	e.put(t, "/shared/dd/key", "v2")
	if err := e.repl.Apply(e.ctx, []string{"/shared/dd/key"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dests[0], dests[n/2], dests[n-1]} {
		if v, err := e.Store.Get(e.ctx, d+"/key"); err != nil || string(v.Value) != "v2" {
			t.Fatalf("%s/key = %v, %v; want v2", d, v, err)
		}
	}
	if _, pruned, err := e.repl.Unshare(e.ctx, "user:dba", rule.ID, false); err != nil || pruned != n {
		t.Fatalf("unshare = %d pruned, %v", pruned, err)
	}
	chunks, _, err := store.NewRecords[[]string](e.Store, store.SpaceRuleDestinations).List(e.ctx)
	if err != nil || len(chunks) != 0 {
		t.Fatalf("chunks left after unshare: %d, %v", len(chunks), err)
	}
}

// A rule far wider than one etcd request is created and removed: its
// record used to hold every destination, so 10,000 of them failed with
// "message larger than max". (Its source is empty, so nothing is copied.)
func TestRuleWiderThanARequest(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	const n = 12000 // the record of a rule this wide used to be over 2 MB
	dests := make([]string, n)
	for i := range dests {
		dests[i] = fmt.Sprintf("/app/tenant-%05d/replicated/shared/datadog", i)
	}
	rule, _, err := e.repl.Share(e.ctx, "user:dba", "/shared/datadog", dests, "")
	if err != nil {
		t.Fatal(err)
	}
	if ix := e.repl.Rules(); len(ix.Rules()) != 1 || len(ix.Rules()[0].Destinations) != n {
		t.Fatalf("index after a %d-destination share holds %d rules", n, len(ix.Rules()))
	}
	if _, err := e.Store.Put(e.ctx, dests[n-1]+"/x", []byte("mine"), store.WriteOptions{}); !errors.Is(err, store.ErrDestination) {
		t.Fatalf("a write into the last destination: %v, want it refused as replicated", err)
	}
	if _, _, err := e.repl.Unshare(e.ctx, "user:dba", rule.ID, false); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Store.Put(e.ctx, dests[n-1]+"/x", []byte("mine"), store.WriteOptions{}); err != nil {
		t.Fatalf("a write after unshare: %v", err)
	}
}

// A share that repeats an existing rule answers with that rule (a tour or
// a script may share twice), for concrete and pattern destinations given
// in any order; one that differs in a destination or its on-delete is
// still refused, naming the rule.
func TestIdenticalShareAnswersWithTheRule(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	if err := e.repl.AppSeen(e.ctx, "a", "token"); err != nil {
		t.Fatal(err)
	}
	e.put(t, "/dba/m/password", "pw")
	e.put(t, "/shared/dd/key", "k")
	first, _, err := e.repl.Share(e.ctx, "user:dba", "/dba/m", []string{"/app/x/replicated/m", "/app/y/replicated/m"}, "")
	if err != nil {
		t.Fatal(err)
	}
	again, filled, err := e.repl.Share(e.ctx, "user:other", "/dba/m", []string{"/app/y/replicated/m", "/app/x/replicated/m"}, replicator.OnDeleteDelete)
	if err != nil {
		t.Fatalf("the same share again: %v", err)
	}
	if again.ID != first.ID || again.Author != "user:dba" || filled != 2 {
		t.Fatalf("the same share again = %+v, filled %d; want rule %s by user:dba, 2 copies", again, filled, first.ID)
	}
	pattern, _, err := e.repl.Share(e.ctx, "user:dba", "/shared/dd", []string{"/app/+/replicated/dd"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if again, _, err := e.repl.Share(e.ctx, "user:dba", "/shared/dd", []string{"/app/+/replicated/dd"}, ""); err != nil || again.ID != pattern.ID {
		t.Fatalf("the same pattern share again: %+v, %v; want rule %s", again, err, pattern.ID)
	}
	for _, tc := range []struct {
		name     string
		dests    []string
		onDelete string
	}{
		{"one destination fewer", []string{"/app/x/replicated/m"}, ""},
		{"another on-delete", []string{"/app/x/replicated/m", "/app/y/replicated/m"}, replicator.OnDeleteRetain},
	} {
		_, _, err := e.repl.Share(e.ctx, "user:dba", "/dba/m", tc.dests, tc.onDelete)
		var re *replicator.RuleError
		if !errors.As(err, &re) || re.Rule != first.ID || !errors.Is(err, replicator.ErrRuleConflict) {
			t.Errorf("%s: %v, want a conflict naming rule %s", tc.name, err, first.ID)
		}
	}
	if got := e.repl.Rules().Rules(); len(got) != 2 {
		t.Fatalf("%d rules after shares repeated, want 2: %+v", len(got), got)
	}
}

// An unshare interrupted after its rule was dropped, its copies half
// pruned, is finished: by the reconciler (a pass finishes every unshare
// recorded longer ago than its grace), or by the same unshare again,
// which no longer answers that the rule does not exist. Nothing of the
// rule is left, and no record of the unshare.
func TestInterruptedUnshareIsFinished(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	e.put(t, "/shared/u/key", "v")
	const n = 100
	share := func(name string) (replicator.Rule, []string) {
		t.Helper()
		dests := make([]string, n)
		for i := range dests {
			dests[i] = fmt.Sprintf("/app/%s%03d/replicated/u", name, i)
		}
		rule, filled, err := e.repl.Share(e.ctx, "user:dba", "/shared/u", dests, "")
		if err != nil || filled != n {
			t.Fatalf("share: filled %d, %v", filled, err)
		}
		if err := e.repl.InterruptUnshare(e.ctx, "user:dba", rule.ID, false); err != nil {
			t.Fatal(err)
		}
		if pruned, err := e.Store.PruneDestinations(e.ctx, dests[:n/2], rule.ID, "user:dba"); err != nil || pruned != n/2 {
			t.Fatalf("prune the first half: %d, %v", pruned, err)
		}
		return rule, dests
	}
	gone := func(rule replicator.Rule, dests []string) {
		t.Helper()
		if a, err := e.Store.AppliedUnderAll(e.ctx, dests); err != nil || len(a) != 0 {
			t.Fatalf("rule %s: %d applied records left (%v)", rule.ID, len(a), err)
		}
		for _, d := range []string{dests[0], dests[n-1]} {
			if _, err := e.Store.Get(e.ctx, d+"/key"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("%s/key after the unshare finished: %v", d, err)
			}
		}
	}

	byReconciler, dests := share("r")
	if done, err := e.repl.FinishUnshares(e.ctx); err != nil || done != 1 {
		t.Fatalf("FinishUnshares = %d, %v; want the interrupted unshare finished", done, err)
	}
	gone(byReconciler, dests)

	again, dests := share("a")
	if _, pruned, err := e.repl.Unshare(e.ctx, "user:dba", again.ID, false); err != nil || pruned != n-n/2 {
		t.Fatalf("unshare again = %d pruned, %v; want the other %d", pruned, err, n-n/2)
	}
	gone(again, dests)

	left, _, err := store.NewRecords[json.RawMessage](e.Store, store.SpaceUnshares).List(e.ctx)
	if err != nil || len(left) != 0 {
		t.Fatalf("%d unshare records left (%v)", len(left), err)
	}
	if _, _, err := e.repl.Unshare(e.ctx, "user:dba", again.ID, false); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a third unshare: %v, want not found", err)
	}
}
