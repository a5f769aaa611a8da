package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/graft-sh/graft/internal/retry"
)

// renewer renews leases for many callers over one long-lived etcd
// LeaseKeepAlive stream. clientv3's KeepAliveOnce opens a stream per
// renewal, so every agent heartbeat (graftd renews the lease of each
// report it is sent again unchanged) cost a stream and a round trip of
// its own: with thousands of agents most of graftd's idle CPU.
//
// Here a caller queues its lease and waits. One goroutine sends whatever
// is queued, back to back without waiting for answers, so renewals that
// arrive while a batch is on its way go together in the next one; another
// reads the answers, which the server sends in the order it got the
// requests, and hands each to the first caller still waiting for that
// lease. There is no timer: an idle renewer is two goroutines parked on an
// open stream, and none at all once the stream has ended with nothing to
// do. A stream that breaks (a lost connection, a member that lost its
// leader) is opened again and the renewals it had not answered sent again
// (renewing twice is harmless); one that fails for another reason fails
// them with its error.
type renewer struct {
	leases pb.LeaseClient
	// ctx ends with the store (Close) or its etcd client.
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger

	mu      sync.Mutex
	queue   []*renewal           // asked for, not sent yet
	sent    map[int64][]*renewal // sent, not answered, by lease in order
	running bool                 // run is serving the queue
	closed  bool
	// wake tells the sender there is a queue; it holds one token at most.
	wake chan struct{}
	wg   sync.WaitGroup
	// streams counts the streams opened, for tests.
	streams atomic.Uint64
}

// A renewal is one caller waiting for one lease to be renewed.
type renewal struct {
	id   int64
	done chan error // buffered: an answer never waits for its caller
	// gone: the caller stopped waiting (its ctx ended), so it is not
	// sent again. Guarded by renewer.mu.
	gone bool
}

func newRenewer(ctx context.Context, leases pb.LeaseClient, log *slog.Logger) *renewer {
	rn := &renewer{leases: leases, log: log, sent: map[int64][]*renewal{}, wake: make(chan struct{}, 1)}
	rn.ctx, rn.cancel = context.WithCancel(ctx)
	return rn
}

// renew renews lease id once: nil once etcd has, ErrLeaseLost if the
// lease is gone, ctx's error as soon as ctx ends.
func (rn *renewer) renew(ctx context.Context, id int64) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("renew a lease: %w", err)
	}
	r := &renewal{id: id, done: make(chan error, 1)}
	rn.mu.Lock()
	if rn.closed {
		rn.mu.Unlock()
		return fmt.Errorf("renew a lease: %w", ErrClosed)
	}
	rn.queue = append(rn.queue, r)
	if !rn.running {
		rn.running = true
		rn.wg.Add(1)
		go rn.run()
	}
	rn.mu.Unlock()
	select {
	case rn.wake <- struct{}{}:
	default: // the sender is woken already
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		rn.mu.Lock()
		r.gone = true
		rn.mu.Unlock()
		return fmt.Errorf("renew a lease: %w", ctx.Err())
	}
}

// close ends the stream, fails the renewals waiting, and waits for the
// renewer's goroutines to end.
func (rn *renewer) close() {
	rn.mu.Lock()
	rn.closed = true
	rn.mu.Unlock()
	rn.cancel()
	rn.wg.Wait()
}

// run serves streams while there are renewals to send or answer.
func (rn *renewer) run() {
	defer rn.wg.Done()
	failures := 0
	for rn.busy() {
		answered, err := rn.serve()
		if rn.ctx.Err() != nil {
			rn.failAll(fmt.Errorf("renew a lease: %w", ErrClosed))
			continue // busy now says no
		}
		if answered {
			failures = 0
		}
		if !retryable(err) {
			rn.log.Warn("lease renewals failed", "err", err)
			rn.failAll(fmt.Errorf("renew a lease: %w", err))
			continue
		}
		rn.requeue()
		wait := retry.Backoff(10*time.Millisecond, time.Second, failures)
		failures++
		rn.log.Warn("the etcd lease keep-alive stream broke; opening another", "err", err, "backoff", wait)
		retry.Sleep(rn.ctx, wait)
	}
}

