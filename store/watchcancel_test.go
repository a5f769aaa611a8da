package store_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

// TestManyWatchesEndingAtOnceInProcess: graftd --dev talks to its embedded
// etcd in process (v3client), where a watch stream is a pair of Go
// channels with no buffer to speak of. Hundreds of watches ending at once
// (an app's watches all reaching their deadline) must end cleanly and
// leave every other watch, and new ones, delivering.
func TestManyWatchesEndingAtOnceInProcess(t *testing.T) {
	e := testenv.StartEtcd(t, t.TempDir())
	s, err := store.New(store.Config{Client: e.Client(), Keyring: testenv.NewKeyring(t), Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// A long-lived watch, as the replicator's or an agent's.
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	_, long, err := s.Watch(lctx, "/app/b", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	chans := make([]<-chan store.WatchBatch, n)
	for i := range n {
		_, ch, err := s.Watch(wctx, "/app/a", 0, false)
		if err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
		chans[i] = ch
	}
	cancel()
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
	_, fresh, err := s.Watch(ctx, "/app/b", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "/app/b/y", []byte("v"), store.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	nextEvents(t, fresh, 1)
}

// TestProbeWatchFindsAStuckStream: the liveness probe behind graftd's
// /readyz answers while the shared watch stream delivers, and fails within
// its deadline once that stream is stuck.
func TestProbeWatchFindsAStuckStream(t *testing.T) {
	e := testenv.StartEtcd(t, t.TempDir())
	s, err := store.New(store.Config{Client: e.Client(), Keyring: testenv.NewKeyring(t), Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	probe := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return s.ProbeWatch(ctx, "test")
	}
	if err := probe(); err != nil {
		t.Fatalf("probe of a healthy store: %v", err)
	}
	s.JamSharedWatchStream(400)
	if err := probe(); err == nil {
		t.Fatal("probe passed on a stuck watch stream")
	} else {
		t.Logf("probe: %v", err)
	}
}
