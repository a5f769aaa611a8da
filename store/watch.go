package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// watchStreamKey is the metadata that gives each Watch its own etcd
// watch stream.
const watchStreamKey = "graft-watch-stream"

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
// the path, the revision of the deletion, and who deleted it when (Author,
// Time), as history has them.
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
// when ctx ends or the watch fails (the last batch then carries Err). A
// start revision that is already compacted is reported by Watch itself as
// a *CompactedError; one compacted while the watch runs, by the last batch.
func (s *Store) Watch(ctx context.Context, prefix string, startRev int64, keysOnly bool) (int64, <-chan WatchBatch, error) {
	return s.WatchFunc(ctx, prefix, startRev, keysOnly, nil)
}

// WatchFunc is Watch that decrypts the value of a put only where readable
// says yes (nil: everywhere); elsewhere the event carries no value, and
// costs no decryption.
func (s *Store) WatchFunc(ctx context.Context, prefix string, startRev int64, keysOnly bool, readable func(path string) bool) (int64, <-chan WatchBatch, error) {
	if _, err := ParsePrefix(prefix); err != nil {
		return 0, nil, fmt.Errorf("watch %s: %w", ShortPath(prefix), err)
	}
	if startRev < 0 {
		return 0, nil, fmt.Errorf("watch %s: %w: start revision %d must not be negative", prefix, ErrInvalidArgument, startRev)
	}
	compacted := false
	if startRev > 0 {
		var err error
		if compacted, err = s.compacted(ctx, startRev); err != nil {
			return 0, nil, fmt.Errorf("watch %s: %w", prefix, err)
		}
	}
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	// clientv3 multiplexes every watch whose context carries the same
	// metadata over one etcd watch stream, graftd's own watches (tokens,
	// policies, rules, the relay) included, and ending a watch sends a
	// cancel request over it. With the in-process client of graftd --dev
	// that stream is a pair of unbuffered channels: hundreds of watches
	// cancelled at once (an app's watches reaching their deadline)
	// deadlock the client's loop, which blocks sending cancels, against
	// the server's, which blocks sending their replies, and every watch
	// on the stream stops. A stream of its own per watch is simply closed
	// when its one watch ends, and a caller's watches never share a
	// stream with graftd's.
	ctx = metadata.AppendToOutgoingContext(ctx, watchStreamKey, strconv.FormatUint(s.watchStreams.Add(1), 10))
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
	if compacted {
		defer cancel()
		return 0, nil, fmt.Errorf("watch %s: %w", prefix, awaitCompaction(ctx, first, wch, startRev))
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
		next := after + 1 // the oldest revision not yet delivered
		pending := first
		for {
			if err := watchErr(pending, next); err != nil {
				send(WatchBatch{Err: fmt.Errorf("watch %s: %w", prefix, err)})
				return
			}
			batches, err := s.batches(ctx, prefix, pending, keysOnly, readable)
			if err != nil {
				send(WatchBatch{Err: err})
				return
			}
			for _, b := range batches {
				if !send(b) {
					return
				}
				next = max(next, b.Revision+1)
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

// compacted reports whether etcd has compacted away rev. A start revision
// in the future is not compacted; the watch waits for it.
func (s *Store) compacted(ctx context.Context, rev int64) (bool, error) {
	_, err := s.cli.Get(ctx, s.kvPrefix, clientv3.WithRev(rev), clientv3.WithCountOnly())
	switch {
	case err == nil, errors.Is(err, rpctypes.ErrFutureRev):
		return false, nil
	case errors.Is(err, rpctypes.ErrCompacted):
		return true, nil
	}
	return false, err
}

// awaitCompaction returns the *CompactedError of a watch whose start
// revision is known to be compacted. etcd reports it only after the created
// notice, and that report alone carries the oldest revision left.
func awaitCompaction(ctx context.Context, first clientv3.WatchResponse, wch clientv3.WatchChan, startRev int64) error {
	for resp, ok := first, true; ok; resp, ok = <-wch {
		if err := watchErr(resp, startRev); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("%w: revision %d is compacted", ErrCompacted, startRev)
}

// watchErr turns a failed watch response into an error; requested is the
// oldest revision the watch still had to deliver.
func watchErr(resp clientv3.WatchResponse, requested int64) error {
	if resp.CompactRevision != 0 {
		return &CompactedError{Requested: requested, Oldest: resp.CompactRevision}
	}
	if err := resp.Err(); err != nil {
		if errors.Is(err, rpctypes.ErrCompacted) {
			return &CompactedError{Requested: requested, Oldest: resp.CompactRevision}
		}
		return err
	}
	return nil
}

// batches turns one etcd watch response into per-revision batches of
// events below prefix. Rewrites that did not change a value (a
// re-encryption sweep pins the old revision in the record) are dropped.
func (s *Store) batches(ctx context.Context, prefix string, resp clientv3.WatchResponse, keysOnly bool, readable func(string) bool) ([]WatchBatch, error) {
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
			e = Event{Type: EventDelete, Entry: s.deletion(ctx, p, rev)}
		default:
			r, err := decodeRecord(ev.Kv.Value)
			if err != nil {
				return nil, fmt.Errorf("watch %s: %s: %w", prefix, p, err)
			}
			if r.Rev != 0 && r.Rev != rev {
				continue // re-encrypted in place; the value did not change
			}
			e = Event{Type: EventPut, Entry: r.entry(p, rev)}
			if !keysOnly && (readable == nil || readable(p)) {
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

// deletion is the entry of path's deletion at rev: who deleted it and
// when, as history shows it, from the record the deletion archived in
// the same transaction. Should that be gone (trimmed, compacted) the
// entry has the path and revision only.
func (s *Store) deletion(ctx context.Context, path string, rev int64) Entry {
	e := Entry{Path: path, Revision: rev}
	resp, err := s.cli.Get(ctx, s.histPrefix(path), append(clientv3.WithLastKey(), clientv3.WithRev(rev))...)
	if err != nil || len(resp.Kvs) == 0 || resp.Kvs[0].ModRevision != rev {
		return e
	}
	if r, err := decodeRecord(resp.Kvs[0].Value); err == nil && r.Deleted {
		e.Author = r.Deleter
		e.Time = time.Unix(0, r.Ended).UTC()
	}
	return e
}
