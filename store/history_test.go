package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

// histView is the part of a HistoryItem a test compares.
type histView struct {
	Revision int64
	Current  bool
	Deleted  bool
	Ended    time.Time
	Time     time.Time
}

func history(t *testing.T, s *store.Store, path string) []histView {
	t.Helper()
	items, err := s.History(context.Background(), path)
	if err != nil {
		t.Fatalf("History %s: %v", path, err)
	}
	out := make([]histView, 0, len(items))
	for _, it := range items {
		if it.Entry.Value != nil {
			t.Errorf("History %s returned a value for revision %d", path, it.Entry.Revision)
		}
		out = append(out, histView{it.Entry.Revision, it.Current, it.Deleted, it.Ended, it.Entry.Time})
	}
	return out
}

func TestHistory(t *testing.T) {
	clk := newClock()
	env := testenv.Start(t, testenv.WithClock(clk.Now))
	s := env.Store

	t1 := clk.At(1)
	v1 := put(t, s, "/h/k", "v1")
	t2 := clk.At(2)
	v2 := put(t, s, "/h/k", "v2")
	t3 := clk.At(3)
	gone := del(t, s, "/h/k")
	t4 := clk.At(4)
	v3 := put(t, s, "/h/k", "v3")

	want := []histView{
		{Revision: v3.Revision, Current: true, Time: t4},
		{Revision: v2.Revision, Deleted: true, Ended: t3, Time: t2},
		{Revision: v1.Revision, Ended: t2, Time: t1},
	}
	if got := history(t, s, "/h/k"); !slices.Equal(got, want) {
		t.Errorf("History =\n%+v\nwant\n%+v", got, want)
	}
	if gone <= v2.Revision || gone >= v3.Revision {
		t.Errorf("delete revision %d not between %d and %d", gone, v2.Revision, v3.Revision)
	}

	// After a delete the history is still there, with nothing current.
	del(t, s, "/h/k")
	got := history(t, s, "/h/k")
	if len(got) != 3 || got[0].Current || !got[0].Deleted || got[0].Revision != v3.Revision {
		t.Errorf("History after a second delete = %+v, want v3 first, deleted and not current", got)
	}
}

func TestHistoryRetention(t *testing.T) {
	const limit = 3
	env := testenv.Start(t, testenv.WithHistoryLimit(limit))
	s := env.Store
	var revs []int64
	for i := range 8 {
		revs = append(revs, put(t, s, "/r/k", fmt.Sprint(i)).Revision)
	}
	got := history(t, s, "/r/k")
	var gotRevs []int64
	for _, h := range got {
		gotRevs = append(gotRevs, h.Revision)
	}
	// The current version and limit previous ones, newest first.
	wantRevs := []int64{revs[7], revs[6], revs[5], revs[4]}
	if !slices.Equal(gotRevs, wantRevs) {
		t.Errorf("retained revisions = %v, want %v", gotRevs, wantRevs)
	}
	if _, err := s.GetRevision(t.Context(), "/r/k", revs[3]); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetRevision of a trimmed revision = %v, want ErrNotFound", err)
	}

	// A delete archives the current version and trims again; a re-create
	// keeps what is there.
	del(t, s, "/r/k")
	again := put(t, s, "/r/k", "again")
	gotRevs = gotRevs[:0]
	for _, h := range history(t, s, "/r/k") {
		gotRevs = append(gotRevs, h.Revision)
	}
	wantRevs = []int64{again.Revision, revs[7], revs[6], revs[5]}
	if !slices.Equal(gotRevs, wantRevs) {
		t.Errorf("retained revisions after delete and re-create = %v, want %v", gotRevs, wantRevs)
	}
}

// Lowering the history limit must not make a write delete more history
// than one etcd transaction may hold (--max-txn-ops, 128 by default): the
// surplus goes over the next few writes instead.
func TestHistoryLimitLowered(t *testing.T) {
	const before, after = 80, 2
	env := testenv.Start(t, testenv.WithHistoryLimit(before))
	for i := range before + 1 {
		put(t, env.Store, "/lower/k", fmt.Sprint(i))
	}
	if got := len(history(t, env.Store, "/lower/k")); got != before+1 {
		t.Fatalf("history holds %d versions, want %d", got, before+1)
	}
	small, err := store.New(store.Config{Client: env.Client, Keyring: env.Keyring, HistoryLimit: after})
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{}
	for i := range 4 {
		put(t, small, "/lower/k", fmt.Sprint("small", i))
		sizes = append(sizes, len(history(t, small, "/lower/k")))
	}
	if sizes[0] <= after+1 {
		t.Errorf("the first write with limit %d left %d versions; it trimmed all %d surplus versions in one transaction", after, sizes[0], before+1-after)
	}
	if sizes[1] != after+1 || sizes[len(sizes)-1] != after+1 {
		t.Errorf("history sizes after writes with limit %d = %v, want %d from the second write on", after, sizes, after+1)
	}
	for i := 1; i < len(sizes); i++ {
		if sizes[i] > sizes[i-1] {
			t.Errorf("history grew from %d to %d while over the limit", sizes[i-1], sizes[i])
		}
	}
}

