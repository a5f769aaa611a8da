package leases_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/dbcred/leases"
	"github.com/graft-sh/graft/internal/testenv"
)

// revocations wraps a driver and records when it was asked to revoke
// each user, and how often a driver was opened.
type revocations struct {
	mu    sync.Mutex
	calls map[string][]time.Time
	opens int
}

func (r *revocations) open(ctx context.Context, driver, dsn string) (dbcred.Dynamic, error) {
	r.mu.Lock()
	r.opens++
	r.mu.Unlock()
	d, err := leases.OpenDriver(ctx, driver, dsn)
	if err != nil {
		return nil, err
	}
	return countingDriver{Dynamic: d, r: r}, nil
}

type countingDriver struct {
	dbcred.Dynamic
	r *revocations
}

func (c countingDriver) RevokeUser(ctx context.Context, stmts []string, user string) error {
	c.r.mu.Lock()
	c.r.calls[user] = append(c.r.calls[user], time.Now())
	c.r.mu.Unlock()
	return c.Dynamic.RevokeUser(ctx, stmts, user)
}

// maxAttemptsWithin is the most revocations of one lease the reaper may
// start in window after its first: each failure puts the next attempt
// off by the backoff (2 s, 4 s, 8 s, … after the first, second, third
// failure).
func maxAttemptsWithin(window time.Duration) int {
	n, wait := 1, time.Duration(0)
	for next := 2 * time.Second; wait+next <= window; next *= 2 {
		wait += next
		n++
	}
	return n
}

func TestMaxAttemptsWithin(t *testing.T) {
	for _, tt := range []struct {
		window time.Duration
		want   int
	}{{0, 1}, {1999 * time.Millisecond, 1}, {2 * time.Second, 2}, {5 * time.Second, 2}, {6 * time.Second, 3}, {14 * time.Second, 4}} {
		if got := maxAttemptsWithin(tt.window); got != tt.want {
			t.Errorf("maxAttemptsWithin(%s) = %d, want %d", tt.window, got, tt.want)
		}
	}
}

// Leases that expire while their database is down: each revocation
// fails, is put off by its backoff (no lease is tried more often than
// the schedule allows, however often the reaper looks), and the leases
// show the failure, without the admin DSN or its password; a lease that
// failed MaxAttempts times is irrevocable and still retried. Once the
// database is back, every user is dropped and every lease is gone.
func TestReaperBacksOffWhileTheDatabaseIsDown(t *testing.T) {
	const n = leases.DefaultPerDatabase + 4 // so revocations queue for the database too
	counted := &revocations{calls: map[string][]time.Time{}}
	r := start(t, readOnly(), func(c *leases.Config) {
		c.Open = counted.open
		c.MaxAttempts = 2
	})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if err := r.m.SetPaused(ctx, true); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { defer close(reaped); r.m.RunReaper(ctx, "test") }()
	defer func() { cancel(); <-reaped }()

	users := map[string]bool{}
	for range n {
		got, err := r.m.Issue(ctx, appCopy, "app:orders", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		users[got.Lease.Username] = true
	}
	r.pg.Stop(t)
	time.Sleep(time.Second) // every lease has expired
	if err := r.m.SetPaused(ctx, false); err != nil {
		t.Fatal(err)
	}

	// The state each failure leaves: revoking, then irrevocable at
	// MaxAttempts, with the reason and never a secret.
	checkFailed := func(atLeast int) {
		t.Helper()
		var ls []leases.Lease
		testenv.WaitFor(t, 20*time.Second, func() bool {
			var err error
			if ls, err = r.m.List(ctx, leases.Filter{}); err != nil || len(ls) != n {
				t.Fatalf("lease ls with the database down: %d leases, %v", len(ls), err)
			}
			for _, l := range ls {
				if l.Attempts < atLeast {
					return false
				}
			}
			return true
		})
		for _, l := range ls {
			want := leases.StateRevoking
			if l.Attempts >= 2 {
				want = leases.StateIrrevocable
			}
			if l.State != want || l.LastError == "" {
				t.Errorf("lease %s after %d failed revocations: state %s, last error %q; want %s and why", l.ID, l.Attempts, l.State, l.LastError, want)
			}
			for _, secret := range []string{r.pg.SuperuserPassword, r.pg.DSN, "postgres://"} {
				if strings.Contains(l.LastError, secret) {
					t.Errorf("lease %s's last error holds the admin DSN or its password: %s", l.ID, l.LastError)
				}
			}
		}
		t.Logf("after %d failures: %s: %s", atLeast, ls[0].State, ls[0].LastError)
	}
	checkFailed(1)
	checkFailed(2)
	// Watch a while longer than the reaper's tick many times over, but
	// less than the 4 s the second failure put the next attempt off by.
	time.Sleep(1500 * time.Millisecond)

	counted.mu.Lock()
	for user := range users {
		calls := counted.calls[user]
		if len(calls) == 0 {
			t.Errorf("user %s: no revocation was attempted", user)
			continue
		}
		// A second of slack for the reaper's own writes before it calls
		// the driver.
		window := calls[len(calls)-1].Sub(calls[0])
		if bound := maxAttemptsWithin(window + time.Second); len(calls) > bound {
			t.Errorf("user %s: %d revocations in %s; the backoff allows %d", user, len(calls), window.Round(time.Millisecond), bound)
		}
		if len(calls) != 2 {
			t.Errorf("user %s: %d revocations before the third was due, want 2", user, len(calls))
		}
	}
	opens := counted.opens
	counted.mu.Unlock()
	if opens > 1+2*n {
		t.Errorf("the driver was opened %d times for %d leases failing twice", opens, n)
	}

	r.pg.StartAgain(t)
	testenv.WaitFor(t, 20*time.Second, func() bool {
		left, err := r.m.List(ctx, leases.Filter{})
		return err == nil && len(left) == 0
	})
	for user := range users {
		if r.userExists(t, user) {
			t.Errorf("user %s outlived its irrevocable lease once the database was back", user)
		}
	}
}
