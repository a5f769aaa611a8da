package store_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

// renewTTL is the TTL of the leases these tests renew: short, so that a
// lease the renewals missed expires while the test runs.
const renewTTL = 2 * time.Second

// Many renewals at once (thousands of agents' heartbeats) share one
// keep-alive stream, keep every lease alive past its TTL, and each learns
// its own lease's fate: a revoked one is ErrLeaseLost, the others live.
// graftd --dev reaches etcd in process (v3client), where the stream is a
// pair of Go channels, so both ways are tried.
func TestRenewManyAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name string
		open func(t *testing.T) (*store.Store, *clientv3.Client)
	}{
		{"network", func(t *testing.T) (*store.Store, *clientv3.Client) {
			env := testenv.Start(t)
			return env.Store, env.Client
		}},
		{"in process", func(t *testing.T) (*store.Store, *clientv3.Client) {
			e := testenv.StartEtcd(t, t.TempDir())
			s, err := store.New(store.Config{Client: e.Client(), LeaseClient: e.LeaseClient(), Keyring: testenv.NewKeyring(t), Logger: testenv.Logger(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s, e.Client()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, cli := tc.open(t)
			ctx := t.Context()
			const leases, callers = 250, 2000
			ls := grantLeases(t, s, leases)
			// Every lease renewed by callers/leases callers at once,
			// round after round, for longer than the TTL.
			round := func() []error {
				errs := make([]error, callers)
				var wg sync.WaitGroup
				for i := range callers {
					wg.Go(func() { errs[i] = ls[i%leases].Renew(ctx) })
				}
				wg.Wait()
				return errs
			}
			tick := time.NewTicker(renewTTL / 4)
			defer tick.Stop()
			for end := time.Now().Add(renewTTL * 3 / 2); time.Now().Before(end); <-tick.C {
				for i, err := range round() {
					if err != nil {
						t.Fatalf("renewal %d of lease %x: %v", i, ls[i%leases].ID(), err)
					}
				}
			}
			for _, l := range ls {
				if ttl := timeToLive(t, cli, l); ttl <= 0 {
					t.Fatalf("lease %x renewed every %s expired after %s (TTL %d)", l.ID(), renewTTL/4, renewTTL*3/2, ttl)
				}
			}
			if got := s.LeaseStreams(); got != 1 {
				t.Errorf("%d renewals opened %d keep-alive streams; want 1", callers, got)
			}
			// Revoke every other lease: answers are matched to their
			// lease, not to whoever waits first.
			for i, l := range ls {
				if i%2 == 1 {
					if err := l.Revoke(ctx); err != nil {
						t.Fatal(err)
					}
				}
			}
			for i, err := range round() {
				if lost := i%leases%2 == 1; lost != errors.Is(err, store.ErrLeaseLost) || !lost && err != nil {
					t.Fatalf("renewal %d of lease %x (revoked: %v): %v", i, ls[i%leases].ID(), lost, err)
				}
			}
		})
	}
}

func TestRenewRevokedLeaseIsLost(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()
	l := grantLeases(t, env.Store, 1)[0]
	if err := l.Renew(ctx); err != nil {
		t.Fatalf("renew a live lease: %v", err)
	}
	if err := l.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Renew(ctx); !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("renew a revoked lease: %v; want ErrLeaseLost", err)
	}
	if err := env.Store.LeaseByID(1).Renew(ctx); !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("renew a lease never granted: %v; want ErrLeaseLost", err)
	}
}

// The connection to etcd breaks while renewals are in flight: the
// stream is opened again and every renewal succeeds.
func TestRenewSurvivesABrokenStream(t *testing.T) {
	e := testenv.StartEtcd(t, t.TempDir())
	p := testenv.StartProxy(t, strings.TrimPrefix(e.Endpoint, "http://"))
	s := proxiedStore(t, p)
	ctx := t.Context()
	const leases = 50
	ls := grantLeases(t, s, leases)
	if err := ls[0].Renew(ctx); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	errs := make(chan error, leases)
	var wg sync.WaitGroup
	for _, l := range ls {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := l.Renew(rctx)
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	time.Sleep(200 * time.Millisecond) // renewals in flight
	p.Drop()
	before := s.LeaseStreams()
	testenv.WaitFor(t, 10*time.Second, func() bool { return s.LeaseStreams() > before || len(errs) > 0 })
	time.Sleep(200 * time.Millisecond) // renewals on the new stream
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a renewal across the break: %v", err)
	}
	for _, l := range ls {
		if err := l.Renew(ctx); err != nil {
			t.Fatalf("renew lease %x after the break: %v", l.ID(), err)
		}
	}
}

// With etcd out of reach a renewal waits, but no longer than its caller's
// context; closing the store fails renewals at once.
func TestRenewReturnsWhenItsContextEnds(t *testing.T) {
	e := testenv.StartEtcd(t, t.TempDir())
	p := testenv.StartProxy(t, strings.TrimPrefix(e.Endpoint, "http://"))
	s := proxiedStore(t, p)
	l := grantLeases(t, s, 1)[0]
	if err := l.Renew(t.Context()); err != nil {
		t.Fatal(err)
	}
	p.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if err := l.Renew(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("renew with etcd out of reach: %v; want the context's deadline", err)
	}
	if took := time.Since(t0); took > 2*time.Second {
		t.Errorf("a renewal with a 200ms deadline returned after %s", took)
	}
	waiting := make(chan error, 1)
	go func() { waiting <- l.Renew(t.Context()) }()
	time.Sleep(50 * time.Millisecond) // the renewal waits for etcd
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waiting:
		if !errors.Is(err, store.ErrClosed) {
			t.Fatalf("a renewal waiting as the store closed: %v; want ErrClosed", err)
		}
	case <-time.After(waitFor):
		t.Fatal("a renewal still waits after the store closed")
	}
	if err := l.Renew(t.Context()); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("renew on a closed store: %v; want ErrClosed", err)
	}
}

func grantLeases(t testing.TB, s *store.Store, n int) []*store.Lease {
	t.Helper()
	ls := make([]*store.Lease, n)
	for i := range ls {
		l, err := s.GrantLease(context.Background(), renewTTL)
		if err != nil {
			t.Fatal(err)
		}
		ls[i] = l
	}
	return ls
}

func timeToLive(t testing.TB, cli *clientv3.Client, l *store.Lease) int64 {
	t.Helper()
	resp, err := cli.TimeToLive(context.Background(), clientv3.LeaseID(l.ID()))
	if err != nil {
		t.Fatal(err)
	}
	return resp.TTL
}

// proxiedStore is a store whose etcd client reaches etcd through p.
func proxiedStore(t testing.TB, p *testenv.Proxy) *store.Store {
	t.Helper()
	cli := testenv.Client(t, "http://"+p.Addr())
	s, err := store.New(store.Config{Client: cli, Keyring: testenv.NewKeyring(t), Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
