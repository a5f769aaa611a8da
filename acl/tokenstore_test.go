package acl_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

func token(hash, principal string) acl.TokenRecord {
	return acl.TokenRecord{
		Hash:      hash,
		Principal: principal,
		Roles:     []string{"reader"},
		Created:   time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
		Creator:   "admin",
		Expires:   time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC),
	}
}

func tokenHashes(t *testing.T, s *acl.Tokens) []string {
	t.Helper()
	recs, err := s.List(t.Context())
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

func newTokens(t *testing.T, env *testenv.Env) *acl.Tokens {
	t.Helper()
	tokens, err := acl.NewTokens(acl.TokensConfig{Store: env.Store, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return tokens
}

func TestTokenRecords(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()
	s := newTokens(t, env)

	if got := tokenHashes(t, s); len(got) != 0 {
		t.Fatalf("tokens in a new store: %v", got)
	}
	want := token("aaa", "alice")
	for _, rec := range []acl.TokenRecord{want, token("bbb", "alice"), token("ccc", "bob")} {
		if err := s.Put(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	raw := store.NewRecords[acl.TokenRecord](env.Store, store.SpaceTokens)
	_, listRev, err := raw.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 {
		t.Fatalf("ListTokens = %d records, want 3", len(recs))
	}
	got := recs[slices.IndexFunc(recs, func(r acl.TokenRecord) bool { return r.Hash == "aaa" })]
	if got.Principal != want.Principal || !slices.Equal(got.Roles, want.Roles) || !got.Created.Equal(want.Created) ||
		got.Creator != want.Creator || !got.Expires.Equal(want.Expires) {
		t.Errorf("stored record = %+v, want %+v", got, want)
	}

	// Token records are not part of the namespace tree.
	if items, _, err := env.Store.List(ctx, "/", true); err != nil || len(items) != 0 {
		t.Errorf("List / = %+v, %v; token records leaked into the tree", items, err)
	}

	changes := raw.Watch(ctx, listRev)
	if err := s.ReplacePrincipal(ctx, "alice", token("ddd", "alice")); err != nil {
		t.Fatal(err)
	}
	if got, want := tokenHashes(t, s), []string{"alice:ddd", "bob:ccc"}; !slices.Equal(got, want) {
		t.Errorf("tokens after replacing alice's = %v, want %v", got, want)
	}
	// Replacing with a token the principal already holds keeps just it.
	if err := s.ReplacePrincipal(ctx, "alice", token("ddd", "alice")); err != nil {
		t.Fatal(err)
	}
	if got, want := tokenHashes(t, s), []string{"alice:ddd", "bob:ccc"}; !slices.Equal(got, want) {
		t.Errorf("tokens after replacing alice's again = %v, want %v", got, want)
	}

	var seen []string
	for len(seen) < 4 {
		select {
		case batch, ok := <-changes:
			if !ok {
				t.Fatalf("token watch closed after %v", seen)
			}
			for _, c := range batch {
				kind := "put"
				if c.Deleted {
					kind = "delete"
				}
				seen = append(seen, kind+" "+c.Key)
			}
		case <-time.After(10 * time.Second):
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

// ReplacePrincipal is atomic: a token of the principal stored before
// the replacement commits is removed with the others, never left beside
// the replacement. (One stored after it survives, as it should.)
func TestReplacePrincipalConcurrent(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()
	s := newTokens(t, env)
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
			if err := s.Put(ctx, token(stray, "root")); err != nil {
				t.Error(err)
			}
		})
		if err := s.ReplacePrincipal(ctx, "root", token("only", "root")); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		replaced, strayRev := modRev("only"), modRev(stray)
		if strayRev != 0 && strayRev < replaced {
			t.Fatalf("round %d: token %s stored at revision %d survived the replacement committed at %d", i, stray, strayRev, replaced)
		}
		if err := s.ReplacePrincipal(ctx, "root", token("only", "root")); err != nil {
			t.Fatal(err)
		}
	}
}
