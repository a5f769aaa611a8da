package rollout_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/rollout"
	"github.com/graft-sh/graft/store"
)

// runRegistry runs reg's lease keeper for the test.
func runRegistry(t *testing.T, reg *rollout.Registry) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); reg.Run(ctx, testenv.Logger(t)) }()
	t.Cleanup(func() { cancel(); <-done })
}

// A report that came over a connection outlives its TTL while the
// connection is open, with no heartbeat; once the connection closes it
// lives by its own TTL and is gone within it.
func TestReportLivesWhileItsConnectionIsOpen(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	runRegistry(t, reg)
	ctx := t.Context()
	put(t, env, "/app/mp/config/x")
	const conn rollout.Conn = 7
	if err := reg.PutConn(ctx, rollout.Report{ID: "host-1", App: "mp", Revision: 1}, time.Second, conn); err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(ctx, rollout.Report{ID: "host-2", App: "mp", Revision: 1}, time.Second); err != nil {
		t.Fatal(err)
	}
	// Three TTLs: the report on no connection is gone, the other stays.
	time.Sleep(3 * time.Second)
	got, err := reg.List(ctx, "mp")
	if err != nil || len(got) != 1 || got[0].ID != "host-1" {
		t.Fatalf("after 3 TTLs with no heartbeat: %+v, %v; want host-1 alone, kept by its open connection", got, err)
	}
	reg.Closed(conn)
	testenv.WaitFor(t, 5*time.Second, func() bool {
		l, err := reg.List(ctx, "mp")
		return err == nil && len(l) == 1 && l[0].Lease != got[0].Lease
	})
	testenv.WaitFor(t, 5*time.Second, func() bool {
		l, err := reg.List(ctx, "mp")
		return err == nil && len(l) == 0
	})
}

// A heartbeat over the same connection that says nothing new writes
// nothing; a new state is stored.
func TestReportOverAConnectionWritesOnlyChanges(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	ctx := t.Context()
	put(t, env, "/app/mp/config/x")
	put(t, env, "/app/mp/config/x")
	rep := rollout.Report{ID: "host-1", App: "mp", Revision: 1}
	if err := reg.PutConn(ctx, rep, time.Second, 1); err != nil {
		t.Fatal(err)
	}
	before, err := env.Store.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		rep.Time = time.Now()
		if err := reg.PutConn(ctx, rep, time.Second, 1); err != nil {
			t.Fatal(err)
		}
	}
	if after, _ := env.Store.Revision(ctx); after != before {
		t.Fatalf("unchanged heartbeats moved the store from revision %d to %d", before, after)
	}
	rep.Revision = 2
	if err := reg.PutConn(ctx, rep, time.Second, 1); err != nil {
		t.Fatal(err)
	}
	if got, _ := reg.List(ctx, "mp"); len(got) != 1 || got[0].Revision != 2 {
		t.Fatalf("a new state was not stored: %+v", got)
	}
}

// A connection that closes after its agent reported over another one
// (it reconnected) leaves the newer report alone.
func TestClosedConnectionLeavesANewerReport(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	runRegistry(t, reg)
	ctx := t.Context()
	put(t, env, "/app/mp/config/x")
	put(t, env, "/app/mp/config/x")
	rep := rollout.Report{ID: "host-1", App: "mp", Revision: 1, Instance: "i1"}
	if err := reg.PutConn(ctx, rep, time.Second, 1); err != nil {
		t.Fatal(err)
	}
	rep.Revision = 2
	if err := reg.PutConn(ctx, rep, time.Second, 2); err != nil {
		t.Fatal(err)
	}
	reg.Closed(1)
	time.Sleep(3 * time.Second)
	if got, _ := reg.List(ctx, "mp"); len(got) != 1 || got[0].Revision != 2 {
		t.Fatalf("after the old connection closed: %+v; want the report of revision 2, kept by the new one", got)
	}
}

