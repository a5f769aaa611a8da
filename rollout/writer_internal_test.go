package rollout

import (
	"context"
	"errors"
	"testing"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

// A batch one of whose guards fails is committed write by write: the
// write whose guard fails gets store.ErrRevisionChanged, and every other
// write of the batch is committed, and says so, whatever came before it.
func TestABatchWithAFailingGuardCommitsTheOthers(t *testing.T) {
	env := testenv.Start(t)
	reg := New(env.Store)
	ctx := t.Context()
	write := func(key string, conds ...store.Cond) *pendingWrite {
		op, err := reg.recs.PutOp(key, Report{ID: key, App: "pet"})
		if err != nil {
			t.Fatal(err)
		}
		return &pendingWrite{op: op, conds: conds, done: make(chan struct{})}
	}
	batch := []*pendingWrite{write("pet/a"), write("pet/b", reg.recs.At("pet/b", 999)), write("pet/c"), write("pet/d")}
	reg.writes.queue, reg.writes.running = batch, true
	reg.flushWrites()
	for i, w := range batch {
		<-w.done
		if i == 1 {
			if !errors.Is(w.err, store.ErrRevisionChanged) {
				t.Errorf("the write whose guard fails: %v, want ErrRevisionChanged", w.err)
			}
			continue
		}
		if w.err != nil || w.rev == 0 {
			t.Errorf("write %d: rev %d, %v; want it committed", i, w.rev, w.err)
		}
	}
	for _, k := range []string{"pet/a", "pet/c", "pet/d"} {
		if _, err := reg.recs.Get(context.WithoutCancel(ctx), k); err != nil {
			t.Errorf("%s after the batch: %v, want it stored", k, err)
		}
	}
	if _, err := reg.recs.Get(ctx, "pet/b"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("pet/b after its guard failed: %v, want not found", err)
	}
}
