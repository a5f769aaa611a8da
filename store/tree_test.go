package store_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

// A tree write commits every value at one revision, keeps each path's
// history, and refuses what a single Put would refuse, writing nothing.
func TestPutTree(t *testing.T) {
	env := testenv.Start(t)
	s, ctx := env.Store, t.Context()
	if _, err := s.Put(ctx, "/dba/pg/user", []byte("blue"), store.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := s.PutTree(ctx, "/dba/pg", map[string][]byte{"user": []byte("green"), "password": []byte("pw-2")}, store.WriteOptions{Author: "user:dba"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Revision != got[1].Revision || got[0].Path != "/dba/pg/password" || got[1].Author != "user:dba" {
		t.Fatalf("entries %+v: want password and user at one revision", got)
	}
	for path, want := range map[string]string{"/dba/pg/user": "green", "/dba/pg/password": "pw-2"} {
		e, err := s.Get(ctx, path)
		if err != nil || string(e.Value) != want || e.Revision != got[0].Revision {
			t.Fatalf("%s = %q at %d, %v; want %q at %d", path, e.Value, e.Revision, err, want, got[0].Revision)
		}
	}
	if h, err := s.History(ctx, "/dba/pg/user"); err != nil || len(h) != 2 {
		t.Fatalf("history of user: %d versions, %v; want 2", len(h), err)
	}

	before, _ := s.Revision(ctx)
	for name, tc := range map[string]struct {
		root   string
		values map[string][]byte
		want   string
	}{
		"empty":      {"/dba/pg", map[string][]byte{}, "no values"},
		"escape":     {"/dba/pg", map[string][]byte{"../x": nil}, "relative to it"},
		"absolute":   {"/dba/pg", map[string][]byte{"/dba/x": nil}, "relative to it"},
		"bad root":   {"dba", map[string][]byte{"a": nil}, "must start with /"},
		"too many":   {"/dba/pg", many(store.MaxTreeWrite + 1), "at most"},
		"too large":  {"/dba/pg", map[string][]byte{"a": []byte("x"), "b": make([]byte, store.DefaultMaxValueBytes+1)}, "the limit is"},
		"bad key":    {"/dba/pg", map[string][]byte{"a b": nil}, "relative to it"},
		"key is dir": {"/dba/pg", map[string][]byte{"": nil}, "relative to it"},
	} {
		if _, err := s.PutTree(ctx, tc.root, tc.values, store.WriteOptions{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.want)
		}
	}
	if after, _ := s.Revision(ctx); after != before {
		t.Fatalf("refused tree writes wrote: revision %d → %d", before, after)
	}
	if _, err := s.PutTree(ctx, "/dba/pg", map[string][]byte{"a": nil}, store.WriteOptions{IfRevision: new(int64)}); err == nil {
		t.Fatal("IfRevision was accepted")
	}
	var ve *store.ValueTooLargeError
	if _, err := s.PutTree(ctx, "/dba/pg", map[string][]byte{"a": make([]byte, store.DefaultMaxValueBytes+1)}, store.WriteOptions{}); !errors.As(err, &ve) {
		t.Fatalf("too large: %v, want a ValueTooLargeError", err)
	}
}

func many(n int) map[string][]byte {
	m := map[string][]byte{}
	for i := range n {
		m[string(rune('a'+i%26))+strings.Repeat("x", i/26)] = []byte("v")
	}
	return m
}
