package daemon_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/daemon"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

// TestTwoReplicasEnforceChangesWithinASecond runs two graftd replicas on one
// etcd and NATS: a revocation or a policy change made through one is
// enforced by the other within one second.
func TestTwoReplicasEnforceChangesWithinASecond(t *testing.T) {
	dir := t.TempDir()
	etcd := testenv.StartEtcd(t, filepath.Join(dir, "etcd"))
	nats := testenv.StartNATS(t, filepath.Join(dir, "nats"))
	base := daemon.Defaults()
	base.Listen = "127.0.0.1:0"
	base.HTTPListen = "127.0.0.1:0"
	base.Etcd.Endpoints = []string{etcd.Endpoint}
	base.NATS.URL = nats.URL
	base.KeyringFile = filepath.Join(dir, "keyring.json")
	if err := store.CreateKeyringFile(base.KeyringFile); err != nil {
		t.Fatal(err)
	}
	replica := func(name string) *daemon.Daemon {
		cfg := base
		cfg.DataDir = filepath.Join(dir, name)
		d := startDaemon(t, cfg)
		t.Cleanup(func() { d.Shutdown(context.Background()) })
		return d
	}
	a, b := replica("a"), replica("b")
	root, err := daemon.BreakGlass(context.Background(), base, testenv.Logger(t), time.Hour, "test", "tester")
	if err != nil {
		t.Fatal(err)
	}
	ca, cb := graftdtest.Dial(t, a.Addr()), graftdtest.Dial(t, b.Addr())
	rootCtx := authed(root)
	if _, err := ca.Policy.InitPolicies(rootCtx, &graftv1.InitPoliciesRequest{}); err != nil {
		t.Fatal(err)
	}
	created, err := ca.Tokens.CreateToken(rootCtx, &graftv1.CreateTokenRequest{Principal: "app:orders", Roles: []string{"app"}})
	if err != nil {
		t.Fatal(err)
	}
	app := authed(created.GetToken())
	within := func(what string, cond func() bool) {
		t.Helper()
		start := time.Now()
		for !cond() {
			if time.Since(start) > time.Second {
				t.Fatalf("%s: not enforced by the other replica within 1s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Logf("%s: enforced by the other replica after %s", what, time.Since(start).Round(time.Millisecond))
	}
	within("new token", func() bool {
		_, err := cb.KV.Put(app, &graftv1.PutRequest{Path: "/app/orders/config/x", Value: []byte("v")})
		return err == nil
	})

	// A policy granting the app role read on /shared, written through a.
	if _, err := ca.Policy.PutPolicy(rootCtx, &graftv1.PutPolicyRequest{Yaml: "role: shared-readers\nprincipals: [app:orders]\nrules:\n  - allow: [read]\n    paths: [/shared/**]\n"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.KV.Put(rootCtx, &graftv1.PutRequest{Path: "/shared/dd/api-key", Value: []byte("k")}); err != nil {
		t.Fatal(err)
	}
	within("policy change", func() bool {
		_, err := cb.KV.Get(app, &graftv1.GetRequest{Path: "/shared/dd/api-key"})
		return err == nil
	})

	if _, err := ca.Tokens.RevokeToken(rootCtx, &graftv1.RevokeTokenRequest{TokenOrAccessor: created.GetInfo().GetAccessor()}); err != nil {
		t.Fatal(err)
	}
	within("revocation", func() bool {
		_, err := cb.KV.Get(app, &graftv1.GetRequest{Path: "/app/orders/config/x"})
		return status.Code(err) == codes.Unauthenticated
	})
}
