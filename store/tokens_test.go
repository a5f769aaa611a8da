package store_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

func token(hash, principal string) store.TokenRecord {
	return store.TokenRecord{
		Hash:      hash,
		Principal: principal,
		Roles:     []string{"reader"},
		Created:   time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
		Creator:   "admin",
		Expires:   time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC),
	}
}

func tokenHashes(t *testing.T, s *store.Store) []string {
	t.Helper()
	recs, _, err := s.ListTokens(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range recs {
		out = append(out, r.Principal+":"+r.Hash)
	}
	slices.Sort(out)
	return out
}

func TestTokens(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()
	s := env.Store

	if got := tokenHashes(t, s); len(got) != 0 {
		t.Fatalf("tokens in a new store: %v", got)
	}
	want := token("aaa", "alice")
	for _, rec := range []store.TokenRecord{want, token("bbb", "alice"), token("ccc", "bob")} {
		if err := s.PutToken(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	recs, listRev, err := s.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 {
		t.Fatalf("ListTokens = %d records, want 3", len(recs))
	}
	got := recs[slices.IndexFunc(recs, func(r store.TokenRecord) bool { return r.Hash == "aaa" })]
	if got.Principal != want.Principal || !slices.Equal(got.Roles, want.Roles) || !got.Created.Equal(want.Created) ||
		got.Creator != want.Creator || !got.Expires.Equal(want.Expires) {
		t.Errorf("stored record = %+v, want %+v", got, want)
	}

	// Token records are not part of the namespace tree.
	if items, _, err := s.List(ctx, "/", true); err != nil || len(items) != 0 {
		t.Errorf("List / = %+v, %v; token records leaked into the tree", items, err)
	}

	changes := s.WatchTokens(ctx, listRev)
	if err := s.ReplacePrincipalTokens(ctx, "alice", token("ddd", "alice")); err != nil {
		t.Fatal(err)
	}
	if got, want := tokenHashes(t, s), []string{"alice:ddd", "bob:ccc"}; !slices.Equal(got, want) {
		t.Errorf("tokens after replacing alice's = %v, want %v", got, want)
	}
	// Replacing with a token the principal already holds keeps just it.
	if err := s.ReplacePrincipalTokens(ctx, "alice", token("ddd", "alice")); err != nil {
		t.Fatal(err)
	}
	if got, want := tokenHashes(t, s), []string{"alice:ddd", "bob:ccc"}; !slices.Equal(got, want) {
		t.Errorf("tokens after replacing alice's again = %v, want %v", got, want)
	}

	var seen []string
	for len(seen) < 4 {
		select {
		case c, ok := <-changes:
			if !ok {
				t.Fatalf("token watch closed after %v", seen)
			}
			kind := "put"
			if c.Deleted {
				kind = "delete"
			}
			seen = append(seen, kind+" "+c.Record.Hash)
		case <-time.After(waitFor):
			t.Fatalf("token changes so far %v, want 4", seen)
		}
	}
	// The first replace is one transaction, so its three changes come
	// together; their order within it is etcd's.
	slices.Sort(seen[:3])
	if want := []string{"delete aaa", "delete bbb", "put ddd", "put ddd"}; !slices.Equal(seen, want) {
		t.Errorf("token changes = %v, want %v", seen, want)
	}
}

func TestWatchTokensClosesOnCancel(t *testing.T) {
	env := testenv.Start(t)
	ctx, cancel := context.WithCancel(t.Context())
	_, rev, err := env.Store.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	changes := env.Store.WatchTokens(ctx, rev)
	cancel()
	select {
	case _, ok := <-changes:
		if ok {
			t.Error("a change arrived on a cancelled token watch")
		}
	case <-time.After(waitFor):
		t.Fatal("token watch still open after cancel")
	}
}

// ReplacePrincipalTokens is atomic: a token of the principal stored before
// the replacement commits is removed with the others, never left beside
// the replacement. (One stored after it survives, as it should.)
func TestReplacePrincipalTokensConcurrent(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()
	s := env.Store
	modRev := func(hash string) int64 {
		resp, err := env.Client.Get(ctx, store.DefaultPrefix+"tokens/"+hash)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return 0
		}
		return resp.Kvs[0].ModRevision
	}
	for i := range 30 {
		stray := fmt.Sprintf("stray-%d", i)
		var wg sync.WaitGroup
		wg.Go(func() {
			if err := s.PutToken(ctx, token(stray, "root")); err != nil {
				t.Error(err)
			}
		})
		if err := s.ReplacePrincipalTokens(ctx, "root", token("only", "root")); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		replaced, strayRev := modRev("only"), modRev(stray)
		if strayRev != 0 && strayRev < replaced {
			t.Fatalf("round %d: token %s stored at revision %d survived the replacement committed at %d", i, stray, strayRev, replaced)
		}
		if err := s.ReplacePrincipalTokens(ctx, "root", token("only", "root")); err != nil {
			t.Fatal(err)
		}
	}
}
