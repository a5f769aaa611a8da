package store_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

func TestList(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()
	s := env.Store
	revs := map[string]int64{}
	for _, p := range []string{
		"/app",
		"/app/a",
		"/app/a/x",
		"/app/a/y/z",
		"/app/a-b",
		"/app/b",
		"/app/foo",
		"/app/foo-evil/x",
		"/app/foo.bak",
		"/app/foo/1",
		"/app-evil/x",
		"/app.bak",
		"/apple",
		"/q/a-b",
		"/q/a/x",
	} {
		revs[p] = put(t, s, p, "value of "+p).Revision
	}
	del(t, s, put(t, s, "/app/deleted", "v").Path)

	// An item is written as "path" for an entry, "path/" for a pure
	// directory and "path+/" for a path that is both.
	tests := []struct {
		prefix    string
		recursive bool
		want      []string
	}{
		{"/app", true, []string{"/app", "/app/a", "/app/a-b", "/app/a/x", "/app/a/y/z", "/app/b", "/app/foo", "/app/foo-evil/x", "/app/foo.bak", "/app/foo/1"}},
		{"/app", false, []string{"/app", "/app/a+/", "/app/a-b", "/app/b", "/app/foo+/", "/app/foo-evil/", "/app/foo.bak"}},
		{"/app/foo", true, []string{"/app/foo", "/app/foo/1"}},
		{"/app/foo", false, []string{"/app/foo", "/app/foo/1"}},
		{"/app/fo", true, nil},
		{"/app/a/y", false, []string{"/app/a/y/z"}},
		{"/app/a/y", true, []string{"/app/a/y/z"}},
		{"/app/b", false, []string{"/app/b"}},
		{"/app/deleted", true, nil},
		{"/nothing", true, nil},
		// A directory whose name sorts after a sibling entry that extends
		// it: "/q/a" sorts before "/q/a-b" though etcd's keys do not.
		{"/q", false, []string{"/q/a/", "/q/a-b"}},
		{"/", false, []string{"/app+/", "/app-evil/", "/app.bak", "/apple", "/q/"}},
		{"/", true, []string{"/app", "/app-evil/x", "/app.bak", "/app/a", "/app/a-b", "/app/a/x", "/app/a/y/z", "/app/b", "/app/foo", "/app/foo-evil/x", "/app/foo.bak", "/app/foo/1", "/apple", "/q/a-b", "/q/a/x"}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s recursive=%v", tc.prefix, tc.recursive), func(t *testing.T) {
			items, listRev, err := s.List(ctx, tc.prefix, tc.recursive)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, it := range items {
				got = append(got, itemString(it))
				if it.Entry == nil {
					continue
				}
				if it.Entry.Path != it.Path || it.Entry.Revision != revs[it.Path] || it.Entry.Value != nil ||
					it.Entry.Size != len("value of "+it.Path) || it.Entry.Author != "tester" {
					t.Errorf("entry %+v, want path %s revision %d size %d author tester and no value", *it.Entry, it.Path, revs[it.Path], len("value of "+it.Path))
				}
				if it.Entry.Revision > listRev {
					t.Errorf("entry %s at revision %d after the list revision %d", it.Path, it.Entry.Revision, listRev)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("List(%s, %v) =\n  %q\nwant\n  %q", tc.prefix, tc.recursive, got, tc.want)
			}
		})
	}
}

func TestListRevision(t *testing.T) {
	env := testenv.Start(t)
	e := put(t, env.Store, "/lr/a", "v")
	_, rev, err := env.Store.List(t.Context(), "/lr", true)
	if err != nil {
		t.Fatal(err)
	}
	if rev < e.Revision {
		t.Errorf("List revision %d is before the last write %d", rev, e.Revision)
	}
	// A watch from the list revision + 1 sees exactly what came after.
	later := put(t, env.Store, "/lr/b", "v")
	_, ch, err := env.Store.Watch(t.Context(), "/lr", rev+1, true)
	if err != nil {
		t.Fatal(err)
	}
	if got := nextEvents(t, ch, 1); got[0].Entry.Path != "/lr/b" || got[0].Entry.Revision != later.Revision {
		t.Errorf("first event after the list = %+v, want /lr/b at %d", got[0], later.Revision)
	}
}

func TestListInvalidPrefix(t *testing.T) {
	env := testenv.Start(t)
	for _, p := range []string{"", "app", "/app/", "/app//x"} {
		if _, _, err := env.Store.List(t.Context(), p, true); !errors.Is(err, store.ErrInvalidPath) {
			t.Errorf("List(%q) = %v, want ErrInvalidPath", p, err)
		}
	}
}

func itemString(it store.ListItem) string {
	switch {
	case it.Directory && it.Entry != nil:
		return it.Path + "+/"
	case it.Directory:
		return it.Path + "/"
	}
	return it.Path
}
