// Package embedded runs single-node etcd and NATS JetStream servers inside
// the graftd process, for `graftd --dev` and for tests.
package embedded

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc"
	"go.etcd.io/etcd/server/v3/proxy/grpcproxy/adapter"
	"go.uber.org/zap"
)

// Etcd is a running single-node etcd.
type Etcd struct {
	// Endpoint is the client URL, e.g. http://127.0.0.1:41234; empty
	// when it serves only in process.
	Endpoint string
	Dir      string
	e        *embed.Etcd
	client   *clientv3.Client
	leases   pb.LeaseClient
	once     sync.Once
}

// EtcdConfig configures StartEtcd.
type EtcdConfig struct {
	// Dir holds the etcd data; created if missing.
	Dir string
	// Verbose logs etcd's own messages at info level; otherwise only errors.
	Verbose bool
	// InProcess opens no port at all: the only client is Client(), which
	// calls the server directly. graftd --dev runs so, so that no other
	// local process can reach its etcd (which has no authentication).
	InProcess bool
}

// StartEtcd starts etcd on loopback ports chosen by the kernel and waits
// until it serves. Elections are tuned for a single node so it is ready in
// well under a second.
func StartEtcd(ctx context.Context, cfg EtcdConfig) (*Etcd, error) {
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	ec := embed.NewConfig()
	ec.Name = "graft-dev"
	ec.Dir = cfg.Dir
	ec.TickMs = 10
	ec.ElectionMs = 100
	ec.LogLevel = "error"
	if cfg.Verbose {
		ec.LogLevel = "info"
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	if cfg.Verbose {
		ec.ZapLoggerBuilder = nil
	}
	local := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	ec.ListenClientUrls = []url.URL{local}
	ec.AdvertiseClientUrls = []url.URL{local}
	// A single node never talks to peers, but etcd wants a peer URL; a
	// kernel-chosen loopback port keeps its listener out of the way.
	peer := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	ec.ListenPeerUrls = []url.URL{peer}
	ec.AdvertisePeerUrls = []url.URL{peer}
	if cfg.InProcess {
		// No listener at all. The advertised URLs only name the single
		// member in its own membership; nothing listens on them.
		ec.ListenClientUrls, ec.ListenClientHttpUrls, ec.ListenPeerUrls = nil, nil, nil
		ec.AdvertiseClientUrls = []url.URL{{Scheme: "unix", Host: "graft-in-process"}}
		ec.AdvertisePeerUrls = []url.URL{{Scheme: "unix", Host: "graft-in-process-peer"}}
	}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = "1h"
	ec.MaxTxnOps = 1024
	// embed.StartEtcd itself can block (on the database file's lock, say):
	// wait for it as for readiness, so that ctx ends the wait.
	type started struct {
		e   *embed.Etcd
		err error
	}
	startc := make(chan started, 1)
	go func() {
		e, err := embed.StartEtcd(ec)
		startc <- started{e, err}
	}()
	var e *embed.Etcd
	select {
	case st := <-startc:
		if st.err != nil {
			return nil, fmt.Errorf("start etcd in %s: %w", cfg.Dir, st.err)
		}
		e = st.e
	case <-ctx.Done():
		go func() { // close it should it start after all
			if st := <-startc; st.e != nil {
				st.e.Close()
			}
		}()
		return nil, ctx.Err()
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("start etcd: %w", err)
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, errors.New("start etcd: not ready after 30s")
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	out := &Etcd{
		Dir:    cfg.Dir,
		e:      e,
		client: v3client.New(e.Server),
		leases: adapter.LeaseServerToLeaseClient(v3rpc.NewQuotaLeaseServer(e.Server)),
	}
	if len(e.Clients) > 0 {
		out.Endpoint = "http://" + e.Clients[0].Addr().String()
	}
	return out, nil
}

// Client is an etcd client that calls the server in process, without a
// network connection. Close closes it; do not close it yourself.
func (e *Etcd) Client() *clientv3.Client { return e.client }

// LeaseClient is etcd's lease API in process, as Client uses it: for
// store.Config.LeaseClient, since Client has no connection to open the
// store's own lease stream on.
func (e *Etcd) LeaseClient() pb.LeaseClient { return e.leases }

// Close stops etcd and waits until its files are closed. It may be called
// more than once.
func (e *Etcd) Close() {
	e.once.Do(func() {
		e.client.Close()
		e.e.Close()
	})
}

// Err reports a fatal etcd error after start.
func (e *Etcd) Err() <-chan error { return e.e.Err() }

// NATS is a running NATS server with JetStream.
type NATS struct {
	Server *server.Server
	// URL is the client URL, e.g. nats://127.0.0.1:4222; empty when it
	// serves only in process.
	URL  string
	Dir  string
	once sync.Once
}

// NATSConfig configures StartNATS.
type NATSConfig struct {
	// Dir holds the JetStream store; created if missing.
	Dir string
	// Port is the client port; 0 lets the kernel choose. Tests restart a
	// server on its old port to simulate an outage.
	Port int
	// InProcess opens no port: clients connect with
	// nats.InProcessServer(n.Server). graftd --dev runs so, so that no
	// other local process can reach its NATS (which has no
	// authentication).
	InProcess bool
	// Name, Cluster, ClusterPort and Routes make the server one node of a
	// NATS cluster named Cluster, listening for routes on ClusterPort (0:
	// the kernel chooses) and joining the nodes at Routes (nats://host:port
	// URLs of their cluster ports). JetStream then replicates streams over
	// the cluster's nodes. Name defaults to graft-dev.
	Name        string
	Cluster     string
	ClusterPort int
	Routes      []string
}

// StartNATS starts NATS with JetStream on a loopback port chosen by the
// kernel and waits until it accepts connections.
func StartNATS(cfg NATSConfig) (*NATS, error) {
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("start nats: %w", err)
	}
	opts := &server.Options{
		ServerName: cmp.Or(cfg.Name, "graft-dev"),
		Host:       "127.0.0.1",
		Port:       cmp.Or(cfg.Port, server.RANDOM_PORT),
		JetStream:  true,
		StoreDir:   cfg.Dir,
		// Each stored message is on disk before its ack, as
		// deploy/nats.conf's sync_interval: always: by default JetStream
		// syncs every two minutes, and an acknowledged audit record of a
		// write would not survive a power loss in between.
		SyncAlways: true,
		NoSigs:     true,
		NoLog:      true,
		DontListen: cfg.InProcess,
	}
	if cfg.Cluster != "" {
		opts.Cluster = server.ClusterOpts{Name: cfg.Cluster, Host: "127.0.0.1", Port: cmp.Or(cfg.ClusterPort, server.RANDOM_PORT)}
		for _, r := range cfg.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("start nats: route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("start nats: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("start nats: not ready after 30s")
	}
	n := &NATS{Server: ns, Dir: cfg.Dir}
	if !cfg.InProcess {
		n.URL = ns.ClientURL()
	}
	return n, nil
}

// Close shuts NATS down and waits until it has stopped.
// It may be called more than once.
func (n *NATS) Close() {
	n.once.Do(func() {
		n.Server.Shutdown()
		n.Server.WaitForShutdown()
	})
}
