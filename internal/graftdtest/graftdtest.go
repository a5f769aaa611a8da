// Package graftdtest runs a real graftd (dev mode: embedded etcd and NATS)
// for a test, on loopback ports chosen by the kernel: inside the test
// (Start), or as a process of its own that the test can kill
// (StartProcess).
package graftdtest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/graftd"
	"github.com/graft-sh/graft/internal/testenv"
)

// Graftd is a running graftd.
type Graftd struct {
	// Addr is the gRPC address, Token the root token.
	Addr, Token string
	// HTTPAddr serves /healthz, /readyz and /metrics.
	HTTPAddr string
	// Daemon is the running instance; it changes on Restart. It is nil
	// for a graftd that StartProcess runs.
	Daemon *graftd.Daemon
	cfg    graftd.Config
	// proc is the graftd process, for StartProcess.
	proc *process
}

// Option adjusts the configuration before start.
type Option func(*graftd.Config)

// WithConfig lets a test change any setting.
func WithConfig(f func(*graftd.Config)) Option { return Option(f) }

// Start runs graftd until the test ends.
func Start(t testing.TB, opts ...Option) *Graftd {
	t.Helper()
	cfg := graftd.DevConfig(t.TempDir())
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
	d, err := graftd.Start(context.Background(), g.cfg, testenv.Logger(t))
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
	if g.proc != nil {
		g.proc.terminate(g.cfg.ShutdownTimeout + 5*time.Second)
		return
	}
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
	g.StartAgain(t)
}

// StartAgain starts graftd again after Stop or Kill, on the same addresses
// and data.
func (g *Graftd) StartAgain(t testing.TB) {
	t.Helper()
	if g.proc != nil {
		g.proc.start(t, g)
		return
	}
	g.start(t)
}

// KeyringFile is the running graftd's keyring file.
func (g *Graftd) KeyringFile() string {
	if g.proc != nil {
		return devKeyringFile(g.cfg)
	}
	return g.Daemon.KeyringFile()
}

// Clients are raw gRPC clients of every graft service, for tests that need
// to see status codes and messages exactly as the server sends them.
type Clients struct {
	KV     graftv1.KVServiceClient
	Tokens graftv1.TokenServiceClient
	Policy graftv1.PolicyServiceClient
	Audit  graftv1.AuditServiceClient
	Admin  graftv1.AdminServiceClient
	// Replication manages replication rules.
	Replication graftv1.ReplicationServiceClient
	// Agents takes and shows graft-agents' reports.
	Agents graftv1.AgentServiceClient
	// DBCred keeps dynamic-credential roles and issues; Leases keeps
	// their leases.
	DBCred graftv1.DBCredServiceClient
	Leases graftv1.LeaseServiceClient
}

// Dial connects to addr without TLS until the test ends. Calls carry no
// token; add one to the context with metadata.AppendToOutgoingContext.
func Dial(t testing.TB, addr string) Clients {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return Clients{
		KV:          graftv1.NewKVServiceClient(conn),
		Tokens:      graftv1.NewTokenServiceClient(conn),
		Policy:      graftv1.NewPolicyServiceClient(conn),
		Audit:       graftv1.NewAuditServiceClient(conn),
		Admin:       graftv1.NewAdminServiceClient(conn),
		Replication: graftv1.NewReplicationServiceClient(conn),
		Agents:      graftv1.NewAgentServiceClient(conn),
		DBCred:      graftv1.NewDBCredServiceClient(conn),
		Leases:      graftv1.NewLeaseServiceClient(conn),
	}
}

// TokenFile creates, with the root token, a token for principal holding
// role, and writes it to a file (mode 0600) of its own, as graft-agent's
// token_file reads it. It returns the file and the token.
func (g *Graftd) TokenFile(t testing.TB, principal, role string) (file, token string) {
	t.Helper()
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+g.Token)
	resp, err := Dial(t, g.Addr).Tokens.CreateToken(ctx, &graftv1.CreateTokenRequest{Principal: principal, Roles: []string{role}})
	if err != nil {
		t.Fatalf("graftdtest: create a token for %s: %v", principal, err)
	}
	file = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(resp.GetToken()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return file, resp.GetToken()
}
