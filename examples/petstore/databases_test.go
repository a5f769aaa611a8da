package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"

	"github.com/graft-sh/graft/internal/mysqltest"
	"github.com/graft-sh/graft/internal/pgtest"
)

// testDB is a database server for petstore's tests, PostgreSQL or
// MariaDB, set up for blue/green: the database petstore, whose tables the
// users petstore_blue and petstore_green (passwords) share through the
// group role petstore. What differs between the two is here; the tests
// that run on both (forEachDB) are written once.
type testDB interface {
	// driver is petstore's DB_DRIVER for the server.
	driver() string
	// addr is the server's host:port.
	addr() string
	// settings are petstore's settings for user on database, as
	// KEY=VALUE lines.
	settings(user, password, database string) []string
	// createShop makes the database shop as a DBA would: the superuser
	// creates the pets table and the user clerk (password clerk-pw),
	// granted reading and inserting only, and so unable to run CREATE
	// TABLE IF NOT EXISTS on it, which the test checks.
	createShop(t *testing.T)
	// checkSchemaOwner checks what --schema-owner group did to the pets
	// table petstore p made.
	checkSchemaOwner(t *testing.T, p *process)
	// lockPets locks the pets table against reading and writing until
	// unlock is called (or the test ends).
	lockPets(t *testing.T) (unlock func())
	// waiting is how many of user's sessions wait for a lock.
	waiting(t *testing.T, user string) int
	// lockOut keeps user from logging in again and ends the sessions it
	// has open; it returns how many it ended.
	lockOut(t *testing.T, user string) int
	// sessions is how many sessions user has open in the database
	// petstore.
	sessions(t *testing.T, user string) int
	// refused is what the error of a login with a wrong password says.
	refused(user string) string
	// rotationDriver and adminDSN are a rotation's --driver and its
	// admin connection (the superuser's).
	rotationDriver() string
	adminDSN() string
	// hostPort is where the server listens.
	hostPort() (string, int)
	// logIn logs in as user to the database petstore, and logs out.
	logIn(ctx context.Context, user, password string) error
}

// forEachDB runs test on each kind of database, as subtests named after
// it.
func forEachDB(t *testing.T, test func(t *testing.T, db testDB)) {
	forEach(t, newPostgres, newMariaDB, test)
}

// forEachEmptyDB is forEachDB with neither user: the database petstore
// and the group only, as a rotation's first run finds them.
func forEachEmptyDB(t *testing.T, test func(t *testing.T, db testDB)) {
	forEach(t, newEmptyPostgres, newEmptyMariaDB, test)
}

func forEach(t *testing.T, pg, my func(*testing.T) testDB, test func(t *testing.T, db testDB)) {
	t.Run("postgres", func(t *testing.T) { test(t, pg(t)) })
	t.Run("mariadb", func(t *testing.T) { test(t, my(t)) })
}

// settingsFile writes petstore's settings for user as graft-agent would:
// to a temporary file renamed into place.
func settingsFile(t *testing.T, name string, db testDB, user, password string) {
	t.Helper()
	writeSettings(t, name, db.settings(user, password, "petstore"))
}

