package replicator

import (
	"context"
	"time"
)

// InterruptUnshare leaves rule id as an unshare interrupted before its
// cleaning leaves it: recorded an hour ago, the rule dropped, nothing
// pruned.
func (r *Replicator) InterruptUnshare(ctx context.Context, author, id string, orphan bool) error {
	rec := pendingUnshare{Author: author, Orphan: orphan, Since: time.Now().Add(-time.Hour).UTC()}
	if _, err := unshares(r.cfg.Store).Put(ctx, id, rec); err != nil {
		return err
	}
	_, err := r.cfg.Rules.delete(ctx, id)
	return err
}

// FinishUnshares is the reconciler's finishing of interrupted unshares.
func (r *Replicator) FinishUnshares(ctx context.Context) (int, error) {
	return r.finishUnshares(ctx, unshareGrace)
}