// Should the registry's lease be lost (graftd stalled past its TTL), the
// reports it kept are stored again on a new one.
func TestReportsOfALostSharedLeaseAreStoredAgain(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	runRegistry(t, reg)
	ctx := t.Context()
	put(t, env, "/app/mp/config/x")
	if err := reg.PutConn(ctx, rollout.Report{ID: "host-1", App: "mp", Revision: 1}, time.Second, 1); err != nil {
		t.Fatal(err)
	}
	got, err := reg.List(ctx, "mp")
	if err != nil || len(got) != 1 {
		t.Fatalf("%+v, %v", got, err)
	}
	if err := env.Store.LeaseByID(got[0].Lease).Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	// Within a renewal period (a third of the default TTL).
	testenv.WaitFor(t, rollout.DefaultTTL/3+5*time.Second, func() bool {
		l, err := reg.List(ctx, "mp")
		return err == nil && len(l) == 1 && l[0].Lease != got[0].Lease
	})
}

// Reports arriving together are written together: 400 agents reporting
// at once cost far fewer transactions than 400, and each report is stored.
func TestReportsArrivingTogetherAreWrittenTogether(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	ctx := t.Context()
	put(t, env, "/app/mp/config/x")
	const n = 400
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			rep := rollout.Report{ID: "host", App: fmt.Sprintf("app%d", i), Revision: 1}
			errs <- reg.PutConn(ctx, rep, time.Second, rollout.Conn(i+1))
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got, err := reg.List(ctx, "")
	if err != nil || len(got) != n {
		t.Fatalf("listed %d reports (%v), want %d", len(got), err, n)
	}
	revs := map[int64]bool{}
	for _, r := range got {
		revs[r.Stored] = true
	}
	if len(revs) > n/4 {
		t.Errorf("%d reports took %d transactions; want them batched", n, len(revs))
	}
}

// A changed report over a connection that holds the agent's report is
// stored without reading the old one, guarded by the revision the
// registry stored it at: a write by another replica in between (here,
// another process that took the id there) is not overwritten blindly, but
// read, and the report refused as any report under another live
// process's id is.
func TestChangedReportOverAConnectionYieldsToAWriteInBetween(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	ctx := t.Context()
	put(t, env, "/app/pet/config/x")
	put(t, env, "/app/pet/config/x")
	rep := rollout.Report{ID: "web-1", App: "pet", Instance: "i-one", Revision: 1}
	if err := reg.PutConn(ctx, rep, time.Second, 1); err != nil {
		t.Fatal(err)
	}
	rep.Revision = 2
	if err := reg.PutConn(ctx, rep, time.Second, 1); err != nil {
		t.Fatalf("a changed report over its connection: %v", err)
	}
	if l, _ := reg.List(ctx, "pet"); len(l) != 1 || l[0].Revision != 2 {
		t.Fatalf("the changed report was not stored: %+v", l)
	}
	other := store.NewRecords[rollout.Report](env.Store, store.SpaceAgents)
	if _, err := other.Put(ctx, "pet/web-1", rollout.Report{ID: "web-1", App: "pet", Instance: "i-two", Revision: 2}); err != nil {
		t.Fatal(err)
	}
	rep.Healthy = true
	if err := reg.PutConn(ctx, rep, time.Second, 1); !errors.Is(err, rollout.ErrAgentConflict) {
		t.Fatalf("a report over the old connection after another process's write: %v, want ErrAgentConflict", err)
	}
	if l, _ := reg.List(ctx, "pet"); len(l) != 1 || l[0].Instance != "i-two" {
		t.Fatalf("the other process's report was overwritten: %+v", l)
	}
}

// Over the connection that holds an agent's report, a report of another
// process under the same id is refused as it is over any other.
func TestAnotherProcessOverTheSameConnectionIsRefused(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	ctx := t.Context()
	put(t, env, "/app/pet/config/x")
	if err := reg.PutConn(ctx, rollout.Report{ID: "web-1", App: "pet", Instance: "i-one", Revision: 1}, time.Second, 1); err != nil {
		t.Fatal(err)
	}
	err := reg.PutConn(ctx, rollout.Report{ID: "web-1", App: "pet", Instance: "i-two", Revision: 1, Healthy: true}, time.Second, 1)
	if !errors.Is(err, rollout.ErrAgentConflict) {
		t.Fatalf("another process's report over the same connection: %v, want ErrAgentConflict", err)
	}
	if l, _ := reg.List(ctx, "pet"); len(l) != 1 || l[0].Instance != "i-one" {
		t.Fatalf("the first process's report was overwritten: %+v", l)
	}
}
