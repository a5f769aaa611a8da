package graftd_test

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/dbcred/leases"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/graftd"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/pgtest"
	"github.com/graft-sh/graft/internal/testenv"
)

// latencies times calls of a cheap RPC.
type latencies struct {
	mu    sync.Mutex
	calls []time.Duration
	errs  []error
}

func (l *latencies) time(call func() error) {
	began := time.Now()
	err := call()
	d := time.Since(began)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, d)
	if err != nil {
		l.errs = append(l.errs, err)
	}
}

// quantile is the q-quantile of the calls' durations, and the longest.
func (l *latencies) quantile(q float64) (time.Duration, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.calls) == 0 {
		return 0, 0
	}
	s := slices.Clone(l.calls)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))], s[len(s)-1]
}

// quickCreate makes a lease's user without a password. With one, the
// driver computes the SCRAM verifier (4,096 rounds of PBKDF2) and the
// server, given it, checks it against the empty password (4,096 more,
// some 3 ms of its CPU): for 5,000 users on two cores under -race that
// took 84 s of the test's 107. Everything else an issue does, through
// graftd's API, and every revocation is the real driver's.
type quickCreate struct {
	dbcred.Dynamic
	admin *pgxpool.Pool
}

func (q quickCreate) CreateUser(ctx context.Context, _ []string, u dbcred.NewUser) error {
	_, err := q.admin.Exec(ctx, "CREATE ROLE "+pgtest.Ident(u.Name)+" LOGIN IN ROLE pets_reader")
	return err
}

// 5,000 leases expire at once: the reaper drops every user and removes
// every lease, and meanwhile graftd's API answers. The latency of a
// cheap call, idle and during the drain, is logged, never gated on:
// the bound asserted is only that every call answers within seconds.
func TestManyLeasesExpireAtOnce(t *testing.T) {
	const n = 5000
	pg := pgtest.Start(t)
	// The users take the table's grants as members of a group role. A
	// table's ACL, granted to each user, must fit in its catalog row, a
	// page: some 2,400 users on, GRANT fails with "row is too big".
	pg.Exec(t, "postgres", "CREATE TABLE pets (name text)")
	pg.Exec(t, "postgres", "CREATE ROLE pets_reader NOLOGIN")
	pg.Exec(t, "postgres", "GRANT SELECT ON pets TO pets_reader")
	admin, err := pgxpool.New(t.Context(), pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	// users counts the leases' users, on a connection of the pool: a new
	// one would cost a SCRAM login each time.
	users := func() int {
		var n int
		if err := admin.QueryRow(t.Context(), "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	g := graftdtest.Start(t, graftdtest.WithConfig(func(c *graftd.Config) {
		c.Leases.Open = func(ctx context.Context, driver, dsn string) (dbcred.Dynamic, error) {
			d, err := leases.OpenDriver(ctx, driver, dsn)
			if err != nil {
				return nil, err
			}
			return quickCreate{Dynamic: d, admin: admin}, nil
		}
	}))
	c := graftdtest.Dial(t, g.Addr)
	root := authed(g.Token)
	putPostgresRole(t, c, root, pg, "/dba/pp/creds/ro")
	role := &graftv1.DBCredRole{
		Driver: "postgres", Admin: "/dba/pp/admin/postgres",
		CreationSql: []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE pets_reader`},
	}
	if _, err := c.DBCred.PutRole(root, &graftv1.PutRoleRequest{Path: "/dba/pp/creds/ro", Role: role}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.KV.Put(root, &graftv1.PutRequest{Path: "/dba/pp/ping", Value: []byte("pong")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Leases.SetReaper(root, &graftv1.SetReaperRequest{Paused: true}); err != nil {
		t.Fatal(err)
	}

	// Issue them all, a few at a time, each for a second: by the time
	// the reaper resumes, every one is due.
	began := time.Now()
	var next atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for next.Add(1) <= n {
				if _, err := c.DBCred.Issue(root, &graftv1.IssueRequest{Path: "/dba/pp/creds/ro", Ttl: durationpb.New(time.Second)}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("issue: %v", err)
	}
	t.Logf("issued %d leases in %s", n, time.Since(began).Round(time.Millisecond))
	if got := users(); got != n {
		t.Fatalf("%d users after %d issues", got, n)
	}
	time.Sleep(time.Second)

	ping := func(l *latencies) {
		l.time(func() error {
			ctx, cancel := context.WithTimeout(root, 10*time.Second)
			defer cancel()
			_, err := c.KV.Get(ctx, &graftv1.GetRequest{Path: "/dba/pp/ping"})
			return err
		})
	}
	var idle, draining latencies
	for range 200 {
		ping(&idle)
		time.Sleep(5 * time.Millisecond)
	}

	began = time.Now()
	if _, err := c.Leases.SetReaper(root, &graftv1.SetReaperRequest{Paused: false}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	pinged := make(chan struct{})
	go func() {
		defer close(pinged)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				ping(&draining)
			}
		}
	}()
	testenv.WaitFor(t, 3*time.Minute, func() bool {
		time.Sleep(200 * time.Millisecond)
		return users() == 0
	})
	drained := time.Since(began)
	close(stop)
	<-pinged
	testenv.WaitFor(t, 30*time.Second, func() bool {
		list, err := c.Leases.ListLeases(root, &graftv1.ListLeasesRequest{})
		return err == nil && len(list.GetLeases()) == 0
	})

	idle50, _ := idle.quantile(0.5)
	idle99, idleMax := idle.quantile(0.99)
	drain50, _ := draining.quantile(0.5)
	drain99, drainMax := draining.quantile(0.99)
	t.Logf("drained %d leases in %s (%.0f/s)", n, drained.Round(time.Millisecond), n/drained.Seconds())
	t.Logf("Get, idle:     p50 %s p99 %s max %s (%d calls)", idle50, idle99, idleMax, len(idle.calls))
	t.Logf("Get, draining: p50 %s p99 %s max %s (%d calls)", drain50, drain99, drainMax, len(draining.calls))
	for _, l := range []*latencies{&idle, &draining} {
		if len(l.errs) > 0 {
			t.Errorf("%d of %d calls failed, first: %v", len(l.errs), len(l.calls), l.errs[0])
		}
	}
	// Generous: a figure for the log, not a benchmark that gates CI.
	if drainMax > 5*time.Second {
		t.Errorf("a call took %s while the leases drained", drainMax)
	}
}
