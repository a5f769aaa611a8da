package leases_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/graft-sh/graft/audit"
	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/dbcred/leases"
	"github.com/graft-sh/graft/internal/pgtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

const (
	rolePath = "/dba/pp/creds/ro"
	admin    = "/dba/pp/admin/postgres"
	appCopy  = "/app/orders/replicated/creds/ro"
)

type rig struct {
	env *testenv.Env
	pg  *pgtest.Server
	m   *leases.Manager
	// audits counts the reaper's audit records.
	audits atomic.Int32
}

func (r *rig) AppendAsync(audit.Record) { r.audits.Add(1) }

// start runs etcd, PostgreSQL with a table the role may read, and a
// Manager, with the role at rolePath and a copy of it at appCopy, as
// replication writes one.
func start(t *testing.T, role dbcred.Role, cfg func(*leases.Config)) *rig {
	t.Helper()
	pg := pgtest.Start(t)
	pg.Exec(t, "postgres", "CREATE TABLE pets (name text)")
	r := &rig{env: testenv.Start(t), pg: pg}
	ctx := t.Context()
	s := r.env.Store
	if _, err := s.Put(ctx, admin+"/dsn", []byte(pg.URL(pg.Superuser, pg.SuperuserPassword, "postgres")), store.WriteOptions{Author: "user:dora"}); err != nil {
		t.Fatal(err)
	}
	value, err := role.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, rolePath, value, store.WriteOptions{Author: "user:dora"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, appCopy, value, store.WriteOptions{Author: "graft", Origin: &store.Origin{Kind: "replica", RuleID: "r1", SourcePath: rolePath}}); err != nil {
		t.Fatal(err)
	}
	c := leases.Config{
		Store:   s,
		MayRead: func(author, path string) bool { return author == "user:dora" && strings.HasPrefix(path, "/dba/") },
		Audit:   r,
		Log:     testenv.Logger(t),
		Tick:    50 * time.Millisecond,
	}
	if cfg != nil {
		cfg(&c)
	}
	r.m = leases.New(c)
	t.Cleanup(r.m.Close)
	return r
}

func readOnly() dbcred.Role {
	return dbcred.Role{
		Driver: dbcred.DriverPostgres, Admin: admin,
		CreationSQL: []string{
			`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`,
			`GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}"`,
		},
		DefaultTTL: dbcred.Duration(time.Hour), MaxTTL: dbcred.Duration(2 * time.Hour),
	}
}

// login connects as a credential and returns the connection or why not.
func (r *rig) login(t *testing.T, user, password string) (*pgx.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.pg.URL(user, password, "postgres"))
	if err == nil {
		t.Cleanup(func() { conn.Close(context.Background()) })
	}
	return conn, err
}

