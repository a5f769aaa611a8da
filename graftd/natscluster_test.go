package graftd_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/graftd"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/keyring"
)

// graftd on a 3-node NATS cluster with --nats-replicas 3 keeps its change
// and audit streams on all three nodes; with the node that leads both
// streams stopped, writes go on (a write retried while JetStream elects
// new leaders) and every one reaches its destination; with the node back,
// its streams catch up.
func TestThreeNodeNATSLosesANode(t *testing.T) {
	dir := t.TempDir()
	etcd := testenv.StartEtcd(t, filepath.Join(dir, "etcd"))
	nc := testenv.StartNATSCluster(t, filepath.Join(dir, "nats"), 3)
	cfg := graftd.Defaults()
	cfg.Listen, cfg.HTTPListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir = filepath.Join(dir, "graftd")
	cfg.Etcd.Endpoints = []string{etcd.Endpoint}
	cfg.NATS.URL, cfg.NATS.Replicas = nc.URL, 3
	cfg.KeyringFile = filepath.Join(dir, "keyring.json")
	if err := keyring.CreateFile(cfg.KeyringFile); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfg)
	t.Cleanup(func() { d.Shutdown(context.Background()) })
	root, err := graftd.BreakGlass(context.Background(), cfg, testenv.Logger(t), time.Hour, "test", "tester")
	if err != nil {
		t.Fatal(err)
	}
	c := graftdtest.Dial(t, d.Addr())
	ctx := authed(root)
	testenv.WaitFor(t, 10*time.Second, func() bool {
		_, err := c.Tokens.WhoAmI(ctx, &graftv1.WhoAmIRequest{})
		return err == nil
	})

	js := testenv.JetStream(t, nc.URL)
	leaders := map[string]bool{}
	for _, name := range []string{"GRAFT_CHANGES", "GRAFT_AUDIT"} {
		info := streamInfo(t, js, name)
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Fatalf("stream %s: %d replicas configured, cluster %+v; want 3 (a leader and 2 peers)", name, info.Config.Replicas, info.Cluster)
		}
		leaders[info.Cluster.Leader] = true
	}

	if _, err := c.Replication.Share(ctx, &graftv1.ShareRequest{Source: "/dba/orders", Destinations: []string{"/app/orders/replicated/db"}}); err != nil {
		t.Fatal(err)
	}
	put := func(i int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := c.KV.Put(pctx, &graftv1.PutRequest{Path: fmt.Sprintf("/dba/orders/k%d", i%10), Value: []byte(strconv.Itoa(i))})
			cancel()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("write %d: still failing after 30 s: %v", i, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	converged := func(last int) {
		t.Helper()
		testenv.WaitFor(t, 30*time.Second, func() bool {
			for k := range 10 {
				want := last - (last-k)%10
				got, err := c.KV.Get(ctx, &graftv1.GetRequest{Path: fmt.Sprintf("/app/orders/replicated/db/k%d", k)})
				if err != nil || string(got.GetEntry().GetValue()) != strconv.Itoa(want) {
					return false
				}
			}
			return true
		})
	}
	for i := range 50 {
		put(i)
	}
	converged(49)

	// Stop the node that leads the streams (the changes stream's, if two
	// lead them), as a crashed machine would.
	stopped := -1
	for i, node := range nc.Nodes {
		if leaders[node.Server.Name()] && (stopped < 0 || node.Server.Name() == streamInfo(t, js, "GRAFT_CHANGES").Cluster.Leader) {
			stopped = i
		}
	}
	nc.Stop(stopped)
	for i := 50; i < 150; i++ {
		put(i)
	}
	converged(149)

	nc.Start(t, stopped)
	for i := 150; i < 200; i++ {
		put(i)
	}
	converged(199)
	for _, name := range []string{"GRAFT_CHANGES", "GRAFT_AUDIT"} {
		testenv.WaitFor(t, 30*time.Second, func() bool {
			info := streamInfo(t, js, name)
			if info.Cluster == nil {
				return false
			}
			for _, p := range info.Cluster.Replicas {
				if !p.Current {
					return false
				}
			}
			return len(info.Cluster.Replicas) == 2
		})
	}
}

func streamInfo(t *testing.T, js jetstream.JetStream, name string) *jetstream.StreamInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	return info
}
