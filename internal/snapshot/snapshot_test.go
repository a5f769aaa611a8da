package snapshot_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/snapshot"
)

// memSource is a collection in memory with a revision counter, like etcd
// in miniature: every write moves the revision, watchers get the changes
// after the revision they ask for, and a watch can be broken.
type memSource struct {
	mu       sync.Mutex
	rev      int64
	items    map[string]snapshot.Item[string]
	log      []snapshot.Change[string]
	watchers []chan []snapshot.Change[string]
	lists    int
}

func newMemSource() *memSource { return &memSource{items: map[string]snapshot.Item[string]{}} }

func (m *memSource) put(key, v string) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rev++
	it := snapshot.Item[string]{Key: key, Value: v, Revision: m.rev}
	m.items[key] = it
	m.publish(snapshot.Change[string]{Item: it})
	return m.rev
}

func (m *memSource) del(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rev++
	delete(m.items, key)
	m.publish(snapshot.Change[string]{Item: snapshot.Item[string]{Key: key, Revision: m.rev}, Deleted: true})
}

func (m *memSource) publish(c snapshot.Change[string]) {
	m.log = append(m.log, c)
	for _, w := range m.watchers {
		w <- []snapshot.Change[string]{c}
	}
}

// breakWatches closes every open watch, as a lost etcd connection would.
func (m *memSource) breakWatches() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.watchers {
		close(w)
	}
	m.watchers = nil
}

func (m *memSource) List(context.Context) ([]snapshot.Item[string], int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lists++
	var out []snapshot.Item[string]
	for _, it := range m.items {
		out = append(out, it)
	}
	return out, m.rev, nil
}

