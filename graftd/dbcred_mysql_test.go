package graftd_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"
	"google.golang.org/protobuf/types/known/durationpb"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/mysqltest"
	"github.com/graft-sh/graft/internal/testenv"
)

// The MariaDB guide through graftd: a DBA puts a role and shares it; the
// application issues from its copy, and its credential logs in with
// exactly the role's grants (it reads testdb, writes nothing, sees no
// other database); the application renews and revokes it, and the user
// is gone.
func TestMariaDBCredentialsThroughGraftd(t *testing.T) {
	db := mysqltest.Start(t)
	db.CreateDatabase(t, "testdb")
	db.CreateDatabase(t, "other")
	db.Exec(t, "CREATE TABLE testdb.items (id int)")
	db.Exec(t, "INSERT INTO testdb.items VALUES (1), (2)")
	g := graftdtest.Start(t)
	c := graftdtest.Dial(t, g.Addr)
	root := authed(g.Token)
	token := func(principal, role string) context.Context { return tokenAs(t, c, root, principal, role) }
	dba, orders := token("user:dora", "dba"), token("app:orders", "app")

	if _, err := c.KV.Put(dba, &graftv1.PutRequest{Path: "/dba/pp/admin/mariadb/dsn", Value: []byte(db.DSN)}); err != nil {
		t.Fatal(err)
	}
	role := &graftv1.DBCredRole{
		Driver: "mysql", Admin: "/dba/pp/admin/mariadb",
		CreationSql: []string{
			"CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'",
			"GRANT SELECT ON testdb.* TO '{{name}}'@'%'",
		},
		DefaultTtl: durationpb.New(time.Hour), MaxTtl: durationpb.New(2 * time.Hour),
	}
	if _, err := c.DBCred.PutRole(dba, &graftv1.PutRoleRequest{Path: "/dba/pp/creds/maria", Role: role}); err != nil {
		t.Fatalf("role put: %v", err)
	}
	if _, err := c.Replication.Share(dba, &graftv1.ShareRequest{Source: "/dba/pp/creds/maria", Destinations: []string{"/app/orders/replicated/creds/maria"}}); err != nil {
		t.Fatal(err)
	}
	var issued *graftv1.IssueResponse
	testenv.WaitFor(t, 10*time.Second, func() bool {
		var err error
		issued, err = c.DBCred.Issue(orders, &graftv1.IssueRequest{Path: "/app/orders/replicated/creds/maria"})
		return err == nil
	})
	user, password, id := issued.GetUsername(), issued.GetPassword(), issued.GetLease().GetId()
	if password == "" || issued.GetLease().GetPrincipal() != "app:orders" || issued.GetLease().GetRole() != "/dba/pp/creds/maria" || !strings.HasPrefix(user, "v-") {
		t.Fatalf("issue = %v", issued)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	app := db.ConnectAs(t, user, password, "testdb")
	var n int
	if err := app.QueryRowContext(ctx, "SELECT COUNT(*) FROM items").Scan(&n); err != nil || n != 2 {
		t.Fatalf("the credential reads testdb.items: %d rows, %v; want 2", n, err)
	}
	var denied *mysqldriver.MySQLError
	if _, err := app.ExecContext(ctx, "INSERT INTO items VALUES (3)"); !errors.As(err, &denied) || denied.Number != 1142 {
		t.Errorf("INSERT with a SELECT grant: %v, want error 1142 (command denied)", err)
	}
	if _, err := app.ExecContext(ctx, "CREATE TABLE other.t (id int)"); err == nil {
		t.Error("the credential created a table in another database")
	}
	rows, err := app.QueryContext(ctx, "SHOW GRANTS FOR CURRENT_USER")
	if err != nil {
		t.Fatal(err)
	}
	var grants []string
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			t.Fatal(err)
		}
		// The hash is the password's, not the point here.
		g, _, _ = strings.Cut(g, " IDENTIFIED BY PASSWORD")
		grants = append(grants, g)
	}
	rows.Close()
	slices.Sort(grants)
	want := []string{
		"GRANT SELECT ON `testdb`.* TO `" + user + "`@`%`",
		"GRANT USAGE ON *.* TO `" + user + "`@`%`",
	}
	if !slices.Equal(grants, want) {
		t.Errorf("the credential's grants:\n%s\nwant exactly the role's:\n%s", strings.Join(grants, "\n"), strings.Join(want, "\n"))
	}
	app.Close()

	renewed, err := c.Leases.RenewLease(orders, &graftv1.RenewLeaseRequest{Id: id, Increment: durationpb.New(90 * time.Minute)})
	if err != nil || !renewed.GetLease().GetExpireTime().AsTime().After(issued.GetLease().GetExpireTime().AsTime()) {
		t.Fatalf("renew for 90m: %v, %v", renewed, err)
	}
	if err := db.ConnectAs(t, user, password, "testdb").PingContext(ctx); err != nil {
		t.Fatalf("the renewed credential cannot log in: %v", err)
	}

	if _, err := c.Leases.RevokeLease(orders, &graftv1.RevokeLeaseRequest{Id: id}); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if err := db.ConnectAs(t, user, password, "testdb").PingContext(ctx); err == nil {
		t.Fatal("the revoked credential still logs in")
	}
	if err := db.Connect(t).QueryRowContext(ctx, "SELECT COUNT(*) FROM mysql.user WHERE User = ?", user).Scan(&n); err != nil || n != 0 {
		t.Fatalf("accounts of %s after the revocation: %d, %v", user, n, err)
	}
	list, err := c.Leases.ListLeases(orders, &graftv1.ListLeasesRequest{})
	if err != nil || len(list.GetLeases()) != 0 {
		t.Fatalf("leases after the revocation: %v, %v", list.GetLeases(), err)
	}
}
