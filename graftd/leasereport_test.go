package graftd_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/pgtest"
)

// make17 is one broker listener too many.
func make17() []*graftv1.BrokerReport {
	out := make([]*graftv1.BrokerReport, 17)
	for i := range out {
		out[i] = &graftv1.BrokerReport{Listen: fmt.Sprintf("127.0.0.1:%d", 6000+i), Keys: []string{"/app/orders/replicated/db/user"}}
	}
	return out
}

// Agents report the leases they hold, and graft lease ls shows which
// agent holds which user. The doors: a report of leases needs a token;
// a lease's path must be a role's copy in the agent's own tree; ids,
// usernames and counts are bounded and free of control characters; and
// an agent that claims another application's lease is never shown as
// its holder.
func TestAgentsReportTheirLeases(t *testing.T) {
	pg := pgtest.Start(t)
	g := graftdtest.Start(t)
	c := graftdtest.Dial(t, g.Addr)
	root := authed(g.Token)
	token := func(principal, role string) context.Context { return tokenAs(t, c, root, principal, role) }
	dba, orders, billing := token("user:dora", "dba"), token("app:orders", "app"), token("app:billing", "app")
	if _, err := c.KV.Put(dba, &graftv1.PutRequest{Path: "/dba/pp/admin/postgres/dsn", Value: []byte(pg.URL(pg.Superuser, pg.SuperuserPassword, "postgres"))}); err != nil {
		t.Fatal(err)
	}
	role := &graftv1.DBCredRole{Driver: "postgres", Admin: "/dba/pp/admin/postgres", DefaultTtl: durationpb.New(time.Hour),
		CreationSql: []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`}}
	if _, err := c.DBCred.PutRole(dba, &graftv1.PutRoleRequest{Path: "/dba/pp/creds/ro", Role: role}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Replication.Share(dba, &graftv1.ShareRequest{Source: "/dba/pp/creds/ro",
		Destinations: []string{"/app/orders/replicated/creds/ro", "/app/billing/replicated/creds/ro"}}); err != nil {
		t.Fatal(err)
	}
	var issued *graftv1.IssueResponse
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if issued, err = c.DBCred.Issue(orders, &graftv1.IssueRequest{Path: "/app/orders/replicated/creds/ro"}); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("issue: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // the copy replicates
	}
	id, user := issued.GetLease().GetId(), issued.GetUsername()

	report := func(app, agentID string, leases ...*graftv1.LeaseReport) *graftv1.ReportRequest {
		return &graftv1.ReportRequest{Report: &graftv1.AgentReport{Id: agentID, App: app, Host: "h1", Instance: "i-" + agentID, Leases: leases}}
	}
	brokers := func(agentID string, bs ...*graftv1.BrokerReport) *graftv1.ReportRequest {
		return &graftv1.ReportRequest{Report: &graftv1.AgentReport{Id: agentID, App: "orders", Host: "h1", Instance: "i-" + agentID, Brokers: bs}}
	}
	holder := func() string {
		t.Helper()
		resp, err := c.Leases.ListLeases(dba, &graftv1.ListLeasesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range resp.GetLeases() {
			if l.GetId() == id {
				return l.GetHolder()
			}
		}
		t.Fatalf("lease %s is not listed", id)
		return ""
	}

	// billing claims orders' lease, with a path in its own tree: it is
	// a valid report, and shows nothing.
	if _, err := c.Agents.Report(billing, report("billing", "b1", &graftv1.LeaseReport{Id: id, Path: "/app/billing/replicated/creds/ro", Username: user})); err != nil {
		t.Fatalf("billing's report: %v", err)
	}
	if h := holder(); h != "" {
		t.Fatalf("billing's claim made it the holder: %q", h)
	}
	if _, err := c.Agents.Report(orders, report("orders", "o1", &graftv1.LeaseReport{Id: id, Path: "/app/orders/replicated/creds/ro", Username: user})); err != nil {
		t.Fatalf("orders' report: %v", err)
	}
	if h := holder(); h != "o1 on h1" {
		t.Fatalf("holder %q, want o1 on h1", h)
	}

	// The doors.
	many := make([]*graftv1.LeaseReport, 33)
	for i := range many {
		many[i] = &graftv1.LeaseReport{Id: fmt.Sprintf("l%d", i), Path: "/app/orders/replicated/creds/ro", Username: "u"}
	}
	for _, a := range []struct {
		name string
		ctx  context.Context
		req  *graftv1.ReportRequest
		code codes.Code
		want string
	}{
		{"no token", context.Background(), report("orders", "o2", &graftv1.LeaseReport{Id: id, Path: "/app/orders/replicated/creds/ro"}), codes.Unauthenticated, ""},
		{"foreign path", orders, report("orders", "o2", &graftv1.LeaseReport{Id: id, Path: "/dba/pp/creds/ro", Username: user}), codes.InvalidArgument, "want the path of a role's copy under /app/orders/"},
		{"a prefix", orders, report("orders", "o2", &graftv1.LeaseReport{Id: id, Path: "/app/orders/replicated/", Username: user}), codes.InvalidArgument, "want the path of a role's copy"},
		{"bad id", orders, report("orders", "o2", &graftv1.LeaseReport{Id: "../X", Path: "/app/orders/replicated/creds/ro"}), codes.InvalidArgument, "leases[0]: id"},
		{"long id", orders, report("orders", "o2", &graftv1.LeaseReport{Id: strings.Repeat("a", 65), Path: "/app/orders/replicated/creds/ro"}), codes.InvalidArgument, "leases[0]: id"},
		{"control username", orders, report("orders", "o2", &graftv1.LeaseReport{Id: id, Path: "/app/orders/replicated/creds/ro", Username: "u\x1b[2J"}), codes.InvalidArgument, "leases[0].username holds a control character"},
		{"long username", orders, report("orders", "o2", &graftv1.LeaseReport{Id: id, Path: "/app/orders/replicated/creds/ro", Username: strings.Repeat("u", 300)}), codes.InvalidArgument, "leases[0].username is 300 bytes"},
		{"too many", orders, report("orders", "o2", many...), codes.InvalidArgument, "33 leases: at most 32"},
		{"another app's tree", orders, report("billing", "o2", &graftv1.LeaseReport{Id: id, Path: "/app/billing/replicated/creds/ro"}), codes.PermissionDenied, ""},
		{"broker: foreign key", orders, brokers("o2", &graftv1.BrokerReport{Listen: "127.0.0.1:6432", Keys: []string{"/dba/pp/db/password"}}), codes.InvalidArgument, "brokers[0]: key \"/dba/pp/db/password\""},
		{"broker: control listen", orders, brokers("o2", &graftv1.BrokerReport{Listen: "x\x1b[2J", Keys: []string{"/app/orders/replicated/db/user"}}), codes.InvalidArgument, "brokers[0].listen holds a control character"},
		{"broker: control user", orders, brokers("o2", &graftv1.BrokerReport{Listen: "l", User: "u\n", Keys: []string{"/app/orders/replicated/db/user"}}), codes.InvalidArgument, "brokers[0].user holds a control character"},
		{"broker: negative count", orders, brokers("o2", &graftv1.BrokerReport{Listen: "l", Keys: []string{"/app/orders/replicated/db/user"}, Sessions: []*graftv1.SessionCount{{User: "u", Count: -1}}}), codes.InvalidArgument, "brokers[0].sessions[0].count -1"},
		{"broker: many keys", orders, brokers("o2", &graftv1.BrokerReport{Listen: "l", Keys: []string{"/app/orders/a", "/app/orders/b", "/app/orders/c", "/app/orders/d", "/app/orders/e"}}), codes.InvalidArgument, "brokers[0]: 5 keys"},
		{"broker: many listeners", orders, brokers("o2", make17()...), codes.InvalidArgument, "17 broker listeners: at most 16"},
	} {
		_, err := c.Agents.Report(a.ctx, a.req)
		if st := status.Convert(err); st.Code() != a.code || !strings.Contains(st.Message(), a.want) {
			t.Errorf("%s: %v, want %s saying %q", a.name, err, a.code, a.want)
		} else if strings.Contains(st.Message(), "\x1b") || len(st.Message()) > 1024 {
			t.Errorf("%s: the error quotes too much: %q", a.name, st.Message())
		}
	}
	if h := holder(); h != "o1 on h1" {
		t.Fatalf("after the refused reports, holder %q, want o1 on h1", h)
	}
	// The holder shows to the lease's own principal too, and no
	// listing ever shows a password.
	resp, err := c.Leases.ListLeases(orders, &graftv1.ListLeasesRequest{})
	if err != nil || len(resp.GetLeases()) != 1 || resp.GetLeases()[0].GetHolder() != "o1 on h1" {
		t.Fatalf("orders' lease ls: %v %v", err, resp)
	}
	if strings.Contains(resp.String(), issued.GetPassword()) {
		t.Fatalf("lease ls shows the password")
	}
}
