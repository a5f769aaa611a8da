package leases

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/graft-sh/graft/dbcred"
)

// closeCounter is a driver that counts its closes.
type closeCounter struct {
	dbcred.Dynamic
	closed *atomic.Int32
}

func (c closeCounter) Close() error { c.closed.Add(1); return nil }

// An admin pool nobody used for poolIdle is closed at the next request
// for any pool, one in use never is, and the DSN's next request opens it
// again.
func TestIdlePoolsClose(t *testing.T) {
	var opened, closed atomic.Int32
	ps := newPools(func(context.Context, string, string) (dbcred.Dynamic, error) {
		opened.Add(1)
		return closeCounter{closed: &closed}, nil
	}, 2)
	now := time.Unix(1_800_000_000, 0)
	ps.now = func() time.Time { return now }
	ctx := t.Context()

	_, releaseOld, err := ps.get(ctx, "postgres", "old-dsn")
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Hour)
	if _, release, err := ps.get(ctx, "postgres", "other-dsn"); err != nil {
		t.Fatal(err)
	} else {
		release()
	}
	if closed.Load() != 0 {
		t.Fatal("a pool in use was closed")
	}
	releaseOld()
	now = now.Add(poolIdle - time.Second)
	_, release, _ := ps.get(ctx, "postgres", "other-dsn")
	release()
	if closed.Load() != 0 {
		t.Fatal("a pool idle for less than poolIdle was closed")
	}
	now = now.Add(2 * time.Second)
	_, release, _ = ps.get(ctx, "postgres", "other-dsn")
	release()
	waitFor(t, func() bool { return closed.Load() == 1 })
	if _, release, err := ps.get(ctx, "postgres", "old-dsn"); err != nil {
		t.Fatal(err)
	} else {
		release()
	}
	if opened.Load() != 3 {
		t.Fatalf("opened %d pools, want 3 (old, other, old again)", opened.Load())
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
	}
}
