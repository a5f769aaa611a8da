package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
)

// mysqlStore is a store on MariaDB (DB_DRIVER=mysql), through
// database/sql and go-sql-driver/mysql.
type mysqlStore struct {
	db *sql.DB

	// database/sql's Close closes the idle connections only, and leaves
	// those in use to close when they are released; pgx's waits for
	// them. The store counts them itself, so that close, like pgx's,
	// returns only when the last request on the pool is done.
	mu       sync.Mutex
	released sync.Cond // on mu: inUse fell to 0
	closing  bool
	inUse    int
	// closingCtx is cancelled (failWaits) when close begins: as pgx's
	// close does, that fails the waits for a connection of the pool (all
	// of them busy), so that those requests run on the pool that
	// replaces it.
	closingCtx context.Context
	failWaits  context.CancelFunc
}

func openMySQL(s Settings, log *slog.Logger) (store, error) {
	cfg := s.mysqlConfig()
	cfg.Logger = driverLogger{log}
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("database settings (%s): %w", s, err)
	}
	db := sql.OpenDB(connector)
	// As pgxpool's defaults; database/sql would keep only 2 idle
	// connections, and log in again for most requests under load.
	conns := max(4, runtime.NumCPU())
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	db.SetConnMaxIdleTime(30 * time.Minute)
	db.SetConnMaxLifetime(s.ConnMaxLifetime)
	st := &mysqlStore{db: db}
	st.released.L = &st.mu
	st.closingCtx, st.failWaits = context.WithCancel(context.Background())
	return st, nil
}

// driverLogger puts the driver's own messages (a connection found broken,
// say) in petstore's log.
type driverLogger struct{ log *slog.Logger }

func (l driverLogger) Print(v ...any) { l.log.Warn("mysql driver: " + fmt.Sprint(v...)) }

// close closes the pool once the connections in use are released.
func (s *mysqlStore) close() {
	s.mu.Lock()
	s.closing = true
	s.failWaits()
	for s.inUse > 0 {
		s.released.Wait()
	}
	s.mu.Unlock()
	s.db.Close()
}

// with runs f on a connection of the pool.
func (s *mysqlStore) with(ctx context.Context, f func(*sql.Conn) error) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return noConnError{errClosedPool}
	}
	s.inUse++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.inUse--; s.inUse == 0 {
			s.released.Broadcast()
		}
		s.mu.Unlock()
	}()
	acquireCtx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.closingCtx, cancel)
	c, err := s.db.Conn(acquireCtx)
	stop()
	cancel()
	if err != nil {
		if s.closingCtx.Err() != nil {
			err = errClosedPool
		}
		return noConnError{err}
	}
	defer c.Close() // back to the pool
	return f(c)
}

func (s *mysqlStore) ping(ctx context.Context) error {
	return s.with(ctx, func(c *sql.Conn) error { return c.PingContext(ctx) })
}

// currentUser is the user part of CURRENT_USER(), the account the server
// matched the login to: "user@host", the host often '%'.
func (s *mysqlStore) currentUser(ctx context.Context) (string, error) {
	var account string
	err := s.with(ctx, func(c *sql.Conn) error {
		return c.QueryRowContext(ctx, "SELECT CURRENT_USER()").Scan(&account)
	})
	if i := strings.LastIndexByte(account, '@'); i >= 0 {
		account = account[:i]
	}
	return account, err
}

// createPetsMySQL is the pets table on MariaDB, to the JSON the same as
// PostgreSQL's: a TIMESTAMP is an instant, as a timestamptz, with
// microseconds.
const createPetsMySQL = `CREATE TABLE IF NOT EXISTS pets (
	id         BIGINT AUTO_INCREMENT PRIMARY KEY,
	name       VARCHAR(200) NOT NULL,
	created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) DEFAULT CHARSET = utf8mb4`

// ensureSchema looks for the table first, as on PostgreSQL: CREATE TABLE
// IF NOT EXISTS needs the CREATE privilege even when the table is there.
// It takes no owner (see db.ensureSchema).
func (s *mysqlStore) ensureSchema(ctx context.Context, _ string) (created bool, err error) {
	err = s.with(ctx, func(c *sql.Conn) error {
		var n int
		if err := c.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'pets'").Scan(&n); err != nil {
			return fmt.Errorf("look for the pets table: %w", err)
		}
		if n > 0 {
			return nil
		}
		if _, err := c.ExecContext(ctx, createPetsMySQL); err != nil {
			return fmt.Errorf("create the pets table: %w", err)
		}
		created = true
		return nil
	})
	return created, err
}

func (s *mysqlStore) listPets(ctx context.Context, limit int) ([]Pet, error) {
	var pets []Pet
	err := s.with(ctx, func(c *sql.Conn) error {
		rows, err := c.QueryContext(ctx, "SELECT id, name, created_at FROM pets ORDER BY id DESC LIMIT ?", limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var p Pet
			if err := rows.Scan(&p.ID, &p.Name, &p.CreatedAt); err != nil {
				return err
			}
			p.CreatedAt = p.CreatedAt.Local() // as pgx returns a timestamptz
			pets = append(pets, p)
		}
		return rows.Err()
	})
	return pets, err
}

// addPet inserts and then reads the row back on the same connection,
// rather than with MariaDB's INSERT … RETURNING, which MySQL lacks.
func (s *mysqlStore) addPet(ctx context.Context, name string) (Pet, error) {
	var pet Pet
	err := s.with(ctx, func(c *sql.Conn) error {
		res, err := c.ExecContext(ctx, "INSERT INTO pets (name) VALUES (?)", name)
		if err != nil {
			return err
		}
		id, err := res.LastInsertId()
		if err != nil {
			return err
		}
		err = c.QueryRowContext(ctx, "SELECT id, name, created_at FROM pets WHERE id = ?", id).Scan(&pet.ID, &pet.Name, &pet.CreatedAt)
		pet.CreatedAt = pet.CreatedAt.Local()
		return err
	})
	return pet, err
}
