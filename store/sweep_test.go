package store_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/keyring"
	"github.com/graft-sh/graft/store"
)

func TestReencrypt(t *testing.T) {
	const prefix = "/sweep/"
	env := testenv.Start(t)
	ctx := t.Context()
	key1, key2 := testenv.RandomKey(), testenv.RandomKey()
	ring1 := mustRing(t, 1, map[uint32][]byte{1: key1})
	ring12 := mustRing(t, 2, map[uint32][]byte{1: key1, 2: key2})
	ring2 := mustRing(t, 2, map[uint32][]byte{2: key2})
	open := func(ring *keyring.Keyring) *store.Store {
		s, err := store.New(store.Config{Client: env.Client, Keyring: ring, Prefix: prefix, Logger: testenv.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open(ring1)

	// More paths than one sweep page, so that paging is exercised, and a
	// few with history, including deleted ones.
	const many = 260
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range many {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			p := fmt.Sprintf("/bulk/%03d", i)
			if _, err := s.Put(ctx, p, []byte("value of "+p), store.WriteOptions{}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	put(t, s, "/h/a", "a1")
	put(t, s, "/h/a", "a2")
	put(t, s, "/h/a", "a3")
	put(t, s, "/h/b", "b1")
	del(t, s, "/h/b")
	put(t, s, "/h/c", "c1")
	del(t, s, "/h/c")
	put(t, s, "/h/c", "c2")
	if t.Failed() {
		t.FailNow()
	}

	before := snapshot(t, s)
	kv, hist := rawRecords(t, env.Client, prefix)
	if got, want := len(kv), many+2; got != want {
		t.Fatalf("%d kv records, want %d", got, want)
	}
	if got, want := len(hist), 4; got != want {
		t.Fatalf("%d hist records, want %d", got, want)
	}
	checkKeyIDs(t, env.Client, prefix, 1)

	s.SetKeyring(ring12)
	_, watch, err := s.Watch(ctx, "/", 0, false)
	if err != nil {
		t.Fatal(err)
	}

	res, err := s.Reencrypt(ctx)
	if err != nil {
		t.Fatal(err)
	}
	total := int64(len(kv) + len(hist))
	if res.Examined != total || res.Reencrypted != total {
		t.Errorf("Reencrypt = %+v, want %d examined and re-encrypted", res, total)
	}
	checkKeyIDs(t, env.Client, prefix, 2)

	// The watcher saw nothing of the sweep: the first event it gets is
	// the one written after it.
	sentinel := put(t, s, "/sentinel", "after the sweep")
	if got := nextEvents(t, watch, 1); got[0].Entry.Path != "/sentinel" || got[0].Entry.Revision != sentinel.Revision {
		t.Errorf("first event after the sweep = %+v, want /sentinel", views(got))
	}

	// Values, revisions and history are as they were, and a keyring
	// holding only the new key reads all of it.
	for name, s := range map[string]*store.Store{"rotated store": s, "store with key 2 only": open(ring2)} {
		t.Run(name, func(t *testing.T) {
			after := snapshot(t, s)
			delete(after, "/sentinel")
			if len(after) != len(before) {
				t.Fatalf("%d paths after the sweep, want %d", len(after), len(before))
			}
			for p, want := range before {
				if got := after[p]; !slices.Equal(got, want) {
					t.Errorf("%s after the sweep = %v, want %v", p, got, want)
				}
			}
		})
	}
	if _, err := open(ring1).Get(ctx, "/h/a"); !errors.Is(err, store.ErrDecrypt) {
		t.Errorf("a keyring with only key 1 read a re-encrypted value: %v", err)
	}

	// The pinned revision is the one a compare-and-swap checks.
	a := get(t, s, "/h/a")
	if _, err := s.Put(ctx, "/h/a", []byte("a4"), store.WriteOptions{IfRevision: rev(a.Revision)}); err != nil {
		t.Errorf("CAS at the revision read after the sweep: %v", err)
	}
	if got := history(t, s, "/h/a"); len(got) != 4 || got[1].Revision != a.Revision {
		t.Errorf("history after a write on a swept path = %+v, want the swept version archived at %d", got, a.Revision)
	}

	// A second sweep finds nothing to do.
	res, err = s.Reencrypt(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Reencrypted != 0 || res.Examined != total+2 {
		t.Errorf("second Reencrypt = %+v, want %d examined and none re-encrypted", res, total+2)
	}
}

// snapshot reads through s every current value and, for the paths under
// /h, every version in history, as "revision=value".
func snapshot(t *testing.T, s *store.Store) map[string][]string {
	t.Helper()
	ctx := t.Context()
	out := map[string][]string{}
	items, _, err := s.List(ctx, "/", true)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		e := get(t, s, it.Path)
		out[it.Path] = []string{fmt.Sprintf("%d=%s", e.Revision, e.Value)}
	}
	for _, p := range []string{"/h/a", "/h/b", "/h/c"} {
		h, err := s.History(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, item := range h {
			e, err := s.GetRevision(ctx, p, item.Entry.Revision)
			if err != nil {
				t.Fatalf("GetRevision %s %d: %v", p, item.Entry.Revision, err)
			}
			out[p] = append(out[p], fmt.Sprintf("%d=%s current=%v", e.Revision, e.Value, item.Current))
		}
	}
	return out
}

type rawRecord struct {
	Cipher []byte `json:"c"`
}

// rawRecords reads the records under the store prefix straight from etcd,
// by key.
func rawRecords(t *testing.T, cli *clientv3.Client, prefix string) (kv, hist map[string]rawRecord) {
	t.Helper()
	read := func(sub string) map[string]rawRecord {
		resp, err := cli.Get(t.Context(), prefix+sub, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]rawRecord{}
		for _, kv := range resp.Kvs {
			var r rawRecord
			if err := json.Unmarshal(kv.Value, &r); err != nil {
				t.Fatalf("record %s: %v", kv.Key, err)
			}
			if len(r.Cipher) == 0 {
				t.Fatalf("record %s has no ciphertext in field c", kv.Key)
			}
			out[string(kv.Key)] = r
		}
		return out
	}
	return read("kv/"), read("hist/")
}

func checkKeyIDs(t *testing.T, cli *clientv3.Client, prefix string, want uint32) {
	t.Helper()
	kv, hist := rawRecords(t, cli, prefix)
	for _, records := range []map[string]rawRecord{kv, hist} {
		for key, r := range records {
			if id, err := keyring.KeyID(r.Cipher); err != nil || id != want {
				t.Errorf("%s sealed with key %d (%v), want %d", key, id, err, want)
			}
			if strings.Contains(string(r.Cipher), "value of") {
				t.Errorf("%s holds its value in the clear", key)
			}
		}
	}
}

func mustRing(t *testing.T, primary uint32, keys map[uint32][]byte) *keyring.Keyring {
	t.Helper()
	k, err := keyring.New(primary, keys)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A version that ended with a deletion knows the deletion's revision and
// author, and a re-encryption sweep, which rewrites the history record,
// does not move that revision.
func TestDeletionRevisionSurvivesASweep(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()
	key1, key2 := testenv.RandomKey(), testenv.RandomKey()
	s, err := store.New(store.Config{Client: env.Client, Keyring: mustRing(t, 1, map[uint32][]byte{1: key1}), Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "/d/x", []byte("v"), store.WriteOptions{Author: "user:a"}); err != nil {
		t.Fatal(err)
	}
	del, err := s.Delete(ctx, "/d/x", store.WriteOptions{Author: "user:b"})
	if err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		h, err := s.History(ctx, "/d/x")
		if err != nil || len(h) != 1 || !h[0].Deleted || h[0].DeletedAt != del || h[0].Deleter != "user:b" {
			t.Fatalf("%s: History = %+v, %v; want the version deleted at %d by user:b", when, h, err, del)
		}
	}
	check("after the delete")
	s.SetKeyring(mustRing(t, 2, map[uint32][]byte{1: key1, 2: key2}))
	if res, err := s.Reencrypt(ctx); err != nil || res.Reencrypted == 0 {
		t.Fatalf("Reencrypt = %+v, %v", res, err)
	}
	check("after a sweep")
}
