package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// waitFor bounds every wait for a watch; a healthy one answers in
// milliseconds.
const waitFor = 10 * time.Second

func nextBatch(t *testing.T, ch <-chan store.WatchBatch) store.WatchBatch {
	t.Helper()
	select {
	case b, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return b
	case <-time.After(waitFor):
		t.Fatalf("no watch batch within %v", waitFor)
	}
	panic("unreachable")
}

// nextEvents reads batches until n events have arrived, skipping progress
// notices (batches without events).
func nextEvents(t *testing.T, ch <-chan store.WatchBatch, n int) []store.Event {
	t.Helper()
	var out []store.Event
	for len(out) < n {
		b := nextBatch(t, ch)
		if b.Err != nil {
			t.Fatalf("watch failed: %v", b.Err)
		}
		for _, e := range b.Events {
			if e.Entry.Revision != b.Revision {
				t.Errorf("event %s %s at revision %d in the batch of revision %d", e.Type, e.Entry.Path, e.Entry.Revision, b.Revision)
			}
		}
		out = append(out, b.Events...)
	}
	if len(out) > n {
		t.Fatalf("got %d events, want %d: %+v", len(out), n, out)
	}
	return out
}

type eventView struct {
	Type     store.EventType
	Path     string
	Revision int64
	Value    string
}

func views(events []store.Event) []eventView {
	out := make([]eventView, 0, len(events))
	for _, e := range events {
		out = append(out, eventView{e.Type, e.Entry.Path, e.Entry.Revision, string(e.Entry.Value)})
	}
	return out
}

func checkEvents(t *testing.T, got []store.Event, want []eventView) {
	t.Helper()
	g := views(got)
	if len(g) != len(want) {
		t.Fatalf("events =\n  %+v\nwant\n  %+v", g, want)
	}
	for i := range want {
		if g[i] != want[i] {
			t.Errorf("event %d = %+v, want %+v", i, g[i], want[i])
		}
	}
}

func TestWatchFromNow(t *testing.T) {
	forEachWatch(t, func(t *testing.T, w watchKind) {
		env := testenv.Start(t)
		s := env.Store
		old := put(t, s, "/w/old", "before the watch")

		after, ch, err := w.watch(t, s)(t.Context(), "/w", 0, false)
		if err != nil {
			t.Fatal(err)
		}
		if after < old.Revision {
			t.Errorf("watch starts after %d, before the last write %d", after, old.Revision)
		}
		a := put(t, s, "/w/a", "1")
		b := put(t, s, "/w/sub/b", "2")
		a2 := put(t, s, "/w/a", "3")
		gone := del(t, s, "/w/a")

		got := nextEvents(t, ch, 4)
		checkEvents(t, got, []eventView{
			{store.EventPut, "/w/a", a.Revision, "1"},
			{store.EventPut, "/w/sub/b", b.Revision, "2"},
			{store.EventPut, "/w/a", a2.Revision, "3"},
			{store.EventDelete, "/w/a", gone, ""},
		})
		if e := got[0].Entry; e.Author != "tester" || e.Size != 1 || !e.Time.Equal(a.Time) {
			t.Errorf("put event entry = %+v, want author, size and time of the write", e)
		}
	})
}

func TestWatchFromRevision(t *testing.T) {
	forEachWatch(t, func(t *testing.T, w watchKind) {
		env := testenv.Start(t)
		s := env.Store
		put(t, s, "/w/k", "v1")
		v2 := put(t, s, "/w/k", "v2")
		v3 := put(t, s, "/w/k", "v3")

		after, ch, err := w.watch(t, s)(t.Context(), "/w", v2.Revision, false)
		if err != nil {
			t.Fatal(err)
		}
		if after != v2.Revision-1 {
			t.Errorf("watch from %d starts after %d, want %d", v2.Revision, after, v2.Revision-1)
		}
		v4 := put(t, s, "/w/k", "v4")
		checkEvents(t, nextEvents(t, ch, 3), []eventView{
			{store.EventPut, "/w/k", v2.Revision, "v2"},
			{store.EventPut, "/w/k", v3.Revision, "v3"},
			{store.EventPut, "/w/k", v4.Revision, "v4"},
		})
	})
}