// busy reports whether a renewal waits to be sent or answered; if none
// does, run ends and the next renew starts another.
func (rn *renewer) busy() bool {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	rn.queue = slices.DeleteFunc(rn.queue, func(r *renewal) bool { return r.gone })
	if len(rn.queue) > 0 || len(rn.sent) > 0 {
		return true
	}
	rn.running = false
	return false
}

// serve opens a stream and sends the queue on it as it fills, until the
// stream ends. It reports whether etcd answered anything on it.
func (rn *renewer) serve() (answered bool, err error) {
	// WithRequireLeader: a member cut off from its leader ends the stream
	// rather than leave renewals unanswered; another is opened.
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(rn.ctx))
	defer cancel()
	stream, err := rn.leases.LeaseKeepAlive(ctx, grpc.WaitForReady(true))
	if err != nil {
		return false, err
	}
	rn.streams.Add(1)
	var got atomic.Bool
	recvErr := make(chan error, 1)
	go func() { recvErr <- rn.receive(stream, &got) }()
	for {
		for _, id := range rn.take() {
			if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
				if !errors.Is(err, io.EOF) {
					cancel()
					<-recvErr
					return got.Load(), err
				}
				// The stream has ended; Recv says why.
				return got.Load(), <-recvErr
			}
		}
		select {
		case <-rn.wake:
		case err := <-recvErr:
			return got.Load(), err
		}
	}
}

// take moves the queue to sent and returns its leases, to send in order.
func (rn *renewer) take() []int64 {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	ids := make([]int64, 0, len(rn.queue))
	for _, r := range rn.queue {
		if r.gone {
			continue
		}
		rn.sent[r.id] = append(rn.sent[r.id], r)
		ids = append(ids, r.id)
	}
	clear(rn.queue)
	rn.queue = rn.queue[:0]
	return ids
}

// receive answers the renewals sent on stream, in order, until it ends.
func (rn *renewer) receive(stream pb.Lease_LeaseKeepAliveClient, got *atomic.Bool) error {
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		got.Store(true)
		rn.mu.Lock()
		waiting := rn.sent[resp.ID]
		if len(waiting) == 0 {
			rn.mu.Unlock()
			rn.log.Warn("etcd answered a lease renewal nobody sent", "lease", resp.ID)
			continue
		}
		r := waiting[0]
		if len(waiting) == 1 {
			delete(rn.sent, resp.ID)
		} else {
			waiting[0] = nil
			rn.sent[resp.ID] = waiting[1:]
		}
		rn.mu.Unlock()
		if resp.TTL <= 0 {
			r.done <- ErrLeaseLost
		} else {
			r.done <- nil
		}
	}
}

// requeue queues again the renewals a broken stream left unanswered.
func (rn *renewer) requeue() {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	var again []*renewal
	for _, waiting := range rn.sent {
		for _, r := range waiting {
			if !r.gone {
				again = append(again, r)
			}
		}
	}
	clear(rn.sent)
	rn.queue = append(again, rn.queue...)
}

// failAll answers every renewal waiting with err.
func (rn *renewer) failAll(err error) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	for _, waiting := range rn.sent {
		for _, r := range waiting {
			r.done <- err
		}
	}
	clear(rn.sent)
	for _, r := range rn.queue {
		r.done <- err
	}
	clear(rn.queue)
	rn.queue = rn.queue[:0]
}

// notPrimary is etcd's lease.ErrNotPrimary, which it sends as Unknown: a
// leader that could not confirm it still leads (an election under way),
// whose clients are to renew again, at another member if need be.
const notPrimary = "not a primary lessor"

// retryable says whether a stream that ended with err is worth opening
// again: as clientv3 retries KeepAliveOnce, when the server went away
// (Unavailable, which is also a member without a leader or a leader
// change) or a frame was lost (Internal); and when the server ended the
// stream or its lessor was not the primary for a moment.
func retryable(err error) bool {
	if errors.Is(err, io.EOF) {
		return true
	}
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.Unavailable, codes.Internal:
		return true
	case codes.Unknown:
		return st.Message() == notPrimary
	}
	return false
}
