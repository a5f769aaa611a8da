package store

import (
	"context"
	"errors"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Leader is one term of this process as the leader of an election.
type Leader struct {
	// key and rev identify the term: the candidate key and its creation
	// revision, captured when elected (a resigned election forgets them).
	key string
	rev int64
}

// Cond holds while this term lasts: a write guarded by it is made only by
// the current leader, never by one that lost the election unawares.
func (l *Leader) Cond() Cond {
	return Cond{clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.rev)}
}

// Lead campaigns in election e as holder and, once elected, runs f with a
// context that ends when ctx does or when the leadership is lost (the
// session's lease of ttl expired, say because etcd could not be reached).
// When f returns, Lead resigns, so a successor need not wait for the lease
// to run out; and before it campaigns it ends the candidacies of
// processes of this machine that died without resigning (see proc.go), so
// a graftd restarted after kill -9 leads at once rather than after its
// predecessor's lease. It returns f's error, joined with
// ErrLeadershipLost when the term ended that way. Jobs that must have one runner among graftd
// replicas (the relay, the reconciler) run inside Lead.
func (s *Store) Lead(ctx context.Context, e Election, holder string, ttl time.Duration, f func(ctx context.Context, l *Leader) error) error {
	secs := max(int((ttl+time.Second-1)/time.Second), 1)
	sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(secs), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	defer sess.Close()
	s.endDeadCandidacies(ctx, e)
	el := concurrency.NewElection(sess, s.electionKey(e))
	if err := el.Campaign(ctx, candidacy(holder)); err != nil {
		return err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		el.Resign(rctx)
		cancel()
	}()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-lctx.Done():
		}
	}()
	err = f(lctx, &Leader{key: el.Key(), rev: el.Rev()})
	select {
	case <-sess.Done():
		if ctx.Err() == nil {
			return errors.Join(err, ErrLeadershipLost)
		}
	default:
	}
	return err
}

// endDeadCandidacies revokes the leases of e's candidates that were
// processes of this machine and no longer run. It is best effort: a
// candidacy left behind still ends when its lease does.
func (s *Store) endDeadCandidacies(ctx context.Context, e Election) {
	resp, err := s.cli.Get(ctx, s.electionKey(e)+"/", clientv3.WithPrefix())
	if err != nil {
		return
	}
	for _, kv := range resp.Kvs {
		if kv.Lease == 0 || !deadHere(string(kv.Value)) {
			continue
		}
		if _, err := s.cli.Revoke(ctx, clientv3.LeaseID(kv.Lease)); err == nil {
			s.log.Info("ended the candidacy of a process of this machine that died without resigning", "election", string(e), "holder", holderOf(string(kv.Value)))
		}
	}
}