func TestWatchFiltersSiblings(t *testing.T) {
	forEachWatch(t, func(t *testing.T, w watchKind) {
		env := testenv.Start(t)
		s := env.Store
		_, ch, err := w.watch(t, s)(t.Context(), "/app/foo", 0, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"/app/foo-evil/x", "/app/foo.bak", "/app/fo", "/app/foo0", "/app/foo-evil"} {
			put(t, s, p, "not for this watch")
		}
		self := put(t, s, "/app/foo", "self")
		child := put(t, s, "/app/foo/x", "child")
		// Events arrive in revision order, so had a sibling's event got
		// through it would come before these.
		checkEvents(t, nextEvents(t, ch, 2), []eventView{
			{store.EventPut, "/app/foo", self.Revision, "self"},
			{store.EventPut, "/app/foo/x", child.Revision, "child"},
		})
	})
}

func TestWatchRoot(t *testing.T) {
	forEachWatch(t, func(t *testing.T, w watchKind) {
		env := testenv.Start(t)
		s := env.Store
		_, ch, err := w.watch(t, s)(t.Context(), "/", 0, false)
		if err != nil {
			t.Fatal(err)
		}
		a := put(t, s, "/a", "1")
		b := put(t, s, "/b/c", "2")
		// Token records live outside the namespace tree.
		if _, err := store.NewRecords[string](s, store.SpaceTokens).Put(t.Context(), "h", "p"); err != nil {
			t.Fatal(err)
		}
		c := put(t, s, "/c", "3")
		checkEvents(t, nextEvents(t, ch, 3), []eventView{
			{store.EventPut, "/a", a.Revision, "1"},
			{store.EventPut, "/b/c", b.Revision, "2"},
			{store.EventPut, "/c", c.Revision, "3"},
		})
	})
}

func TestWatchKeysOnly(t *testing.T) {
	forEachWatch(t, func(t *testing.T, w watchKind) {
		env := testenv.Start(t)
		s := env.Store
		_, ch, err := w.watch(t, s)(t.Context(), "/w", 0, true)
		if err != nil {
			t.Fatal(err)
		}
		e := put(t, s, "/w/k", "secret")
		got := nextEvents(t, ch, 1)[0]
		if got.Entry.Value != nil {
			t.Errorf("keys-only event carries value %q", got.Entry.Value)
		}
		if got.Entry.Path != "/w/k" || got.Entry.Revision != e.Revision || got.Entry.Size != len("secret") {
			t.Errorf("keys-only event entry = %+v, want path, revision %d and size %d", got.Entry, e.Revision, len("secret"))
		}
	})
}

// All the changes of one etcd revision arrive as one batch. The store
// writes one path per revision, so the test writes two records in one
// transaction itself, copying a record of the same path so that it decodes.
func TestWatchBatchesPerRevision(t *testing.T) {
	forEachWatch(t, func(t *testing.T, w watchKind) {
		env := testenv.Start(t)
		s := env.Store
		ctx := t.Context()
		put(t, s, "/w/x", "x")
		raw, err := env.Client.Get(ctx, store.DefaultPrefix+"kv/w/x")
		if err != nil || len(raw.Kvs) != 1 {
			t.Fatalf("raw get: %v, %d kvs", err, len(raw.Kvs))
		}
		_, ch, err := w.watch(t, s)(ctx, "/w", 0, true)
		if err != nil {
			t.Fatal(err)
		}
		before := put(t, s, "/w/before", "b")
		txn, err := env.Client.Txn(ctx).Then(
			clientv3.OpPut(store.DefaultPrefix+"kv/w/x", string(raw.Kvs[0].Value)),
			clientv3.OpPut(store.DefaultPrefix+"kv/w/y", string(raw.Kvs[0].Value)),
		).Commit()
		if err != nil {
			t.Fatal(err)
		}
		shared := txn.Header.Revision
		afterPut := put(t, s, "/w/after", "a")

		var batches []store.WatchBatch
		for n := 0; n < 4; {
			b := nextBatch(t, ch)
			if b.Err != nil {
				t.Fatal(b.Err)
			}
			if len(b.Events) > 0 {
				batches = append(batches, b)
				n += len(b.Events)
			}
		}
		if len(batches) != 3 {
			t.Fatalf("got %d batches, want 3: %+v", len(batches), batches)
		}
		wantRevs := []int64{before.Revision, shared, afterPut.Revision}
		wantCounts := []int{1, 2, 1}
		for i, b := range batches {
			if b.Revision != wantRevs[i] || len(b.Events) != wantCounts[i] {
				t.Errorf("batch %d = revision %d with %d events, want revision %d with %d", i, b.Revision, len(b.Events), wantRevs[i], wantCounts[i])
			}
		}
		if got := views(batches[1].Events); got[0].Path != "/w/x" || got[1].Path != "/w/y" {
			t.Errorf("shared batch = %+v, want /w/x and /w/y", got)
		}
	})
}

