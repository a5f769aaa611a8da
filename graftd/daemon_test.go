package graftd_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/graftd"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/keyring"
)

func kvClient(t *testing.T, addr string) graftv1.KVServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return graftv1.NewKVServiceClient(conn)
}

func authed(token string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestHealthReadyMetrics(t *testing.T) {
	g := graftdtest.Start(t)
	if code, body := httpGet(t, "http://"+g.HTTPAddr+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := httpGet(t, "http://"+g.HTTPAddr+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d %q", code, body)
	}
	kv := kvClient(t, g.Addr)
	if _, err := kv.Put(authed(g.Token), &graftv1.PutRequest{Path: "/a/b", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	if code, _ := httpGet(t, "http://"+g.HTTPAddr+"/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without --enable-pprof = %d, want 404", code)
	}
	_, body := httpGet(t, "http://"+g.HTTPAddr+"/metrics")
	if !strings.Contains(body, `graft_grpc_requests_total{code="OK",method="Put"} 1`) {
		t.Errorf("/metrics lacks the Put counter:\n%s", body)
	}
}

// TestExternalBackends runs graftd the production way, against etcd and
// NATS it does not own, and checks that /readyz notices NATS going away.
func TestExternalBackends(t *testing.T) {
	dir := t.TempDir()
	etcd := testenv.StartEtcd(t, filepath.Join(dir, "etcd"))
	nats := testenv.StartNATS(t, filepath.Join(dir, "nats"))
	cfg := graftd.Defaults()
	cfg.DataDir = filepath.Join(dir, "graftd")
	cfg.Listen = "127.0.0.1:0"
	cfg.HTTPListen = "127.0.0.1:0"
	cfg.Etcd.Endpoints = []string{etcd.Endpoint}
	cfg.NATS.URL = nats.URL
	cfg.KeyringFile = filepath.Join(dir, "keyring.json")

	if _, err := graftd.Start(context.Background(), cfg, testenv.Logger(t)); err == nil || !strings.Contains(err.Error(), "graftd keyring init") {
		t.Fatalf("start without a keyring file: %v", err)
	}
	if err := keyring.CreateFile(cfg.KeyringFile); err != nil {
		t.Fatal(err)
	}
	d, err := graftd.Start(context.Background(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Shutdown(context.Background())
	if d.RootToken() != "" {
		t.Fatal("outside dev mode graftd must not mint a root token by itself")
	}
	// The first admin gets in through the audited break-glass.
	if _, err := graftd.BreakGlass(context.Background(), cfg, testenv.Logger(t), time.Hour, "", "tester"); err == nil || !strings.Contains(err.Error(), "--reason") {
		t.Fatalf("break-glass without a reason: %v", err)
	}
	root, err := graftd.BreakGlass(context.Background(), cfg, testenv.Logger(t), time.Hour, "bootstrap the first admin", "tester@host")
	if err != nil {
		t.Fatal(err)
	}
	// break-glass wrote the token to etcd from outside this graftd, which
	// learns of it through its watch, as any other replica would.
	var putErr error
	testenv.WaitFor(t, 2*time.Second, func() bool {
		_, putErr = kvClient(t, d.Addr()).Put(authed(root), &graftv1.PutRequest{Path: "/a/b", Value: []byte("v")})
		return status.Code(putErr) != codes.Unauthenticated
	})
	if putErr != nil {
		t.Fatal(putErr)
	}
	conn, err := grpc.NewClient(d.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	who, err := graftv1.NewTokenServiceClient(conn).WhoAmI(authed(root), &graftv1.WhoAmIRequest{})
	if err != nil || who.GetPrincipal() != "root" || who.GetExpires() == nil {
		t.Fatalf("whoami with the break-glass token: %v %v", who, err)
	}
	recs, err := graftv1.NewAuditServiceClient(conn).QueryAudit(authed(root), &graftv1.QueryAuditRequest{Principal: "break-glass:tester@host"})
	if err != nil || len(recs.GetRecords()) != 1 || !strings.Contains(recs.GetRecords()[0].GetDetail(), "bootstrap the first admin") {
		t.Fatalf("break-glass audit record: %v %v", recs, err)
	}
	if code, body := httpGet(t, "http://"+d.HTTPAddr()+"/readyz"); code != 200 {
		t.Fatalf("/readyz = %d %q", code, body)
	}
	nats.Close()
	code, body := httpGet(t, "http://"+d.HTTPAddr()+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "nats") {
		t.Errorf("/readyz = %d %q, want 503 naming nats", code, body)
	}
}

func TestDevKeepsDataAndRootTokenAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	cfg := devConfig(dir)
	d := startDaemon(t, cfg)
	token := d.RootToken()
	if !strings.HasPrefix(token, "graft_") {
		t.Fatalf("root token %q", token)
	}
	for _, f := range []string{"root-token", "keyring.json"} {
		info, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, info.Mode().Perm())
		}
	}
	if _, err := kvClient(t, d.Addr()).Put(authed(token), &graftv1.PutRequest{Path: "/dba/x", Value: []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	d.Shutdown(context.Background())

	d = startDaemon(t, cfg)
	defer d.Shutdown(context.Background())
	if d.RootToken() != token {
		t.Error("the root token changed across a restart; an exported GRAFT_TOKEN would stop working")
	}
	got, err := kvClient(t, d.Addr()).Get(authed(token), &graftv1.GetRequest{Path: "/dba/x"})
	if err != nil || string(got.GetEntry().GetValue()) != "kept" {
		t.Fatalf("after restart: %v %v", got, err)
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	cfg := graftd.Defaults()
	cfg.Listen = "0.0.0.0:0"
	_, err := graftd.Start(context.Background(), cfg, testenv.Logger(t))
	if err == nil || !strings.Contains(err.Error(), "--etcd-endpoints is required") {
		t.Fatalf("Start = %v", err)
	}
}

func TestGRPCHealthNeedsNoToken(t *testing.T) {
	g := graftdtest.Start(t)
	conn, err := grpc.NewClient(g.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health check = %v, %v; want SERVING without a token", resp, err)
	}
	// The API itself still needs one.
	if _, err := kvClient(t, g.Addr).Get(context.Background(), &graftv1.GetRequest{Path: "/a"}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Get without token = %v, want Unauthenticated", err)
	}
}

// devConfig is graftd --dev on kernel-chosen loopback ports with its data
// in dir, generating its root token as a user's graftd --dev does.
func devConfig(dir string) graftd.Config {
	cfg := graftd.DevConfig(dir)
	cfg.DevRootToken = ""
	return cfg
}

func startDaemon(t *testing.T, cfg graftd.Config) *graftd.Daemon {
	t.Helper()
	d, err := graftd.Start(context.Background(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return d
}
