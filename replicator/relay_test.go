package replicator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/store"
)

// relayEnv is etcd, a store and a NATS JetStream without any stream: the
// relay has to create what it publishes into.
type relayEnv struct {
	*testenv.Env
	js  jetstream.JetStream
	ctx context.Context
}

func newRelayEnv(t *testing.T) *relayEnv {
	t.Helper()
	env := testenv.Start(t)
	_, js := testenv.StartJetStream(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return &relayEnv{Env: env, js: js, ctx: ctx}
}

// startRelay runs a relay until the returned stop is called (or the test
// ends).
func (e *relayEnv) startRelay(t *testing.T, cfg replicator.RelayConfig) (*replicator.Relay, func()) {
	t.Helper()
	cfg.Store = e.Store
	cfg.JetStream = e.js
	cfg.Logger = testenv.Logger(t)
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = 1
	}
	r, err := replicator.NewRelay(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	var once atomic.Bool
	stop := func() {
		if once.CompareAndSwap(false, true) {
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return r, stop
}

// waitRelaying waits until r leads and has started its cursor at the
// current revision, so that later writes are after it.
func (e *relayEnv) waitRelaying(t *testing.T, r *replicator.Relay) {
	t.Helper()
	testenv.WaitFor(t, 5*time.Second, r.Leader)
	testenv.WaitFor(t, 5*time.Second, func() bool {
		resp, err := e.Client.Get(e.ctx, "/graft/relay/cursor")
		return err == nil && len(resp.Kvs) == 1
	})
}

func (e *relayEnv) put(t *testing.T, path, value string) int64 {
	t.Helper()
	en, err := e.Store.Put(e.ctx, path, []byte(value), store.WriteOptions{Author: "user:test"})
	if err != nil {
		t.Fatalf("put %s: %v", path, err)
	}
	return en.Revision
}

// events returns every event in the change stream, in stream order, and
// fails if a message carries anything but an event or repeats a change.
func (e *relayEnv) events(t *testing.T) []replicator.Event {
	t.Helper()
	s, err := e.js.Stream(e.ctx, "GRAFT_CHANGES")
	if err != nil {
		t.Fatalf("change stream: %v", err)
	}
	info, err := s.Info(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []replicator.Event
	seen := map[string]bool{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(e.ctx, seq)
		if err != nil {
			t.Fatalf("message %d: %v", seq, err)
		}
		var ev replicator.Event
		dec := json.NewDecoder(strings.NewReader(string(m.Data)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ev); err != nil {
			t.Fatalf("message %d is not an event: %s: %v", seq, m.Data, err)
		}
		if seen[ev.MsgID()] {
			t.Fatalf("change %s published twice", ev.MsgID())
		}
		seen[ev.MsgID()] = true
		out = append(out, ev)
	}
	return out
}

// waitEvents waits until the stream holds n events and returns them.
func (e *relayEnv) waitEvents(t *testing.T, n int) []replicator.Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := e.js.Stream(e.ctx, "GRAFT_CHANGES")
		if err == nil {
			info, err := s.Info(e.ctx)
			if err == nil && info.State.Msgs >= uint64(n) {
				return e.events(t)
			}
		}
		if time.Now().After(deadline) {
			got := 0
			if err == nil {
				got = len(e.events(t))
			}
			t.Fatalf("the change stream holds %d events after 10 s, want %d", got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRelayPublishesChangesInOrder checks what an event is: path, revision
// and operation in commit order, never the value, and only kv changes.
func TestRelayPublishesChangesInOrder(t *testing.T) {
	e := newRelayEnv(t)
	r, _ := e.startRelay(t, replicator.RelayConfig{})
	e.waitRelaying(t, r)

	var want []replicator.Event
	for i := range 5 {
		p := fmt.Sprintf("/dba/app/k%d", i)
		want = append(want, replicator.Event{Path: p, Revision: e.put(t, p, "secret-value-"+p), Op: replicator.OpPut})
	}
	rev, err := e.Store.Delete(e.ctx, "/dba/app/k2", store.WriteOptions{Author: "user:test"})
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, replicator.Event{Path: "/dba/app/k2", Revision: rev, Op: replicator.OpDelete})
	// Writes outside the kv range (here a token record) are not changes
	// of a path and must not be relayed.
	if _, err := e.Client.Put(e.ctx, "/graft/tokens/abc", "x"); err != nil {
		t.Fatal(err)
	}
	want = append(want, replicator.Event{Path: "/dba/app/k9", Revision: e.put(t, "/dba/app/k9", "v"), Op: replicator.OpPut})
	// A tree write's events each list the transaction's paths.
	tree, err := e.Store.PutTree(e.ctx, "/dba/app/db", map[string][]byte{"user": []byte("u"), "password": []byte("p")}, store.WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	txn := []string{"/dba/app/db/password", "/dba/app/db/user"}
	want = append(want,
		replicator.Event{Path: txn[0], Revision: tree[0].Revision, Op: replicator.OpPut, Txn: txn},
		replicator.Event{Path: txn[1], Revision: tree[0].Revision, Op: replicator.OpPut, Txn: txn})

	got := e.waitEvents(t, len(want))
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("event %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	s, _ := e.js.Stream(e.ctx, "GRAFT_CHANGES")
	for seq := uint64(1); seq <= uint64(len(got)); seq++ {
		m, err := s.GetMsg(e.ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(m.Data), "secret-value") {
			t.Fatalf("an event carries a value: %s", m.Data)
		}
	}
}

// TestRelayResumesFromItsCursor stops the relay, writes while none runs,
// and starts another: every change is published exactly once.
func TestRelayResumesFromItsCursor(t *testing.T) {
	e := newRelayEnv(t)
	r, stop := e.startRelay(t, replicator.RelayConfig{})
	e.waitRelaying(t, r)
	var revs []int64
	for i := range 20 {
		revs = append(revs, e.put(t, fmt.Sprintf("/dba/a/k%d", i), "v"))
	}
	e.waitEvents(t, 20)
	stop()
	for i := range 30 {
		revs = append(revs, e.put(t, fmt.Sprintf("/dba/b/k%d", i), "v"))
	}
	// A second relay started from scratch (a failover or a restart)
	// resumes after the saved cursor; replays are dropped by the stream.
	r2, _ := e.startRelay(t, replicator.RelayConfig{})
	testenv.WaitFor(t, 5*time.Second, r2.Leader)
	for i := range 10 {
		revs = append(revs, e.put(t, fmt.Sprintf("/dba/c/k%d", i), "v"))
	}
	got := e.waitEvents(t, len(revs))
	if len(got) != len(revs) {
		t.Fatalf("got %d events, want %d", len(got), len(revs))
	}
	for i, ev := range got {
		if ev.Revision != revs[i] {
			t.Fatalf("event %d has revision %d, want %d: changes were lost or reordered", i, ev.Revision, revs[i])
		}
	}
}

// TestRelayCompactedCursorAsksForReconcile compacts etcd past the cursor
// of a stopped relay: the next relay cannot publish what is gone, so it
// asks for a full reconcile and relays every later change.
func TestRelayCompactedCursorAsksForReconcile(t *testing.T) {
	e := newRelayEnv(t)
	r, stop := e.startRelay(t, replicator.RelayConfig{})
	e.waitRelaying(t, r)
	e.put(t, "/dba/a/before", "v")
	e.waitEvents(t, 1)
	stop()
	var last int64
	for i := range 5 {
		last = e.put(t, fmt.Sprintf("/dba/a/gap%d", i), "v")
	}
	if _, err := e.Client.Compact(e.ctx, last); err != nil {
		t.Fatal(err)
	}

	before := reconcileRequests(t, e)
	r2, _ := e.startRelay(t, replicator.RelayConfig{})
	testenv.WaitFor(t, 10*time.Second, func() bool { return reconcileRequests(t, e) > before })
	testenv.WaitFor(t, 5*time.Second, r2.Leader)
	after := e.put(t, "/dba/a/after", "v")
	got := e.waitEvents(t, 2)
	if ev := got[len(got)-1]; ev.Path != "/dba/a/after" || ev.Revision != after {
		t.Fatalf("last event = %+v, want /dba/a/after at %d: the relay stopped after the compaction", ev, after)
	}
}

// reconcileRequests returns the version of the reconcile request key:
// how many times a reconcile was asked for.
func reconcileRequests(t *testing.T, e *relayEnv) int64 {
	t.Helper()
	resp, err := e.Client.Get(e.ctx, "/graft/reconcile/request")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].Version
}

// TestRelayFirstStartAsksForReconcile: the first relay starts its cursor
// at the current revision, so it must ask for the values written before
// it (for instance between graftd's start and its election).
func TestRelayFirstStartAsksForReconcile(t *testing.T) {
	e := newRelayEnv(t)
	// With the stream there already, only the first start asks.
	if _, err := replicator.EnsureStream(e.ctx, e.js, replicator.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	e.put(t, "/dba/a/early", "v")
	r, _ := e.startRelay(t, replicator.RelayConfig{})
	testenv.WaitFor(t, 5*time.Second, r.Leader)
	testenv.WaitFor(t, 5*time.Second, func() bool { return reconcileRequests(t, e) == 1 })
}

// TestRelayFailover runs two relays: one leads, and when it stops the
// other takes over without losing a change written in between.
func TestRelayFailover(t *testing.T) {
	e := newRelayEnv(t)
	a, stopA := e.startRelay(t, replicator.RelayConfig{Holder: "a"})
	e.waitRelaying(t, a)
	b, _ := e.startRelay(t, replicator.RelayConfig{Holder: "b"})
	time.Sleep(100 * time.Millisecond)
	if b.Leader() {
		t.Fatal("two relays lead at once")
	}
	var revs []int64
	for i := range 10 {
		revs = append(revs, e.put(t, fmt.Sprintf("/dba/a/k%d", i), "v"))
	}
	e.waitEvents(t, 10)
	stopA()
	for i := range 10 {
		revs = append(revs, e.put(t, fmt.Sprintf("/dba/b/k%d", i), "v"))
	}
	testenv.WaitFor(t, 10*time.Second, b.Leader)
	got := e.waitEvents(t, len(revs))
	for i, ev := range got {
		if i >= len(revs) || ev.Revision != revs[i] {
			t.Fatalf("event %d = %+v; want revisions %v", i, ev, revs)
		}
	}
}

// TestRelayRecreatesALostStream deletes the change stream under a running
// relay (a NATS whose store was lost): the relay creates it again and
// publishes the next change instead of retrying for ever.
func TestRelayRecreatesALostStream(t *testing.T) {
	e := newRelayEnv(t)
	r, _ := e.startRelay(t, replicator.RelayConfig{})
	testenv.WaitFor(t, 5*time.Second, r.Leader)
	testenv.WaitFor(t, 5*time.Second, func() bool {
		_, err := e.js.Stream(e.ctx, "GRAFT_CHANGES")
		return err == nil
	})
	if err := e.js.DeleteStream(e.ctx, "GRAFT_CHANGES"); err != nil {
		t.Fatal(err)
	}
	rev := e.put(t, "/dba/a/k", "v")
	got := e.waitEvents(t, 1)
	if got[0].Revision != rev {
		t.Fatalf("event = %+v, want revision %d", got[0], rev)
	}
}
