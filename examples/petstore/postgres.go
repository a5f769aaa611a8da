package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgStore is a store on PostgreSQL, through pgx's pool.
type pgStore struct{ p *pgxpool.Pool }

func openPostgres(ctx context.Context, s Settings) (store, error) {
	cfg, err := s.poolConfig()
	if err != nil {
		return nil, err
	}
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect as %s: %w", s, err)
	}
	return pgStore{p}, nil
}

// close closes the pool once the connections in use are released.
func (s pgStore) close() { s.p.Close() }

// with runs f on a connection of the pool.
func (s pgStore) with(ctx context.Context, f func(*pgxpool.Conn) error) error {
	c, err := s.p.Acquire(ctx)
	if err != nil {
		return noConnError{err}
	}
	defer c.Release()
	return f(c)
}

func (s pgStore) ping(ctx context.Context) error {
	return s.with(ctx, func(c *pgxpool.Conn) error { return c.Ping(ctx) })
}

// currentUser is session_user, the role the pool logged in as. It is not
// current_user: a blue/green user has ALTER ROLE ... SET ROLE <group>, so
// its current_user is the group, the same for blue and green.
func (s pgStore) currentUser(ctx context.Context) (string, error) {
	var user string
	err := s.with(ctx, func(c *pgxpool.Conn) error {
		return c.QueryRow(ctx, "SELECT session_user").Scan(&user)
	})
	return user, err
}

const createPets = `CREATE TABLE pets (
	id         bigserial PRIMARY KEY,
	name       text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
)`

func (s pgStore) ensureSchema(ctx context.Context, owner string) (created bool, err error) {
	err = s.with(ctx, func(c *pgxpool.Conn) error {
		var exists bool
		if err := c.QueryRow(ctx, "SELECT to_regclass('pets') IS NOT NULL").Scan(&exists); err != nil {
			return fmt.Errorf("look for the pets table: %w", err)
		}
		if exists {
			return nil
		}
		created = true
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
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
	})
	return created && err == nil, err
}

func (s pgStore) listPets(ctx context.Context, limit int) ([]Pet, error) {
	var pets []Pet
	err := s.with(ctx, func(c *pgxpool.Conn) error {
		rows, err := c.Query(ctx, "SELECT id, name, created_at FROM pets ORDER BY id DESC LIMIT $1", limit)
		if err != nil {
			return err
		}
		pets, err = pgx.CollectRows(rows, pgx.RowToStructByName[Pet])
		return err
	})
	return pets, err
}

func (s pgStore) addPet(ctx context.Context, name string) (Pet, error) {
	var pet Pet
	err := s.with(ctx, func(c *pgxpool.Conn) error {
		rows, err := c.Query(ctx, "INSERT INTO pets (name) VALUES ($1) RETURNING id, name, created_at", name)
		if err != nil {
			return err
		}
		pet, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Pet])
		return err
	})
	return pet, err
}
