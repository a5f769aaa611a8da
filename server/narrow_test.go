package server_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// TestReadsDecryptOnlyWhatTheCallerMayReach: an app reading or watching
// above its own tree gets its own values, and graftd decrypts no other
// app's to find them.
func TestReadsDecryptOnlyWhatTheCallerMayReach(t *testing.T) {
	h := start(t)
	app := withToken("graft_app") // app:x
	for _, p := range []string{"/app/x/a", "/app/x/b", "/app/y/a", "/app/y/b", "/app/y/c", "/app/x-evil/a", "/dba/s"} {
		if _, err := h.kv.Put(root(), &graftv1.PutRequest{Path: p, Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	read := func(path string) (paths []string, decrypted uint64) {
		t.Helper()
		before := h.env.Store.Decryptions()
		resp, err := h.kv.ReadTree(app, &graftv1.ReadTreeRequest{Path: path})
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		for _, e := range resp.GetEntries() {
			paths = append(paths, e.GetPath())
		}
		return paths, h.env.Store.Decryptions() - before
	}
	own, ownCost := read("/app/x")
	wide, wideCost := read("/app")
	if len(own) != 2 || len(wide) != 2 || own[0] != wide[0] || own[1] != wide[1] {
		t.Fatalf("read /app = %q, read /app/x = %q; want the same two values", wide, own)
	}
	if wideCost != ownCost {
		t.Errorf("read /app decrypted %d values, read /app/x %d; want only the caller's", wideCost, ownCost)
	}

	// A listing of / reads the caller's tree and names nothing else.
	list, err := h.kv.List(app, &graftv1.ListRequest{Prefix: "/", Recursive: true})
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, it := range list.GetItems() {
		listed = append(listed, it.GetPath())
	}
	if len(listed) != 2 || listed[0] != "/app/x/a" || listed[1] != "/app/x/b" {
		t.Errorf("list -r / by app:x = %q", listed)
	}

	// A watch of / sees its own tree's changes, and decrypts nothing else.
	ctx, cancel := context.WithTimeout(app, 10*time.Second)
	defer cancel()
	st, err := h.kv.Watch(ctx, &graftv1.WatchRequest{Prefix: "/"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	before := h.env.Store.Decryptions()
	for _, p := range []string{"/app/y/a", "/app/x-evil/a", "/dba/s", "/app/x/a"} {
		if _, err := h.kv.Put(root(), &graftv1.PutRequest{Path: p, Value: []byte("v2")}); err != nil {
			t.Fatal(err)
		}
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		evs := resp.GetEvents()
		if len(evs) == 0 {
			continue
		}
		if got := evs[0].GetEntry().GetPath(); got != "/app/x/a" {
			t.Fatalf("watch of / by app:x saw %s", got)
		}
		break
	}
	if n := h.env.Store.Decryptions() - before; n != 1 {
		t.Errorf("a watch of / by app:x decrypted %d values for one change of its own among four", n)
	}

	// A restore plan of / covers the caller's tree only.
	resp, err := h.kv.RestorePrefix(app, &graftv1.RestorePrefixRequest{Prefix: "/", At: timestamppb.New(time.Now().Add(-time.Hour)), DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range resp.GetSteps() {
		if st.GetPath() != "/app/x/a" && st.GetPath() != "/app/x/b" {
			t.Errorf("restore plan of / by app:x has a step for %s", st.GetPath())
		}
	}
	if len(resp.GetSteps()) != 2 || resp.GetOutOfReach() != 0 {
		t.Errorf("restore plan of / by app:x: %d steps, %d out of reach; want 2 and 0", len(resp.GetSteps()), resp.GetOutOfReach())
	}
}