func (m *memSource) Watch(ctx context.Context, after int64) <-chan []snapshot.Change[string] {
	m.mu.Lock()
	defer m.mu.Unlock()
	ch := make(chan []snapshot.Change[string], 1024)
	for _, c := range m.log {
		if c.Revision > after {
			ch <- []snapshot.Change[string]{c}
		}
	}
	m.watchers = append(m.watchers, ch)
	return ch
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSnapshotFollowsListAndWatch(t *testing.T) {
	src := newMemSource()
	src.put("a", "1")
	var (
		mu    sync.Mutex
		calls []int64
	)
	var s *snapshot.Snapshot[string]
	s, err := snapshot.New(snapshot.Config[string]{Name: "things", Source: src, OnChange: func(rev int64) {
		// The items, during OnChange, are those at rev.
		if _, at := s.Items(); at != rev {
			t.Errorf("OnChange(%d) reads the items at %d", rev, at)
		}
		mu.Lock()
		calls = append(calls, rev)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	<-s.Loaded()
	if v, ok := s.Get("a"); !ok || v != "1" {
		t.Fatalf("after load: a = %q, %v", v, ok)
	}
	src.put("b", "2")
	src.put("a", "3")
	src.del("b")
	waitFor(t, func() bool { _, rev := s.Items(); return rev == 4 })
	items, _ := s.Items()
	if len(items) != 1 || items[0].Key != "a" || items[0].Value != "3" {
		t.Fatalf("items = %+v, want only a=3", items)
	}
	mu.Lock()
	if len(calls) != 4 || calls[0] != 1 || calls[3] != 4 {
		t.Errorf("OnChange revisions = %v, want 1, 2, 3, 4", calls)
	}
	mu.Unlock()

	// A broken watch makes it list again and go on from there.
	lists := src.lists
	src.breakWatches()
	waitFor(t, func() bool { src.mu.Lock(); defer src.mu.Unlock(); return src.lists > lists && len(src.watchers) == 1 })
	src.put("c", "5")
	waitFor(t, func() bool { v, ok := s.Get("c"); return ok && v == "5" })
}

// staleSource lists a=new at revision 2, then its watch delivers the
// older a=old of revision 1, as a watch racing a Refresh can.
type staleSource struct{}

func (staleSource) List(context.Context) ([]snapshot.Item[string], int64, error) {
	return []snapshot.Item[string]{{Key: "a", Value: "new", Revision: 2}}, 2, nil
}

func (staleSource) Watch(ctx context.Context, _ int64) <-chan []snapshot.Change[string] {
	ch := make(chan []snapshot.Change[string], 2)
	ch <- []snapshot.Change[string]{{Item: snapshot.Item[string]{Key: "a", Value: "old", Revision: 1}}}
	ch <- []snapshot.Change[string]{{Item: snapshot.Item[string]{Key: "b", Revision: 2}, Deleted: true}}
	go func() { <-ctx.Done(); close(ch) }()
	return ch
}

// Changes no newer than the snapshot are ignored: a Refresh may have read
// them already, and applying them would undo a later change.
func TestSnapshotIgnoresOlderChanges(t *testing.T) {
	changes := 0
	s, _ := snapshot.New(snapshot.Config[string]{Name: "things", Source: staleSource{}, OnChange: func(int64) { changes++ }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	<-s.Loaded()
	time.Sleep(50 * time.Millisecond)
	cancel()
	<-done
	if v, _ := s.Get("a"); v != "new" {
		t.Fatalf("a = %q after an older change arrived, want new", v)
	}
	if items, rev := s.Items(); len(items) != 1 || rev != 2 || changes != 1 {
		t.Fatalf("items %+v at %d after %d OnChange calls; want a=new at 2, one call", items, rev, changes)
	}
}

// Await returns once a change just made, and OnChange's view of it, are in
// effect: from the watch without listing again, or, with no watch running,
// by listing after a second.
func TestAwaitSeesTheCallersChange(t *testing.T) {
	src := newMemSource()
	var view atomic.Int64 // the revision OnChange last derived a view at
	s, _ := snapshot.New(snapshot.Config[string]{Name: "things", Source: src, OnChange: func(rev int64) {
		time.Sleep(20 * time.Millisecond) // a slow index rebuild
		view.Store(rev)
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	<-s.Loaded()
	lists := src.lists
	for i := range 5 {
		rev := src.put("k", strconv.Itoa(i))
		if err := s.Await(t.Context(), rev); err != nil {
			t.Fatal(err)
		}
		if v, _ := s.Get("k"); v != strconv.Itoa(i) || view.Load() < rev {
			t.Fatalf("after Await(%d): k = %q, view at %d", rev, v, view.Load())
		}
	}
	if src.lists != lists {
		t.Fatalf("Await listed the collection %d times with the watch running", src.lists-lists)
	}
	cancel()
	src.breakWatches()
	<-done

	// Nothing follows the source any more: Await lists at once.
	rev := src.put("k", "late")
	if err := s.Await(t.Context(), rev); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Get("k"); v != "late" || src.lists != lists+1 {
		t.Fatalf("Await without Run: k = %q after %d lists", v, src.lists-lists)
	}
}

// silentSource lists, and its watch never delivers: a broken watch.
type silentSource struct{ *memSource }

func (silentSource) Watch(ctx context.Context, _ int64) <-chan []snapshot.Change[string] {
	ch := make(chan []snapshot.Change[string])
	go func() { <-ctx.Done(); close(ch) }()
	return ch
}

// With a watch that does not deliver, Await lists after giving it a
// second.
func TestAwaitListsWhenTheWatchIsSilent(t *testing.T) {
	src := silentSource{newMemSource()}
	s, _ := snapshot.New(snapshot.Config[string]{Name: "things", Source: src})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	<-s.Loaded()
	rev := src.put("k", "v")
	start := time.Now()
	if err := s.Await(t.Context(), rev); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Get("k"); v != "v" {
		t.Fatalf("k = %q after Await", v)
	}
	if waited := time.Since(start); waited < 900*time.Millisecond {
		t.Fatalf("Await listed after %s, before giving the watch its second", waited)
	}
}

// BenchmarkGrowingOneChangeAtATime: 10,000 applications created one after
// another reach graftd's snapshot of them as 10,000 single changes. The
// snapshot used to sort all its items for OnChange after each, 50 million
// item copies in all.
func BenchmarkGrowingOneChangeAtATime(b *testing.B) {
	for b.Loop() {
		src := newMemSource()
		s, _ := snapshot.New(snapshot.Config[string]{Name: "things", Source: src, OnChange: func(int64) {}})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { s.Run(ctx); close(done) }()
		<-s.Loaded()
		var rev int64
		for i := range 10000 {
			rev = src.put(fmt.Sprintf("app-%05d", i), "x")
		}
		if err := s.Await(ctx, rev); err != nil {
			b.Fatal(err)
		}
		cancel()
		src.breakWatches()
		<-done
	}
}
