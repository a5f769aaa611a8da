package store

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Change is one committed change of a value: its path, the revision of
// the change and whether it was a deletion. It never carries the value.
type Change struct {
	Path     string
	Revision int64
	Deleted  bool
}

// ChangeBatch is what Changes delivers: the changes of one etcd watch
// response, in commit order; with none, a progress notice that every
// change up to Revision has been delivered. The last batch before the
// channel closes may carry Err: a *CompactedError when the changes after
// the cursor are gone from etcd's log, or the watch's failure.
type ChangeBatch struct {
	Changes  []Change
	Revision int64
	Err      error
}

// Changes is the feed of every change of every value after revision after
// (a cursor kept by the caller): etcd's own ordered log, used as an outbox.
// The channel closes when ctx ends or the feed breaks; resume from the
// last revision handled.
func (s *Store) Changes(ctx context.Context, after int64) <-chan ChangeBatch {
	out := make(chan ChangeBatch)
	base := s.kvPrefix
	wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), base+"/", clientv3.WithPrefix(), clientv3.WithRev(after+1), clientv3.WithProgressNotify())
	go func() {
		defer close(out)
		send := func(b ChangeBatch) bool {
			select {
			case out <- b:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for resp := range wch {
			if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
				send(ChangeBatch{Err: &CompactedError{Requested: after + 1, Oldest: resp.CompactRevision}})
				return
			}
			if err := resp.Err(); err != nil {
				send(ChangeBatch{Err: err})
				return
			}
			if len(resp.Events) == 0 {
				if resp.IsProgressNotify() && !send(ChangeBatch{Revision: resp.Header.Revision}) {
					return
				}
				continue
			}
			b := ChangeBatch{Changes: make([]Change, len(resp.Events))}
			for i, ev := range resp.Events {
				b.Changes[i] = Change{Path: string(ev.Kv.Key[len(base):]), Revision: ev.Kv.ModRevision, Deleted: ev.Type == mvccpb.DELETE}
			}
			b.Revision = b.Changes[len(b.Changes)-1].Revision
			if !send(b) {
				return
			}
			after = b.Revision
		}
	}()
	return out
}
