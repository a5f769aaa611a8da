package replicator_test

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/store"
)

// replEnv is a replicator on real etcd and NATS with nothing running: only
// what a test calls or starts moves destinations.
type replEnv struct {
	*testenv.Env
	ctx  context.Context
	js   jetstream.JetStream
	repl *replicator.Replicator
	reg  *prometheus.Registry
}

// newReplEnv builds a replicator from cfg, filling in the store, JetStream,
// rules, logger and a metrics registry.
func newReplEnv(t testing.TB, cfg replicator.Config) *replEnv {
	t.Helper()
	env := testenv.Start(t)
	log := testenv.Logger(t)
	_, js := testenv.StartJetStream(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rules := replicator.NewRules(env.Store, log)
	go rules.Run(ctx)
	<-rules.Loaded()
	reg := prometheus.NewRegistry()
	cfg.Store, cfg.JetStream, cfg.Rules, cfg.Logger, cfg.Registerer = env.Store, js, rules, log, reg
	repl, err := replicator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &replEnv{Env: env, ctx: ctx, js: js, repl: repl, reg: reg}
}

func (e *replEnv) put(t testing.TB, path, value string) {
	t.Helper()
	if _, err := e.Store.Put(e.ctx, path, []byte(value), store.WriteOptions{Author: "user:dba"}); err != nil {
		t.Fatalf("put %s: %v", path, err)
	}
}

func (e *replEnv) repairs(t *testing.T) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "graft_replication_repairs_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no graft_replication_repairs_total metric")
	return 0
}

// TestReconcileRepairsMissingStaleAndOrphaned changes sources while no
// event is delivered: one reconcile pass writes the missing copy, updates
// the stale one and deletes the orphan, and counts three repairs. A rule
// that retains deleted sources keeps its orphan.
func TestReconcileRepairsMissingStaleAndOrphaned(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	e.put(t, "/dba/p/stale", "v1")
	e.put(t, "/dba/p/orphan", "v1")
	e.put(t, "/dba/p/same", "v1")
	del, _, err := e.repl.Share(e.ctx, "user:dba", "/dba/p", []string{"/app/a/replicated/p"}, "")
	if err != nil {
		t.Fatal(err)
	}
	keep, _, err := e.repl.Share(e.ctx, "user:dba", "/dba/p", []string{"/app/b/replicated/p"}, replicator.OnDeleteRetain)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.repairs(t); got != 0 {
		t.Fatalf("filling new rules counted %v repairs; a fill is not a repair", got)
	}

	e.put(t, "/dba/p/missing", "new")
	e.put(t, "/dba/p/stale", "v2")
	if _, err := e.Store.Delete(e.ctx, "/dba/p/orphan", store.WriteOptions{Author: "user:dba"}); err != nil {
		t.Fatal(err)
	}

	n, err := e.repl.Reconcile(e.ctx, del, true)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("reconcile changed %d destinations, want 3 (missing, stale, orphan)", n)
	}
	if got := e.repairs(t); got != 3 {
		t.Errorf("repairs metric = %v, want 3", got)
	}
	if d := compareTrees(t, e.Store, "/dba/p", "/app/a/replicated/p"); d != "" {
		t.Fatalf("after reconcile:\n%s", d)
	}
	// A second pass finds nothing to do.
	if n, err := e.repl.Reconcile(e.ctx, del, true); err != nil || n != 0 {
		t.Fatalf("second pass changed %d (%v), want 0", n, err)
	}

	if _, err := e.repl.Reconcile(e.ctx, keep, true); err != nil {
		t.Fatal(err)
	}
	if v, err := e.Store.Get(e.ctx, "/app/b/replicated/p/orphan"); err != nil || string(v.Value) != "v1" {
		t.Fatalf("a retain rule lost the copy of a deleted source: %v", err)
	}
	if v, err := e.Store.Get(e.ctx, "/app/b/replicated/p/stale"); err != nil || string(v.Value) != "v2" {
		t.Fatalf("retain rule's stale copy = %v, %v; want v2", v, err)
	}
}