func TestWatchCompacted(t *testing.T) {
	forEachWatch(t, func(t *testing.T, w watchKind) {
		env := testenv.Start(t)
		s := env.Store
		ctx := t.Context()
		first := put(t, s, "/w/k", "v1")
		put(t, s, "/w/k", "v2")
		last := put(t, s, "/w/k", "v3")
		if _, err := env.Client.Compact(ctx, last.Revision); err != nil {
			t.Fatal(err)
		}

		_, _, err := w.watch(t, s)(ctx, "/w", first.Revision, false)
		var compacted *store.CompactedError
		if !errors.As(err, &compacted) {
			t.Fatalf("Watch from compacted revision %d = %v, want a *CompactedError", first.Revision, err)
		}
		if !errors.Is(err, store.ErrCompacted) {
			t.Errorf("error does not wrap ErrCompacted")
		}
		if compacted.Requested != first.Revision || compacted.Oldest != last.Revision {
			t.Errorf("CompactedError = %+v, want Requested %d Oldest %d", compacted, first.Revision, last.Revision)
		}

		// The error's advice works: a watch from Oldest replays from there.
		after, ch, err := w.watch(t, s)(ctx, "/w", compacted.Oldest, false)
		if err != nil {
			t.Fatalf("Watch from the oldest revision %d: %v", compacted.Oldest, err)
		}
		if after != compacted.Oldest-1 {
			t.Errorf("watch starts after %d, want %d", after, compacted.Oldest-1)
		}
		checkEvents(t, nextEvents(t, ch, 1), []eventView{{store.EventPut, "/w/k", last.Revision, "v3"}})
	})
}

func TestWatchFutureRevision(t *testing.T) {
	forEachWatch(t, func(t *testing.T, w watchKind) {
		env := testenv.Start(t)
		s := env.Store
		cur := put(t, s, "/w/k", "v1")
		after, ch, err := w.watch(t, s)(t.Context(), "/w", cur.Revision+2, false)
		if err != nil {
			t.Fatal(err)
		}
		if after != cur.Revision+1 {
			t.Errorf("watch starts after %d, want %d", after, cur.Revision+1)
		}
		put(t, s, "/w/k", "skipped")
		next := put(t, s, "/w/k", "seen")
		checkEvents(t, nextEvents(t, ch, 1), []eventView{{store.EventPut, "/w/k", next.Revision, "seen"}})
	})
}

func TestWatchNegativeRevision(t *testing.T) {
	forEachWatch(t, func(t *testing.T, w watchKind) {
		env := testenv.Start(t)
		if _, _, err := w.watch(t, env.Store)(t.Context(), "/w", -1, false); err == nil {
			t.Fatal("Watch from revision -1 succeeded")
		}
	})
}

func TestWatchCancel(t *testing.T) {
	forEachWatch(t, func(t *testing.T, w watchKind) {
		env := testenv.Start(t)
		ctx, cancel := context.WithCancel(t.Context())
		_, ch, err := w.watch(t, env.Store)(ctx, "/w", 0, false)
		if err != nil {
			t.Fatal(err)
		}
		put(t, env.Store, "/w/k", "v")
		nextEvents(t, ch, 1)
		cancel()
		deadline := time.After(waitFor)
		for {
			select {
			case b, ok := <-ch:
				if !ok {
					return
				}
				if b.Err != nil && !errors.Is(b.Err, context.Canceled) {
					t.Errorf("batch after cancel carries %v", b.Err)
				}
			case <-deadline:
				t.Fatalf("watch channel still open %v after cancel", waitFor)
			}
		}
	})
}
