package store

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ProcessIdentity and ElectionKey, for the tests of package store_test.
var ProcessIdentity = processIdentity

func (s *Store) ElectionKey(e Election) string { return s.electionKey(e) }

// JamSharedWatchStream opens n watches on the etcd watch stream graftd's
// own watches share, and cancels them all at once: with the in-process
// client, enough of them deadlock the stream (see Watch).
func (s *Store) JamSharedWatchStream(n int) {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	for i := range n {
		wch := s.cli.Watch(ctx, s.key(probeBase, "jam"), clientv3.WithCreatedNotify())
		if i < n/2 {
			<-wch
		}
	}
	cancel()
}

// LeaseStreams is how many etcd keep-alive streams the store's lease
// renewals have opened.
func (s *Store) LeaseStreams() uint64 {
	if s.renew == nil {
		return 0
	}
	return s.renew.streams.Load()
}
