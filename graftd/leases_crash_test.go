package graftd_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/graft-sh/graft/dbcred/leases"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/graftd"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/pgtest"
	"github.com/graft-sh/graft/internal/testenv"
)

// dynamicUsers are the PostgreSQL users dynamic credentials made (their
// names begin with v-), by name.
func dynamicUsers(t *testing.T, pg *pgtest.Server) []string {
	t.Helper()
	conn := pg.Connect(t, "postgres")
	defer conn.Close(context.Background())
	rows, err := conn.Query(t.Context(), "SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%' ORDER BY rolname")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

// putPostgresRole puts the admin DSN of pg and a role that makes users
// who may read its tables, as root.
func putPostgresRole(t *testing.T, c graftdtest.Clients, root context.Context, pg *pgtest.Server, path string) {
	t.Helper()
	if _, err := c.KV.Put(root, &graftv1.PutRequest{Path: "/dba/pp/admin/postgres/dsn", Value: []byte(pg.URL(pg.Superuser, pg.SuperuserPassword, "postgres"))}); err != nil {
		t.Fatal(err)
	}
	role := &graftv1.DBCredRole{
		Driver: "postgres", Admin: "/dba/pp/admin/postgres",
		CreationSql: []string{
			`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`,
			`GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}"`,
		},
		DefaultTtl: durationpb.New(time.Hour),
	}
	if _, err := c.DBCred.PutRole(root, &graftv1.PutRoleRequest{Path: path, Role: role}); err != nil {
		t.Fatalf("role put: %v", err)
	}
}

// graftd killed with SIGKILL while it issues, (a) after it wrote the
// pending lease and before it made the user, (b) after it made the user
// and before it confirmed the lease, leaves a pending lease; the graftd
// started again finds it, and once the reaper runs, after the pending
// grace, there is no user without a lease and no lease without a user,
// while a lease issued after the restart keeps its user.
func TestKilledWhileIssuingLeavesNoOrphans(t *testing.T) {
	pg := pgtest.Start(t)
	pg.Exec(t, "postgres", "CREATE TABLE pets (name text)")
	for _, at := range []graftdtest.Halt{graftdtest.HaltBeforeCreateUser, graftdtest.HaltAfterCreateUser} {
		t.Run(string(at), func(t *testing.T) {
			g := graftdtest.StartProcessHalting(t, at, graftdtest.WithConfig(func(c *graftd.Config) {
				c.Leases.PendingGrace = 2 * time.Second
				c.Leases.Tick = 50 * time.Millisecond
			}))
			c := graftdtest.Dial(t, g.Addr)
			root := authed(g.Token)
			putPostgresRole(t, c, root, pg, "/dba/pp/creds/ro")
			// Paused, the reaper of the graftd about to halt cannot clean
			// up the pending lease before it is killed; the next one's does.
			if _, err := c.Leases.SetReaper(root, &graftv1.SetReaperRequest{Paused: true}); err != nil {
				t.Fatal(err)
			}
			issued := make(chan error, 1)
			go func() {
				_, err := c.DBCred.Issue(root, &graftv1.IssueRequest{Path: "/dba/pp/creds/ro"})
				issued <- err
			}()
			g.WaitHalted(t, 30*time.Second)
			if err := g.Kill(); err != nil {
				t.Fatal(err)
			}
			if err := <-issued; status.Code(err) != codes.Unavailable {
				t.Fatalf("the issue that graftd died in: %v, want Unavailable", err)
			}
			made := dynamicUsers(t, pg)
			if want := map[graftdtest.Halt]int{graftdtest.HaltBeforeCreateUser: 0, graftdtest.HaltAfterCreateUser: 1}[at]; len(made) != want {
				t.Fatalf("users after the kill: %v, want %d", made, want)
			}

			g.StartAgain(t)
			var pending *graftv1.Lease
			testenv.WaitFor(t, 30*time.Second, func() bool {
				list, err := c.Leases.ListLeases(root, &graftv1.ListLeasesRequest{})
				if err != nil {
					return false
				}
				if len(list.GetLeases()) != 1 || list.GetLeases()[0].GetState() != leases.StatePending {
					t.Fatalf("leases after the restart: %v; want the one pending", list.GetLeases())
				}
				pending = list.GetLeases()[0]
				return true
			})
			if len(made) == 1 && made[0] != pending.GetUsername() {
				t.Fatalf("the user made (%s) is not the pending lease's (%s)", made[0], pending.GetUsername())
			}
			after, err := c.DBCred.Issue(root, &graftv1.IssueRequest{Path: "/dba/pp/creds/ro"})
			if err != nil {
				t.Fatalf("issue after the restart: %v", err)
			}

			if _, err := c.Leases.SetReaper(root, &graftv1.SetReaperRequest{Paused: false}); err != nil {
				t.Fatal(err)
			}
			testenv.WaitFor(t, 30*time.Second, func() bool {
				list, err := c.Leases.ListLeases(root, &graftv1.ListLeasesRequest{})
				return err == nil && len(list.GetLeases()) == 1
			})
			list, err := c.Leases.ListLeases(root, &graftv1.ListLeasesRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if got := list.GetLeases(); len(got) != 1 || got[0].GetId() != after.GetLease().GetId() || got[0].GetState() != leases.StateActive {
				t.Fatalf("leases once the reaper ran: %v; want only %s, active", got, after.GetLease().GetId())
			}
			if users := dynamicUsers(t, pg); !slices.Equal(users, []string{after.GetUsername()}) {
				t.Fatalf("users once the reaper ran: %v; want only %s, the live lease's", users, after.GetUsername())
			}
			if _, err := c.Leases.RevokeLease(root, &graftv1.RevokeLeaseRequest{Id: after.GetLease().GetId()}); err != nil {
				t.Fatal(err)
			}
			if users := dynamicUsers(t, pg); len(users) != 0 {
				t.Fatalf("users after the last revocation: %v", users)
			}
		})
	}
}
