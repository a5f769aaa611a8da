package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

// clock is a settable store clock. hook, when set, runs once on the next
// reading, outside the lock, so a test can act between a store operation's
// planning and its writes.
type clock struct {
	mu   sync.Mutex
	now  time.Time
	hook atomic.Pointer[func()]
}

func newClock() *clock {
	return &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *clock) Now() time.Time {
	if h := c.hook.Swap(nil); h != nil {
		(*h)()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// At sets the clock to minute m of the test's timeline and returns it.
func (c *clock) At(m int) time.Time {
	t := time.Date(2030, 1, 1, 0, m, 0, 0, time.UTC)
	c.Set(t)
	return t
}

func (c *clock) OnNextNow(f func()) { c.hook.Store(&f) }

func put(t testing.TB, s *store.Store, path, value string) store.Entry {
	t.Helper()
	e, err := s.Put(context.Background(), path, []byte(value), store.WriteOptions{Author: "tester"})
	if err != nil {
		t.Fatalf("Put %s: %v", path, err)
	}
	return e
}

func del(t testing.TB, s *store.Store, path string) int64 {
	t.Helper()
	rev, err := s.Delete(context.Background(), path, store.WriteOptions{Author: "tester"})
	if err != nil {
		t.Fatalf("Delete %s: %v", path, err)
	}
	return rev
}

func get(t testing.TB, s *store.Store, path string) store.Entry {
	t.Helper()
	e, err := s.Get(context.Background(), path)
	if err != nil {
		t.Fatalf("Get %s: %v", path, err)
	}
	return e
}

func rev(r int64) *int64 { return &r }

func TestNewValidates(t *testing.T) {
	env := testenv.Start(t)
	ring := env.Keyring
	tests := []struct {
		name    string
		cfg     store.Config
		wantMsg string
	}{
		{"no client", store.Config{Keyring: ring}, "Client is required"},
		{"no keyring", store.Config{Client: env.Client}, "Keyring is required"},
		{"prefix without trailing slash", store.Config{Client: env.Client, Keyring: ring, Prefix: "/graft"}, "must start and end with /"},
		{"prefix without leading slash", store.Config{Client: env.Client, Keyring: ring, Prefix: "graft/"}, "must start and end with /"},
		{"negative max value", store.Config{Client: env.Client, Keyring: ring, MaxValueBytes: -1}, "out of range"},
		{"max value over limit", store.Config{Client: env.Client, Keyring: ring, MaxValueBytes: store.MaxValueBytesLimit + 1}, "out of range"},
		{"negative history", store.Config{Client: env.Client, Keyring: ring, HistoryLimit: -1}, "at least 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := store.New(tc.cfg)
			if err == nil {
				t.Fatalf("New = %v, nil; want an error", s)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not say %q", err, tc.wantMsg)
			}
		})
	}
	s, err := store.New(store.Config{Client: env.Client, Keyring: ring})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.MaxValueBytes(); got != store.DefaultMaxValueBytes {
		t.Errorf("default MaxValueBytes = %d, want %d", got, store.DefaultMaxValueBytes)
	}
	if err := s.Ping(t.Context()); err != nil {
		t.Errorf("Ping = %v", err)
	}
}

func TestPutGet(t *testing.T) {
	clk := newClock()
	env := testenv.Start(t, testenv.WithClock(clk.Now))
	ctx := t.Context()
	tests := []struct {
		name  string
		path  string
		value []byte
	}{
		{"text", "/app/text", []byte("hello")},
		{"binary", "/app/binary", allBytes()},
		{"empty", "/app/empty", []byte{}},
		{"json", "/app/json", []byte(`{"a":1}`)},
		{"max size", "/app/max", bytes.Repeat([]byte("m"), store.DefaultMaxValueBytes)},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			when := clk.At(i)
			author := "user-" + tc.name
			put, err := env.Store.Put(ctx, tc.path, tc.value, store.WriteOptions{Author: author})
			if err != nil {
				t.Fatal(err)
			}
			if put.Revision <= 0 || put.Author != author || !put.Time.Equal(when) || put.Size != len(tc.value) || put.Path != tc.path {
				t.Errorf("Put = %+v, want path %s, a revision, author %s, time %v, size %d", put, tc.path, author, when, len(tc.value))
			}
			got, err := env.Store.Get(ctx, tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Value, tc.value) {
				t.Errorf("Get value = %d bytes, want the %d bytes put", len(got.Value), len(tc.value))
			}
			got.Value = nil
			if !entriesEqual(got, put) {
				t.Errorf("Get = %+v, want %+v", got, put)
			}
		})
	}
}

