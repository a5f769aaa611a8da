package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Pet is one row of the pets table.
type Pet struct {
	ID        int64     `json:"id" db:"id"`
	Name      string    `json:"name" db:"name"`
	CreatedAt time.Time `json:"created_at" db:"created_at"`
}

// db is petstore's connection to PostgreSQL: one pool at a time, replaced
// whole when the settings change.
type db struct {
	log     *slog.Logger
	current atomic.Pointer[pool]
}

// pool is a connection pool and the settings it was opened with.
type pool struct {
	*pgxpool.Pool
	settings Settings
}

// connectTimeout bounds opening and verifying a pool.
const connectTimeout = 10 * time.Second

// connect opens a pool with s and pings it, so that settings the database
// refuses are found before any request depends on them.
func connect(ctx context.Context, s Settings) (*pool, error) {
	cfg, err := s.poolConfig()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect as %s: %w", s, err)
	}
	if err := p.Ping(ctx); err != nil {
		p.Close()
		return nil, fmt.Errorf("connect as %s: %w", s, err)
	}
	return &pool{Pool: p, settings: s}, nil
}

func openDB(ctx context.Context, s Settings, log *slog.Logger) (*db, error) {
	p, err := connect(ctx, s)
	if err != nil {
		return nil, err
	}
	d := &db{log: log}
	d.current.Store(p)
	d.logConnected(s)
	return d, nil
}

func (d *db) logConnected(s Settings) {
	d.log.Info("connected to database as user "+s.User, "user", s.User, "host", s.Host, "port", s.Port, "database", s.Name)
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
		d.log.Error("reload: cannot read the database settings; keeping the current connection", "user", old.settings.User, "err", err)
		return
	}
	if s == old.settings {
		d.log.Info("reload: database settings unchanged", "user", s.User)
		return
	}
	next, err := connect(ctx, s)
	if err != nil {
		d.log.Error("reload: the new database settings do not work; keeping the current connection as user "+old.settings.User,
			"user", old.settings.User, "new_user", s.User, "err", err)
		return
	}
	d.current.Store(next)
	d.logConnected(s)
	old.Close()
	d.log.Info("closed the previous connection pool", "user", old.settings.User)
}

// settings are the settings of the pool in use.
func (d *db) settings() Settings { return d.current.Load().settings }

func (d *db) close() { d.current.Load().Close() }

// acquire takes a connection from the pool in use. A request that read
// the pool just before a reload closed it finds it closed; by then the
// reload has put the new pool in place, so it takes a connection there.
func (d *db) acquire(ctx context.Context) (*pgxpool.Conn, Settings, error) {
	for {
		p := d.current.Load()
		c, err := p.Acquire(ctx)
		if err == nil || d.current.Load() == p {
			return c, p.settings, err
		}
	}
}

func (d *db) withConn(ctx context.Context, f func(*pgxpool.Conn) error) error {
	c, _, err := d.acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	return f(c)
}

// ping checks the pool in use and returns its settings.
func (d *db) ping(ctx context.Context) (Settings, error) {
	c, s, err := d.acquire(ctx)
	if err != nil {
		return s, err
	}
	defer c.Release()
	return s, c.Ping(ctx)
}

const createPets = `CREATE TABLE pets (
	id         bigserial PRIMARY KEY,
	name       text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
)`

// ensureSchema creates the pets table unless it exists. It looks first
// rather than relying on CREATE TABLE IF NOT EXISTS, which still needs
// the CREATE privilege on the schema: a user that may only read and write
// a table someone else made can run petstore. With owner set the table is
// made as that role (SET ROLE), so that it belongs to a group every login
// user of the application is a member of, not to whichever of them
// happened to start first: blue/green credentials then share it.
func (d *db) ensureSchema(ctx context.Context, owner string) error {
	return d.withConn(ctx, func(c *pgxpool.Conn) error {
		var exists bool
		if err := c.QueryRow(ctx, "SELECT to_regclass('pets') IS NOT NULL").Scan(&exists); err != nil {
			return fmt.Errorf("look for the pets table: %w", err)
		}
		if exists {
			return nil
		}
		err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			if owner != "" {
				if _, err := tx.Exec(ctx, "SET LOCAL ROLE "+pgx.Identifier{owner}.Sanitize()); err != nil {
					return fmt.Errorf("create the pets table as %s: %w", owner, err)
				}
			}
			if _, err := tx.Exec(ctx, createPets); err != nil {
				return fmt.Errorf("create the pets table: %w", err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if owner == "" {
			owner = d.settings().User
		}
		d.log.Info("created the pets table", "owner", owner)
		return nil
	})
}

// listPets returns the newest pets first.
func (d *db) listPets(ctx context.Context, limit int) ([]Pet, error) {
	var pets []Pet
	err := d.withConn(ctx, func(c *pgxpool.Conn) error {
		rows, err := c.Query(ctx, "SELECT id, name, created_at FROM pets ORDER BY id DESC LIMIT $1", limit)
		if err != nil {
			return err
		}
		pets, err = pgx.CollectRows(rows, pgx.RowToStructByName[Pet])
		return err
	})
	return pets, err
}

func (d *db) addPet(ctx context.Context, name string) (Pet, error) {
	var pet Pet
	err := d.withConn(ctx, func(c *pgxpool.Conn) error {
		rows, err := c.Query(ctx, "INSERT INTO pets (name) VALUES ($1) RETURNING id, name, created_at", name)
		if err != nil {
			return err
		}
		pet, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Pet])
		return err
	})
	return pet, err
}
