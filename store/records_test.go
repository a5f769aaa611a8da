package store_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	snap "github.com/graft-sh/graft/internal/snapshot"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

type thing struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

const space = store.Space("test/things/")

func TestRecordsGetPutListDelete(t *testing.T) {
	env := testenv.Start(t)
	ctx := context.Background()
	recs := store.NewRecords[thing](env.Store, space)

	if _, err := recs.Get(ctx, "a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get of a missing record = %v, want ErrNotFound", err)
	}
	rev, err := recs.Put(ctx, "a", thing{Name: "a", Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	got, err := recs.Get(ctx, "a")
	if err != nil || got.Value != (thing{Name: "a", Count: 1}) || got.Revision != rev || got.Key != "a" {
		t.Fatalf("Get = %+v, %v; want a=1 at revision %d", got, err, rev)
	}

	// Compare-and-swap against the revision read.
	if _, err := recs.Put(ctx, "a", thing{Name: "a", Count: 2}, recs.At("a", rev-1)); !errors.Is(err, store.ErrRevisionChanged) {
		t.Fatalf("Put at a stale revision = %v, want ErrRevisionChanged", err)
	}
	if _, err := recs.Put(ctx, "a", thing{Name: "a", Count: 2}, recs.At("a", rev)); err != nil {
		t.Fatalf("Put at the current revision: %v", err)
	}
	if ok, err := recs.Create(ctx, "a", thing{Name: "other"}); err != nil || ok {
		t.Fatalf("Create over an existing record = %v, %v; want false", ok, err)
	}
	if ok, err := recs.Create(ctx, "b/1", thing{Name: "b"}); err != nil || !ok {
		t.Fatalf("Create = %v, %v", ok, err)
	}
	// A record that does not decode is left out of a list, not fatal to it.
	if _, err := env.Client.Put(ctx, "/graft/test/things/bad", "{not json"); err != nil {
		t.Fatal(err)
	}
	list, listRev, err := recs.List(ctx)
	if err != nil || len(list) != 2 || list[0].Key != "a" || list[0].Value.Count != 2 || list[1].Key != "b/1" || listRev < rev {
		t.Fatalf("List = %+v at %d, %v", list, listRev, err)
	}
	if sub, _, err := recs.ListPrefix(ctx, "b/"); err != nil || len(sub) != 1 || sub[0].Key != "b/1" {
		t.Fatalf("ListPrefix = %+v, %v", sub, err)
	}

	// Since guards a decision made from a list: any later write fails it.
	if _, err := recs.Put(ctx, "c", thing{}, recs.Since(listRev)); err != nil {
		t.Fatalf("Put since the list: %v", err)
	}
	if _, err := recs.Put(ctx, "d", thing{}, recs.Since(listRev)); !errors.Is(err, store.ErrRevisionChanged) {
		t.Fatalf("Put after another write since the list = %v, want ErrRevisionChanged", err)
	}

	if _, err := recs.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := recs.Delete(ctx, "a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second Delete = %v, want ErrNotFound", err)
	}

	// Several records in one guarded transaction.
	put1, _ := recs.PutOp("x", thing{Name: "x"})
	put2, _ := recs.PutOp("y", thing{Name: "y"})
	if _, ok, err := env.Store.Commit(ctx, []store.Cond{recs.Absent("x")}, put1, put2, recs.DeleteOp("c")); err != nil || !ok {
		t.Fatalf("Commit = %v, %v", ok, err)
	}
	if _, ok, err := env.Store.Commit(ctx, []store.Cond{recs.Absent("x")}, recs.DeleteOp("y")); err != nil || ok {
		t.Fatalf("Commit with a failing cond = %v, %v; want not applied", ok, err)
	}
	list, _, _ = recs.List(ctx)
	if len(list) != 3 || list[0].Key != "b/1" || list[1].Key != "x" || list[2].Key != "y" {
		t.Fatalf("after the commits: %+v", list)
	}
}

