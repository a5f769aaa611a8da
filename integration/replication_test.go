//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/sdk"
)

// writer writes numbered values to a set of source keys and remembers the
// last value of each, so that every destination can be checked against it.
type writer struct {
	t    *testing.T
	keys []string
	last map[string]string
	n    int
}

func newWriter(t *testing.T, source string, keys int) *writer {
	w := &writer{t: t, last: map[string]string{}}
	for i := range keys {
		w.keys = append(w.keys, fmt.Sprintf("%s/k%02d", source, i))
	}
	return w
}

// write puts n values round-robin over the keys through c, retrying a
// write that fails while a replica or NATS is away.
func (w *writer) write(ctx context.Context, c *sdk.Client, n int) {
	w.t.Helper()
	for range n {
		k := w.keys[w.n%len(w.keys)]
		v := fmt.Sprintf("v%d", w.n)
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, err := c.Put(ctx, k, []byte(v))
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				w.t.Fatalf("put %s: %v", k, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		w.last[k] = v
		w.n++
	}
}

// converged waits until every destination holds its source's last value,
// read through c, and fails with the differences after timeout.
func (w *writer) converged(ctx context.Context, c *sdk.Client, source string, dests []string, timeout time.Duration) {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var diffs []string
		for _, k := range slices.Sorted(maps.Keys(w.last)) {
			for _, d := range dests {
				p := d + strings.TrimPrefix(k, source)
				e, err := c.Get(ctx, p)
				switch {
				case errors.Is(err, sdk.ErrNotFound):
					diffs = append(diffs, p+" is missing")
				case err != nil:
					diffs = append(diffs, fmt.Sprintf("%s: %v", p, err))
				case string(e.Value) != w.last[k]:
					diffs = append(diffs, fmt.Sprintf("%s = %s, want %s", p, e.Value, w.last[k]))
				}
			}
		}
		if len(diffs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			if len(diffs) > 10 {
				diffs = append(diffs[:10], fmt.Sprintf("… and %d more", len(diffs)-10))
			}
			w.t.Fatalf("destinations differ from their sources %s after the last write:\n%s", timeout, strings.Join(diffs, "\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestReplicationAcrossContainers runs two graftd replicas in their own
// containers against etcd and NATS in theirs. Writes through either
// replica reach every destination while a replica is stopped, killed and
// restarted and while NATS is restarted.
func TestReplicationAcrossContainers(t *testing.T) {
	c := newCluster(t)
	ctx := c.ctx
	a := c.graftd("graftd-a")
	token := c.breakGlass()
	b := c.graftd("graftd-b")
	ca, cb := c.client(a, token), c.client(b, token)
	// break-glass wrote the token to etcd; each replica learns of it
	// through its watch.
	for _, cl := range []*sdk.Client{ca, cb} {
		deadline := time.Now().Add(10 * time.Second)
		for _, err := cl.WhoAmI(ctx); err != nil; _, err = cl.WhoAmI(ctx) {
			if time.Now().After(deadline) {
				t.Fatalf("the break-glass token: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	const source = "/dba/orders/db"
	dests := []string{"/app/orders/replicated/db", "/app/billing/replicated/db"}
	if _, _, err := ca.Share(ctx, source, dests, sdk.ShareOptions{}); err != nil {
		t.Fatalf("share: %v", err)
	}
	w := newWriter(t, source, 20)

	t.Log("both replicas up")
	w.write(ctx, ca, 40)
	w.write(ctx, cb, 40)
	w.converged(ctx, cb, source, dests, 30*time.Second)

	// A copy is refused to anyone but the replicator, on either replica.
	if _, err := cb.Put(ctx, dests[0]+"/k00", []byte("hand-written")); !errors.Is(err, sdk.ErrFailedPrecondition) {
		t.Fatalf("a hand-written copy: %v, want FailedPrecondition", err)
	}

	t.Log("graftd-a stopped (SIGTERM)")
	stop := 10 * time.Second
	if err := a.Stop(ctx, &stop); err != nil {
		t.Fatal(err)
	}
	w.write(ctx, cb, 60)
	w.converged(ctx, cb, source, dests, 30*time.Second)

	t.Log("graftd-a started again; NATS restarted")
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.nats.Stop(ctx, &stop); err != nil {
		t.Fatal(err)
	}
	if err := c.nats.Start(ctx); err != nil {
		t.Fatal(err)
	}
	w.write(ctx, cb, 60)
	w.converged(ctx, cb, source, dests, 60*time.Second)

	t.Log("graftd-b killed (SIGKILL) while writes go to graftd-a")
	ca = c.client(a, token) // its port mapping changed with the restart
	c.kill(b)
	w.write(ctx, ca, 60)
	w.converged(ctx, ca, source, dests, 60*time.Second)
	t.Logf("%d writes to %d keys, each reached %d destinations", w.n, len(w.keys), len(dests))
}
