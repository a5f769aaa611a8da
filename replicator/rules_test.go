package replicator_test

import (
	"context"
	"errors"
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
