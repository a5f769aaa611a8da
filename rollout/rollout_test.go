package rollout_test

import (
	"errors"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/rollout"
)

// A report lives as long as its agent renews it: a second report renews
// the same lease, and a report not renewed is gone after its TTL.
func TestReportsLiveByTheirLease(t *testing.T) {
	env := testenv.Start(t)
	reg := rollout.New(env.Store)
	ctx := t.Context()
	rep := rollout.Report{ID: "host-1", App: "mp", Revision: 7}
	if err := reg.Put(ctx, rep, time.Second); err != nil {
		t.Fatal(err)
	}
	first, err := reg.List(ctx, "mp")
	if err != nil || len(first) != 1 || first[0].Revision != 7 {
		t.Fatalf("after one report: %+v, %v", first, err)
	}
	rep.Revision = 8
	if err := reg.Put(ctx, rep, time.Second); err != nil {
		t.Fatal(err)
	}
	second, _ := reg.List(ctx, "mp")
	if len(second) != 1 || second[0].Revision != 8 || second[0].Lease != first[0].Lease {
		t.Fatalf("a second report: %+v; want revision 8 on the same lease %d", second, first[0].Lease)
	}
	// A heartbeat that changes nothing keeps the record and the time of
	// the state; it only renews the lease.
	again := rep
	again.Time = time.Now().Add(time.Hour)
	if err := reg.Put(ctx, again, time.Second); err != nil {
		t.Fatal(err)
	}
	third, _ := reg.List(ctx, "mp")
	if len(third) != 1 || !third[0].Time.Equal(second[0].Time) || third[0].Lease != first[0].Lease {
		t.Fatalf("a heartbeat rewrote the report: %+v, before %+v", third, second)
	}
	if other, _ := reg.List(ctx, "m"); len(other) != 0 {
		t.Fatalf("app m lists mp's agents: %+v", other)
	}
	testenv.WaitFor(t, 10*time.Second, func() bool {
		l, err := reg.List(ctx, "")
		return err == nil && len(l) == 0
	})
	if err := reg.Put(ctx, rollout.Report{ID: "a/b", App: "mp"}, 0); !errors.Is(err, rollout.ErrInvalid) {
		t.Fatalf("an id with a slash: %v", err)
	}
}
