package rollout

import (
	"context"
	"sync"
	"time"

	"github.com/graft-sh/graft/store"
)

// Report writes are committed in batches: when a change reaches 10,000
// agents they all report within seconds, and each write on its own was a
// transaction of etcd's, queued with the replicator's writes of that very
// change. A write that finds none under way is committed at once; those
// that arrive meanwhile go together in the next transaction.
const (
	// maxWriteBatch keeps a batch of reports (MaxReportBytes each) under
	// etcd's 1.5 MiB request limit.
	maxWriteBatch   = 32
	writeBatchLimit = 10 * time.Second
)

// writer queues report writes for one committing goroutine.
type writer struct {
	mu      sync.Mutex
	queue   []*pendingWrite
	running bool
}

type pendingWrite struct {
	op    store.Op
	conds []store.Cond
	rev   int64
	err   error
	done  chan struct{}
}

// commit commits op, batched with the report writes queued with it, if
// every cond holds, and returns the revision it was committed at, or
// store.ErrRevisionChanged when a cond did not hold. The write may still
// commit after ctx ended.
func (r *Registry) commit(ctx context.Context, op store.Op, conds ...store.Cond) (int64, error) {
	w := &pendingWrite{op: op, conds: conds, done: make(chan struct{})}
	r.writes.mu.Lock()
	r.writes.queue = append(r.writes.queue, w)
	start := !r.writes.running
	r.writes.running = true
	r.writes.mu.Unlock()
	if start {
		go r.flushWrites()
	}
	select {
	case <-w.done:
		return w.rev, w.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// flushWrites commits the queue in batches until it is empty. A batch that
// fails, or one of whose conditions does not hold, is committed write by
// write, so that each caller gets its own outcome.
func (r *Registry) flushWrites() {
	for {
		r.writes.mu.Lock()
		n := min(len(r.writes.queue), maxWriteBatch)
		if n == 0 {
			r.writes.running = false
			r.writes.mu.Unlock()
			return
		}
		batch := r.writes.queue[:n:n]
		r.writes.queue = r.writes.queue[n:]
		r.writes.mu.Unlock()
		ops := make([]store.Op, n)
		var conds []store.Cond
		for i, w := range batch {
			ops[i] = w.op
			conds = append(conds, w.conds...)
		}
		ctx, cancel := context.WithTimeout(context.Background(), writeBatchLimit)
		rev, committed, err := r.store.Commit(ctx, conds, ops...)
		for _, w := range batch {
			ok := committed
			w.rev, w.err = rev, err
			if (err != nil || !committed) && n > 1 {
				w.rev, ok, w.err = r.store.Commit(ctx, w.conds, w.op)
			}
			if w.err == nil && !ok {
				w.rev, w.err = 0, store.ErrRevisionChanged
			}
			close(w.done)
		}
		cancel()
	}
}
