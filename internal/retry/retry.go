// Package retry keeps background work running: the loop behind the
// watch-fed snapshots, the elections and the change consumer.
package retry

import (
	"context"
	"log/slog"
	"time"
)

// Forever runs f until ctx ends. When f returns nil it runs again at once
// (a watch ended: load again); when it fails, the failure is logged and f
// runs again after a backoff that doubles from first up to most and resets
// after a success.
func Forever(ctx context.Context, log *slog.Logger, what string, first, most time.Duration, f func(context.Context) error) {
	backoff := first
	for ctx.Err() == nil {
		err := f(ctx)
		if err == nil {
			backoff = first
			continue
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn(what+" failed; retrying", "err", err, "backoff", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
		backoff = min(2*backoff, most)
	}
}