func TestOverwriteKeepsLatest(t *testing.T) {
	env := testenv.Start(t)
	first := put(t, env.Store, "/app/k", "one")
	second := put(t, env.Store, "/app/k", "two")
	if second.Revision <= first.Revision {
		t.Errorf("second revision %d not after first %d", second.Revision, first.Revision)
	}
	if got := get(t, env.Store, "/app/k"); string(got.Value) != "two" || got.Revision != second.Revision {
		t.Errorf("Get = %q at %d, want %q at %d", got.Value, got.Revision, "two", second.Revision)
	}
}

func TestNotFound(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()
	e := put(t, env.Store, "/app/exists", "v")
	tests := []struct {
		name string
		op   func() error
	}{
		{"get", func() error { _, err := env.Store.Get(ctx, "/app/missing"); return err }},
		{"get sibling of existing", func() error { _, err := env.Store.Get(ctx, "/app/exist"); return err }},
		{"get revision of missing path", func() error { _, err := env.Store.GetRevision(ctx, "/app/missing", e.Revision); return err }},
		{"get unknown revision", func() error { _, err := env.Store.GetRevision(ctx, "/app/exists", e.Revision+100); return err }},
		{"delete", func() error { _, err := env.Store.Delete(ctx, "/app/missing", store.WriteOptions{}); return err }},
		{"history", func() error { _, err := env.Store.History(ctx, "/app/missing"); return err }},
		{"restore", func() error { _, err := env.Store.Restore(ctx, "/app/exists", e.Revision+100, "x"); return err }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.op()
			if !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("got %v, want ErrNotFound", err)
			}
			if !strings.Contains(err.Error(), "/app/") {
				t.Errorf("error %q does not name the path", err)
			}
		})
	}
}

func TestInvalidPathRejected(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()
	const bad = "/app/../etc"
	tests := []struct {
		name string
		op   func() error
	}{
		{"put", func() error { _, err := env.Store.Put(ctx, bad, []byte("v"), store.WriteOptions{}); return err }},
		{"put root", func() error { _, err := env.Store.Put(ctx, "/", []byte("v"), store.WriteOptions{}); return err }},
		{"get", func() error { _, err := env.Store.Get(ctx, bad); return err }},
		{"get revision", func() error { _, err := env.Store.GetRevision(ctx, bad, 1); return err }},
		{"delete", func() error { _, err := env.Store.Delete(ctx, bad, store.WriteOptions{}); return err }},
		{"history", func() error { _, err := env.Store.History(ctx, bad); return err }},
		{"list", func() error { _, _, err := env.Store.List(ctx, "/app/", true); return err }},
		{"watch", func() error { _, _, err := env.Store.Watch(ctx, "app", 0, false); return err }},
		{"restore prefix", func() error { _, err := env.Store.RestorePrefix(ctx, bad, time.Now(), true, "x"); return err }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.op(); !errors.Is(err, store.ErrInvalidPath) {
				t.Fatalf("got %v, want ErrInvalidPath", err)
			}
		})
	}
}

func TestValueTooLarge(t *testing.T) {
	const limit = 16
	env := testenv.Start(t, testenv.WithMaxValueBytes(limit))
	ctx := t.Context()
	if _, err := env.Store.Put(ctx, "/app/fits", make([]byte, limit), store.WriteOptions{}); err != nil {
		t.Fatalf("Put of exactly %d bytes = %v", limit, err)
	}
	_, err := env.Store.Put(ctx, "/app/big", make([]byte, limit+1), store.WriteOptions{})
	var tooLarge *store.ValueTooLargeError
	if !errors.As(err, &tooLarge) {
		t.Fatalf("Put of %d bytes = %v, want *ValueTooLargeError", limit+1, err)
	}
	if tooLarge.Size != limit+1 || tooLarge.Max != limit {
		t.Errorf("ValueTooLargeError = %+v, want Size %d Max %d", tooLarge, limit+1, limit)
	}
	if !errors.Is(err, store.ErrValueTooLarge) {
		t.Errorf("error does not wrap ErrValueTooLarge")
	}
	if !strings.Contains(err.Error(), "limit is 16 bytes") {
		t.Errorf("error %q does not name the limit", err)
	}
	if _, err := env.Store.Get(ctx, "/app/big"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a rejected value was stored: Get = %v", err)
	}
}

