package acl

import (
	"context"
	"log/slog"
	"time"
)

// follow keeps an in-memory copy current until ctx ends. load reads the
// records and returns the revision they reflect; watch then applies the
// changes after it until its watch ends. A failed load is retried with a
// backoff of up to two seconds; an ended watch starts over with a load.
func follow(ctx context.Context, log *slog.Logger, what string, load func(context.Context) (int64, error), watch func(context.Context, int64)) {
	const first, most = 50 * time.Millisecond, 2 * time.Second
	backoff := first
	for ctx.Err() == nil {
		rev, err := load(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("loading "+what+" failed; retrying", "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			backoff = min(2*backoff, most)
			continue
		}
		backoff = first
		watch(ctx, rev)
	}
}