// A change the relay has yet to publish (after its cursor, as when a
// graftd restarted and its relay has not caught up) is copied by a repair
// pass but is no repair: only the change before the cursor, whose event
// was published and did not make the copy, is counted.
func TestReconcileDoesNotCountChangesTheRelayHasYetToPublish(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	rule, _, err := e.repl.Share(e.ctx, "user:dba", "/dba/r", []string{"/app/a/replicated/r"}, "")
	if err != nil {
		t.Fatal(err)
	}
	e.put(t, "/dba/r/missed", "v")
	rev, err := e.Store.Revision(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.NewRecords[int64](e.Store, store.SpaceRelay).Put(e.ctx, "cursor", rev); err != nil {
		t.Fatal(err)
	}
	e.put(t, "/dba/r/late", "v")
	base := e.repairs(t)
	n, err := e.repl.Reconcile(e.ctx, rule, true)
	if err != nil || n != 2 {
		t.Fatalf("reconcile changed %d destinations (%v), want 2 (missed and late)", n, err)
	}
	if got := e.repairs(t) - base; got != 1 {
		t.Errorf("repairs metric went up by %v, want 1: the change before the relay's cursor only", got)
	}
	if d := compareTrees(t, e.Store, "/dba/r", "/app/a/replicated/r"); d != "" {
		t.Fatalf("after reconcile:\n%s", d)
	}
}

// TestReconcilerRunsOnRequest runs the reconciler with a long interval: a
// request from another etcd client (as another graftd's relay would make)
// starts a pass that copies a change no event carried.
func TestReconcilerRunsOnRequest(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	if _, _, err := e.repl.Share(e.ctx, "user:dba", "/dba/q", []string{"/app/a/replicated/q"}, ""); err != nil {
		t.Fatal(err)
	}
	// A value written before the reconciler starts is copied by its start
	// pass (no replicator consumes events here): once it is there, the
	// start pass is done. Then change a source behind its back.
	e.put(t, "/dba/q/before", "b")
	go e.repl.RunReconciler(e.ctx, replicator.ReconcilerConfig{Interval: time.Hour})
	// The pass counts its repair after the copy commits: wait for both,
	// or base could miss the marker's repair and count it below.
	testenv.WaitFor(t, 5*time.Second, func() bool {
		v, err := e.Store.Get(e.ctx, "/app/a/replicated/q/before")
		return err == nil && string(v.Value) == "b" && e.repairs(t) >= 1
	})
	base := e.repairs(t) // the start pass's copy of the marker
	e.put(t, "/dba/q/k", "v")
	time.Sleep(200 * time.Millisecond)
	if _, err := e.Store.Get(e.ctx, "/app/a/replicated/q/k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the destination was written with no event and no request (%v): the test proves nothing", err)
	}
	other, err := store.New(store.Config{Client: testenv.Client(t, e.Etcd.Endpoint), Keyring: e.Keyring})
	if err != nil {
		t.Fatal(err)
	}
	if err := replicator.RequestReconcile(e.ctx, other, "test"); err != nil {
		t.Fatal(err)
	}
	// As at the start: the repair is counted after the copy commits.
	testenv.WaitFor(t, 5*time.Second, func() bool {
		v, err := e.Store.Get(e.ctx, "/app/a/replicated/q/k")
		return err == nil && string(v.Value) == "v" && e.repairs(t)-base >= 1
	})
	if got := e.repairs(t) - base; got != 1 {
		t.Errorf("repairs metric went up by %v, want 1", got)
	}
}