func TestCompareAndSwap(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()
	existing := put(t, env.Store, "/cas/existing", "v1")
	tests := []struct {
		name       string
		path       string
		ifRevision int64
		wantOK     bool // otherwise a mismatch naming the revision before
	}{
		{"create when absent", "/cas/new", 0, true},
		{"create when present", "/cas/existing", 0, false},
		{"update at current revision", "/cas/existing", existing.Revision, true},
		{"update at stale revision", "/cas/existing", existing.Revision, false},
		{"update of absent path", "/cas/absent", 5, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before, beforeErr := env.Store.Get(ctx, tc.path)
			got, err := env.Store.Put(ctx, tc.path, []byte("new"), store.WriteOptions{IfRevision: rev(tc.ifRevision)})
			if tc.wantOK {
				if err != nil {
					t.Fatalf("Put = %v, want success", err)
				}
				if after := get(t, env.Store, tc.path); after.Revision != got.Revision || string(after.Value) != "new" {
					t.Errorf("after CAS Get = %q at %d, want %q at %d", after.Value, after.Revision, "new", got.Revision)
				}
				return
			}
			var mismatch *store.RevisionMismatchError
			if !errors.As(err, &mismatch) {
				t.Fatalf("Put = %v, want *RevisionMismatchError", err)
			}
			if !errors.Is(err, store.ErrRevisionChanged) {
				t.Errorf("error does not wrap ErrRevisionChanged")
			}
			wantCurrent := int64(0)
			if beforeErr == nil {
				wantCurrent = before.Revision
			}
			if mismatch.Current != wantCurrent || mismatch.Expected != tc.ifRevision || mismatch.Path != tc.path {
				t.Errorf("mismatch = %+v, want Path %s Expected %d Current %d", mismatch, tc.path, tc.ifRevision, wantCurrent)
			}
			after, afterErr := env.Store.Get(ctx, tc.path)
			if (beforeErr == nil) != (afterErr == nil) || after.Revision != before.Revision {
				t.Errorf("a failed CAS changed the path: before %+v %v, after %+v %v", before, beforeErr, after, afterErr)
			}
		})
	}
}

func TestDelete(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()

	t.Run("unconditional", func(t *testing.T) {
		e := put(t, env.Store, "/del/a", "v")
		r, err := env.Store.Delete(ctx, "/del/a", store.WriteOptions{Author: "deleter"})
		if err != nil {
			t.Fatal(err)
		}
		if r <= e.Revision {
			t.Errorf("delete revision %d not after put %d", r, e.Revision)
		}
		if _, err := env.Store.Get(ctx, "/del/a"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get after delete = %v, want ErrNotFound", err)
		}
		if _, err := env.Store.Delete(ctx, "/del/a", store.WriteOptions{}); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("second delete = %v, want ErrNotFound", err)
		}
	})
	t.Run("at current revision", func(t *testing.T) {
		e := put(t, env.Store, "/del/b", "v")
		if _, err := env.Store.Delete(ctx, "/del/b", store.WriteOptions{IfRevision: rev(e.Revision)}); err != nil {
			t.Fatal(err)
		}
		if _, err := env.Store.Get(ctx, "/del/b"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get after delete = %v, want ErrNotFound", err)
		}
	})
	t.Run("at stale revision", func(t *testing.T) {
		old := put(t, env.Store, "/del/c", "v1")
		cur := put(t, env.Store, "/del/c", "v2")
		_, err := env.Store.Delete(ctx, "/del/c", store.WriteOptions{IfRevision: rev(old.Revision)})
		var mismatch *store.RevisionMismatchError
		if !errors.As(err, &mismatch) || mismatch.Current != cur.Revision || mismatch.Expected != old.Revision {
			t.Fatalf("Delete = %v (%+v), want mismatch expected %d current %d", err, mismatch, old.Revision, cur.Revision)
		}
		if got := get(t, env.Store, "/del/c"); string(got.Value) != "v2" {
			t.Errorf("value after refused delete = %q, want v2", got.Value)
		}
	})
}

