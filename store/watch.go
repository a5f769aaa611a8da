package store

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EventType tells a write from a deletion.
type EventType int

// Event types.
const (
	EventPut EventType = iota + 1
	EventDelete
)

func (t EventType) String() string {
	if t == EventDelete {
		return "delete"
	}
	return "put"
}

// Event is one change to one path. For a put, Entry is the new version
// (with its value unless the watch is keys-only); for a delete, Entry holds
// the path and the revision of the deletion.
type Event struct {
	Type  EventType
	Entry Entry
}

// WatchBatch is what a watch delivers: the events of one store revision, or
// with no events a progress notice that the watch has seen everything up to
// Revision. The last batch before the channel closes may carry Err.
type WatchBatch struct {
	Revision int64
	Events   []Event
	Err      error
}

// Watch streams changes under prefix from startRev (0: after now). It
// returns the revision the watch starts after, and a channel that closes
// when ctx ends or the watch fails (the last batch then carries Err; a
// compacted start revision is a *CompactedError).
func (s *Store) Watch(ctx context.Context, prefix string, startRev int64, keysOnly bool) (int64, <-chan WatchBatch, error) {
	if _, err := ParsePrefix(prefix); err != nil {
		return 0, nil, fmt.Errorf("watch %s: %w", prefix, err)
	}
	if startRev < 0 {
		return 0, nil, fmt.Errorf("watch %s: start revision %d must not be negative", prefix, startRev)
	}
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	start, end := rangeOf(s.kvPrefix, prefix)
	opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithCreatedNotify(), clientv3.WithProgressNotify()}
	if startRev > 0 {
		opts = append(opts, clientv3.WithRev(startRev))
	}
	wch := s.cli.Watch(ctx, start, opts...)
	first, ok := <-wch
	if !ok {
		cancel()
		return 0, nil, fmt.Errorf("watch %s: %w", prefix, ctx.Err())
	}
	if err := watchErr(first, startRev); err != nil {
		cancel()
		return 0, nil, fmt.Errorf("watch %s: %w", prefix, err)
	}
	after := first.Header.Revision
	if startRev > 0 {
		after = startRev - 1
	}
	out := make(chan WatchBatch, 16)
	go func() {
		defer cancel()
		defer close(out)
		send := func(b WatchBatch) bool {
			select {
			case out <- b:
				return true
			case <-ctx.Done():
				return false
			}
		}
		pending := first
		for {
			if err := watchErr(pending, startRev); err != nil {
				send(WatchBatch{Err: fmt.Errorf("watch %s: %w", prefix, err)})
				return
			}
			batches, err := s.batches(prefix, pending, keysOnly)
			if err != nil {
				send(WatchBatch{Err: err})
				return
			}
			for _, b := range batches {
				if !send(b) {
					return
				}
			}
			var ok bool
			if pending, ok = <-wch; !ok {
				if ctx.Err() == nil {
					send(WatchBatch{Err: fmt.Errorf("watch %s: etcd watch closed", prefix)})
				}
				return
			}
		}
	}()
	return after, out, nil
}

func watchErr(resp clientv3.WatchResponse, startRev int64) error {
	if resp.CompactRevision != 0 {
		return &CompactedError{Requested: startRev, Oldest: resp.CompactRevision}
	}
	if err := resp.Err(); err != nil {
		if errors.Is(err, rpctypes.ErrCompacted) {
			return &CompactedError{Requested: startRev, Oldest: resp.CompactRevision}
		}
		return err
	}
	return nil
}

// batches turns one etcd watch response into per-revision batches of
// events below prefix. Rewrites that did not change a value (a
// re-encryption sweep pins the old revision in the record) are dropped.
func (s *Store) batches(prefix string, resp clientv3.WatchResponse, keysOnly bool) ([]WatchBatch, error) {
	if resp.IsProgressNotify() || len(resp.Events) == 0 {
		if resp.Created {
			return nil, nil
		}
		return []WatchBatch{{Revision: resp.Header.Revision}}, nil
	}
	var out []WatchBatch
	for _, ev := range resp.Events {
		rev := ev.Kv.ModRevision
		if n := len(out); n == 0 || out[n-1].Revision != rev {
			out = append(out, WatchBatch{Revision: rev})
		}
		p := string(ev.Kv.Key[len(s.kvPrefix):])
		if !Under(p, prefix) {
			continue
		}
		var e Event
		switch ev.Type {
		case mvccpb.DELETE:
			e = Event{Type: EventDelete, Entry: Entry{Path: p, Revision: rev}}
		default:
			r, err := decodeRecord(ev.Kv.Value)
			if err != nil {
				return nil, fmt.Errorf("watch %s: %s: %w", prefix, p, err)
			}
			if r.Rev != 0 && r.Rev != rev {
				continue // re-encrypted in place; the value did not change
			}
			e = Event{Type: EventPut, Entry: r.entry(p, rev)}
			if !keysOnly {
				if e.Entry.Value, err = s.open(p, r); err != nil {
					return nil, err
				}
			}
		}
		last := &out[len(out)-1]
		last.Events = append(last.Events, e)
	}
	return out, nil
}