func TestRestore(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()
	s := env.Store
	v1 := put(t, s, "/rs/k", "first")
	v2 := put(t, s, "/rs/k", "second")
	before := history(t, s, "/rs/k")

	restored, err := s.Restore(ctx, "/rs/k", v1.Revision, "restorer")
	if err != nil {
		t.Fatal(err)
	}
	if restored.Revision <= v2.Revision {
		t.Errorf("restore wrote revision %d, want a new one after %d", restored.Revision, v2.Revision)
	}
	wantOrigin := store.Origin{Kind: "restore", SourcePath: "/rs/k", SourceRevision: v1.Revision}
	if restored.Origin == nil || *restored.Origin != wantOrigin {
		t.Errorf("restore origin = %+v, want %+v", restored.Origin, wantOrigin)
	}
	got := get(t, s, "/rs/k")
	if string(got.Value) != "first" || got.Revision != restored.Revision || got.Author != "restorer" {
		t.Errorf("after restore Get = %q at %d by %s, want %q at %d by restorer", got.Value, got.Revision, got.Author, "first", restored.Revision)
	}
	if got.Origin == nil || *got.Origin != wantOrigin {
		t.Errorf("stored origin = %+v, want %+v", got.Origin, wantOrigin)
	}

	// History is added to, not rewritten.
	after := history(t, s, "/rs/k")
	if len(after) != len(before)+1 || after[0].Revision != restored.Revision {
		t.Fatalf("history after restore = %+v, want the restore on top of %+v", after, before)
	}
	for i, h := range after[1:] {
		if h.Revision != before[i].Revision || h.Time != before[i].Time {
			t.Errorf("history entry %d changed from %+v to %+v", i, before[i], h)
		}
	}
	if old, err := s.GetRevision(ctx, "/rs/k", v2.Revision); err != nil || string(old.Value) != "second" {
		t.Errorf("GetRevision %d after restore = %q, %v; want %q", v2.Revision, old.Value, err, "second")
	}

	// A deleted path can be restored too.
	del(t, s, "/rs/k")
	if _, err := s.Restore(ctx, "/rs/k", v2.Revision, "restorer"); err != nil {
		t.Fatal(err)
	}
	if got := get(t, s, "/rs/k"); string(got.Value) != "second" {
		t.Errorf("restore of a deleted path = %q, want %q", got.Value, "second")
	}
}

// prefixTimeline builds the history that the RestorePrefix tests return
// to minute 20 of. Outside the prefix /x/pre are siblings that share its
// bytes (/x/pre-evil, /x/pre.bak) and must never be touched.
type prefixTimeline struct {
	target time.Time
	revs   map[string]int64 // path@minute -> revision
}

func buildTimeline(t *testing.T, s *store.Store, clk *clock) prefixTimeline {
	t.Helper()
	tl := prefixTimeline{revs: map[string]int64{}}
	at := func(m int, path, value string) {
		clk.At(m)
		tl.revs[fmt.Sprintf("%s@%d", path, m)] = put(t, s, path, value).Revision
	}
	remove := func(m int, path string) {
		clk.At(m)
		del(t, s, path)
	}

	at(10, "/x/pre", "root1")
	at(10, "/x/pre/a", "a1")
	at(10, "/x/pre/b", "b1")
	at(10, "/x/pre/same", "same1")
	at(10, "/x/pre/gone-and-back", "g1")
	at(10, "/x/pre/deep/er/key", "deep1")
	at(10, "/x/pre/trimmed", "t1")
	at(10, "/x/pre-evil/z", "z1")
	at(10, "/x/pre.bak", "bak1")
	at(10, "/other", "o1")
	tl.target = clk.At(20)
	at(30, "/x/pre", "root2")
	at(30, "/x/pre/a", "a2")
	at(30, "/x/pre/deep/er/key", "deep2")
	at(30, "/x/pre-evil/z", "z2")
	at(30, "/x/pre/flash", "f1") // lives and dies after the target
	remove(31, "/x/pre/gone-and-back")
	for m := 32; m < 37; m++ { // pushes minute 10 out of the 3-version history
		at(m, "/x/pre/trimmed", fmt.Sprint("t", m))
	}
	remove(40, "/x/pre/b")
	remove(40, "/x/pre.bak")
	remove(40, "/x/pre/flash")
	at(45, "/x/pre/gone-and-back", "g2")
	at(50, "/x/pre/c", "c1")
	at(50, "/x/pre-evil/new", "n1")
	clk.At(60)
	return tl
}

