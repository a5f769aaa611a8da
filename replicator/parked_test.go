package replicator_test

import (
	"errors"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/store"
)

// A change that keeps failing (here: a source record that cannot be
// decrypted) is parked after MaxDeliver attempts and shown by Status,
// while the changes around it replicate; fixing the source clears it.
func TestFailingChangeIsParkedWithoutBlockingOthers(t *testing.T) {
	e := newReplEnv(t, replicator.Config{MaxDeliver: 2})
	env, ctx, repl := e.Env, e.ctx, e.repl
	relay, _ := replicator.NewRelay(replicator.RelayConfig{Store: env.Store, JetStream: e.js, Logger: testenv.Logger(t)})
	go relay.Run(ctx)
	go repl.Run(ctx)
	testenv.WaitFor(t, 5*time.Second, relay.Leader)
	if _, _, err := repl.Share(ctx, "user:dba", "/dba/m", []string{"/app/a/replicated/m"}, ""); err != nil {
		t.Fatal(err)
	}

	// A record no key can open, as if written under a lost key.
	if _, err := env.Client.Put(ctx, "/graft/kv/dba/m/bad", `{"c":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","a":"x","t":1,"s":3}`); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Store.Put(ctx, "/dba/m/good", []byte("fine"), store.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() bool {
		e, err := env.Store.Get(ctx, "/app/a/replicated/m/good")
		return err == nil && string(e.Value) == "fine"
	})
	var (
		st  replicator.Status
		err error
	)
	testenv.WaitFor(t, 10*time.Second, func() bool {
		st, err = repl.Status(ctx, "/app/a/replicated/m/bad")
		return err == nil && st.Parked != nil
	})
	if st.Source != "/dba/m/bad" || st.Parked.Attempts < 2 || st.Parked.Error == "" || st.InSync {
		t.Fatalf("status of the destination of a parked change: %+v (parked %+v)", st, st.Parked)
	}
	if _, err := env.Store.Get(ctx, "/app/a/replicated/m/bad"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the undecryptable source was copied: %v", err)
	}

	// The reconciler copies what it can read, reports what it cannot, and
	// deletes nothing on its account.
	rule := repl.Rules().Rules()[0]
	var unreadable *store.UnreadableError
	if _, err := repl.Reconcile(ctx, rule, true); !errors.As(err, &unreadable) || unreadable.Paths[0] != "/dba/m/bad" {
		t.Fatalf("Reconcile with an undecryptable source: %v", err)
	}
	if e, err := env.Store.Get(ctx, "/app/a/replicated/m/good"); err != nil || string(e.Value) != "fine" {
		t.Fatalf("a readable copy after reconciling: %v", err)
	}

	// Writing the source again replicates it and clears the parked change.
	if _, err := env.Store.Put(ctx, "/dba/m/bad", []byte("repaired"), store.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() bool {
		st, err = repl.Status(ctx, "/app/a/replicated/m/bad")
		return err == nil && st.Parked == nil && st.InSync
	})
}
