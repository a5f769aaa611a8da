// Package graftdtest runs a real graftd (dev mode: embedded etcd and NATS)
// inside a test, on loopback ports chosen by the kernel.
package graftdtest

import (
	"context"
	"testing"
	"time"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/internal/daemon"
	"github.com/graft-sh/graft/internal/testenv"
)

// Graftd is a running graftd.
type Graftd struct {
	// Addr is the gRPC address, Token the root token.
	Addr, Token string
	// HTTPAddr serves /healthz, /readyz and /metrics.
	HTTPAddr string
	// Daemon is the running instance; it changes on Restart.
	Daemon *daemon.Daemon
	cfg    daemon.Config
}

// Option adjusts the configuration before start.
type Option func(*daemon.Config)

// WithConfig lets a test change any setting.
func WithConfig(f func(*daemon.Config)) Option { return Option(f) }

// Start runs graftd until the test ends.
func Start(t testing.TB, opts ...Option) *Graftd {
	t.Helper()
	cfg := daemon.Defaults()
	cfg.Dev = true
	cfg.DataDir = t.TempDir()
	cfg.Listen = "127.0.0.1:0"
	cfg.HTTPListen = "127.0.0.1:0"
	cfg.DevRootToken = acl.NewToken()
	cfg.ShutdownTimeout = 5 * time.Second
	for _, o := range opts {
		o(&cfg)
	}
	g := &Graftd{cfg: cfg, Token: cfg.DevRootToken}
	g.start(t)
	t.Cleanup(func() { g.stop() })
	return g
}

func (g *Graftd) start(t testing.TB) {
	t.Helper()
	d, err := daemon.Start(context.Background(), g.cfg, testenv.Logger(t))
	if err != nil {
		t.Fatalf("start graftd: %v", err)
	}
	g.Daemon = d
	g.Addr = d.Addr()
	g.HTTPAddr = d.HTTPAddr()
	// A restart comes back on the same addresses so clients can reconnect.
	g.cfg.Listen = g.Addr
	g.cfg.HTTPListen = g.HTTPAddr
}

func (g *Graftd) stop() {
	if g.Daemon == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.ShutdownTimeout)
	defer cancel()
	g.Daemon.Shutdown(ctx)
	g.Daemon = nil
}

// Stop shuts graftd down gracefully, as on SIGTERM.
func (g *Graftd) Stop(t testing.TB) {
	t.Helper()
	g.stop()
}

// Restart shuts graftd down gracefully and starts it again on the same
// addresses and data.
func (g *Graftd) Restart(t testing.TB) {
	t.Helper()
	g.stop()
	g.start(t)
}

// KeyringFile is the running graftd's keyring file.
func (g *Graftd) KeyringFile() string { return g.Daemon.KeyringFile() }
