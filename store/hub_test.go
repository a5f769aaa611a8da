package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

// watchFunc opens a watch the way Store.Watch does.
type watchFunc func(ctx context.Context, prefix string, startRev int64, keysOnly bool) (int64, <-chan store.WatchBatch, error)

// watchKind is one way of serving a watch: etcd directly (Store.Watch),
// or a hub, from its buffer or replaying from etcd first.
type watchKind struct {
	name string
	hub  *store.HubConfig
}

// watch returns how this kind watches s. A hub starts with the first
// watch, so that what the test wrote before is history it prefilled (or,
// without prefill, must replay from etcd).
func (k watchKind) watch(t *testing.T, s *store.Store) watchFunc {
	if k.hub == nil {
		return s.Watch
	}
	return func(ctx context.Context, prefix string, startRev int64, keysOnly bool) (int64, <-chan store.WatchBatch, error) {
		h := startHub(t, s, *k.hub)
		return h.Watch(ctx, prefix, startRev, keysOnly, nil)
	}
}

// forEachWatch runs a watch test against Store.Watch and the hub.
func forEachWatch(t *testing.T, test func(t *testing.T, w watchKind)) {
	for _, k := range []watchKind{
		{name: "etcd"},
		{name: "hub", hub: &store.HubConfig{}},
		{name: "hub-replay", hub: &store.HubConfig{Prefill: -1}},
	} {
		t.Run(k.name, func(t *testing.T) { test(t, k) })
	}
}

