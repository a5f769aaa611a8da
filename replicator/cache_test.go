package replicator_test

import (
	"context"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/replicator"
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
