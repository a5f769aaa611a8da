// Package retry keeps background work running: the loop behind the
// watch-fed snapshots, the elections, the change consumer and
// graft-agent's watch of its tree.
package retry

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Forever runs f until ctx ends. When f returns nil it runs again at once
// (a watch ended: load again); when it fails, the failure is logged and f
// runs again after a backoff that doubles from first up to most and resets
// after a success. Each wait is jittered (between half and one and a half
// times the backoff), so that many clients that lost the same server do
// not come back in step.
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
		case <-time.After(backoff/2 + rand.N(backoff)):
		case <-ctx.Done():
		}
		backoff = min(2*backoff, most)
	}
}