// Many writers on one path all succeed, each at its own revision, and the
// history holds every one of them: the compare-and-swap retry never loses
// or merges a write. Several Stores on one etcd stand for several graftd
// processes, whose writes meet only in etcd's compare-and-swap.
func TestConcurrentPuts(t *testing.T) {
	tests := []struct {
		name             string
		stores, perStore int
		putsPerGoroutine int
	}{
		{"one store", 1, 24, 3},
		{"four stores", 4, 6, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			total := tc.stores * tc.perStore * tc.putsPerGoroutine
			env := testenv.Start(t, testenv.WithHistoryLimit(total))
			ctx := t.Context()
			var (
				mu   sync.Mutex
				revs = map[int64]string{}
				wg   sync.WaitGroup
				errs = make(chan error, total)
			)
			for i := range tc.stores {
				s := env.Store
				if i > 0 {
					var err error
					if s, err = store.New(store.Config{Client: env.Client, Keyring: env.Keyring, HistoryLimit: total}); err != nil {
						t.Fatal(err)
					}
				}
				for g := range tc.perStore {
					wg.Go(func() {
						for n := range tc.putsPerGoroutine {
							value := fmt.Sprintf("s%d-g%d-%d", i, g, n)
							e, err := s.Put(ctx, "/hot/key", []byte(value), store.WriteOptions{Author: value})
							if err != nil {
								errs <- err
								continue
							}
							mu.Lock()
							if prev, dup := revs[e.Revision]; dup {
								errs <- fmt.Errorf("revision %d returned for both %s and %s", e.Revision, prev, value)
							}
							revs[e.Revision] = value
							mu.Unlock()
						}
					})
				}
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if len(revs) != total {
				t.Fatalf("%d distinct revisions, want %d", len(revs), total)
			}
			hist, err := env.Store.History(ctx, "/hot/key")
			if err != nil {
				t.Fatal(err)
			}
			if len(hist) != total {
				t.Fatalf("history holds %d versions, want %d", len(hist), total)
			}
			// Versions follow one another in time too: none starts before
			// the one it replaced, or ends before it starts.
			for i, h := range hist {
				if i+1 < len(hist) && h.Entry.Time.Before(hist[i+1].Entry.Time) {
					t.Errorf("revision %d starts at %v, before revision %d it replaced (%v)",
						h.Entry.Revision, h.Entry.Time, hist[i+1].Entry.Revision, hist[i+1].Entry.Time)
				}
				if !h.Current && h.Ended.Before(h.Entry.Time) {
					t.Errorf("revision %d ends at %v, before it starts at %v", h.Entry.Revision, h.Ended, h.Entry.Time)
				}
			}
			for _, h := range hist {
				want, ok := revs[h.Entry.Revision]
				if !ok {
					t.Errorf("history has revision %d that no Put returned", h.Entry.Revision)
					continue
				}
				if h.Entry.Author != want {
					t.Errorf("revision %d has author %s, want %s", h.Entry.Revision, h.Entry.Author, want)
				}
				got, err := env.Store.GetRevision(ctx, "/hot/key", h.Entry.Revision)
				if err != nil || string(got.Value) != want {
					t.Errorf("GetRevision %d = %q, %v; want %q", h.Entry.Revision, got.Value, err, want)
				}
			}
		})
	}
}

func TestGetRevision(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()
	var entries []store.Entry
	for _, v := range []string{"v1", "v2", "v3"} {
		entries = append(entries, put(t, env.Store, "/gr/k", v))
	}
	del(t, env.Store, "/gr/k")
	entries = append(entries, put(t, env.Store, "/gr/k", "v4"))
	for i, want := range entries {
		got, err := env.Store.GetRevision(ctx, "/gr/k", want.Revision)
		if err != nil {
			t.Fatalf("GetRevision %d: %v", want.Revision, err)
		}
		if wantValue := fmt.Sprintf("v%d", i+1); string(got.Value) != wantValue {
			t.Errorf("GetRevision %d = %q, want %q", want.Revision, got.Value, wantValue)
		}
		got.Value = nil
		if !entriesEqual(got, want) {
			t.Errorf("GetRevision %d = %+v, want %+v", want.Revision, got, want)
		}
	}
	// A revision of another path is not a revision of this one.
	other := put(t, env.Store, "/gr/other", "x")
	if _, err := env.Store.GetRevision(ctx, "/gr/k", other.Revision); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetRevision with another path's revision = %v, want ErrNotFound", err)
	}
}

func entriesEqual(a, b store.Entry) bool {
	if (a.Origin == nil) != (b.Origin == nil) || a.Origin != nil && *a.Origin != *b.Origin {
		return false
	}
	return a.Path == b.Path && bytes.Equal(a.Value, b.Value) && a.Revision == b.Revision &&
		a.Author == b.Author && a.Time.Equal(b.Time) && a.Size == b.Size
}
