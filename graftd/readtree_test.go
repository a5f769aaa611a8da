package graftd_test

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/graftdtest"
)

// ReadTree returns the values at and below a path at one revision, only
// those the caller may read, and refuses a caller who may read none.
func TestReadTreeIsAuthorizedPathByPath(t *testing.T) {
	g := graftdtest.Start(t)
	c := graftdtest.Dial(t, g.Addr)
	root := authed(g.Token)
	for path, v := range map[string]string{"/app/orders/config/a": "1", "/app/orders/config/b": "2", "/app/orders-evil/x": "no", "/dba/orders/secret": "s"} {
		if _, err := c.KV.Put(root, &graftv1.PutRequest{Path: path, Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
	created, err := c.Tokens.CreateToken(root, &graftv1.CreateTokenRequest{Principal: "app:orders", Roles: []string{"app"}})
	if err != nil {
		t.Fatal(err)
	}
	app := authed(created.GetToken())
	tree, err := c.KV.ReadTree(app, &graftv1.ReadTreeRequest{Path: "/app/orders"})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range tree.GetEntries() {
		got[e.GetPath()] = string(e.GetValue())
	}
	if len(got) != 2 || got["/app/orders/config/a"] != "1" || got["/app/orders/config/b"] != "2" || tree.GetRevision() == 0 {
		t.Fatalf("the app's tree = %v at revision %d", got, tree.GetRevision())
	}
	if _, err := c.KV.ReadTree(app, &graftv1.ReadTreeRequest{Path: "/dba/orders"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("reading another's tree: %v, want PermissionDenied", err)
	}
	if _, err := c.KV.ReadTree(app, &graftv1.ReadTreeRequest{Path: "/app/orders/../dba"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a non-canonical path: %v, want InvalidArgument", err)
	}
}

// An application reports only for itself.
func TestAgentReportsOnlyForItsOwnApp(t *testing.T) {
	g := graftdtest.Start(t)
	c := graftdtest.Dial(t, g.Addr)
	created, err := c.Tokens.CreateToken(authed(g.Token), &graftv1.CreateTokenRequest{Principal: "app:orders", Roles: []string{"app"}})
	if err != nil {
		t.Fatal(err)
	}
	app := authed(created.GetToken())
	if _, err := c.Agents.Report(app, &graftv1.ReportRequest{Report: &graftv1.AgentReport{Id: "h1", App: "orders"}}); err != nil {
		t.Fatalf("reporting for itself: %v", err)
	}
	if _, err := c.Agents.Report(app, &graftv1.ReportRequest{Report: &graftv1.AgentReport{Id: "h1", App: "billing"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("reporting for another app: %v, want PermissionDenied", err)
	}
	list, err := c.Agents.ListAgents(app, &graftv1.ListAgentsRequest{})
	if err != nil || len(list.GetAgents()) != 1 || list.GetAgents()[0].GetPrincipal() != "app:orders" {
		t.Fatalf("agents ls as the app: %v, %v", list, err)
	}
}
