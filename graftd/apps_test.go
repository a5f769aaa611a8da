package graftd_test

import (
	"slices"
	"testing"
	"time"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/graftdtest"
)

// A pattern share reaches an application created after it: the copy is in
// place when `graft token create app:<name>` returns, so the new
// application's first read finds it, through either replica.
func TestPatternShareReachesAnApplicationCreatedLater(t *testing.T) {
	a, b, root := twoReplicas(t)
	ca, cb := graftdtest.Dial(t, a.Addr()), graftdtest.Dial(t, b.Addr())
	rootCtx := authed(root)
	if _, err := ca.Policy.InitPolicies(rootCtx, &graftv1.InitPoliciesRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.KV.Put(rootCtx, &graftv1.PutRequest{Path: "/shared/datadog/api-key", Value: []byte("dd-key")}); err != nil {
		t.Fatal(err)
	}
	shared, err := ca.Replication.Share(rootCtx, &graftv1.ShareRequest{Source: "/shared/datadog", Destinations: []string{"/app/+/replicated/datadog"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := shared.GetRule().GetPatterns(); !slices.Equal(got, []string{"/app/+/replicated/datadog"}) || len(shared.GetRule().GetDestinations()) != 0 {
		t.Fatalf("new pattern rule with no applications yet: %v", shared.GetRule())
	}

	start := time.Now()
	created, err := cb.Tokens.CreateToken(rootCtx, &graftv1.CreateTokenRequest{Principal: "app:billing", Roles: []string{"app"}})
	if err != nil {
		t.Fatal(err)
	}
	// The copy is there the moment the token is: read it with root, so
	// that the token reaching the other replica does not come into it.
	got, err := ca.KV.Get(rootCtx, &graftv1.GetRequest{Path: "/app/billing/replicated/datadog/api-key"})
	if err != nil || string(got.GetEntry().GetValue()) != "dd-key" {
		t.Fatalf("the new application's copy when its token was handed out: %v, %v", got, err)
	}
	t.Logf("token create, copy included, took %s", time.Since(start).Round(time.Millisecond))
	app := authed(created.GetToken())
	for deadline := time.Now().Add(time.Second); ; {
		got, err = ca.KV.Get(app, &graftv1.GetRequest{Path: "/app/billing/replicated/datadog/api-key"})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err != nil || string(got.GetEntry().GetValue()) != "dd-key" {
		t.Fatalf("the application reading its copy: %v, %v", got, err)
	}

	rule, err := ca.Replication.GetRule(rootCtx, &graftv1.GetRuleRequest{Id: shared.GetRule().GetId()})
	if err != nil || !slices.Equal(rule.GetRule().GetDestinations(), []string{"/app/billing/replicated/datadog"}) {
		t.Fatalf("rules get after the application appeared: %v, %v", rule, err)
	}
	st, err := ca.Replication.ReplicationStatus(rootCtx, &graftv1.ReplicationStatusRequest{Path: "/app/billing/replicated/datadog/api-key"})
	if err != nil || st.GetRule().GetId() != shared.GetRule().GetId() || !st.GetInSync() {
		t.Fatalf("status of the new application's copy: %v, %v", st, err)
	}

	// A source change reaches it like any destination.
	if _, err := cb.KV.Put(rootCtx, &graftv1.PutRequest{Path: "/shared/datadog/api-key", Value: []byte("dd-key-2")}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		got, err = cb.KV.Get(app, &graftv1.GetRequest{Path: "/app/billing/replicated/datadog/api-key"})
		if err == nil && string(got.GetEntry().GetValue()) == "dd-key-2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new application's copy after a source change: %v, %v", got, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
