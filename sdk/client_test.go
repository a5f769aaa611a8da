package sdk_test

import (
	"context"
	"crypto/tls"
	"errors"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/sdk"
)

func newClient(t *testing.T, addr, token string) *sdk.Client {
	t.Helper()
	c, err := sdk.New(t.Context(), sdk.Config{Addr: addr, Token: token})
	if err != nil {
		t.Fatalf("sdk.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  sdk.Config
		want error // nil: valid
	}{
		{"loopback v4", sdk.Config{Addr: "127.0.0.1:7420", Token: "t"}, nil},
		{"loopback 127/8", sdk.Config{Addr: "127.1.2.3:7420", Token: "t"}, nil},
		{"loopback v6", sdk.Config{Addr: "[::1]:7420", Token: "t"}, nil},
		{"localhost", sdk.Config{Addr: "localhost:7420", Token: "t"}, nil},
		{"remote with TLS", sdk.Config{Addr: "graft.example.com:7420", Token: "t", TLS: &tls.Config{}}, nil},
		{"remote insecure", sdk.Config{Addr: "10.0.0.5:7420", Token: "t", Insecure: true}, nil},
		{"remote plaintext", sdk.Config{Addr: "10.0.0.5:7420", Token: "t"}, sdk.ErrPlaintext},
		{"remote name plaintext", sdk.Config{Addr: "localhost.example.com:7420", Token: "t"}, sdk.ErrPlaintext},
		{"no addr", sdk.Config{Token: "t"}, sdk.ErrNoAddr},
		{"no token", sdk.Config{Addr: "127.0.0.1:7420"}, sdk.ErrNoToken},
		{"token with newline", sdk.Config{Addr: "127.0.0.1:7420", Token: "abc\n"}, sdk.ErrBadToken},
		{"token with space", sdk.Config{Addr: "127.0.0.1:7420", Token: "a b"}, sdk.ErrBadToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := sdk.New(t.Context(), tt.cfg)
			if c != nil {
				c.Close()
			}
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("New(%+v) = %v, want %v", tt.cfg, err, tt.want)
			}
		})
	}
	if _, err := sdk.New(t.Context(), sdk.Config{Addr: "no-port", Token: "t"}); err == nil {
		t.Fatal("New with an address without port succeeded")
	}
}