// A snapshot of a space follows every change, from any writer.
func TestRecordsFeedASnapshot(t *testing.T) {
	env := testenv.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	recs := store.NewRecords[thing](env.Store, space)
	recs.Put(ctx, "a", thing{Count: 1})
	mirror, err := snap.New(snap.Config[thing]{Name: "things", Source: recs, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	go mirror.Run(ctx)
	<-mirror.Loaded()
	other := store.NewRecords[thing](env.Store, space)
	other.Put(ctx, "b", thing{Count: 2})
	other.Put(ctx, "a", thing{Count: 3})
	other.Delete(ctx, "b")
	testenv.WaitFor(t, 5*time.Second, func() bool {
		items, _ := mirror.Items()
		return len(items) == 1 && items[0].Value.Count == 3
	})
}

func TestLeaseBoundRecordsGoWithTheirLease(t *testing.T) {
	env := testenv.Start(t)
	ctx := context.Background()
	recs := store.NewRecords[thing](env.Store, space)
	lease, err := env.Store.GrantLease(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	op, _ := recs.PutOp("alive", thing{Name: "agent"})
	if _, _, err := env.Store.Commit(ctx, nil, op.WithLease(lease)); err != nil {
		t.Fatal(err)
	}
	kctx, stop := context.WithCancel(ctx)
	kept := make(chan error, 1)
	go func() { kept <- lease.KeepAlive(kctx) }()
	time.Sleep(2500 * time.Millisecond) // beyond the TTL: only keep-alives hold it
	if _, err := recs.Get(ctx, "alive"); err != nil {
		t.Fatalf("a kept-alive lease's record is gone: %v", err)
	}
	stop()
	if err := <-kept; err != nil {
		t.Fatalf("KeepAlive after its context ended = %v, want nil", err)
	}
	if _, err := recs.Get(ctx, "alive"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the record outlived its revoked lease: %v", err)
	}
	// A lease nobody keeps alive expires with its records.
	lease, _ = env.Store.GrantLease(ctx, time.Second)
	op, _ = recs.PutOp("orphan", thing{})
	env.Store.Commit(ctx, nil, op.WithLease(lease))
	testenv.WaitFor(t, 5*time.Second, func() bool {
		_, err := recs.Get(ctx, "orphan")
		return errors.Is(err, store.ErrNotFound)
	})
}

// One process leads at a time; a leader's guarded write fails once it no
// longer leads, and its successor takes over when it resigns.
func TestLeadOneAtATime(t *testing.T) {
	env := testenv.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	recs := store.NewRecords[thing](env.Store, space)
	var leaders atomic.Int32
	firstLeads := make(chan *store.Leader, 1)
	releaseFirst := make(chan struct{})
	go env.Store.Lead(ctx, store.Election("test/leader"), "first", time.Second, func(ctx context.Context, l *store.Leader) error {
		leaders.Add(1)
		defer leaders.Add(-1)
		firstLeads <- l
		<-releaseFirst
		return nil
	})
	first := <-firstLeads
	secondLed := make(chan struct{})
	go env.Store.Lead(ctx, store.Election("test/leader"), "second", time.Second, func(ctx context.Context, l *store.Leader) error {
		if n := leaders.Add(1); n != 1 {
			t.Errorf("%d leaders at once", n)
		}
		close(secondLed)
		<-ctx.Done()
		return nil
	})
	if _, err := recs.Put(ctx, "cursor", thing{Count: 1}, first.Cond()); err != nil {
		t.Fatalf("the leader's guarded write: %v", err)
	}
	select {
	case <-secondLed:
		t.Fatal("a second process led while the first did")
	case <-time.After(200 * time.Millisecond):
	}
	close(releaseFirst)
	select {
	case <-secondLed:
	case <-time.After(5 * time.Second):
		t.Fatal("the successor did not lead after the leader resigned")
	}
	if _, err := recs.Put(ctx, "cursor", thing{Count: 2}, first.Cond()); !errors.Is(err, store.ErrRevisionChanged) {
		t.Fatalf("a former leader's guarded write = %v, want ErrRevisionChanged", err)
	}
}

// The change feed delivers every change after the cursor in order, with
// no values, and reports a compacted cursor.
func TestChangesFromACursor(t *testing.T) {
	env := testenv.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	put := func(p string) int64 {
		e, err := env.Store.Put(ctx, p, []byte("v"), store.WriteOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return e.Revision
	}
	r1 := put("/a/1")
	r2 := put("/a/2")
	del, err := env.Store.Delete(ctx, "/a/1", store.WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	store.NewRecords[thing](env.Store, space).Put(ctx, "x", thing{}) // not a value: not in the feed
	r3 := put("/b")
	var got []store.Change
	feed := env.Store.Changes(ctx, r1)
	for len(got) < 3 {
		select {
		case b := <-feed:
			if b.Err != nil {
				t.Fatal(b.Err)
			}
			got = append(got, b.Changes...)
		case <-time.After(5 * time.Second):
			t.Fatalf("feed delivered %+v, want 3 changes", got)
		}
	}
	want := []store.Change{{Path: "/a/2", Revision: r2}, {Path: "/a/1", Revision: del, Deleted: true}, {Path: "/b", Revision: r3}}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("change %d = %+v, want %+v", i, got[i], want[i])
		}
	}

	if _, err := env.Client.Compact(ctx, r3); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-env.Store.Changes(ctx, r1):
		var ce *store.CompactedError
		if !errors.As(b.Err, &ce) || !errors.Is(b.Err, store.ErrCompacted) {
			t.Fatalf("feed from a compacted cursor = %+v, want a *CompactedError", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no report of the compaction")
	}
}

func TestRecordsWatchClosesOnCancel(t *testing.T) {
	env := testenv.Start(t)
	ctx, cancel := context.WithCancel(t.Context())
	recs := store.NewRecords[thing](env.Store, space)
	_, rev, err := recs.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	changes := recs.Watch(ctx, rev)
	cancel()
	select {
	case _, ok := <-changes:
		if ok {
			t.Error("a change arrived on a cancelled watch")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch still open after cancel")
	}
}
