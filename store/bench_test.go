package store_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

func BenchmarkPut(b *testing.B) {
	env := testenv.Start(b)
	value := make([]byte, 1<<10)
	b.SetBytes(int64(len(value)))
	i := 0
	for b.Loop() {
		// A few paths, so that history trimming is part of the cost.
		if _, err := env.Store.Put(b.Context(), fmt.Sprintf("/bench/k%d", i%8), value, store.WriteOptions{Author: "bench"}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkGet(b *testing.B) {
	env := testenv.Start(b)
	value := make([]byte, 1<<10)
	b.SetBytes(int64(len(value)))
	put(b, env.Store, "/bench/k", string(value))
	for b.Loop() {
		if _, err := env.Store.Get(b.Context(), "/bench/k"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRenew renews 1,000 leases at once per op, as the heartbeats
// of 1,000 agents arriving together: each with clientv3's KeepAliveOnce
// (a keep-alive stream per renewal, what Lease.Renew did before) and with
// Lease.Renew (one stream shared by all), over the network and in process
// (graftd --dev). etcd runs in the benchmark's process, so its own work is
// in the figures.
func BenchmarkRenew(b *testing.B) {
	const n = 1000
	for _, ic := range []struct {
		name string
		open func(b *testing.B) (*store.Store, *clientv3.Client)
	}{
		{"network", func(b *testing.B) (*store.Store, *clientv3.Client) {
			env := testenv.Start(b)
			return env.Store, env.Client
		}},
		{"in-process", func(b *testing.B) (*store.Store, *clientv3.Client) {
			e := testenv.StartEtcd(b, b.TempDir())
			s, err := store.New(store.Config{Client: e.Client(), LeaseClient: e.LeaseClient(), Keyring: testenv.NewKeyring(b), Logger: testenv.Logger(b)})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			return s, e.Client()
		}},
	} {
		b.Run(ic.name, func(b *testing.B) {
			s, cli := ic.open(b)
			ls := make([]*store.Lease, n)
			for i := range ls {
				l, err := s.GrantLease(b.Context(), time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				ls[i] = l
			}
			for _, rc := range []struct {
				name  string
				renew func(ctx context.Context, l *store.Lease) error
			}{
				{"KeepAliveOnce", func(ctx context.Context, l *store.Lease) error {
					_, err := cli.KeepAliveOnce(ctx, clientv3.LeaseID(l.ID()))
					return err
				}},
				{"batched", func(ctx context.Context, l *store.Lease) error { return l.Renew(ctx) }},
			} {
				b.Run(rc.name, func(b *testing.B) {
					ctx := b.Context()
					errs := make([]error, n)
					for b.Loop() {
						var wg sync.WaitGroup
						for i, l := range ls {
							wg.Go(func() { errs[i] = rc.renew(ctx, l) })
						}
						wg.Wait()
						for _, err := range errs {
							if err != nil {
								b.Fatal(err)
							}
						}
					}
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/renewal")
				})
			}
		})
	}
}
