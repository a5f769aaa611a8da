package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/sdk"
)

// watchEvent is an event flattened for comparison.
type watchEvent struct {
	rev   int64
	typ   sdk.EventType
	path  string
	value string
}

// next reads the next response within a deadline.
func next(t *testing.T, ch <-chan sdk.WatchResponse) (sdk.WatchResponse, bool) {
	t.Helper()
	select {
	case r, ok := <-ch:
		return r, ok
	case <-time.After(20 * time.Second):
		t.Fatal("no watch response within 20s")
		return sdk.WatchResponse{}, false
	}
}

// collect reads until n events arrived, checking each response's shape.
func collect(t *testing.T, ch <-chan sdk.WatchResponse, n int) []watchEvent {
	t.Helper()
	var got []watchEvent
	for len(got) < n {
		r, ok := next(t, ch)
		if !ok {
			t.Fatalf("watch closed after %d of %d events: %+v", len(got), n, got)
		}
		if r.Err != nil {
			t.Fatalf("watch failed after %d events: %v", len(got), r.Err)
		}
		if len(r.Events) == 0 {
			t.Fatalf("watch delivered a response without events: %+v", r)
		}
		for _, ev := range r.Events {
			if ev.Entry.Revision != r.Revision {
				t.Fatalf("event revision %d in response of revision %d", ev.Entry.Revision, r.Revision)
			}
			got = append(got, watchEvent{r.Revision, ev.Type, ev.Entry.Path, string(ev.Entry.Value)})
		}
	}
	return got
}

// expectClosed waits for the channel to close and returns the error of its
// last response, if any.
func expectClosed(t *testing.T, ch <-chan sdk.WatchResponse) error {
	t.Helper()
	var last error
	for {
		r, ok := next(t, ch)
		if !ok {
			return last
		}
		if r.Err == nil && len(r.Events) > 0 {
			t.Fatalf("unexpected events while waiting for the watch to end: %+v", r)
		}
		last = r.Err
	}
}

func TestWatch(t *testing.T) {
	g := graftdtest.Start(t)
	c := newClient(t, g.Addr, g.Token)
	ctx := t.Context()

	t.Run("from a revision, with values", func(t *testing.T) {
		a, err := c.Put(ctx, "/w/rev/a", []byte("1"))
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.Put(ctx, "/w/rev/b", []byte("2"))
		if err != nil {
			t.Fatal(err)
		}
		del, err := c.Delete(ctx, "/w/rev/a")
		if err != nil {
			t.Fatal(err)
		}
		// A sibling that only shares the string prefix stays out.
		if _, err := c.Put(ctx, "/w/rev-evil/x", []byte("no")); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ch := c.Watch(wctx, "/w/rev", a.Revision)
		c3, err := c.Put(ctx, "/w/rev/c", []byte("3"))
		if err != nil {
			t.Fatal(err)
		}
		got := collect(t, ch, 4)
		want := []watchEvent{
			{a.Revision, sdk.EventPut, "/w/rev/a", "1"},
			{b.Revision, sdk.EventPut, "/w/rev/b", "2"},
			{del, sdk.EventDelete, "/w/rev/a", ""},
			{c3.Revision, sdk.EventPut, "/w/rev/c", "3"},
		}
		if !slices.Equal(got, want) {
			t.Fatalf("events = %+v\nwant %+v", got, want)
		}
		cancel()
		if err := expectClosed(t, ch); err != nil {
			t.Fatalf("canceled watch ended with %v, want a plain close", err)
		}
	})

	t.Run("from now, keys only", func(t *testing.T) {
		if _, err := c.Put(ctx, "/w/now/before", []byte("old")); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		// Watch returns once graftd confirmed the watch, so the put below
		// is after its start without any waiting.
		ch := c.Watch(wctx, "/w/now", 0, sdk.KeysOnly())
		p, err := c.Put(ctx, "/w/now/after", []byte("secret"))
		if err != nil {
			t.Fatal(err)
		}
		r, _ := next(t, ch)
		if r.Err != nil || r.Revision != p.Revision || len(r.Events) != 1 {
			t.Fatalf("first response = %+v, want the put at %d", r, p.Revision)
		}
		ev := r.Events[0]
		if ev.Entry.Path != "/w/now/after" || ev.Entry.Value != nil || ev.Entry.Size != 6 || ev.Entry.Author == "" {
			t.Fatalf("keys-only event = %+v, want path, size 6, author and no value", ev.Entry)
		}
	})

	t.Run("terminal errors end the watch", func(t *testing.T) {
		tests := []struct {
			name     string
			client   *sdk.Client
			prefix   string
			from     int64
			sentinel error
		}{
			// A trailing slash is not canonical: graftd says so, the
			// watch does not retry.
			{"invalid prefix", c, "/w/bad/", 0, sdk.ErrInvalidArgument},
			{"bad token", newClient(t, g.Addr, "wrong"), "/w", 0, sdk.ErrUnauthenticated},
			{"negative revision", c, "/w", -1, sdk.ErrInvalidArgument},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				err := expectClosed(t, tt.client.Watch(ctx, tt.prefix, tt.from))
				if !errors.Is(err, tt.sentinel) {
					t.Fatalf("watch ended with %v, want %v", err, tt.sentinel)
				}
			})
		}
	})

	t.Run("closing the client ends the watch", func(t *testing.T) {
		c2, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: g.Token})
		if err != nil {
			t.Fatal(err)
		}
		ch := c2.Watch(ctx, "/w", 0)
		c2.Close()
		if err := expectClosed(t, ch); err != nil {
			t.Fatalf("watch ended with %v, want a plain close", err)
		}
	})
}

