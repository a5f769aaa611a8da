package server_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/graftd"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
)

// BenchmarkLatency measures put and get through the whole path a client
// sees (gRPC over loopback TCP, authentication, encryption, the store's
// transaction with history) next to a raw etcd put on the same embedded
// etcd in the same run, and reports p50 and p99 in microseconds.
//
//	go test -run '^$' -bench Latency -benchtime 2000x ./server/
func BenchmarkLatency(b *testing.B) {
	// The raw etcd put needs a network client of the embedded etcd,
	// which dev mode does not otherwise offer.
	g := graftdtest.Start(b, graftdtest.WithConfig(func(c *graftd.Config) { c.EmbeddedListen = true }))
	conn, err := grpc.NewClient(g.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	kv := graftv1.NewKVServiceClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+g.Token)
	value := []byte("p@ssW0rd!1-0123456789abcdef0123456789abcdef")
	const keys = 100

	b.Run("put/grpc", func(b *testing.B) {
		measure(b, func(i int) error {
			_, err := kv.Put(ctx, &graftv1.PutRequest{Path: fmt.Sprintf("/bench/k%d", i%keys), Value: value})
			return err
		})
	})
	b.Run("get/grpc", func(b *testing.B) {
		measure(b, func(i int) error {
			_, err := kv.Get(ctx, &graftv1.GetRequest{Path: fmt.Sprintf("/bench/k%d", i%keys)})
			return err
		})
	})
	b.Run("put/raw-etcd", func(b *testing.B) {
		cli := testenv.Client(b, g.Daemon.EtcdEndpoints()[0])
		measure(b, func(i int) error {
			_, err := cli.Put(context.Background(), fmt.Sprintf("/raw/k%d", i%keys), string(value))
			return err
		})
	})
}

func measure(b *testing.B, op func(i int) error) {
	for i := range 20 { // warm connections and caches
		if err := op(i); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		if err := op(i); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(float64(len(lat)-1)*p)].Microseconds()) }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}
