package graftd_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/graftdtest"
)

// TestManyWatchesTimingOutTogether is the report's attack on graftd --dev:
// an app opens 300 watches on its own tree and lets them all reach their
// deadline at once. Afterwards watches still deliver, replication still
// copies, /readyz is ok and graftd shuts down in time.
func TestManyWatchesTimingOutTogether(t *testing.T) {
	g := graftdtest.Start(t)
	c := graftdtest.Dial(t, g.Addr)
	rootCtx := authed(g.Token)
	_, appToken := g.TokenFile(t, "app:a", "app")
	appCtx := authed(appToken)
	if _, err := c.KV.Put(rootCtx, &graftv1.PutRequest{Path: "/dba/s", Value: []byte("v1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Replication.Share(rootCtx, &graftv1.ShareRequest{Source: "/dba/s", Destinations: []string{"/app/b/replicated/s"}}); err != nil {
		t.Fatal(err)
	}

	const n = 300
	dctx, cancel := context.WithTimeout(appCtx, 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			st, err := c.KV.Watch(dctx, &graftv1.WatchRequest{Prefix: "/app/a"})
			if err != nil {
				return
			}
			for {
				if _, err := st.Recv(); err != nil {
					return
				}
			}
		})
	}
	wg.Wait()

	// A new watch delivers.
	wctx, wcancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+g.Token), 10*time.Second)
	defer wcancel()
	st, err := c.KV.Watch(wctx, &graftv1.WatchRequest{Prefix: "/app/b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil { // created
		t.Fatalf("a new watch did not start: %v", err)
	}
	// Replication copies the source's next version, and the watch sees it.
	if _, err := c.KV.Put(rootCtx, &graftv1.PutRequest{Path: "/dba/s", Value: []byte("v2")}); err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("no replicated v2 reached a watch after %d watches timed out together: %v", n, err)
		}
		if evs := resp.GetEvents(); len(evs) > 0 && string(evs[0].GetEntry().GetValue()) == "v2" {
			break
		}
	}
	if code, body := httpGet(t, "http://"+g.HTTPAddr+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d %q", code, body)
	}
	start := time.Now()
	g.Stop(t)
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("shutdown took %s", d)
	}
}
