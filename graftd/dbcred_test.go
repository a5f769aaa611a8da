package graftd_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/pgtest"
	"github.com/graft-sh/graft/internal/testenv"
)

// tokenAs creates, with the root context, a token for principal holding
// role, and returns a context that carries it.
func tokenAs(t *testing.T, c graftdtest.Clients, root context.Context, principal, role string) context.Context {
	t.Helper()
	created, err := c.Tokens.CreateToken(root, &graftv1.CreateTokenRequest{Principal: principal, Roles: []string{role}})
	if err != nil {
		t.Fatal(err)
	}
	return authed(created.GetToken())
}

// dbcredClients are the dynamic-credential services of one graftd.
type dbcredClients struct {
	roles  graftv1.DBCredServiceClient
	leases graftv1.LeaseServiceClient
}

// A DBA puts a role and shares it; the application issues from its copy,
// its credential logs in, and graft lease ls shows the lease without the
// password. Then the doors: another application, no token, foreign
// paths, control characters, oversized statements, and lease ids that
// are not the caller's.
func TestDynamicCredentialsThroughGraftd(t *testing.T) {
	pg := pgtest.Start(t)
	g := graftdtest.Start(t)
	c := graftdtest.Dial(t, g.Addr)
	dc := dbcredClients{c.DBCred, c.Leases}
	root := authed(g.Token)
	token := func(principal, role string) context.Context { return tokenAs(t, c, root, principal, role) }
	dba, orders, billing := token("user:dora", "dba"), token("app:orders", "app"), token("app:billing", "app")

	if _, err := c.KV.Put(dba, &graftv1.PutRequest{Path: "/dba/pp/admin/postgres/dsn", Value: []byte(pg.URL(pg.Superuser, pg.SuperuserPassword, "postgres"))}); err != nil {
		t.Fatal(err)
	}
	role := &graftv1.DBCredRole{
		Driver: "postgres", Admin: "/dba/pp/admin/postgres",
		CreationSql: []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`},
		DefaultTtl:  durationpb.New(time.Hour),
	}
	if _, err := dc.roles.PutRole(dba, &graftv1.PutRoleRequest{Path: "/dba/pp/creds/ro", Role: role}); err != nil {
		t.Fatalf("role put: %v", err)
	}
	if _, err := c.Replication.Share(dba, &graftv1.ShareRequest{Source: "/dba/pp/creds/ro", Destinations: []string{"/app/orders/replicated/creds/ro"}}); err != nil {
		t.Fatal(err)
	}
	var issued *graftv1.IssueResponse
	testenv.WaitFor(t, 10*time.Second, func() bool {
		var err error
		issued, err = dc.roles.Issue(orders, &graftv1.IssueRequest{Path: "/app/orders/replicated/creds/ro"})
		return err == nil
	})
	if issued.GetPassword() == "" || issued.GetLease().GetPrincipal() != "app:orders" || issued.GetLease().GetRole() != "/dba/pp/creds/ro" {
		t.Fatalf("issue = %v", issued)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	login, err := pgx.Connect(ctx, pg.URL(issued.GetUsername(), issued.GetPassword(), "postgres"))
	if err != nil {
		t.Fatalf("the issued credential cannot log in: %v", err)
	}
	login.Close(ctx)
	list, err := dc.leases.ListLeases(orders, &graftv1.ListLeasesRequest{})
	if err != nil || len(list.GetLeases()) != 1 || strings.Contains(list.String(), issued.GetPassword()) {
		t.Fatalf("lease ls as the app: %v, %v", list, err)
	}
	id := issued.GetLease().GetId()

	refused := []struct {
		what string
		call func() error
		code codes.Code
	}{
		{"the app puts a role", func() error {
			_, err := dc.roles.PutRole(orders, &graftv1.PutRoleRequest{Path: "/app/orders/myrole", Role: role})
			return err
		}, codes.PermissionDenied},
		{"another app issues from the copy", func() error {
			_, err := dc.roles.Issue(billing, &graftv1.IssueRequest{Path: "/app/orders/replicated/creds/ro"})
			return err
		}, codes.PermissionDenied},
		{"the app issues from the owner's role", func() error {
			_, err := dc.roles.Issue(orders, &graftv1.IssueRequest{Path: "/dba/pp/creds/ro"})
			return err
		}, codes.PermissionDenied},
		{"no token", func() error {
			_, err := dc.roles.Issue(context.Background(), &graftv1.IssueRequest{Path: "/app/orders/replicated/creds/ro"})
			return err
		}, codes.Unauthenticated},
		{"control characters in the path", func() error {
			_, err := dc.roles.Issue(orders, &graftv1.IssueRequest{Path: "/app/orders/replicated/\x1b[2J"})
			return err
		}, codes.InvalidArgument},
		{"a path that climbs", func() error {
			_, err := dc.roles.Issue(orders, &graftv1.IssueRequest{Path: "/app/orders/replicated/../../../dba/pp/creds/ro"})
			return err
		}, codes.InvalidArgument},
		{"a negative ttl", func() error {
			_, err := dc.roles.Issue(orders, &graftv1.IssueRequest{Path: "/app/orders/replicated/creds/ro", Ttl: durationpb.New(-time.Second)})
			return err
		}, codes.InvalidArgument},
		{"oversized statements", func() error {
			big := &graftv1.DBCredRole{Driver: "postgres", Admin: "/dba/pp/admin/postgres", CreationSql: []string{`CREATE ROLE "{{name}}" PASSWORD '{{password}}'` + strings.Repeat(" ", 20<<10)}}
			_, err := dc.roles.PutRole(dba, &graftv1.PutRoleRequest{Path: "/dba/pp/creds/big", Role: big})
			return err
		}, codes.InvalidArgument},
		{"a role whose admin DSN the DBA may not read", func() error {
			other := &graftv1.DBCredRole{Driver: "postgres", Admin: "/app/orders/admin", CreationSql: role.GetCreationSql()}
			_, err := dc.roles.PutRole(dba, &graftv1.PutRoleRequest{Path: "/dba/pp/creds/other", Role: other})
			return err
		}, codes.PermissionDenied},
		{"another app renews the lease", func() error {
			_, err := dc.leases.RenewLease(billing, &graftv1.RenewLeaseRequest{Id: id})
			return err
		}, codes.NotFound},
		{"another app revokes the lease", func() error {
			_, err := dc.leases.RevokeLease(billing, &graftv1.RevokeLeaseRequest{Id: id})
			return err
		}, codes.NotFound},
		{"the app forces", func() error {
			_, err := dc.leases.RevokeLease(orders, &graftv1.RevokeLeaseRequest{Id: id, Force: true})
			return err
		}, codes.PermissionDenied},
		{"the app revokes the role's leases", func() error {
			_, err := dc.leases.RevokePrefix(orders, &graftv1.RevokePrefixRequest{Prefix: "/dba/pp/creds"})
			return err
		}, codes.PermissionDenied},
		{"the app pauses the reaper", func() error {
			_, err := dc.leases.SetReaper(orders, &graftv1.SetReaperRequest{Paused: true})
			return err
		}, codes.PermissionDenied},
		{"a lease id with control characters", func() error {
			_, err := dc.leases.RevokeLease(orders, &graftv1.RevokeLeaseRequest{Id: "\x00\x1b[2J" + strings.Repeat("x", 10_000)})
			return err
		}, codes.NotFound},
	}
	for _, r := range refused {
		err := r.call()
		if status.Code(err) != r.code {
			t.Errorf("%s: %v, want %v", r.what, err, r.code)
		}
		if msg := status.Convert(err).Message(); strings.ContainsAny(msg, "\x00\x1b") || len(msg) > 2000 || strings.Contains(msg, pg.SuperuserPassword) {
			t.Errorf("%s: the refusal echoes its input or a secret: %q", r.what, msg)
		}
	}
	list, err = dc.leases.ListLeases(billing, &graftv1.ListLeasesRequest{})
	if err != nil || len(list.GetLeases()) != 0 {
		t.Fatalf("another app sees the lease: %v, %v", list, err)
	}

	renewed, err := dc.leases.RenewLease(orders, &graftv1.RenewLeaseRequest{Id: id, Increment: durationpb.New(30 * time.Minute)})
	if err != nil || !renewed.GetLease().GetExpireTime().AsTime().Before(issued.GetLease().GetExpireTime().AsTime()) {
		t.Fatalf("renew for 30m (shorter than the 1h issued): %v, %v", renewed, err)
	}
	if _, err := dc.leases.RevokeLease(orders, &graftv1.RevokeLeaseRequest{Id: id}); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if _, err := pgx.Connect(ctx, pg.URL(issued.GetUsername(), issued.GetPassword(), "postgres")); err == nil {
		t.Fatal("the revoked credential still logs in")
	}

	// Every issue, renew and revoke is audited with the lease and the
	// user, never the password.
	recs, err := c.Audit.QueryAudit(root, &graftv1.QueryAuditRequest{Principal: "app:orders", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range recs.GetRecords() {
		if strings.Contains(r.String(), issued.GetPassword()) {
			t.Fatalf("an audit record holds the password: %v", r)
		}
		if r.GetResult() == "ok" && strings.Contains(r.GetDetail(), id) {
			seen[r.GetMethod()] = true
		}
	}
	for _, m := range []string{"Issue", "RenewLease", "RevokeLease"} {
		if !seen[m] {
			t.Errorf("no audit record of %s naming lease %s: %v", m, id, recs.GetRecords())
		}
	}
}
