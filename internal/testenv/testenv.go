// Package testenv starts real embedded etcd and NATS servers for tests in
// one line, and tears them down with t.Cleanup.
package testenv

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/graft-sh/graft/internal/dbproc"
	"github.com/graft-sh/graft/internal/embedded"
	"github.com/graft-sh/graft/keyring"
	"github.com/graft-sh/graft/store"
)

// Env is a running etcd (and optionally NATS) with a client and a Store.
type Env struct {
	Etcd    *embedded.Etcd
	Client  *clientv3.Client
	Store   *store.Store
	Keyring *keyring.Keyring
}

// Option adjusts the Store an Env builds.
type Option func(*store.Config)

// WithHistoryLimit sets the store's history retention.
func WithHistoryLimit(n int) Option { return func(c *store.Config) { c.HistoryLimit = n } }

// WithMaxValueBytes sets the store's value bound.
func WithMaxValueBytes(n int) Option { return func(c *store.Config) { c.MaxValueBytes = n } }

// WithClock sets the store's clock.
func WithClock(now func() time.Time) Option { return func(c *store.Config) { c.Now = now } }

// Start starts an embedded etcd in a temp dir and a Store on it.
func Start(t testing.TB, opts ...Option) *Env {
	t.Helper()
	e := StartEtcd(t, t.TempDir())
	cli := Client(t, e.Endpoint)
	ring := NewKeyring(t)
	cfg := store.Config{Client: cli, Keyring: ring, Logger: Logger(t)}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := store.New(cfg)
	if err != nil {
		t.Fatalf("store.New: %v", err)
	}
	return &Env{Etcd: e, Client: cli, Store: s, Keyring: ring}
}

// StartEtcd starts an embedded etcd with its data in dir.
func StartEtcd(t testing.TB, dir string) *embedded.Etcd {
	t.Helper()
	e, err := embedded.StartEtcd(context.Background(), embedded.EtcdConfig{Dir: dir})
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	return e
}

// StartNATS starts an embedded NATS JetStream server with its store in dir.
func StartNATS(t testing.TB, dir string) *embedded.NATS {
	t.Helper()
	n, err := embedded.StartNATS(embedded.NATSConfig{Dir: dir})
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	t.Cleanup(n.Close)
	return n
}

// JetStream connects to the NATS server at url and returns a JetStream
// client; the connection is closed at cleanup.
func JetStream(t testing.TB, url string, opts ...nats.Option) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// StartJetStream starts an embedded NATS server and returns it with a
// JetStream client on it.
func StartJetStream(t testing.TB) (*embedded.NATS, jetstream.JetStream) {
	t.Helper()
	n := StartNATS(t, t.TempDir())
	return n, JetStream(t, n.URL)
}

// Client returns an etcd client closed at cleanup.
func Client(t testing.TB, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// NewKeyring returns a keyring with one random key.
func NewKeyring(t testing.TB) *keyring.Keyring {
	t.Helper()
	k, err := keyring.New(1, map[uint32][]byte{1: RandomKey()})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// RandomKey returns a random 32-byte key.
func RandomKey() []byte {
	key := make([]byte, 32)
	rand.Read(key)
	return key
}

// Logger returns a logger that writes through t.Log at warn level and
// above; once the test has finished it writes to stderr instead, because
// t.Log then panics.
func Logger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return os.Stderr.Write(p)
	}
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// FreeAddr returns a loopback address that nothing listens on right now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// WaitFor polls cond until it holds, failing the test after timeout.
func WaitFor(t testing.TB, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// LinksNoServer fails t if the package in the working directory links
// graftd: a server package, etcd or NATS. Clients (graft, graft-agent)
// talk to graftd through the SDK only.
func LinksNoServer(t testing.TB, program string) {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{
		"github.com/graft-sh/graft/server", "github.com/graft-sh/graft/store", "github.com/graft-sh/graft/acl",
		"github.com/graft-sh/graft/replicator", "github.com/graft-sh/graft/audit", "github.com/graft-sh/graft/graftd",
		"go.etcd.io/etcd/", "github.com/nats-io/",
	}
	for dep := range strings.Lines(string(out)) {
		dep = strings.TrimSpace(dep)
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, strings.TrimSuffix(f, "/")+"/") {
				t.Errorf("%s links %s", program, dep)
			}
		}
	}
}

// NATSCluster is a NATS cluster of embedded servers, JetStream on each.
type NATSCluster struct {
	// Nodes are the servers, nil while stopped.
	Nodes []*embedded.NATS
	// URL lists every node's client URL, comma separated, as
	// --nats-url takes it.
	URL  string
	cfgs []embedded.NATSConfig
}

// StartNATSCluster starts n NATS servers with JetStream, their stores
// under dir, routed to each other as one cluster, and waits until
// JetStream has a leader: streams with replicas up to n can be made.
func StartNATSCluster(t testing.TB, dir string, n int) *NATSCluster {
	t.Helper()
	c := &NATSCluster{Nodes: make([]*embedded.NATS, n), cfgs: make([]embedded.NATSConfig, n)}
	var routes, urls []string
	for i := range n {
		client, cluster := dbproc.FreePort(t), dbproc.FreePort(t)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", cluster))
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", client))
		c.cfgs[i] = embedded.NATSConfig{Dir: filepath.Join(dir, fmt.Sprintf("n%d", i)), Port: client,
			Name: fmt.Sprintf("n%d", i), Cluster: "graft-test", ClusterPort: cluster}
	}
	c.URL = strings.Join(urls, ",")
	started := make(chan error, n)
	for i := range n {
		c.cfgs[i].Routes = routes
		// Each node waits for the others' routes before it is ready for
		// clients, so they start together.
		go func() {
			node, err := embedded.StartNATS(c.cfgs[i])
			c.Nodes[i] = node
			started <- err
		}()
	}
	for range n {
		if err := <-started; err != nil {
			t.Fatalf("start nats cluster: %v", err)
		}
	}
	t.Cleanup(func() {
		for _, node := range c.Nodes {
			if node != nil {
				node.Close()
			}
		}
	})
	js := JetStream(t, c.URL)
	WaitFor(t, 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err == nil
	})
	return c
}

// Stop stops node i, as a crash of its machine would (its store stays).
func (c *NATSCluster) Stop(i int) {
	c.Nodes[i].Close()
	c.Nodes[i] = nil
}

// Start starts node i again, on its old ports and store.
func (c *NATSCluster) Start(t testing.TB, i int) {
	t.Helper()
	node, err := embedded.StartNATS(c.cfgs[i])
	if err != nil {
		t.Fatalf("start nats node %d again: %v", i, err)
	}
	c.Nodes[i] = node
}
