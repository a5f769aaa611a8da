package store_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

// A graftd restarted after kill -9 leads at once: the candidacy its dead
// predecessor left, whose lease would hold the election for its whole TTL
// (60 s here), is ended by the next candidate. A live process's
// candidacy is left alone, and its lease with it.
func TestLeadEndsTheCandidacyOfADeadProcess(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()
	// candidate puts a candidacy of a sleep process, as Lead would have
	// made it, on a 60 s lease; dead kills the process first.
	candidate := func(e store.Election, dead bool) clientv3.LeaseID {
		t.Helper()
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		id, err := store.ProcessIdentity(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if dead {
			cmd.Process.Kill()
			cmd.Wait()
		} else {
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		}
		lease, err := env.Client.Grant(ctx, 60)
		if err != nil {
			t.Fatal(err)
		}
		key := fmt.Sprintf("%s/%x", env.Store.ElectionKey(e), lease.ID)
		if _, err := env.Client.Put(ctx, key, "graftd-1:123#"+id, clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
		return lease.ID
	}
	ttl := func(id clientv3.LeaseID) int64 {
		t.Helper()
		r, err := env.Client.TimeToLive(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return r.TTL
	}
	lead := func(e store.Election, within time.Duration) error {
		lctx, cancel := context.WithTimeout(ctx, within)
		defer cancel()
		return env.Store.Lead(lctx, e, "graftd-2:456", 5*time.Second, func(context.Context, *store.Leader) error { return nil })
	}

	live := candidate("test/live", false)
	if err := lead("test/live", 1500*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lead against a live process's candidacy: %v, want to wait (deadline exceeded)", err)
	}
	if ttl(live) <= 0 {
		t.Fatal("the live process's lease was revoked")
	}

	dead := candidate("test/dead", true)
	began := time.Now()
	if err := lead("test/dead", 10*time.Second); err != nil {
		t.Fatalf("Lead against a dead process's candidacy: %v, want elected at once", err)
	}
	t.Logf("elected %s after the dead candidacy", time.Since(began).Round(time.Millisecond))
	if ttl(dead) > 0 {
		t.Fatal("the dead process's lease is still alive")
	}
}
