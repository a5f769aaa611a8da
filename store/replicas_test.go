package store_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

// claim makes rule id own dests, as creating a replication rule does.
func claim(t *testing.T, s *store.Store, id, source string, dests ...string) []store.Owner {
	t.Helper()
	var owners []store.Owner
	for _, d := range dests {
		owners = append(owners, store.Owner{Rule: id, Source: source, SourceRoot: source, Root: d})
	}
	rev, err := s.Revision(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CheckDestinationsEmpty(t.Context(), dests, rev); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimDestinations(t.Context(), owners, rev); err != nil {
		t.Fatalf("claim destinations of %s: %v", id, err)
	}
	return owners
}

func TestDestinationsBelongToTheReplicator(t *testing.T) {
	s := testenv.Start(t).Store
	ctx := t.Context()
	owners := claim(t, s, "r-1", "/dba/mongo", "/app/mp/replicated/mongo")

	// Ordinary writes into the destination, or below it, are refused and
	// name the rule and the source.
	for _, p := range []string{"/app/mp/replicated/mongo", "/app/mp/replicated/mongo/password"} {
		_, err := s.Put(ctx, p, []byte("x"), store.WriteOptions{Author: "app:mp"})
		var de *store.DestinationError
		if !errors.As(err, &de) || !errors.Is(err, store.ErrDestination) || de.Owner.Rule != "r-1" || de.Owner.Source != "/dba/mongo" {
			t.Fatalf("Put %s: %v; want a DestinationError of r-1", p, err)
		}
	}
	// A sibling with a shared name prefix is not a destination.
	if _, err := s.Put(ctx, "/app/mp/replicated/mongo-evil", []byte("x"), store.WriteOptions{}); err != nil {
		t.Fatalf("Put beside the destination: %v", err)
	}

	w := store.ReplicaWrite{Path: "/app/mp/replicated/mongo/password", Root: "/app/mp/replicated/mongo", Rule: "r-1", Source: "/dba/mongo/password", SourceRevision: 10, Value: []byte("v10")}
	apply := func(w store.ReplicaWrite) store.ReplicaResult {
		t.Helper()
		res, err := s.ApplyReplicas(ctx, []store.ReplicaWrite{w})
		if err != nil {
			t.Fatal(err)
		}
		return res[0]
	}
	if r := apply(w); r.Outcome != store.ReplicaWritten || r.Revision == 0 {
		t.Fatalf("first write: %+v", r)
	}
	e, err := s.Get(ctx, w.Path)
	if err != nil || string(e.Value) != "v10" || e.Author != store.ReplicatorAuthor || e.Origin == nil || e.Origin.SourceRevision != 10 || e.Origin.RuleID != "r-1" {
		t.Fatalf("Get after replica write = %+v, %v", e, err)
	}
	// Never backwards: an older source revision changes nothing.
	old := w
	old.SourceRevision, old.Value = 9, []byte("v9")
	if r := apply(old); r.Outcome != store.ReplicaCurrent {
		t.Fatalf("older write: %+v", r)
	}
	// A deletion read at revision 12 deletes; a put of revision 11 read
	// before it cannot bring the value back.
	del := w
	del.SourceRevision, del.Delete, del.Value = 12, true, nil
	if r := apply(del); r.Outcome != store.ReplicaDeleted {
		t.Fatalf("delete: %+v", r)
	}
	stale := w
	stale.SourceRevision, stale.Value = 11, []byte("v11")
	if r := apply(stale); r.Outcome != store.ReplicaCurrent {
		t.Fatalf("stale put after delete: %+v", r)
	}
	if _, err := s.Get(ctx, w.Path); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("destination back after its deletion: %v", err)
	}
	if h, err := s.History(ctx, w.Path); err != nil || len(h) != 1 {
		t.Fatalf("history of the destination = %+v, %v; want the deleted version", h, err)
	}

	// Once the rule is gone the replicator no longer writes there, and the
	// destination is an ordinary path again.
	if err := s.ReleaseDestinations(ctx, owners); err != nil {
		t.Fatal(err)
	}
	w.SourceRevision = 20
	if r := apply(w); r.Outcome != store.ReplicaUnowned {
		t.Fatalf("write after unshare: %+v", r)
	}
	if _, err := s.Put(ctx, w.Path, []byte("mine"), store.WriteOptions{}); err != nil {
		t.Fatalf("Put after unshare: %v", err)
	}
}