// TestReplicationSurvivesALostStream deletes the change stream, as a NATS
// that lost its store would, with a change in it that no replicator has
// applied: the relay creates the stream again and asks for a reconcile,
// which copies that change, and the replicator follows the new stream.
func TestReplicationSurvivesALostStream(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	relay, err := replicator.NewRelay(replicator.RelayConfig{Store: e.Store, JetStream: e.js, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	go relay.Run(e.ctx)
	go e.repl.RunReconciler(e.ctx, replicator.ReconcilerConfig{Interval: time.Hour})
	if _, _, err := e.repl.Share(e.ctx, "user:dba", "/dba/s", []string{"/app/a/replicated/s"}, ""); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, relay.Leader)
	reached := func(path, want string) func() bool {
		return func() bool {
			v, err := e.Store.Get(e.ctx, path)
			return err == nil && string(v.Value) == want
		}
	}
	consumer, stopConsumer := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() { defer close(done); e.repl.Run(consumer) }()
	e.put(t, "/dba/s/a", "1")
	testenv.WaitFor(t, 5*time.Second, reached("/app/a/replicated/s/a", "1"))

	// A change is relayed but not applied (no replicator runs), then the
	// stream and its consumer vanish.
	stopConsumer()
	<-done
	two, err := e.Store.Put(e.ctx, "/dba/s/a", []byte("2"), store.WriteOptions{Author: "user:dba"})
	if err != nil {
		t.Fatal(err)
	}
	// (15 s: the relay publishes at once, but make test runs packages
	// side by side under the race detector.)
	testenv.WaitFor(t, 15*time.Second, func() bool {
		s, err := e.js.Stream(e.ctx, "GRAFT_CHANGES")
		if err != nil {
			return false
		}
		m, err := s.GetLastMsgForSubject(e.ctx, "graft.changes")
		if err != nil {
			return false
		}
		var ev replicator.Event
		return json.Unmarshal(m.Data, &ev) == nil && ev.Revision == two.Revision
	})
	if err := e.js.DeleteStream(e.ctx, "GRAFT_CHANGES"); err != nil {
		t.Fatal(err)
	}
	go e.repl.Run(e.ctx)
	e.put(t, "/dba/s/b", "1")
	testenv.WaitFor(t, 10*time.Second, reached("/app/a/replicated/s/b", "1"))
	testenv.WaitFor(t, 10*time.Second, reached("/app/a/replicated/s/a", "2"))

	// The replicator consumes the new stream: changes come by events, not
	// by repairs. First let the reconcile passes the lost stream asked for
	// finish: one still running would count the writes below, in flight,
	// as repairs.
	settle := func() {
		t.Helper()
		version := func() int64 {
			resp, err := e.Client.Get(e.ctx, "/graft/reconcile/request")
			if err != nil || len(resp.Kvs) == 0 {
				return 0
			}
			return resp.Kvs[0].Version
		}
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			r, v := e.repairs(t), version()
			time.Sleep(300 * time.Millisecond)
			if e.repairs(t) == r && version() == v {
				return
			}
		}
	}
	byEvents := func(path string) {
		t.Helper()
		settle()
		repairs := e.repairs(t)
		for i := range 5 {
			e.put(t, path, strconv.Itoa(i))
		}
		testenv.WaitFor(t, 15*time.Second, reached("/app/a/replicated/s/"+strings.TrimPrefix(path, "/dba/s/"), "4"))
		if got := e.repairs(t); got != repairs {
			t.Fatalf("%s came by %v repairs, not by events: the replicator is not consuming", path, got-repairs)
		}
	}
	byEvents("/dba/s/x")

	// And a replicator that is running when the stream goes keeps up.
	if err := e.js.DeleteStream(e.ctx, "GRAFT_CHANGES"); err != nil {
		t.Fatal(err)
	}
	e.put(t, "/dba/s/c", "1")
	testenv.WaitFor(t, 15*time.Second, reached("/app/a/replicated/s/c", "1"))
	byEvents("/dba/s/d")
}

