package graftd_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/graftd"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/keyring"
)

// TestTwoReplicasEnforceChangesWithinASecond runs two graftd replicas on one
// etcd and NATS: a revocation or a policy change made through one is
// enforced by the other within one second.
func TestTwoReplicasEnforceChangesWithinASecond(t *testing.T) {
	a, b, root := twoReplicas(t)
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

// twoReplicas starts two graftd replicas on one etcd and NATS and returns
// them with a break-glass root token.
func twoReplicas(t *testing.T) (a, b *graftd.Daemon, root string) {
	t.Helper()
	dir := t.TempDir()
	etcd := testenv.StartEtcd(t, filepath.Join(dir, "etcd"))
	nats := testenv.StartNATS(t, filepath.Join(dir, "nats"))
	base := graftd.Defaults()
	base.Listen = "127.0.0.1:0"
	base.HTTPListen = "127.0.0.1:0"
	base.Etcd.Endpoints = []string{etcd.Endpoint}
	base.NATS.URL = nats.URL
	base.KeyringFile = filepath.Join(dir, "keyring.json")
	if err := keyring.CreateFile(base.KeyringFile); err != nil {
		t.Fatal(err)
	}
	replica := func(name string) *graftd.Daemon {
		cfg := base
		cfg.DataDir = filepath.Join(dir, name)
		d := startDaemon(t, cfg)
		t.Cleanup(func() { d.Shutdown(context.Background()) })
		return d
	}
	a, b = replica("a"), replica("b")
	root, err := graftd.BreakGlass(context.Background(), base, testenv.Logger(t), time.Hour, "test", "tester")
	if err != nil {
		t.Fatal(err)
	}
	// Break-glass writes to etcd directly; the replicas learn of the token
	// through their watches.
	for _, d := range []*graftd.Daemon{a, b} {
		c := graftdtest.Dial(t, d.Addr())
		testenv.WaitFor(t, 5*time.Second, func() bool {
			_, err := c.Tokens.WhoAmI(authed(root), &graftv1.WhoAmIRequest{})
			return err == nil
		})
	}
	return a, b, root
}

// TestTwoReplicasShareReplication: both replicas consume change events from
// one shared consumer; every source change reaches the destination exactly
// once (one destination version per source version: no double effects),
// and both replicas did part of the work.
func TestTwoReplicasShareReplication(t *testing.T) {
	a, b, root := twoReplicas(t)
	ca, cb := graftdtest.Dial(t, a.Addr()), graftdtest.Dial(t, b.Addr())
	ctx := authed(root)
	if _, err := ca.Replication.Share(ctx, &graftv1.ShareRequest{Source: "/dba/orders", Destinations: []string{"/app/orders/replicated/db"}}); err != nil {
		t.Fatal(err)
	}
	const n = 400
	for i := range n {
		c := ca
		if i%2 == 1 {
			c = cb
		}
		if _, err := c.KV.Put(ctx, &graftv1.PutRequest{Path: fmt.Sprintf("/dba/orders/k%d", i%20), Value: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 20*time.Second, func() bool {
		for k := range 20 {
			want := fmt.Sprint(n - 20 + k)
			r, err := cb.KV.Get(ctx, &graftv1.GetRequest{Path: fmt.Sprintf("/app/orders/replicated/db/k%d", k)})
			if err != nil || string(r.GetEntry().GetValue()) != want {
				return false
			}
		}
		return true
	})
	// Each destination has one version per source version it was written
	// from, never two for the same one.
	for k := range 20 {
		h, err := ca.KV.History(ctx, &graftv1.HistoryRequest{Path: fmt.Sprintf("/app/orders/replicated/db/k%d", k)})
		if err != nil {
			t.Fatal(err)
		}
		seen := map[int64]bool{}
		for _, it := range h.GetItems() {
			e := it.GetEntry()
			sr := e.GetOrigin().GetSourceRevision()
			if seen[sr] {
				t.Fatalf("k%d: source revision %d written twice", k, sr)
			}
			seen[sr] = true
		}
	}
	handled := func(d *graftd.Daemon) float64 {
		_, body := httpGet(t, "http://"+d.HTTPAddr()+"/metrics")
		total := 0.0
		for line := range strings.Lines(body) {
			if strings.HasPrefix(line, "graft_replication_events_total{") {
				var v float64
				fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
				total += v
			}
		}
		return total
	}
	ha, hb := handled(a), handled(b)
	t.Logf("events handled: replica a %v, replica b %v", ha, hb)
	if ha == 0 || hb == 0 {
		t.Errorf("one replica did all the work (a %v, b %v): the consumer is not shared", ha, hb)
	}
}
