package leases

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/dbcred/mysql"
	"github.com/graft-sh/graft/dbcred/postgres"
)

// OpenDriver opens the driver named driver on an admin DSN. Its errors
// never hold the DSN.
func OpenDriver(ctx context.Context, driver, dsn string) (dbcred.Dynamic, error) {
	switch driver {
	case dbcred.DriverPostgres:
		return postgres.Open(ctx, dsn)
	case dbcred.DriverMySQL:
		return mysql.Open(ctx, dsn)
	}
	return nil, fmt.Errorf("driver %q: want postgres or mysql", clip(driver))
}

// pools are the open drivers, one per admin DSN, each with a bounded
// number of statements in flight, reused across requests.
type pools struct {
	open  func(ctx context.Context, driver, dsn string) (dbcred.Dynamic, error)
	slots int
	mu    sync.Mutex
	m     map[[32]byte]*pool
}

type pool struct {
	once  sync.Once
	drv   dbcred.Dynamic
	err   error
	slots chan struct{}
}

func newPools(open func(ctx context.Context, driver, dsn string) (dbcred.Dynamic, error), slots int) *pools {
	return &pools{open: open, slots: slots, m: map[[32]byte]*pool{}}
}

// get returns the driver of dsn and a function that gives back the slot
// it took. A driver that failed to open is not kept: the next request
// tries again.
func (ps *pools) get(ctx context.Context, driver, dsn string) (dbcred.Dynamic, func(), error) {
	key := sha256.Sum256([]byte(driver + "\x00" + dsn))
	ps.mu.Lock()
	p, ok := ps.m[key]
	if !ok {
		p = &pool{slots: make(chan struct{}, ps.slots)}
		ps.m[key] = p
	}
	ps.mu.Unlock()
	p.once.Do(func() { p.drv, p.err = ps.open(ctx, driver, dsn) })
	if p.err != nil {
		ps.mu.Lock()
		if ps.m[key] == p {
			delete(ps.m, key)
		}
		ps.mu.Unlock()
		return nil, nil, fmt.Errorf("%w: open the admin connection: %w", ErrDatabase, dbcred.ScrubDSN(p.err, dsn))
	}
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	return p.drv, func() { <-p.slots }, nil
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