func writeSettings(t *testing.T, name string, lines []string) {
	t.Helper()
	if err := os.WriteFile(name+".tmp", []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(name+".tmp", name); err != nil {
		t.Fatal(err)
	}
}

// onceUntilCleanup is f, to be called once: by the caller, else when the
// test ends (before petstore stops, whose cleanup came first).
func onceUntilCleanup(t *testing.T, f func()) func() {
	var once sync.Once
	do := func() { once.Do(f) }
	t.Cleanup(do)
	return do
}

// pgDB is PostgreSQL: the group petstore (NOLOGIN) owns the database, and
// so, with --schema-owner, petstore's table.
type pgDB struct{ pg *pgtest.Server }

func newPostgres(t *testing.T) testDB { return pgDB{newDatabase(t)} }

func newEmptyPostgres(t *testing.T) testDB { return pgDB{newEmptyDatabase(t)} }

func (d pgDB) driver() string { return driverPostgres }
func (d pgDB) addr() string   { return fmt.Sprintf("%s:%d", d.pg.Host, d.pg.Port) }

// settings leave DB_DRIVER out: postgres is the default.
func (d pgDB) settings(user, password, database string) []string {
	return []string{"DB_HOST=" + d.pg.Host, "DB_PORT=" + strconv.Itoa(d.pg.Port), "DB_NAME=" + database,
		"DB_USER=" + user, "DB_PASSWORD=" + password, "DB_SSLMODE=disable"}
}

func (d pgDB) createShop(t *testing.T) {
	t.Helper()
	d.pg.CreateDatabase(t, "shop", d.pg.Superuser)
	d.pg.CreateUser(t, "clerk", "clerk-pw")
	d.pg.Exec(t, "shop", createPets)
	d.pg.Exec(t, "shop", "GRANT SELECT, INSERT ON pets TO clerk; GRANT USAGE ON SEQUENCE pets_id_seq TO clerk")
	// The reason petstore looks before it creates:
	clerk, err := pgx.Connect(t.Context(), d.pg.URL("clerk", "clerk-pw", "shop"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = clerk.Exec(t.Context(), "CREATE TABLE IF NOT EXISTS pets (id int)")
	clerk.Close(t.Context())
	if err == nil || !strings.Contains(err.Error(), "permission denied for schema public") {
		t.Fatalf("CREATE TABLE IF NOT EXISTS of an existing table without CREATE on the schema: %v, want permission denied", err)
	}
}

func (d pgDB) checkSchemaOwner(t *testing.T, p *process) {
	t.Helper()
	var owner string
	err := d.pg.Connect(t, "petstore").QueryRow(t.Context(), "SELECT tableowner FROM pg_tables WHERE tablename = 'pets'").Scan(&owner)
	if err != nil || owner != group {
		t.Fatalf("pets belongs to %q (%v), want the group %q", owner, err, group)
	}
}

func (d pgDB) lockPets(t *testing.T) func() {
	t.Helper()
	tx, err := d.pg.Connect(t, "petstore").Begin(t.Context())
	if err == nil {
		_, err = tx.Exec(t.Context(), "LOCK TABLE pets IN ACCESS EXCLUSIVE MODE")
	}
	if err != nil {
		t.Fatal(err)
	}
	return onceUntilCleanup(t, func() { tx.Rollback(context.Background()) })
}

func (d pgDB) waiting(t *testing.T, user string) int {
	t.Helper()
	var n int
	err := d.pg.Connect(t, "petstore").QueryRow(t.Context(),
		"SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND wait_event_type = 'Lock'", user).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (d pgDB) lockOut(t *testing.T, user string) int {
	t.Helper()
	d.pg.Exec(t, "postgres", "ALTER ROLE "+pgtest.Ident(user)+" NOLOGIN")
	var ended int
	err := d.pg.Connect(t, "petstore").QueryRow(t.Context(),
		"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1", user).Scan(&ended)
	if err != nil {
		t.Fatal(err)
	}
	return ended
}

func (d pgDB) sessions(t *testing.T, user string) int {
	t.Helper()
	var n int
	err := d.pg.Connect(t, "petstore").QueryRow(t.Context(),
		"SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = 'petstore' AND application_name = 'petstore'", user).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (d pgDB) refused(user string) string { return "password authentication failed" }

func (d pgDB) rotationDriver() string  { return "postgres" }
func (d pgDB) adminDSN() string        { return d.pg.DSN }
func (d pgDB) hostPort() (string, int) { return d.pg.Host, d.pg.Port }

func (d pgDB) logIn(ctx context.Context, user, password string) error {
	c, err := pgx.Connect(ctx, d.pg.URL(user, password, "petstore"))
	if err != nil {
		return err
	}
	return c.Close(ctx)
}

// myDB is MariaDB: a table has no owner there, so the group petstore is a
// role granted all privileges on the database, and the default role
// (active at login) of both users.
type myDB struct{ my *mysqltest.Server }

func newMariaDB(t *testing.T) testDB {
	t.Helper()
	d := newEmptyMariaDB(t).(myDB)
	for user, password := range passwords {
		d.my.CreateUser(t, user, password, group)
	}
	return d
}

func newEmptyMariaDB(t *testing.T) testDB {
	t.Helper()
	my := mysqltest.Start(t)
	t.Logf("MariaDB started in %s", my.StartTime)
	my.CreateDatabase(t, "petstore")
	my.Exec(t, "CREATE ROLE "+mysqltest.Ident(group))
	my.Exec(t, "GRANT ALL PRIVILEGES ON petstore.* TO "+mysqltest.Ident(group))
	return myDB{my}
}

func (d myDB) driver() string { return driverMySQL }
func (d myDB) addr() string   { return fmt.Sprintf("%s:%d", d.my.Host, d.my.Port) }

func (d myDB) settings(user, password, database string) []string {
	return []string{"DB_DRIVER=mysql", "DB_HOST=" + d.my.Host, "DB_PORT=" + strconv.Itoa(d.my.Port), "DB_NAME=" + database,
		"DB_USER=" + user, "DB_PASSWORD=" + password, "DB_SSLMODE=disable"}
}

func (d myDB) createShop(t *testing.T) {
	t.Helper()
	d.my.CreateDatabase(t, "shop")
	d.my.CreateUser(t, "clerk", "clerk-pw")
	root := d.my.ConnectAs(t, d.my.RootUser, d.my.RootPassword, "shop")
	for _, sql := range []string{
		createPetsMySQL,
		"GRANT SELECT, INSERT ON shop.pets TO 'clerk'@'%'",
		// Sessions whose time zone is not UTC: petstore must read
		// created_at as the instant it is all the same.
		"SET GLOBAL time_zone = '+05:00'",
	} {
		if _, err := root.ExecContext(t.Context(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// The reason petstore looks before it creates:
	clerk := d.my.ConnectAs(t, "clerk", "clerk-pw", "shop")
	_, err := clerk.ExecContext(t.Context(), "CREATE TABLE IF NOT EXISTS pets (id int)")
	clerk.Close()
	if err == nil || !strings.Contains(err.Error(), "CREATE command denied") {
		t.Fatalf("CREATE TABLE IF NOT EXISTS of an existing table without CREATE: %v, want CREATE command denied", err)
	}
}

// checkSchemaOwner: the flag is ignored, and says so.
func (d myDB) checkSchemaOwner(t *testing.T, p *process) {
	t.Helper()
	if n := strings.Count(p.log.String(), "--schema-owner is ignored on MariaDB"); n != 1 {
		t.Fatalf("petstore's log says %d times that --schema-owner is ignored, want once", n)
	}
}

func (d myDB) lockPets(t *testing.T) func() {
	t.Helper()
	c, err := d.my.ConnectAs(t, d.my.RootUser, d.my.RootPassword, "petstore").Conn(t.Context())
	if err == nil {
		_, err = c.ExecContext(t.Context(), "LOCK TABLES pets WRITE")
	}
	if err != nil {
		t.Fatal(err)
	}
	return onceUntilCleanup(t, func() {
		c.ExecContext(context.Background(), "UNLOCK TABLES")
		c.Close()
	})
}

func (d myDB) waiting(t *testing.T, user string) int {
	t.Helper()
	var n int
	err := d.my.Connect(t).QueryRowContext(t.Context(),
		"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ? AND STATE LIKE 'Waiting for table%lock'", user).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (d myDB) lockOut(t *testing.T, user string) int {
	t.Helper()
	root := d.my.Connect(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := root.ExecContext(ctx, "ALTER USER "+mysqltest.Literal(user)+"@'%' ACCOUNT LOCK"); err != nil {
		t.Fatal(err)
	}
	rows, err := root.QueryContext(ctx, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?", user)
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	ended := 0
	for _, id := range ids {
		// A session that ended meanwhile is an unknown thread (1094).
		if _, err := root.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatInt(id, 10)); err == nil {
			ended++
		} else if !strings.Contains(err.Error(), "Error 1094") {
			t.Fatal(err)
		}
	}
	return ended
}

func (d myDB) sessions(t *testing.T, user string) int {
	t.Helper()
	var n int
	err := d.my.Connect(t).QueryRowContext(t.Context(),
		"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ? AND DB = 'petstore'", user).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (d myDB) refused(user string) string { return "Access denied for user '" + user + "'" }

func (d myDB) rotationDriver() string  { return "mysql" }
func (d myDB) adminDSN() string        { return d.my.DSN }
func (d myDB) hostPort() (string, int) { return d.my.Host, d.my.Port }

func (d myDB) logIn(ctx context.Context, user, password string) error {
	connector, err := mysql.NewConnector(d.my.Config(user, password, "petstore"))
	if err != nil {
		return err
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	return db.PingContext(ctx)
}
