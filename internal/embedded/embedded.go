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
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Etcd is a running single-node etcd.
type Etcd struct {
	// Endpoint is the client URL, e.g. http://127.0.0.1:41234.
	Endpoint string
	Dir      string
	e        *embed.Etcd
	once     sync.Once
}

// EtcdConfig configures StartEtcd.
type EtcdConfig struct {
	// Dir holds the etcd data; created if missing.
	Dir string
	// Verbose logs etcd's own messages at info level; otherwise only errors.
	Verbose bool
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
	// A single node never talks to peers, but etcd insists on a peer
	// listener; a kernel-chosen loopback port keeps it out of the way.
	peer := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	ec.ListenPeerUrls = []url.URL{peer}
	ec.AdvertisePeerUrls = []url.URL{peer}
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
	return &Etcd{Endpoint: "http://" + e.Clients[0].Addr().String(), Dir: cfg.Dir, e: e}, nil
}

// Close stops etcd and waits until its files are closed. It may be called
// more than once.
func (e *Etcd) Close() { e.once.Do(e.e.Close) }

// Err reports a fatal etcd error after start.
func (e *Etcd) Err() <-chan error { return e.e.Err() }

// NATS is a running NATS server with JetStream.
type NATS struct {
	Server *server.Server
	// URL is the client URL, e.g. nats://127.0.0.1:4222.
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
}

// StartNATS starts NATS with JetStream on a loopback port chosen by the
// kernel and waits until it accepts connections.
func StartNATS(cfg NATSConfig) (*NATS, error) {
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("start nats: %w", err)
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "graft-dev",
		Host:       "127.0.0.1",
		Port:       cmp.Or(cfg.Port, server.RANDOM_PORT),
		JetStream:  true,
		StoreDir:   cfg.Dir,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return nil, fmt.Errorf("start nats: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("start nats: not ready after 30s")
	}
	return &NATS{Server: ns, URL: ns.ClientURL(), Dir: cfg.Dir}, nil
}

// Close shuts NATS down and waits until it has stopped.
// It may be called more than once.
func (n *NATS) Close() {
	n.once.Do(func() {
		n.Server.Shutdown()
		n.Server.WaitForShutdown()
	})
}