// TestWatchResumesAcrossRestarts restarts graftd several times while a
// writer commits values, and checks the watcher saw every committed
// revision exactly once, in order.
func TestWatchResumesAcrossRestarts(t *testing.T) {
	const (
		writes   = 150
		restarts = 4
	)
	g := graftdtest.Start(t)
	c := newClient(t, g.Addr, g.Token)
	ctx := t.Context()

	seed, err := c.Put(ctx, "/resume/seed", []byte("0"))
	if err != nil {
		t.Fatal(err)
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	ch := c.Watch(wctx, "/resume", seed.Revision+1)

	var committed atomic.Int64
	writerDone := make(chan error, 1)
	go func() {
		for i := range writes {
			if err := putSurvivingRestarts(ctx, c, fmt.Sprintf("/resume/k%03d", i)); err != nil {
				writerDone <- err
				return
			}
			committed.Add(1)
		}
		writerDone <- nil
	}()

	for r := 1; r <= restarts; r++ {
		testenv.WaitFor(t, 30*time.Second, func() bool { return committed.Load() >= int64(r*writes/(restarts+1)) })
		g.Restart(t)
	}
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}

	// The truth is what graftd holds: each key was written once (retries
	// after an ambiguous failure are guarded by IfRevision(0)).
	items, err := c.List(ctx, "/resume", sdk.Recursive())
	if err != nil {
		t.Fatal(err)
	}
	var want []int64
	for _, it := range items {
		if it.Path != "/resume/seed" {
			want = append(want, it.Entry.Revision)
		}
	}
	slices.Sort(want)
	if len(want) != writes {
		t.Fatalf("graftd holds %d keys, want %d", len(want), writes)
	}

	var got []int64
	for _, ev := range collect(t, ch, writes) {
		if ev.typ != sdk.EventPut {
			t.Fatalf("unexpected event %+v", ev)
		}
		got = append(got, ev.rev)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("watched revisions (%d) differ from committed ones (%d):\n got %v\nwant %v", len(got), len(want), got, want)
	}
	// Nothing more may arrive: a repeat would show up here.
	extra, err := c.Put(ctx, "/resume/last", []byte("end"))
	if err != nil {
		t.Fatal(err)
	}
	if last := collect(t, ch, 1); last[0].rev != extra.Revision {
		t.Fatalf("after the writes the watch delivered %+v, want only the put at %d", last, extra.Revision)
	}
}

// putSurvivingRestarts writes path once, retrying while graftd restarts.
// A write whose answer was lost may have committed, so it is a create
// (IfRevision(0)) and a retry finding the path written counts as success.
func putSurvivingRestarts(ctx context.Context, c *sdk.Client, path string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.Put(callCtx, path, []byte(path), sdk.IfRevision(0))
		cancel()
		switch {
		case err == nil, errors.Is(err, sdk.ErrFailedPrecondition):
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("put %s: still failing after 30s: %w", path, err)
		}
		var se *sdk.Error
		if errors.As(err, &se) && se.Code != codes.Unavailable && se.Code != codes.Canceled && se.Code != codes.DeadlineExceeded {
			return fmt.Errorf("put %s: %w", path, err)
		}
		time.Sleep(10 * time.Millisecond) // graftd is coming back
	}
}