func startHub(t *testing.T, s *store.Store, cfg store.HubConfig) *store.Hub {
	t.Helper()
	cfg.Store, cfg.Logger = s, testenv.Logger(t)
	h, err := store.NewHub(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

// One change read by many subscribers is decrypted once.
func TestHubDecryptsEachChangeOnce(t *testing.T) {
	env := testenv.Start(t)
	s := env.Store
	h := startHub(t, s, store.HubConfig{})
	var chans []<-chan store.WatchBatch
	for i := range 50 {
		prefix := "/app/x"
		if i%5 == 0 {
			prefix = "/"
		}
		_, ch, err := h.Watch(t.Context(), prefix, 0, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		chans = append(chans, ch)
	}
	// A subscriber that may not read it costs nothing.
	_, blind, err := h.Watch(t.Context(), "/app/x", 0, false, func(string) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	before := s.Decryptions()
	e := put(t, s, "/app/x/k", "secret")
	for _, ch := range chans {
		checkEvents(t, nextEvents(t, ch, 1), []eventView{{store.EventPut, "/app/x/k", e.Revision, "secret"}})
	}
	if got := nextEvents(t, blind, 1)[0].Entry; got.Value != nil || got.Revision != e.Revision {
		t.Errorf("unreadable event = %+v, want the change without its value", got)
	}
	if n := s.Decryptions() - before; n != 1 {
		t.Errorf("51 subscribers cost %d decryptions of one change, want 1", n)
	}
}

// Subscribers joining from every kind of start while changes stream in
// (from the buffer, from before it, replayed from etcd) each see every
// revision of their prefix after their start exactly once, in order.
func TestHubJoinsWithoutGapOrRepeat(t *testing.T) {
	env := testenv.Start(t)
	s := env.Store
	// A small buffer: most starts fall below it and replay from etcd.
	h := startHub(t, s, store.HubConfig{BufferEvents: 8, Prefill: -1})
	ctx := t.Context()
	var mu sync.Mutex
	var revs []int64 // every write to /j, in commit order
	write := func(i int) {
		e, err := s.Put(ctx, fmt.Sprintf("/j/%d", i%7), []byte("v"), store.WriteOptions{})
		if err != nil {
			t.Error(err)
			return
		}
		put(t, s, "/other/k", "noise")
		mu.Lock()
		revs = append(revs, e.Revision)
		mu.Unlock()
	}
	const total = 120
	writer := make(chan struct{})
	go func() {
		defer close(writer)
		for i := range total {
			write(i)
		}
	}()
	type joined struct {
		start int64
		after int64
		ch    <-chan store.WatchBatch
	}
	var subs []joined
	for len(subs) < 30 {
		time.Sleep(5 * time.Millisecond)
		mu.Lock()
		var start int64
		if n := len(revs); n > 0 {
			start = revs[(len(subs)*7)%n] // anywhere in what was written
		}
		mu.Unlock()
		if len(subs)%3 == 0 {
			start = 0 // from now
		}
		after, ch, err := h.Watch(ctx, "/j", start, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, joined{start, after, ch})
	}
	<-writer
	mu.Lock()
	all := append([]int64(nil), revs...)
	mu.Unlock()
	last := all[len(all)-1]
	for i, sub := range subs {
		var want []int64
		for _, r := range all {
			if r > sub.after {
				want = append(want, r)
			}
		}
		var got []int64
		for len(got) == 0 || got[len(got)-1] < last {
			b := nextBatch(t, sub.ch)
			if b.Err != nil {
				t.Fatalf("subscriber %d: %v", i, b.Err)
			}
			for _, e := range b.Events {
				got = append(got, e.Entry.Revision)
			}
			if len(want) == 0 {
				break
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("subscriber %d (start %d, after %d) got revisions\n%v\nwant\n%v", i, sub.start, sub.after, got, want)
		}
	}
}

// A subscriber that reads nothing is cut off once MaxPending changes wait
// for it, with a resumable error; the others are not held up, and it
// resumes from where the error says without a gap.
func TestHubCutsOffASlowSubscriber(t *testing.T) {
	env := testenv.Start(t)
	s := env.Store
	h := startHub(t, s, store.HubConfig{MaxPending: 4})
	ctx := t.Context()
	_, slow, err := h.Watch(ctx, "/s", 0, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, fast, err := h.Watch(ctx, "/s", 0, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	var revs []int64
	for i := range 10 {
		revs = append(revs, put(t, s, fmt.Sprintf("/s/%d", i), "v").Revision)
		if got := nextEvents(t, fast, 1)[0].Entry.Revision; got != revs[i] {
			t.Fatalf("fast subscriber got revision %d, want %d", got, revs[i])
		}
	}
	var got []int64
	var behind *store.BehindError
	for behind == nil {
		b := nextBatch(t, slow)
		switch {
		case errors.As(b.Err, &behind):
		case b.Err != nil:
			t.Fatalf("slow subscriber ended with %v, want a *BehindError", b.Err)
		default:
			for _, e := range b.Events {
				got = append(got, e.Entry.Revision)
			}
		}
	}
	if !errors.Is(behind, store.ErrWatchBehind) {
		t.Error("BehindError does not wrap ErrWatchBehind")
	}
	if _, ok := <-slow; ok {
		t.Error("the slow subscriber's channel stays open after the error")
	}
	if len(got) == len(revs) {
		t.Fatal("the slow subscriber got everything: the test proves nothing")
	}
	_, resumed, err := h.Watch(ctx, "/s", behind.Resume, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	for len(got) < len(revs) {
		for _, e := range nextEvents(t, resumed, 1) {
			got = append(got, e.Entry.Revision)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(revs) {
		t.Errorf("before and after the cut-off the subscriber got %v, want %v", got, revs)
	}
}

// An idle subscriber is told the revision the hub reached, so that it
// resumes from there and not from where it began.
func TestHubTellsIdleSubscribersTheRevision(t *testing.T) {
	env := testenv.Start(t)
	s := env.Store
	h := startHub(t, s, store.HubConfig{ProgressEvery: 50 * time.Millisecond})
	after, ch, err := h.Watch(t.Context(), "/quiet", 0, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	elsewhere := put(t, s, "/busy/k", "v")
	for {
		b := nextBatch(t, ch)
		if b.Err != nil || len(b.Events) > 0 {
			t.Fatalf("idle subscriber got %+v", b)
		}
		if b.Revision <= after {
			t.Fatalf("progress to %d, not past the start %d", b.Revision, after)
		}
		if b.Revision >= elsewhere.Revision {
			return
		}
	}
}

// Thousands of subscribers ending at once (graftd --dev's in-process etcd
// client, where cancelling hundreds of etcd watches at once once stalled
// every watch) leave the hub delivering, with none left behind.
func TestHubManySubscribersEndingAtOnceInProcess(t *testing.T) {
	e := testenv.StartEtcd(t, t.TempDir())
	s, err := store.New(store.Config{Client: e.Client(), Keyring: testenv.NewKeyring(t), Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	h := startHub(t, s, store.HubConfig{})
	ctx := context.Background()
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	_, long, err := h.Watch(lctx, "/app/b", 0, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	wctx, cancel := context.WithCancel(ctx)
	chans := make([]<-chan store.WatchBatch, n)
	for i := range n {
		if _, chans[i], err = h.Watch(wctx, fmt.Sprintf("/app/a%d", i%100), 0, false, nil); err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
	}
	if got := h.Subscribers(); got != n+1 {
		t.Fatalf("hub serves %d subscribers, want %d", got, n+1)
	}
	cancel()
	var wg sync.WaitGroup
	for _, ch := range chans {
		wg.Go(func() {
			for range ch {
			}
		})
	}
	ended := make(chan struct{})
	go func() { wg.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(waitFor):
		t.Fatalf("%d cancelled watches did not all end within %v", n, waitFor)
	}
	if _, err := s.Put(ctx, "/app/b/x", []byte("v2"), store.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvents(t, long, 1); ev[0].Entry.Path != "/app/b/x" {
		t.Fatalf("long-lived watch got %v", ev)
	}
	if got := h.Subscribers(); got != 1 {
		t.Errorf("hub serves %d subscribers after the cancellations, want 1", got)
	}
}