func (r *rig) userExists(t *testing.T, user string) bool {
	t.Helper()
	var n int
	conn := r.pg.Connect(t, "postgres")
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM pg_roles WHERE rolname = $1", user).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

// The guide's steps: two issues are two users, each with exactly the
// role's grants; renew extends; revoke drops the user; revoke --prefix
// drops every user of the role.
func TestIssueRenewRevoke(t *testing.T) {
	r := start(t, readOnly(), nil)
	ctx := t.Context()
	a, err := r.m.Issue(ctx, appCopy, "app:orders", 0)
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	b, err := r.m.Issue(ctx, appCopy, "app:orders", 10*time.Minute)
	if err != nil {
		t.Fatalf("issue again: %v", err)
	}
	if a.Lease.Username == b.Lease.Username || a.Password == b.Password || a.Lease.ID == b.Lease.ID {
		t.Fatalf("two issues gave the same user, password or lease: %s/%s", a.Lease.Username, b.Lease.Username)
	}
	if a.Lease.Role != rolePath || a.Lease.IssuedAt != appCopy || a.Lease.State != leases.StateActive || !a.Lease.Renewable() {
		t.Fatalf("lease = %+v", a.Lease)
	}
	if got := b.Lease.Expires.Sub(b.Lease.Issued); got != 10*time.Minute {
		t.Fatalf("a 10m lease lasts %s", got)
	}
	conn, err := r.login(t, a.Lease.Username, a.Password)
	if err != nil {
		t.Fatalf("the issued credential cannot log in: %v", err)
	}
	if _, err := conn.Exec(ctx, "SELECT * FROM pets"); err != nil {
		t.Fatalf("a read-only user cannot read: %v", err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO pets VALUES ('rex')"); err == nil {
		t.Fatal("a read-only user could insert")
	}

	renewed, err := r.m.Renew(ctx, b.Lease.ID, 90*time.Minute)
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	if !renewed.Expires.After(b.Lease.Expires) {
		t.Fatalf("renew did not extend: %s → %s", b.Lease.Expires, renewed.Expires)
	}
	// Never past the max TTL.
	capped, err := r.m.Renew(ctx, b.Lease.ID, 10*time.Hour)
	if err != nil || !capped.Expires.Equal(capped.MaxExpires) || capped.Renewable() {
		t.Fatalf("a renewal past the max TTL: %+v, %v", capped, err)
	}
	// Twice: the lease ends where it did.
	if again, err := r.m.Renew(ctx, b.Lease.ID, 10*time.Hour); err != nil || !again.Expires.Equal(capped.Expires) {
		t.Fatalf("a second renewal past the max TTL: %+v, %v", again, err)
	}

	if _, err := r.m.Revoke(ctx, a.Lease.ID); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if r.userExists(t, a.Lease.Username) {
		t.Fatal("the revoked lease's user still exists")
	}
	if _, err := r.m.Get(ctx, a.Lease.ID); !errors.Is(err, leases.ErrNotFound) {
		t.Fatalf("the revoked lease: %v, want ErrNotFound", err)
	}

	c, err := r.m.Issue(ctx, rolePath, "user:dora", 0)
	if err != nil {
		t.Fatalf("issue from the role itself: %v", err)
	}
	n, failed, err := r.m.RevokePrefix(ctx, "/dba/pp/creds")
	if err != nil || n != 2 || len(failed) != 0 {
		t.Fatalf("revoke --prefix: %d revoked, failed %v, %v", n, failed, err)
	}
	for _, u := range []string{b.Lease.Username, c.Lease.Username} {
		if r.userExists(t, u) {
			t.Fatalf("user %s survived revoke --prefix", u)
		}
	}
	left, err := r.m.List(ctx, leases.Filter{})
	if err != nil || len(left) != 0 {
		t.Fatalf("leases left: %v, %v", left, err)
	}
}

// A user that created a table and granted on it is revoked cleanly by the
// default revocation, sessions and all.
func TestDefaultRevocationDropsAUserThatOwnsObjects(t *testing.T) {
	role := readOnly()
	role.CreationSQL = []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`, `GRANT CREATE ON SCHEMA public TO "{{name}}"`}
	r := start(t, role, nil)
	ctx := t.Context()
	got, err := r.m.Issue(ctx, appCopy, "app:orders", 0)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := r.login(t, got.Lease.Username, got.Password)
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{"CREATE TABLE mine (x int)", "GRANT SELECT ON mine TO PUBLIC"} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if _, err := r.m.Revoke(ctx, got.Lease.ID); err != nil {
		t.Fatalf("revoking a user that owns a table and has a session: %v", err)
	}
	if r.userExists(t, got.Lease.Username) {
		t.Fatal("the user still exists")
	}
}

// The reaper revokes an expired lease, and audits it; paused, it does
// not.
func TestReaperRevokesExpiredLeases(t *testing.T) {
	r := start(t, readOnly(), nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if err := r.m.SetPaused(ctx, true); err != nil {
		t.Fatal(err)
	}
	go r.m.RunReaper(ctx, "test")
	got, err := r.m.Issue(ctx, appCopy, "app:orders", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if !r.userExists(t, got.Lease.Username) {
		t.Fatal("the paused reaper revoked a lease")
	}
	if err := r.m.SetPaused(ctx, false); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, func() bool { return !r.userExists(t, got.Lease.Username) })
	testenv.WaitFor(t, 5*time.Second, func() bool {
		_, err := r.m.Get(ctx, got.Lease.ID)
		return errors.Is(err, leases.ErrNotFound)
	})
	// The reaper audits a revocation once it is done, the lease gone.
	testenv.WaitFor(t, 5*time.Second, func() bool { return r.audits.Load() > 0 })
}

// A role only counts while its author may read its admin DSN; a value
// that is no role, or a copy whose role is gone, issues nothing; quotas
// refuse the lease past them, naming the limit.
func TestIssueRefusals(t *testing.T) {
	role := readOnly()
	role.MaxLeases = 2
	role.MaxLeasesPerPrincipal = 1
	r := start(t, role, nil)
	ctx := t.Context()
	s := r.env.Store
	// An application writes a role of its own into its tree.
	forged, _ := role.Encode()
	if _, err := s.Put(ctx, "/app/orders/myrole", forged, store.WriteOptions{Author: "app:orders"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Issue(ctx, "/app/orders/myrole", "app:orders", 0); !errors.Is(err, leases.ErrDenied) || !strings.Contains(err.Error(), "admin DSN") {
		t.Fatalf("a role its author may not use: %v, want ErrDenied naming the admin DSN", err)
	}
	if _, err := s.Put(ctx, "/app/orders/replicated/plain", []byte("hello"), store.WriteOptions{Author: "graft", Origin: &store.Origin{SourcePath: "/dba/pp/plain"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Issue(ctx, "/app/orders/replicated/plain", "app:orders", 0); err == nil {
		t.Fatal("issued from a copy of a value that is gone")
	}
	if _, err := r.m.Issue(ctx, "/app/orders/replicated/none", "app:orders", 0); !errors.Is(err, leases.ErrNotFound) {
		t.Fatalf("no role at all: %v, want ErrNotFound", err)
	}

	if _, err := r.m.Issue(ctx, appCopy, "app:orders", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Issue(ctx, appCopy, "app:orders", 0); !errors.Is(err, leases.ErrQuota) || !strings.Contains(err.Error(), "max_leases_per_principal is 1") {
		t.Fatalf("over the per-principal quota: %v", err)
	}
	if _, err := r.m.Issue(ctx, appCopy, "app:billing", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Issue(ctx, appCopy, "app:shipping", 0); !errors.Is(err, leases.ErrQuota) || !strings.Contains(err.Error(), "max_leases is 2") {
		t.Fatalf("over the role's quota: %v", err)
	}
}

// A creation statement that fails leaves no user and no lease, and its
// error holds no password.
func TestFailedCreationLeavesNothing(t *testing.T) {
	role := readOnly()
	role.CreationSQL = append(role.CreationSQL, `GRANT SELECT ON no_such_table TO "{{name}}"`)
	r := start(t, role, nil)
	ctx := t.Context()
	_, err := r.m.Issue(ctx, appCopy, "app:orders", 0)
	if !errors.Is(err, leases.ErrDatabase) {
		t.Fatalf("a failing statement: %v, want ErrDatabase", err)
	}
	if strings.Contains(err.Error(), "SCRAM") {
		t.Fatalf("the error holds the verifier: %v", err)
	}
	left, _ := r.m.List(ctx, leases.Filter{})
	if len(left) != 0 {
		t.Fatalf("a failed issue left leases: %+v", left)
	}
	var n int
	if err := r.pg.Connect(t, "postgres").QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("users left: %d, %v", n, err)
	}
}

// crashing wraps a driver and ends the goroutine that issues (as the
// process dying would) before or after it makes the user.
type crashing struct {
	dbcred.Dynamic
	afterCreate bool
}

func (c crashing) CreateUser(ctx context.Context, stmts []string, u dbcred.NewUser) error {
	if c.afterCreate {
		if err := c.Dynamic.CreateUser(ctx, stmts, u); err != nil {
			return err
		}
	}
	runtime.Goexit()
	return nil
}

// A graftd that dies between writing the lease and making its user, or
// between making the user and confirming the lease, leaves a pending
// lease; the reaper (of the next graftd) drops its user if there is one
// and the lease, after the pending grace.
func TestCrashWhileIssuingLeavesNothingBehind(t *testing.T) {
	for _, afterCreate := range []bool{false, true} {
		t.Run(fmt.Sprintf("after create %t", afterCreate), func(t *testing.T) {
			var crashed leases.Lease
			r := start(t, readOnly(), func(c *leases.Config) {
				c.PendingGrace = 2 * time.Second
				c.Open = func(ctx context.Context, driver, dsn string) (dbcred.Dynamic, error) {
					d, err := leases.OpenDriver(ctx, driver, dsn)
					return crashing{Dynamic: d, afterCreate: afterCreate}, err
				}
			})
			ctx := t.Context()
			done := make(chan struct{})
			go func() {
				defer close(done)
				r.m.Issue(ctx, appCopy, "app:orders", 0)
			}()
			<-done
			pending, err := r.m.List(ctx, leases.Filter{})
			if err != nil || len(pending) != 1 || pending[0].State != leases.StatePending {
				t.Fatalf("after the crash: %+v, %v", pending, err)
			}
			crashed = pending[0]
			if got := r.userExists(t, crashed.Username); got != afterCreate {
				t.Fatalf("user exists = %t after a crash after create = %t", got, afterCreate)
			}
			// The next graftd's reaper.
			next := leases.New(leases.Config{Store: r.env.Store, Log: testenv.Logger(t), Tick: 50 * time.Millisecond, PendingGrace: 2 * time.Second})
			t.Cleanup(next.Close)
			rctx, cancel := context.WithCancel(ctx)
			defer cancel()
			go next.RunReaper(rctx, "next")
			testenv.WaitFor(t, 15*time.Second, func() bool {
				left, _ := next.List(ctx, leases.Filter{})
				return len(left) == 0
			})
			if r.userExists(t, crashed.Username) {
				t.Fatalf("user %s outlived its pending lease", crashed.Username)
			}
		})
	}
}