// A source deleted after the relay's cursor leaves an orphan copy that a
// repair pass deletes; the relay has yet to publish the deletion, so it is
// no repair. One deleted before the cursor, whose event did not delete
// the copy, is.
func TestReconcileDoesNotCountOrphansTheRelayHasYetToPublish(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	e.put(t, "/dba/o/missed", "v")
	e.put(t, "/dba/o/late", "v")
	rule, _, err := e.repl.Share(e.ctx, "user:dba", "/dba/o", []string{"/app/a/replicated/o"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Store.Delete(e.ctx, "/dba/o/missed", store.WriteOptions{Author: "user:dba"}); err != nil {
		t.Fatal(err)
	}
	rev, err := e.Store.Revision(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.NewRecords[int64](e.Store, store.SpaceRelay).Put(e.ctx, "cursor", rev); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Store.Delete(e.ctx, "/dba/o/late", store.WriteOptions{Author: "user:dba"}); err != nil {
		t.Fatal(err)
	}
	base := e.repairs(t)
	if n, err := e.repl.Reconcile(e.ctx, rule, true); err != nil || n != 2 {
		t.Fatalf("reconcile changed %d destinations (%v), want 2 (both orphans deleted)", n, err)
	}
	if got := e.repairs(t) - base; got != 1 {
		t.Errorf("repairs metric went up by %v, want 1: the deletion before the relay's cursor only", got)
	}
}

// A change the relay published but no replicator has applied yet (its
// event waits in the consumer) is late, not missed: a repair pass copies
// it without counting it. Once the event is acknowledged (a replicator
// handled it) and the copy is still missing, that is drift, and counted.
func TestReconcileDoesNotCountChangesPublishedButNotApplied(t *testing.T) {
	e := newReplEnv(t, replicator.Config{})
	rule, _, err := e.repl.Share(e.ctx, "user:dba", "/dba/q", []string{"/app/a/replicated/q"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := replicator.EnsureStream(e.ctx, e.js, replicator.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	cons, err := e.js.CreateOrUpdateConsumer(e.ctx, "GRAFT_CHANGES", jetstream.ConsumerConfig{
		Durable: replicator.DefaultConsumer, AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: "graft.changes",
	})
	if err != nil {
		t.Fatal(err)
	}
	// publish writes path and publishes its change as the relay does,
	// moving the relay's cursor past it.
	publish := func(path string) {
		t.Helper()
		entry, err := e.Store.Put(e.ctx, path, []byte("v"), store.WriteOptions{Author: "user:dba"})
		if err != nil {
			t.Fatal(err)
		}
		ev := replicator.Event{Path: path, Revision: entry.Revision, Op: replicator.OpPut}
		b, _ := json.Marshal(ev)
		if _, err := e.js.Publish(e.ctx, "graft.changes", b, jetstream.WithMsgID(ev.MsgID())); err != nil {
			t.Fatal(err)
		}
		if _, err := store.NewRecords[int64](e.Store, store.SpaceRelay).Put(e.ctx, "cursor", entry.Revision); err != nil {
			t.Fatal(err)
		}
	}
	publish("/dba/q/waiting")
	base := e.repairs(t)
	if n, err := e.repl.Reconcile(e.ctx, rule, true); err != nil || n != 1 {
		t.Fatalf("reconcile changed %d destinations (%v), want 1", n, err)
	}
	if got := e.repairs(t) - base; got != 0 {
		t.Errorf("repairs metric went up by %v for a change whose event waits in the consumer, want 0", got)
	}

	// The event is taken and acknowledged without making the copy: a
	// replicator missed it.
	publish("/dba/q/missed")
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	acked := 0
	for m := range batch.Messages() {
		if err := m.DoubleAck(e.ctx); err != nil {
			t.Fatal(err)
		}
		acked++
	}
	if acked != 2 {
		t.Fatalf("fetched %d events, want 2", acked)
	}
	base = e.repairs(t)
	if n, err := e.repl.Reconcile(e.ctx, rule, true); err != nil || n != 1 {
		t.Fatalf("reconcile changed %d destinations (%v), want 1", n, err)
	}
	if got := e.repairs(t) - base; got != 1 {
		t.Errorf("repairs metric went up by %v for a change its replicator acknowledged but did not copy, want 1", got)
	}
}