// TestKV drives every KV and admin call against a real graftd.
func TestKV(t *testing.T) {
	g := graftdtest.Start(t)
	c := newClient(t, g.Addr, g.Token)
	ctx := t.Context()

	t.Run("put and get", func(t *testing.T) {
		start := time.Now()
		put, err := c.Put(ctx, "/kv/put/a", []byte("v1"))
		if err != nil {
			t.Fatal(err)
		}
		if put.Revision <= 0 || put.Path != "/kv/put/a" || put.Value != nil || put.Size != 2 {
			t.Fatalf("Put = %+v, want path, a revision, size 2 and no value", put)
		}
		got, err := c.Get(ctx, "/kv/put/a")
		if err != nil {
			t.Fatal(err)
		}
		if string(got.Value) != "v1" || got.Revision != put.Revision || got.Size != 2 || got.Author == "" || got.Origin != nil {
			t.Fatalf("Get = %+v, want value v1 at revision %d by someone", got, put.Revision)
		}
		if got.Time.Before(start.Add(-time.Minute)) || got.Time.After(time.Now().Add(time.Minute)) {
			t.Fatalf("Get time = %v, want about %v", got.Time, start)
		}
		// Values are bytes, not text.
		bin := []byte{0, 0xff, '\n', 0x80}
		if _, err := c.Put(ctx, "/kv/put/bin", bin); err != nil {
			t.Fatal(err)
		}
		if got, err := c.Get(ctx, "/kv/put/bin"); err != nil || !slices.Equal(got.Value, bin) {
			t.Fatalf("Get binary = %v, %v; want %v", got, err, bin)
		}
	})

	t.Run("get an older revision", func(t *testing.T) {
		v1, err := c.Put(ctx, "/kv/rev/a", []byte("one"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Put(ctx, "/kv/rev/a", []byte("two")); err != nil {
			t.Fatal(err)
		}
		got, err := c.Get(ctx, "/kv/rev/a", sdk.AtRevision(v1.Revision))
		if err != nil || string(got.Value) != "one" || got.Revision != v1.Revision {
			t.Fatalf("Get AtRevision(%d) = %+v, %v; want one", v1.Revision, got, err)
		}
	})

	t.Run("errors", func(t *testing.T) {
		_, err := c.Get(ctx, "/app/x/db")
		assertCode(t, err, codes.NotFound, sdk.ErrNotFound)
		if got, want := err.Error(), "get /app/x/db: not found (see `graft ls /app/x`)"; got != want {
			t.Fatalf("not-found message = %q, want %q", got, want)
		}
		_, err = c.Put(ctx, "/kv/../etc", []byte("x"))
		assertCode(t, err, codes.InvalidArgument, sdk.ErrInvalidArgument)
		_, err = c.Put(ctx, "/kv/trailing/", []byte("x"))
		assertCode(t, err, codes.InvalidArgument, sdk.ErrInvalidArgument)
		_, err = c.Delete(ctx, "/kv/never-written")
		assertCode(t, err, codes.NotFound, sdk.ErrNotFound)
		_, err = c.History(ctx, "/kv/never-written")
		assertCode(t, err, codes.NotFound, sdk.ErrNotFound)

		bad := newClient(t, g.Addr, "not-the-token")
		_, err = bad.Get(ctx, "/kv/put/a")
		assertCode(t, err, codes.Unauthenticated, sdk.ErrUnauthenticated)
		_, _, err = bad.KeyringStatus(ctx)
		assertCode(t, err, codes.Unauthenticated, sdk.ErrUnauthenticated)

		down := newClient(t, testenv.FreeAddr(t), g.Token)
		_, err = down.Get(ctx, "/kv/put/a")
		assertCode(t, err, codes.Unavailable, sdk.ErrUnavailable)

		canceled, cancel := context.WithCancel(ctx)
		cancel()
		_, err = c.Get(canceled, "/kv/put/a")
		if !errors.Is(err, context.Canceled) || status.Code(err) != codes.Canceled {
			t.Fatalf("Get with a canceled context = %v (code %v), want context.Canceled", err, status.Code(err))
		}
	})

	t.Run("compare and swap", func(t *testing.T) {
		first, err := c.Put(ctx, "/kv/cas/a", []byte("1"), sdk.IfRevision(0))
		if err != nil {
			t.Fatalf("create with IfRevision(0): %v", err)
		}
		_, err = c.Put(ctx, "/kv/cas/a", []byte("again"), sdk.IfRevision(0))
		assertCode(t, err, codes.FailedPrecondition, sdk.ErrFailedPrecondition)
		second, err := c.Put(ctx, "/kv/cas/a", []byte("2"), sdk.IfRevision(first.Revision))
		if err != nil {
			t.Fatalf("swap at the current revision: %v", err)
		}
		_, err = c.Put(ctx, "/kv/cas/a", []byte("stale"), sdk.IfRevision(first.Revision))
		assertCode(t, err, codes.FailedPrecondition, sdk.ErrFailedPrecondition)
		_, err = c.Delete(ctx, "/kv/cas/a", sdk.IfRevision(first.Revision))
		assertCode(t, err, codes.FailedPrecondition, sdk.ErrFailedPrecondition)
		if got, _ := c.Get(ctx, "/kv/cas/a"); got == nil || string(got.Value) != "2" {
			t.Fatalf("after lost swaps the value is %+v, want 2", got)
		}
		if _, err := c.Delete(ctx, "/kv/cas/a", sdk.IfRevision(second.Revision)); err != nil {
			t.Fatalf("delete at the current revision: %v", err)
		}
	})

	t.Run("delete", func(t *testing.T) {
		put, err := c.Put(ctx, "/kv/del/a", []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		rev, err := c.Delete(ctx, "/kv/del/a")
		if err != nil || rev <= put.Revision {
			t.Fatalf("Delete = %d, %v; want a revision after %d", rev, err, put.Revision)
		}
		_, err = c.Get(ctx, "/kv/del/a")
		assertCode(t, err, codes.NotFound, sdk.ErrNotFound)
	})

	t.Run("list", func(t *testing.T) {
		for _, p := range []string{"/kv/ls/a", "/kv/ls/d/x", "/kv/ls/d/y/z", "/kv/ls-evil/b", "/kv/ls.x"} {
			if _, err := c.Put(ctx, p, []byte(p)); err != nil {
				t.Fatal(err)
			}
		}
		items, err := c.List(ctx, "/kv/ls")
		if err != nil {
			t.Fatal(err)
		}
		want := []sdk.ListItem{{Path: "/kv/ls/a"}, {Path: "/kv/ls/d", Directory: true}}
		if got := listShape(items); !slices.Equal(got, want) {
			t.Fatalf("List = %+v, want %+v", got, want)
		}
		if items[0].Entry == nil || items[0].Entry.Revision == 0 || items[0].Entry.Value != nil || items[0].Entry.Size != int64(len("/kv/ls/a")) {
			t.Fatalf("List entry = %+v, want revision and size without value", items[0].Entry)
		}
		items, err = c.List(ctx, "/kv/ls", sdk.Recursive())
		if err != nil {
			t.Fatal(err)
		}
		want = []sdk.ListItem{{Path: "/kv/ls/a"}, {Path: "/kv/ls/d/x"}, {Path: "/kv/ls/d/y/z"}}
		if got := listShape(items); !slices.Equal(got, want) {
			t.Fatalf("List recursive = %+v, want %+v", got, want)
		}
	})

	t.Run("history and restore", func(t *testing.T) {
		v1, err := c.Put(ctx, "/kv/hist/a", []byte("one"))
		if err != nil {
			t.Fatal(err)
		}
		v2, err := c.Put(ctx, "/kv/hist/a", []byte("two"))
		if err != nil {
			t.Fatal(err)
		}
		del, err := c.Delete(ctx, "/kv/hist/a")
		if err != nil {
			t.Fatal(err)
		}
		restored, err := c.Restore(ctx, "/kv/hist/a", v1.Revision)
		if err != nil {
			t.Fatal(err)
		}
		if restored.Revision <= del || restored.Origin == nil || restored.Origin.Kind != "restore" || restored.Origin.SourceRevision != v1.Revision || restored.Origin.SourcePath != "/kv/hist/a" {
			t.Fatalf("Restore = %+v (origin %+v), want a new revision restored from %d", restored, restored.Origin, v1.Revision)
		}
		if got, err := c.Get(ctx, "/kv/hist/a"); err != nil || string(got.Value) != "one" {
			t.Fatalf("after restore Get = %+v, %v; want one", got, err)
		}
		h, err := c.History(ctx, "/kv/hist/a")
		if err != nil {
			t.Fatal(err)
		}
		type row struct {
			rev                        int64
			current, deleted, deletion bool
			ended                      bool
		}
		var got []row
		for _, it := range h {
			got = append(got, row{it.Entry.Revision, it.Current, it.Deleted, it.Deletion, !it.Ended.IsZero()})
			if it.Entry.Value != nil {
				t.Fatalf("History carries a value: %+v", it)
			}
		}
		// The deletion is a row of its own at its own revision.
		want := []row{{restored.Revision, true, false, false, false}, {del, false, false, true, false}, {v2.Revision, false, true, false, true}, {v1.Revision, false, false, false, true}}
		if !slices.Equal(got, want) {
			t.Fatalf("History = %+v, want %+v (newest first)", got, want)
		}
		_, err = c.Restore(ctx, "/kv/hist/a", 1)
		assertCode(t, err, codes.NotFound, sdk.ErrNotFound)
	})

	t.Run("restore prefix", func(t *testing.T) {
		a1, err := c.Put(ctx, "/kv/pit/a", []byte("a1"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Put(ctx, "/kv/pit/same", []byte("s")); err != nil {
			t.Fatal(err)
		}
		at := time.Now()
		a2, err := c.Put(ctx, "/kv/pit/a", []byte("a2"))
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.Put(ctx, "/kv/pit/b", []byte("new"))
		if err != nil {
			t.Fatal(err)
		}
		plan, err := c.RestorePrefix(ctx, "/kv/pit", at, true)
		if err != nil {
			t.Fatal(err)
		}
		want := []sdk.RestoreStep{
			{Path: "/kv/pit/a", Action: sdk.RestoreActionRestore, FromRevision: a2.Revision, ToRevision: a1.Revision},
			{Path: "/kv/pit/b", Action: sdk.RestoreActionDelete, FromRevision: b.Revision},
		}
		if !slices.Equal(plan.Steps, want) || plan.OutOfReach != 0 {
			t.Fatalf("dry run = %+v, want %+v", plan, want)
		}
		if got, _ := c.Get(ctx, "/kv/pit/a"); got == nil || string(got.Value) != "a2" {
			t.Fatalf("a dry run changed /kv/pit/a to %+v", got)
		}
		done, err := c.RestorePrefix(ctx, "/kv/pit", at, false)
		if err != nil {
			t.Fatal(err)
		}
		if d := done.Steps; len(d) != 2 || d[0].NewRevision <= b.Revision || d[1].NewRevision <= d[0].NewRevision {
			t.Fatalf("restore = %+v, want two steps with new revisions", done)
		}
		if got, _ := c.Get(ctx, "/kv/pit/a"); got == nil || string(got.Value) != "a1" {
			t.Fatalf("after restore /kv/pit/a = %+v, want a1", got)
		}
		_, err = c.Get(ctx, "/kv/pit/b")
		assertCode(t, err, codes.NotFound, sdk.ErrNotFound)
		_, err = c.RestorePrefix(ctx, "/kv/pit", time.Time{}, true)
		assertCode(t, err, codes.InvalidArgument, sdk.ErrInvalidArgument)
	})

	t.Run("keyring", func(t *testing.T) {
		primary, ids, err := c.KeyringStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if primary == 0 || !slices.Contains(ids, primary) {
			t.Fatalf("KeyringStatus = %d, %v; want the primary among the ids", primary, ids)
		}
		res, err := c.ReencryptSweep(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Everything is already under the only key; the sweep still looks
		// at every value written above.
		if res.PrimaryKeyID != primary || res.Examined < 10 || res.Reencrypted != 0 {
			t.Fatalf("ReencryptSweep = %+v, want primary %d, many examined, none re-encrypted", res, primary)
		}
	})
}

// listShape drops entries so listings compare by path and kind.
func listShape(items []sdk.ListItem) []sdk.ListItem {
	out := make([]sdk.ListItem, len(items))
	for i, it := range items {
		out[i] = sdk.ListItem{Path: it.Path, Directory: it.Directory}
	}
	return out
}

func assertCode(t *testing.T, err error, code codes.Code, sentinel error) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", code)
	}
	if got := status.Code(err); got != code {
		t.Fatalf("status.Code(%v) = %v, want %v", err, got, code)
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("errors.Is(%v, %v) = false", err, sentinel)
	}
	for _, other := range []error{sdk.ErrNotFound, sdk.ErrInvalidArgument, sdk.ErrFailedPrecondition, sdk.ErrPermissionDenied, sdk.ErrUnauthenticated, sdk.ErrUnavailable, sdk.ErrOutOfRange} {
		if other != sentinel && errors.Is(err, other) {
			t.Fatalf("errors.Is(%v, %v) = true, want only %v", err, other, sentinel)
		}
	}
}
