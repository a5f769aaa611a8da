package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
)

// Pet is one row of the pets table.
type Pet struct {
	ID        int64     `json:"id" db:"id"`
	Name      string    `json:"name" db:"name"`
	CreatedAt time.Time `json:"created_at" db:"created_at"`
}

// store is one connection pool to the database, opened with one set of
// settings: pgStore for PostgreSQL, mysqlStore for MariaDB. What a change
// of settings does with them (open and verify the new pool, swap it in,
// close the old one, run again an operation that found its pool closed)
// is db's, written once for both.
//
// An operation that fails before it has a connection, and so has had no
// effect, returns a noConnError; close waits for the operations that
// have one.
type store interface {
	ping(ctx context.Context) error
	// currentUser is the user the database says the pool is logged in as.
	currentUser(ctx context.Context) (string, error)
	// ensureSchema creates the pets table unless it exists (see
	// db.ensureSchema), and says whether it did.
	ensureSchema(ctx context.Context, owner string) (created bool, err error)
	listPets(ctx context.Context, limit int) ([]Pet, error)
	addPet(ctx context.Context, name string) (Pet, error)
	close()
}

// noConnError is the error of an operation that could not take a
// connection from its pool: it did nothing, so it may run again.
type noConnError struct{ err error }

func (e noConnError) Error() string { return e.err.Error() }
func (e noConnError) Unwrap() error { return e.err }

// errClosedPool is what an operation on a closed pool fails with.
var errClosedPool = errors.New("closed pool")

// db is petstore's connection to its database: one pool at a time,
// replaced whole when the settings change.
type db struct {
	log     *slog.Logger
	current atomic.Pointer[pool]
}

// pool is a connection pool, the settings it was opened with and the
// user it is logged in as.
type pool struct {
	store
	settings Settings
	user     string
}

// connectTimeout bounds opening and verifying a pool.
const connectTimeout = 10 * time.Second

// connect opens a pool with s, pings it and asks who it is logged in as,
// so that settings the database refuses are found before any request
// depends on them.
func connect(ctx context.Context, s Settings, log *slog.Logger) (*pool, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	var st store
	var err error
	switch s.Driver {
	case driverPostgres:
		st, err = openPostgres(ctx, s)
	case driverMySQL:
		st, err = openMySQL(s, log)
	default: // parseSettings refuses it
		err = fmt.Errorf("unknown DB_DRIVER %q", s.Driver)
	}
	if err != nil {
		return nil, err
	}
	user := ""
	err = st.ping(ctx)
	if err == nil {
		user, err = st.currentUser(ctx)
	}
	if err != nil {
		st.close()
		return nil, fmt.Errorf("connect as %s: %w", s, err)
	}
	return &pool{store: st, settings: s, user: user}, nil
}

func openDB(ctx context.Context, s Settings, log *slog.Logger) (*db, error) {
	p, err := connect(ctx, s, log)
	if err != nil {
		return nil, err
	}
	d := &db{log: log}
	d.current.Store(p)
	d.logConnected(p)
	return d, nil
}

func (d *db) logConnected(p *pool) {
	s := p.settings
	attrs := []any{"user", p.user, "driver", s.Driver, "host", s.Host, "port", s.Port, "database", s.Name}
	if p.user != s.User {
		attrs = append(attrs, "db_user", s.User)
	}
	d.log.Info("connected to database as user "+p.user, attrs...)
}

// reload moves to the settings src holds now, if they changed. The new
// pool is opened and verified first and only then put in place; the old
// one is closed after that, which waits for the requests still using its
// connections. If the new settings do not work, petstore keeps the pool it
// has and says so.
func (d *db) reload(ctx context.Context, src source) {
	old := d.current.Load()
	s, err := src.load()
	if err != nil {
		d.log.Error("reload: cannot read the database settings; keeping the current connection", "user", old.user, "err", err)
		return
	}
	if s == old.settings {
		d.log.Info("reload: database settings unchanged", "user", s.User)
		return
	}
	if s.Driver != old.settings.Driver {
		// The pets table was made (or found) at start, in the database
		// petstore started on: another kind of database is another
		// database, which a restart sets up.
		d.log.Error("reload: DB_DRIVER changed from "+old.settings.Driver+" to "+s.Driver+", which needs a restart; keeping the current connection as user "+old.user,
			"user", old.user)
		return
	}
	next, err := connect(ctx, s, d.log)
	if err != nil {
		d.log.Error("reload: the new database settings do not work; keeping the current connection as user "+old.user,
			"user", old.user, "new_user", s.User, "err", err)
		return
	}
	d.current.Store(next)
	d.logConnected(next)
	old.close()
	d.log.Info("closed the previous connection pool", "user", old.user)
}

// settings are the settings of the pool in use.
func (d *db) settings() Settings { return d.current.Load().settings }

func (d *db) close() { d.current.Load().close() }

// do runs f on the pool in use. A request that read the pool just before
// a reload closed it finds it closed; by then the reload has put the new
// pool in place, so it runs again there. Only an operation that had no
// connection, and so did nothing, runs again: no pet is added twice.
func (d *db) do(f func(*pool) error) error {
	for {
		p := d.current.Load()
		err := f(p)
		if err == nil || !errors.As(err, new(noConnError)) || d.current.Load() == p {
			return err
		}
	}
}

// ping checks the pool in use and returns its settings.
func (d *db) ping(ctx context.Context) (Settings, error) {
	var s Settings
	err := d.do(func(p *pool) error {
		s = p.settings
		return p.ping(ctx)
	})
	return s, err
}

// ensureSchema creates the pets table unless it exists. It looks first
// rather than relying on CREATE TABLE IF NOT EXISTS, which still needs
// the privilege to create tables: a user that may only read and write a
// table someone else made can run petstore.
//
// On PostgreSQL, with owner set, the table is made as that role (SET
// ROLE), so that it belongs to a group every login user of the
// application is a member of, not to whichever of them happened to start
// first: blue/green credentials then share it. MariaDB has no owner of a
// table: each user's privileges on it come from its grants (for
// blue/green, from a role both users have), so owner is ignored there,
// with a line in the log.
func (d *db) ensureSchema(ctx context.Context, owner string) error {
	if owner != "" && d.settings().Driver == driverMySQL {
		d.log.Info("--schema-owner is ignored on MariaDB, where a table has no owner: the users' privileges on it come from the grants to their role",
			"schema_owner", owner)
		owner = ""
	}
	var created bool
	var user string
	err := d.do(func(p *pool) (err error) {
		user = p.user
		created, err = p.ensureSchema(ctx, owner)
		return err
	})
	switch {
	case err != nil || !created:
		return err
	case d.settings().Driver == driverMySQL:
		d.log.Info("created the pets table", "user", user)
	case owner != "":
		d.log.Info("created the pets table", "owner", owner)
	default:
		d.log.Info("created the pets table", "owner", user)
	}
	return nil
}

// listPets returns the newest pets first.
func (d *db) listPets(ctx context.Context, limit int) ([]Pet, error) {
	var pets []Pet
	err := d.do(func(p *pool) (err error) {
		pets, err = p.listPets(ctx, limit)
		return err
	})
	return pets, err
}

func (d *db) addPet(ctx context.Context, name string) (Pet, error) {
	var pet Pet
	err := d.do(func(p *pool) (err error) {
		pet, err = p.addPet(ctx, name)
		return err
	})
	return pet, err
}