func TestClaimRefusesOccupiedDestinations(t *testing.T) {
	s := testenv.Start(t).Store
	ctx := t.Context()
	if _, err := s.Put(ctx, "/app/mp/replicated/mongo/user", []byte("hand-written"), store.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	rev, _ := s.Revision(ctx)
	err := s.CheckDestinationsEmpty(ctx, []string{"/app/mp/replicated/other", "/app/mp/replicated/mongo"}, rev)
	var ne *store.NotEmptyError
	if !errors.As(err, &ne) || !errors.Is(err, store.ErrDestinationNotEmpty) || ne.Count != 1 || ne.Paths[0] != "/app/mp/replicated/mongo/user" {
		t.Fatalf("CheckDestinationsEmpty over a hand-written value: %v", err)
	}
	// A value written after the check makes the claim fail.
	owners := []store.Owner{{Rule: "r-1", Source: "/dba/m", Root: "/app/mp/replicated/other"}}
	if _, err := s.Put(ctx, "/app/mp/replicated/other/late", []byte("x"), store.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimDestinations(ctx, owners, rev); !errors.Is(err, store.ErrContention) {
		t.Fatalf("a claim after a write below the destination = %v, want ErrContention", err)
	}
	if _, err := s.Owner(ctx, "/app/mp/replicated/other/late"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a failed claim left an owner: %v", err)
	}
}

// A fan-out wider than one transaction is split into batches and every
// destination is written.
func TestApplyReplicasFanOut(t *testing.T) {
	s := testenv.Start(t).Store
	ctx := t.Context()
	const n = 300
	var ws []store.ReplicaWrite
	var roots []string
	for i := range n {
		root := fmt.Sprintf("/app/a%03d/replicated/dd", i)
		roots = append(roots, root)
		ws = append(ws, store.ReplicaWrite{Path: root, Root: root, Rule: "r-fan", Source: "/shared/dd", SourceRevision: 5, Value: []byte("key")})
	}
	claim(t, s, "r-fan", "/shared/dd", roots...)
	res, err := s.ApplyReplicas(ctx, ws)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Outcome != store.ReplicaWritten {
			t.Fatalf("destination %d: %+v", i, r)
		}
	}
	items, _, err := s.List(ctx, "/app", true)
	if err != nil || len(items) != n {
		t.Fatalf("List /app = %d items, %v; want %d", len(items), err, n)
	}
	if _, err := s.ApplyReplicas(ctx, append(ws[:1:1], ws[0])); !errors.Is(err, store.ErrInvalidArgument) {
		t.Fatalf("a path twice in one call: %v", err)
	}
}

// PruneDestinations deletes, in batches, exactly the copies a rule wrote
// and their applied records, each into history as a deletion by the
// author; a value written over a copy after the rule let go stays, a
// destination of another rule is not read, and a second prune finds
// nothing left.
func TestPruneDestinations(t *testing.T) {
	s := testenv.Start(t).Store
	ctx := t.Context()
	const n = 150 // several batches of each kind
	var ws []store.ReplicaWrite
	var roots []string
	for i := range n {
		root := fmt.Sprintf("/app/a%03d/replicated/dd", i)
		roots = append(roots, root)
		for _, k := range []string{"key", "site"} {
			ws = append(ws, store.ReplicaWrite{Path: root + "/" + k, Root: root, Rule: "r-wide", Source: "/shared/dd/" + k, SourceRevision: 5, Value: []byte(k)})
		}
	}
	owners := claim(t, s, "r-wide", "/shared/dd", roots...)
	claim(t, s, "r-other", "/shared/dd", "/app/other/replicated/dd")
	other := store.ReplicaWrite{Path: "/app/other/replicated/dd/key", Root: "/app/other/replicated/dd", Rule: "r-other", Source: "/shared/dd/key", SourceRevision: 5, Value: []byte("key")}
	if _, err := s.ApplyReplicas(ctx, append(ws, other)); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseDestinations(ctx, owners); err != nil {
		t.Fatal(err)
	}
	mine := roots[7] + "/key"
	if _, err := s.Put(ctx, mine, []byte("mine"), store.WriteOptions{Author: "user:app"}); err != nil {
		t.Fatal(err)
	}
	pruned, err := s.PruneDestinations(ctx, roots, "r-wide", "user:dba")
	if err != nil || pruned != 2*n-1 {
		t.Fatalf("PruneDestinations = %d, %v; want %d", pruned, err, 2*n-1)
	}
	items, _, err := s.List(ctx, "/app", true)
	if err != nil || len(items) != 2 {
		t.Fatalf("after the prune /app holds %d items (%v), want the overwritten copy and the other rule's", len(items), err)
	}
	if v, err := s.Get(ctx, mine); err != nil || string(v.Value) != "mine" {
		t.Fatalf("the value written over a copy: %v, %v", v, err)
	}
	if a, err := s.AppliedUnderAll(ctx, roots); err != nil || len(a) != 0 {
		t.Fatalf("%d applied records left under the pruned roots (%v)", len(a), err)
	}
	if _, err := s.Applied(ctx, other.Path); err != nil {
		t.Fatalf("the other rule's applied record: %v", err)
	}
	h, err := s.History(ctx, roots[n-1]+"/site")
	if err != nil || len(h) != 1 || !h[0].Deleted || h[0].Deleter != "user:dba" {
		t.Fatalf("history of a pruned copy: %+v, %v; want one version deleted by user:dba", h, err)
	}
	if pruned, err := s.PruneDestinations(ctx, roots, "r-wide", "user:dba"); err != nil || pruned != 0 {
		t.Fatalf("a second prune = %d, %v; want nothing left to do", pruned, err)
	}
}
