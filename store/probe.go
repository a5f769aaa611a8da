package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// probeBase holds each graftd's liveness probe key, by process identity;
// it is leased so that it leaves with its process.
const probeBase = "probe/"

// ProbeWatch checks that a change committed now reaches a watch on the
// etcd watch stream graftd's own watches share (tokens, policies, rules,
// the relay's change feed): it writes a fresh value under probe/<name> and
// waits, within ctx, for its event. A stuck stream stops access changes
// and replication on this replica without failing any call, so /readyz
// asks this rather than guessing from etcd's health.
func (s *Store) ProbeWatch(ctx context.Context, name string) error {
	key := s.key(probeBase, name)
	nonce := make([]byte, 8)
	rand.Read(nonce)
	want := hex.EncodeToString(nonce)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.cli.Watch(wctx, key, clientv3.WithCreatedNotify())
	select {
	case _, ok := <-wch:
		if !ok {
			return fmt.Errorf("watch probe: the watch did not start: %w", context.Cause(ctx))
		}
	case <-ctx.Done():
		return fmt.Errorf("watch probe: the watch did not start: %w", context.Cause(ctx))
	}
	lease, err := s.cli.Grant(ctx, 10)
	if err != nil {
		return fmt.Errorf("watch probe: %w", err)
	}
	if _, err := s.cli.Put(ctx, key, want, clientv3.WithLease(lease.ID)); err != nil {
		return fmt.Errorf("watch probe: %w", err)
	}
	for {
		select {
		case resp, ok := <-wch:
			if !ok {
				return fmt.Errorf("watch probe: the watch ended: %w", context.Cause(ctx))
			}
			for _, ev := range resp.Events {
				if string(ev.Kv.Value) == want {
					return nil
				}
			}
		case <-ctx.Done():
			return fmt.Errorf("watch probe: a change was committed but no watch delivered it: %w", context.Cause(ctx))
		}
	}
}

// RequestWatchProgress asks etcd for a progress notice on the watch stream
// graftd's own watches share, so that a quiet watch, the relay's change
// feed among them, still hears from etcd and a silent one is known stuck.
func (s *Store) RequestWatchProgress(ctx context.Context) error {
	return s.cli.RequestProgress(clientv3.WithRequireLeader(ctx))
}
