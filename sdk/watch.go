package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/retry"
)

// Watch reconnect backoff: doubling from watchBackoffMin to watchBackoffMax,
// reset once a stream is established again.
const (
	watchBackoffMin = 50 * time.Millisecond
	watchBackoffMax = 2 * time.Second
)

// WatchOption qualifies a Watch.
type WatchOption func(*watchOptions)

type watchOptions struct{ keysOnly bool }

// KeysOnly omits values from put events; Entry.Size is still set.
func KeysOnly() WatchOption { return func(o *watchOptions) { o.keysOnly = true } }

// WatchResponse is what a watch delivers: the events of one store
// revision, in order. A response with Err is the last one; the channel
// closes after it.
type WatchResponse struct {
	Revision int64
	Events   []Event
	Err      error
}

// Watch streams the changes under prefix ("/" is the whole tree), starting
// at fromRevision inclusive; 0 means the changes after graftd confirmed the
// watch, and Watch returns only once it has (or its first attempt failed),
// so a change committed after Watch returns is delivered.
//
// Each revision is delivered once, in order, as one WatchResponse. When
// the stream breaks for a reason that can pass (graftd restarting or
// unreachable, a stream reset), Watch reconnects with backoff (50ms
// doubling to 2s) and resumes after the last revision it saw, so no event
// is lost or repeated. Errors that retrying cannot fix — OutOfRange (the
// revision to resume from was compacted: re-read current values and watch
// again from the revision the error names), InvalidArgument, NotFound,
// Unauthenticated, PermissionDenied, FailedPrecondition, DataLoss — are
// delivered as a final WatchResponse with Err. When ctx ends or the
// client is closed the channel closes without an error.
//
// Read the channel promptly: the watch does not read ahead of the consumer.
func (c *Client) Watch(ctx context.Context, prefix string, fromRevision int64, opts ...WatchOption) <-chan WatchResponse {
	var o watchOptions
	for _, opt := range opts {
		opt(&o)
	}
	w := &watcher{c: c, prefix: prefix, keysOnly: o.keysOnly, out: make(chan WatchResponse), ready: make(chan struct{})}
	if fromRevision < 0 {
		go w.fail(ctx, invalidArgument(fmt.Sprintf("watch %s: from revision %d must not be negative", prefix, fromRevision)))
		return w.out
	}
	if fromRevision > 0 {
		w.last, w.known = fromRevision-1, true
	}
	go w.run(ctx)
	select {
	case <-w.ready:
	case <-ctx.Done():
	}
	return w.out
}

type watcher struct {
	c        *Client
	prefix   string
	keysOnly bool
	out      chan WatchResponse

	ready     chan struct{} // closed when the first attempt resolved
	readyOnce sync.Once

	// last is the revision everything up to which has been delivered (or
	// was before the start); known is false until a start point exists.
	last  int64
	known bool
}

func (w *watcher) markReady() { w.readyOnce.Do(func() { close(w.ready) }) }

func (w *watcher) fail(ctx context.Context, err error) {
	defer close(w.out)
	w.send(ctx, WatchResponse{Err: err})
}

func (w *watcher) run(ctx context.Context) {
	defer close(w.out)
	defer w.markReady()
	failures := 0
	for {
		established, err := w.stream(ctx)
		w.markReady()
		if ctx.Err() != nil || w.c.conn.GetState() == connectivity.Shutdown {
			return
		}
		if !retryable(err) {
			w.send(ctx, WatchResponse{Err: err})
			return
		}
		if established {
			failures = 0
		}
		// Jitter spreads the reconnects of many clients after a restart.
		if retry.Sleep(ctx, retry.Backoff(watchBackoffMin, watchBackoffMax, failures)) != nil {
			return
		}
		failures++
	}
}

// stream runs one watch stream until it fails, and reports whether the
// server confirmed it.
func (w *watcher) stream(ctx context.Context) (established bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var start int64
	if w.known {
		start = w.last + 1
	}
	s, err := w.c.kv.Watch(ctx, &graftv1.WatchRequest{Prefix: w.prefix, StartRevision: start, KeysOnly: w.keysOnly})
	if err != nil {
		return false, wrap(ctx, err)
	}
	for {
		msg, err := s.Recv()
		if errors.Is(err, io.EOF) {
			// The server ended the stream without a status; nothing says
			// the watch is over, so resume.
			return established, &Error{Code: codes.Unavailable, Message: fmt.Sprintf("watch %s: stream ended", w.prefix)}
		}
		if err != nil {
			return established, wrap(ctx, err)
		}
		if msg.GetCreated() {
			established = true
			w.markReady()
			if !w.known || msg.GetRevision() > w.last {
				w.last, w.known = msg.GetRevision(), true
			}
			continue
		}
		if !w.deliver(ctx, msg) {
			return established, ctx.Err()
		}
	}
}

// deliver sends the events of one store revision and advances last. A
// message without events is a progress notice: it only advances last.
// Anything at or below last was delivered before a reconnect and is
// dropped, so a server that replays cannot make an event repeat.
func (w *watcher) deliver(ctx context.Context, msg *graftv1.WatchResponse) bool {
	rev := msg.GetRevision()
	if w.known && rev <= w.last {
		return true
	}
	var events []Event
	for _, pe := range msg.GetEvents() {
		ev := Event{Type: eventTypeFrom(pe.GetType()), Entry: entryFrom(pe.GetEntry())}
		if w.known && ev.Entry.Revision <= w.last {
			continue
		}
		events = append(events, ev)
	}
	if len(events) > 0 && !w.send(ctx, WatchResponse{Revision: rev, Events: events}) {
		return false
	}
	w.last, w.known = rev, true
	return true
}

func (w *watcher) send(ctx context.Context, r WatchResponse) bool {
	select {
	case w.out <- r:
		return true
	case <-ctx.Done():
		return false
	}
}

// retryable reports whether a broken watch stream is worth resuming: the
// server or the network may come back. Errors about the request itself or
// the caller's rights will not change by retrying.
func retryable(err error) bool {
	switch code(err) {
	case codes.Unavailable, codes.Canceled, codes.DeadlineExceeded, codes.Aborted,
		codes.ResourceExhausted, codes.Internal, codes.Unknown:
		return true
	}
	return false
}