func TestRestorePrefix(t *testing.T) {
	clk := newClock()
	env := testenv.Start(t, testenv.WithClock(clk.Now), testenv.WithHistoryLimit(3))
	ctx := t.Context()
	s := env.Store
	tl := buildTimeline(t, s, clk)
	r := tl.revs

	trimmedNow := r["/x/pre/trimmed@36"]
	want := []store.RestoreStep{
		{Path: "/x/pre", Action: store.ActionRestore, FromRevision: r["/x/pre@30"], ToRevision: r["/x/pre@10"]},
		{Path: "/x/pre/a", Action: store.ActionRestore, FromRevision: r["/x/pre/a@30"], ToRevision: r["/x/pre/a@10"]},
		{Path: "/x/pre/b", Action: store.ActionRestore, FromRevision: 0, ToRevision: r["/x/pre/b@10"]},
		{Path: "/x/pre/c", Action: store.ActionDelete, FromRevision: r["/x/pre/c@50"]},
		{Path: "/x/pre/deep/er/key", Action: store.ActionRestore, FromRevision: r["/x/pre/deep/er/key@30"], ToRevision: r["/x/pre/deep/er/key@10"]},
		{Path: "/x/pre/gone-and-back", Action: store.ActionRestore, FromRevision: r["/x/pre/gone-and-back@45"], ToRevision: r["/x/pre/gone-and-back@10"]},
		{Path: "/x/pre/trimmed", Action: store.ActionSkip, FromRevision: trimmedNow},
	}

	outside := []string{"/x/pre-evil/z", "/x/pre-evil/new", "/other", "/x/pre/same", "/x/pre/trimmed"}
	before := map[string]store.Entry{}
	for _, p := range outside {
		before[p] = get(t, s, p)
	}

	t.Run("dry run", func(t *testing.T) {
		revBefore := etcdRevision(t, env)
		got, err := s.RestorePrefix(ctx, "/x/pre", tl.target, true, "restorer")
		if err != nil {
			t.Fatal(err)
		}
		checkSteps(t, got, want, false)
		if after := etcdRevision(t, env); after != revBefore {
			t.Errorf("a dry run moved etcd from revision %d to %d", revBefore, after)
		}
	})

	t.Run("restore", func(t *testing.T) {
		got, err := s.RestorePrefix(ctx, "/x/pre", tl.target, false, "restorer")
		if err != nil {
			t.Fatal(err)
		}
		checkSteps(t, got, want, true)

		values := map[string]string{
			"/x/pre":               "root1",
			"/x/pre/a":             "a1",
			"/x/pre/b":             "b1",
			"/x/pre/deep/er/key":   "deep1",
			"/x/pre/gone-and-back": "g1",
		}
		for _, step := range got {
			wantValue, ok := values[step.Path]
			if !ok {
				continue
			}
			e := get(t, s, step.Path)
			if string(e.Value) != wantValue || e.Revision != step.NewRevision || e.Author != "restorer" {
				t.Errorf("%s = %q at %d by %s, want %q at %d by restorer", step.Path, e.Value, e.Revision, e.Author, wantValue, step.NewRevision)
			}
			wantOrigin := store.Origin{Kind: "restore", SourcePath: step.Path, SourceRevision: step.ToRevision}
			if e.Origin == nil || *e.Origin != wantOrigin {
				t.Errorf("%s origin = %+v, want %+v", step.Path, e.Origin, wantOrigin)
			}
		}
		if _, err := s.Get(ctx, "/x/pre/c"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("/x/pre/c after restore: %v, want ErrNotFound", err)
		}
		if _, err := s.Get(ctx, "/x/pre/flash"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("/x/pre/flash after restore: %v, want ErrNotFound", err)
		}
		if _, err := s.Get(ctx, "/x/pre.bak"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("/x/pre.bak, outside the prefix, was restored: %v", err)
		}
		for _, p := range outside {
			if got := get(t, s, p); !entriesEqual(got, before[p]) {
				t.Errorf("%s changed from %+v to %+v", p, before[p], got)
			}
		}

		// Restoring to the same time again finds nothing left to do.
		again, err := s.RestorePrefix(ctx, "/x/pre", tl.target, true, "restorer")
		if err != nil {
			t.Fatal(err)
		}
		for _, step := range again {
			if step.Action != store.ActionSkip {
				t.Errorf("a second restore to the same time plans %+v", step)
			}
		}
	})
}

