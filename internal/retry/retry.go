// Package retry keeps background work running and spaces out retries: the
// loop behind the watch-fed snapshots, the elections, the change consumer
// and graft-agent's watch of its tree, and the one jittered backoff that
// it, the store's guarded writes and the SDK's watch reconnects share.
package retry

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Forever runs f until ctx ends. When f returns nil it runs again at once
// (a watch ended: load again); when it fails, the failure is logged and f
// runs again after Backoff(first, most, failures so far), which resets
// after a success.
func Forever(ctx context.Context, log *slog.Logger, what string, first, most time.Duration, f func(context.Context) error) {
	failures := 0
	for ctx.Err() == nil {
		err := f(ctx)
		if err == nil {
			failures = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		wait := Backoff(first, most, failures)
		log.Warn(what+" failed; retrying", "err", err, "backoff", wait)
		if Sleep(ctx, wait) != nil {
			return
		}
		failures++
	}
}

// Backoff is the wait before retrying after failure n (0 for the first):
// first doubled n times, at most most, and jittered to between half and
// one and a half times that, so that many clients that failed together
// (lost the same server, collided on the same key) do not retry in step.
func Backoff(first, most time.Duration, n int) time.Duration {
	d := first
	for ; n > 0 && d < most; n-- {
		d *= 2
	}
	d = min(d, most)
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d)
}

// Sleep waits d, or less if ctx ends first, and then returns ctx's error.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
