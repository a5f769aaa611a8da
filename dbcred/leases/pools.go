package leases

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"time"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/dbcred/mysql"
	"github.com/graft-sh/graft/dbcred/postgres"
)

// DefaultPerDatabase is Config.PerDatabase's default: the statements run
// at once on one database, and the admin connections open to it.
const DefaultPerDatabase = 8

// OpenDriver opens the driver named driver on an admin DSN, with up to
// DefaultPerDatabase connections. Its errors never hold the DSN.
func OpenDriver(ctx context.Context, driver, dsn string) (dbcred.Dynamic, error) {
	return OpenDriverConns(ctx, driver, dsn, DefaultPerDatabase)
}

// OpenDriverConns is OpenDriver with up to conns connections.
func OpenDriverConns(ctx context.Context, driver, dsn string, conns int) (dbcred.Dynamic, error) {
	switch driver {
	case dbcred.DriverPostgres:
		return postgres.OpenConns(ctx, dsn, conns)
	case dbcred.DriverMySQL:
		return mysql.OpenConns(ctx, dsn, conns)
	}
	return nil, fmt.Errorf("driver %q: want postgres or mysql", clip(driver))
}

// poolIdle is how long an admin connection pool may go unused before it
// is closed: a DSN changed or a role removed leaves no connections open.
const poolIdle = 5 * time.Minute

// pools are the open drivers, one per admin DSN, each with a bounded
// number of statements in flight, reused across requests, and closed
// once unused for poolIdle.
type pools struct {
	open  func(ctx context.Context, driver, dsn string) (dbcred.Dynamic, error)
	slots int
	idle  time.Duration
	now   func() time.Time
	mu    sync.Mutex
	m     map[[32]byte]*pool
}

type pool struct {
	once  sync.Once
	drv   dbcred.Dynamic
	err   error
	slots chan struct{}
	// users and last are guarded by pools.mu: the requests holding the
	// pool, and when the last one gave it back.
	users int
	last  time.Time
}

func newPools(open func(ctx context.Context, driver, dsn string) (dbcred.Dynamic, error), slots int) *pools {
	return &pools{open: open, slots: slots, idle: poolIdle, now: time.Now, m: map[[32]byte]*pool{}}
}

// closeIdle closes the pools nobody has used for ps.idle. Callers hold mu.
func (ps *pools) closeIdle() {
	now := ps.now()
	for k, p := range ps.m {
		if p.users == 0 && !p.last.IsZero() && now.Sub(p.last) >= ps.idle {
			delete(ps.m, k)
			if p.drv != nil {
				go p.drv.Close()
			}
		}
	}
}

// get returns the driver of dsn and a function that gives back the slot
// it took. A driver that failed to open is not kept: the next request
// tries again.
func (ps *pools) get(ctx context.Context, driver, dsn string) (dbcred.Dynamic, func(), error) {
	key := sha256.Sum256([]byte(driver + "\x00" + dsn))
	ps.mu.Lock()
	ps.closeIdle()
	p, ok := ps.m[key]
	if !ok {
		p = &pool{slots: make(chan struct{}, ps.slots)}
		ps.m[key] = p
	}
	p.users++
	ps.mu.Unlock()
	done := func() {
		ps.mu.Lock()
		p.users--
		p.last = ps.now()
		ps.mu.Unlock()
	}
	p.once.Do(func() { p.drv, p.err = ps.open(ctx, driver, dsn) })
	if p.err != nil {
		ps.mu.Lock()
		if ps.m[key] == p {
			delete(ps.m, key)
		}
		p.users--
		ps.mu.Unlock()
		return nil, nil, fmt.Errorf("%w: open the admin connection: %w", ErrDatabase, dbcred.ScrubDSN(p.err, dsn))
	}
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		done()
		return nil, nil, ctx.Err()
	}
	return p.drv, func() { <-p.slots; done() }, nil
}

func (ps *pools) close() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for k, p := range ps.m {
		if p.drv != nil {
			p.drv.Close()
		}
		delete(ps.m, k)
	}
}
