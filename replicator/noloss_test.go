package replicator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/graft-sh/graft/internal/embedded"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/store"
)

// restartable runs a component under its own context so a test can kill
// it (cancel, wait) and start it again at any moment.
type restartable struct {
	t     *testing.T
	start func(ctx context.Context)
	mu    sync.Mutex
	stop  func()
}

func (r *restartable) up() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stop != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.start(ctx) }()
	r.stop = func() { cancel(); <-done }
}

func (r *restartable) down() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stop != nil {
		r.stop()
		r.stop = nil
	}
}

// natsServer is an embedded NATS that can be stopped and started on the
// same port and store, as an outage.
type natsServer struct {
	t    *testing.T
	dir  string
	port int
	mu   sync.Mutex
	ns   *embedded.NATS
}

func (n *natsServer) up() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ns != nil {
		return
	}
	ns, err := embedded.StartNATS(embedded.NATSConfig{Dir: n.dir, Port: n.port})
	if err != nil {
		n.t.Errorf("restart nats: %v", err)
		return
	}
	n.ns = ns
}

func (n *natsServer) down() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ns != nil {
		n.ns.Close()
		n.ns = nil
	}
}

// TestNoLossUnderChaos writes thousands of source changes while the relay,
// the replicator and the NATS server are killed and restarted at random
// moments, with no reconciler running: the event path alone must deliver.
// Afterwards every destination equals its source, and a watch of every
// destination change shows that none ever went backwards.
func TestNoLossUnderChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test; skipped with -short")
	}
	env := testenv.Start(t)
	log := testenv.Logger(t)
	_, portStr, _ := net.SplitHostPort(testenv.FreeAddr(t))
	port, _ := strconv.Atoi(portStr)
	ns := &natsServer{t: t, dir: t.TempDir(), port: port}
	ns.up()
	t.Cleanup(ns.down)

	js := testenv.JetStream(t, fmt.Sprintf("nats://127.0.0.1:%d", port), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond), nats.RetryOnFailedConnect(true))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	rules := replicator.NewRules(env.Store, log)
	go rules.Run(ctx)
	<-rules.Loaded()
	repl, err := replicator.New(replicator.Config{Store: env.Store, JetStream: js, Rules: rules, Logger: log, MaxDeliver: 1000})
	if err != nil {
		t.Fatal(err)
	}
	relay := &restartable{t: t, start: func(ctx context.Context) {
		r, err := replicator.NewRelay(replicator.RelayConfig{Store: env.Store, JetStream: js, Logger: log})
		if err != nil {
			t.Error(err)
			return
		}
		r.Run(ctx)
	}}
	consumer := &restartable{t: t, start: func(ctx context.Context) { repl.Run(ctx) }}
	relay.up()
	consumer.up()
	t.Cleanup(relay.down)
	t.Cleanup(consumer.down)

	share := func(source string, dests ...string) {
		t.Helper()
		if _, _, err := repl.Share(ctx, "user:dba", source, dests, ""); err != nil {
			t.Fatalf("share %s: %v", source, err)
		}
	}
	share("/dba/p", "/app/a/replicated/p")
	share("/shared/k", "/app/a/replicated/k", "/app/b/replicated/k")
	share("/app/a/replicated/p", "/app/c/replicated/chain") // a chain: /dba/p → /app/a → /app/c

	// Record every destination change from etcd itself.
	var (
		wmu        sync.Mutex
		backwards  []string
		lastSource = map[string]int64{}
	)
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	startRev := mustRev(t, env.Client)
	go func() {
		defer close(watchDone)
		for resp := range env.Client.Watch(watchCtx, "/graft/applied/", clientv3.WithPrefix(), clientv3.WithRev(startRev)) {
			for _, ev := range resp.Events {
				if ev.Type != mvccpb.PUT {
					continue
				}
				var a store.Applied
				if err := json.Unmarshal(ev.Kv.Value, &a); err != nil {
					continue
				}
				p := strings.TrimPrefix(string(ev.Kv.Key), "/graft/applied")
				wmu.Lock()
				if a.SourceRevision <= lastSource[p] {
					backwards = append(backwards, fmt.Sprintf("%s: source revision %d after %d", p, a.SourceRevision, lastSource[p]))
				}
				lastSource[p] = a.SourceRevision
				wmu.Unlock()
			}
		}
	}()

	// Chaos: kill and restart a random component every 50-250 ms.
	chaosCtx, stopChaos := context.WithCancel(ctx)
	chaosDone := make(chan struct{})
	kills := map[string]int{}
	go func() {
		defer close(chaosDone)
		for chaosCtx.Err() == nil {
			time.Sleep(time.Duration(50+rand.IntN(200)) * time.Millisecond)
			switch rand.IntN(3) {
			case 0:
				relay.down()
				time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond)
				relay.up()
				kills["relay"]++
			case 1:
				consumer.down()
				time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond)
				consumer.up()
				kills["replicator"]++
			case 2:
				ns.down()
				time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
				ns.up()
				kills["nats"]++
			}
		}
	}()

	const writes = 3000
	sources := make([]string, 0, 40)
	for i := range 30 {
		sources = append(sources, fmt.Sprintf("/dba/p/s%02d", i))
	}
	for i := range 10 {
		sources = append(sources, fmt.Sprintf("/shared/k/s%02d", i))
	}
	for i := range writes {
		p := sources[rand.IntN(len(sources))]
		if rand.IntN(10) == 0 {
			if _, err := env.Store.Delete(ctx, p, store.WriteOptions{Author: "user:dba"}); err != nil && !strings.Contains(err.Error(), "not found") {
				t.Fatalf("delete %s: %v", p, err)
			}
			continue
		}
		if _, err := env.Store.Put(ctx, p, []byte(fmt.Sprintf("v%d", i)), store.WriteOptions{Author: "user:dba"}); err != nil {
			t.Fatalf("put %s: %v", p, err)
		}
	}
	stopChaos()
	<-chaosDone
	ns.up()
	relay.up()
	consumer.up()
	t.Logf("%d writes; kills: %v", writes, kills)

	// Every destination converges to its source.
	mirrors := []struct{ source, dest string }{
		{"/dba/p", "/app/a/replicated/p"},
		{"/shared/k", "/app/a/replicated/k"},
		{"/shared/k", "/app/b/replicated/k"},
		{"/dba/p", "/app/c/replicated/chain"},
	}
	var diff string
	deadline := time.Now().Add(60 * time.Second)
	for {
		diff = ""
		for _, m := range mirrors {
			if d := compareTrees(t, env.Store, m.source, m.dest); d != "" {
				diff += d + "\n"
			}
		}
		if diff == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if diff != "" {
		t.Fatalf("destinations differ from their sources 60 s after the last write:\n%s", diff)
	}
	stopWatch()
	<-watchDone
	wmu.Lock()
	defer wmu.Unlock()
	if len(backwards) > 0 {
		t.Fatalf("destinations went backwards:\n%s", strings.Join(backwards, "\n"))
	}
	if len(lastSource) == 0 {
		t.Fatal("the watch saw no destination change: the check proved nothing")
	}
}

func mustRev(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), "/graft/none")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// compareTrees returns "" if dest holds exactly source's values at the same
// relative paths, or a description of the first differences.
func compareTrees(t *testing.T, s *store.Store, source, dest string) string {
	t.Helper()
	src, _, err := s.ReadTree(context.Background(), source)
	if err != nil {
		t.Fatal(err)
	}
	dst, _, err := s.ReadTree(context.Background(), dest)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, e := range src {
		want[strings.TrimPrefix(e.Path, source)] = string(e.Value)
	}
	got := map[string]string{}
	for _, e := range dst {
		got[strings.TrimPrefix(e.Path, dest)] = string(e.Value)
	}
	var diffs []string
	for rel, v := range want {
		if got[rel] != v {
			diffs = append(diffs, fmt.Sprintf("%s%s = %q, want %q", dest, rel, got[rel], v))
		}
	}
	for rel, v := range got {
		if _, ok := want[rel]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s%s = %q, but its source is gone", dest, rel, v))
		}
	}
	if len(diffs) > 5 {
		diffs = append(diffs[:5], fmt.Sprintf("... and %d more", len(diffs)-5))
	}
	return strings.Join(diffs, "\n")
}