func TestRestorePrefixRoot(t *testing.T) {
	clk := newClock()
	env := testenv.Start(t, testenv.WithClock(clk.Now))
	s := env.Store
	clk.At(1)
	a := put(t, s, "/a", "a1")
	target := clk.At(2)
	clk.At(3)
	a2 := put(t, s, "/a", "a2")
	b := put(t, s, "/b/c", "c1")

	steps, err := s.RestorePrefix(t.Context(), "/", target, false, "root")
	if err != nil {
		t.Fatal(err)
	}
	want := []store.RestoreStep{
		{Path: "/a", Action: store.ActionRestore, FromRevision: a2.Revision, ToRevision: a.Revision},
		{Path: "/b/c", Action: store.ActionDelete, FromRevision: b.Revision},
	}
	checkSteps(t, steps, want, true)
	if got := get(t, s, "/a"); string(got.Value) != "a1" {
		t.Errorf("/a = %q, want a1", got.Value)
	}
}

// A path changed between the plan and its step is left with the newer
// value: the step fails rather than overwrite it, and the steps done before
// it are reported.
func TestRestorePrefixConcurrentChange(t *testing.T) {
	clk := newClock()
	env := testenv.Start(t, testenv.WithClock(clk.Now))
	ctx := t.Context()
	s := env.Store
	clk.At(10)
	a1 := put(t, s, "/cc/a", "a1")
	put(t, s, "/cc/b", "b1")
	target := clk.At(20)
	clk.At(30)
	put(t, s, "/cc/a", "a2")
	b2 := put(t, s, "/cc/b", "b2")

	// The store reads the clock as the first step (/cc/a) writes, after
	// the plan: change /cc/b then, through another Store as another graftd
	// would.
	other, err := store.New(store.Config{Client: env.Client, Keyring: env.Keyring})
	if err != nil {
		t.Fatal(err)
	}
	var concurrent store.Entry
	clk.OnNextNow(func() {
		var err error
		concurrent, err = other.Put(ctx, "/cc/b", []byte("concurrent"), store.WriteOptions{Author: "other"})
		if err != nil {
			t.Errorf("concurrent Put: %v", err)
		}
	})
	steps, err := s.RestorePrefix(ctx, "/cc", target, false, "restorer")
	var mismatch *store.RevisionMismatchError
	if !errors.As(err, &mismatch) {
		t.Fatalf("RestorePrefix = %+v, %v; want a *RevisionMismatchError", steps, err)
	}
	if mismatch.Path != "/cc/b" || mismatch.Expected != b2.Revision || mismatch.Current != concurrent.Revision {
		t.Errorf("mismatch = %+v, want /cc/b expected %d current %d", mismatch, b2.Revision, concurrent.Revision)
	}
	if !strings.Contains(err.Error(), "1 of 2 steps done") {
		t.Errorf("error %q does not say how far the restore got", err)
	}
	if len(steps) != 1 || steps[0].Path != "/cc/a" || steps[0].NewRevision == 0 || steps[0].ToRevision != a1.Revision {
		t.Errorf("steps done = %+v, want only /cc/a, restored", steps)
	}
	if got := get(t, s, "/cc/b"); string(got.Value) != "concurrent" || got.Revision != concurrent.Revision {
		t.Errorf("/cc/b = %q at %d, want the concurrent write kept", got.Value, got.Revision)
	}
	if got := get(t, s, "/cc/a"); string(got.Value) != "a1" {
		t.Errorf("/cc/a = %q, want a1", got.Value)
	}
}

func checkSteps(t *testing.T, got, want []store.RestoreStep, written bool) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("steps =\n%s\nwant\n%s", formatSteps(got), formatSteps(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		wroteNew := g.NewRevision != 0
		if g.Path != w.Path || g.Action != w.Action || g.FromRevision != w.FromRevision || g.ToRevision != w.ToRevision {
			t.Errorf("step %d = %s, want %s", i, formatSteps([]store.RestoreStep{g}), formatSteps([]store.RestoreStep{w}))
		}
		if wantNew := written && w.Action != store.ActionSkip; wroteNew != wantNew {
			t.Errorf("step %d (%s %s) NewRevision = %d, want written: %v", i, g.Action, g.Path, g.NewRevision, wantNew)
		}
		if g.Action == store.ActionSkip && !strings.Contains(g.Reason, "trimmed by retention") {
			t.Errorf("skip of %s has reason %q, want it to say the history was trimmed", g.Path, g.Reason)
		}
	}
}

func formatSteps(steps []store.RestoreStep) string {
	var b strings.Builder
	for _, s := range steps {
		fmt.Fprintf(&b, "  %s %s from %d to %d new %d %q\n", s.Action, s.Path, s.FromRevision, s.ToRevision, s.NewRevision, s.Reason)
	}
	return b.String()
}

func etcdRevision(t *testing.T, env *testenv.Env) int64 {
	t.Helper()
	resp, err := env.Client.Get(t.Context(), "/")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}
