package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/dbcred/postgres"
	"github.com/graft-sh/graft/internal/dbproc"
	"github.com/graft-sh/graft/internal/pgtest"
)

const (
	group = "message-processor"
	blue  = "message-processor-blue"
	green = "message-processor-green"
)

// A rotation's whole life on an empty server: the group and the first
// user appear, a table the blue user creates belongs to the group, the
// green user reads and writes it, retiring blue ends its session and its
// logins, and the next rotation re-keys blue. Every step runs twice, as
// a rotation that crashed repeats it.
func TestRotation(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	d := open(t, s.DSN) // sslmode=disable: the harness has no TLS
	bluePW, greenPW, bluePW2 := password(t), password(t), password(t)
	secrets := []string{bluePW, greenPW, bluePW2, s.SuperuserPassword}

	twice(t, "ensure group", func() error { return d.EnsureGroup(ctx, group) })
	twice(t, "set blue's password", func() error { return d.SetPassword(ctx, blue, group, bluePW) })
	twice(t, "test blue", func() error { return d.Test(ctx, blue, group, bluePW) })

	// The DBA grants the group what the application needs, once.
	s.Exec(t, "postgres", "GRANT ALL ON SCHEMA public TO "+pgtest.Ident(group))
	blueConn := login(t, s, blue, bluePW)
	mustExec(t, blueConn, "CREATE TABLE pets (id int PRIMARY KEY, name text)")
	mustExec(t, blueConn, "INSERT INTO pets VALUES (1, 'rex')")
	var owner string
	superConn := s.Connect(t, "postgres")
	if err := superConn.QueryRow(ctx, "SELECT tableowner FROM pg_tables WHERE tablename = 'pets'").Scan(&owner); err != nil {
		t.Fatal(err)
	}
	if owner != group {
		t.Fatalf("blue's table is owned by %s, want the group %s", owner, group)
	}

	twice(t, "set green's password", func() error { return d.SetPassword(ctx, green, group, greenPW) })
	twice(t, "test green", func() error { return d.Test(ctx, green, group, greenPW) })
	greenConn := login(t, s, green, greenPW)
	for _, sql := range []string{
		"SELECT count(*) FROM pets",
		"INSERT INTO pets VALUES (2, 'tom')",
		"UPDATE pets SET name = 'rex2' WHERE id = 1",
		"DELETE FROM pets WHERE id = 2",
		"ALTER TABLE pets ADD COLUMN born date", // an owner's privilege
	} {
		mustExec(t, greenConn, sql)
	}

	if n := sessions(t, d, blue); n != 1 {
		t.Fatalf("blue has %d sessions before it is retired, want 1", n)
	}
	twice(t, "retire blue", func() error { return d.Retire(ctx, blue) })
	if n := sessions(t, d, blue); n != 0 {
		t.Errorf("blue has %d sessions after it was retired, want 0", n)
	}
	if err := blueConn.Ping(ctx); err == nil {
		t.Error("blue's session still answers after blue was retired")
	}
	err := d.Test(ctx, blue, group, bluePW)
	if !errors.Is(err, dbcred.ErrLogin) || !strings.Contains(err.Error(), "may not log in") {
		t.Errorf("retired blue's test login: %v, want dbcred.ErrLogin saying it may not log in", err)
	}
	noSecret(t, err, secrets...)
	if err := greenConn.Ping(ctx); err != nil {
		t.Errorf("green's session ended when blue was retired: %v", err)
	}

	// The next rotation re-keys blue, which logs in again with the new
	// password only.
	twice(t, "set blue's new password", func() error { return d.SetPassword(ctx, blue, group, bluePW2) })
	twice(t, "test blue again", func() error { return d.Test(ctx, blue, group, bluePW2) })
	err = d.Test(ctx, blue, group, bluePW)
	if !errors.Is(err, dbcred.ErrLogin) {
		t.Errorf("blue's old password: %v, want dbcred.ErrLogin", err)
	}
	noSecret(t, err, secrets...)
	mustExec(t, login(t, s, blue, bluePW2), "INSERT INTO pets VALUES (3, 'felix')")
	twice(t, "retire green", func() error { return d.Retire(ctx, green) })
	if err := greenConn.Ping(ctx); err == nil {
		t.Error("green's session still answers after green was retired")
	}

	twice(t, "retire a user that does not exist", func() error { return d.Retire(ctx, "nobody") })
	if n := sessions(t, d, "nobody"); n != 0 {
		t.Errorf("a user that does not exist has %d sessions", n)
	}
}

// Test refuses every login that is not a member acting as the group, and
// says why, without the password.
func TestTestRefuses(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	d := open(t, s.DSN)
	pw := password(t)
	must(t, d.EnsureGroup(ctx, group))
	must(t, d.EnsureGroup(ctx, "other-group"))
	must(t, d.SetPassword(ctx, blue, group, pw))
	must(t, d.SetPassword(ctx, "retired", group, pw))
	must(t, d.Retire(ctx, "retired"))
	s.CreateUser(t, "outsider", pw)
	s.CreateUser(t, "member-without-set-role", pw, group)
	s.CreateUser(t, "set-role-without-member", pw)
	s.Exec(t, "postgres", "ALTER ROLE \"set-role-without-member\" SET ROLE "+pgtest.Ident(group))

	tests := []struct {
		name, user, group, password string
		want                        string
	}{
		{"wrong password", blue, group, "not-" + pw, "the password was refused"},
		{"no such user", "nobody", group, pw, "the password was refused"},
		{"retired", "retired", group, pw, "may not log in"},
		{"not a member", "outsider", group, pw, "is not a member of group " + group},
		{"another group", blue, "other-group", pw, "is not a member of group other-group"},
		{"no such group", blue, "no-group", pw, "group no-group does not exist"},
		{"member without SET ROLE", "member-without-set-role", group, pw, "SET ROLE " + group + " is not in effect"},
		{"SET ROLE of a group it is not a member of", "set-role-without-member", group, pw, "not a member"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := d.Test(ctx, tt.user, tt.group, tt.password)
			if !errors.Is(err, dbcred.ErrLogin) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want dbcred.ErrLogin saying %q", err, tt.want)
			}
			noSecret(t, err, pw)
			t.Log(err)
		})
	}
	if err := d.Test(ctx, blue, group, pw); err != nil {
		t.Fatalf("the one right login: %v", err)
	}
	// Every test login was closed.
	for _, u := range []string{blue, "outsider", "member-without-set-role", "set-role-without-member"} {
		// A closed session's backend exits a moment later: wait for it.
		n := sessions(t, d, u)
		for deadline := time.Now().Add(5 * time.Second); n != 0 && time.Now().Before(deadline); n = sessions(t, d, u) {
			time.Sleep(20 * time.Millisecond)
		}
		if n != 0 {
			t.Errorf("%s has %d sessions after its test logins, want 0", u, n)
		}
	}
}

// With every statement logged, the log holds verifiers and never a
// password: SetPassword sends only the SCRAM verifier it computed.
func TestPasswordNotInServerLog(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	s.Exec(t, "postgres", "ALTER SYSTEM SET log_statement = 'all'")
	s.Exec(t, "postgres", "SELECT pg_reload_conf()")
	eventually(t, "log_statement=all in effect", func() bool {
		marker := "graft-" + password(t)
		s.Exec(t, "postgres", "SELECT "+pgtest.Literal(marker))
		return strings.Contains(s.Log(), marker)
	})

	d := open(t, s.DSN) // after the reload, so its sessions log too
	first, second := password(t), password(t)
	must(t, d.EnsureGroup(ctx, group))
	must(t, d.SetPassword(ctx, blue, group, first))  // CREATE ROLE
	must(t, d.SetPassword(ctx, blue, group, second)) // ALTER ROLE
	must(t, d.Test(ctx, blue, group, second))

	log := s.Log()
	for _, want := range []string{
		"CREATE ROLE " + pgtest.Ident(blue) + " LOGIN PASSWORD 'SCRAM-SHA-256$4096:",
		"ALTER ROLE " + pgtest.Ident(blue) + " WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the server's log lacks %q: were statements logged?", want)
		}
	}
	for _, pw := range []string{first, second} {
		if strings.Contains(log, pw) {
			t.Errorf("the server's log holds a password in clear:\n%s", dbproc.Tail(log, 20))
		}
	}
}

// Names PostgreSQL would truncate or refuse are refused before any SQL,
// saying what is wrong; the longest name it keeps works.
func TestNames(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	d := open(t, s.DSN)
	pw := password(t)
	longest := strings.Repeat("u", 63)
	longGroup := strings.Repeat("g", 63)
	must(t, d.EnsureGroup(ctx, longGroup))
	must(t, d.SetPassword(ctx, longest, longGroup, pw))
	must(t, d.Test(ctx, longest, longGroup, pw))

	must(t, d.EnsureGroup(ctx, group))
	// bad says which name is wrong: the methods that take it must refuse it.
	tests := []struct{ name, user, group, bad, want string }{
		{"user of 64 bytes", longest + "u", group, "user", "user name \"uuuuuuuuuuuuuuuuuuuu\"… is 64 bytes: PostgreSQL keeps 63"},
		{"group of 64 bytes", blue, longGroup + "g", "group", "group name \"gggggggggggggggggggg\"… is 64 bytes"},
		{"empty user", "", group, "user", "user name is empty"},
		{"empty group", blue, "", "group", "group name is empty"},
		{"reserved", "pg_blue", group, "user", "reserves names that begin with pg_"},
		{"NUL", "blue\x00", group, "user", "want UTF-8 without NUL"},
		{"invalid UTF-8", "blue\xff", group, "user", "want UTF-8 without NUL"},
		{"user is the group", group, group, "pair", "is its own group"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := map[string]error{
				"SetPassword": d.SetPassword(ctx, tt.user, tt.group, pw),
				"Test":        d.Test(ctx, tt.user, tt.group, pw),
			}
			switch tt.bad {
			case "user":
				errs["Retire"] = d.Retire(ctx, tt.user)
				_, errs["Sessions"] = d.Sessions(ctx, tt.user)
			case "group":
				errs["EnsureGroup"] = d.EnsureGroup(ctx, tt.group)
			}
			for method, err := range errs {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("%s: %v, want an error saying %q", method, err, tt.want)
				}
			}
		})
	}
	n := 0
	superConn := s.Connect(t, "postgres")
	if err := superConn.QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'uuuuuuuuuuuuuuuuuuuu%' OR rolname LIKE 'pg_blue%' OR rolname LIKE 'blue%'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("%d roles of the refused names and the longest name exist, want the longest name's only", n)
	}

	for _, bad := range []struct{ name, password, want string }{
		{"empty", "", "password is empty"},
		{"not ASCII", "pässwordpässword", "outside printable ASCII at byte 1"},
		{"control character", "password\npassword", "outside printable ASCII at byte 8"},
	} {
		err := d.SetPassword(ctx, blue, group, bad.password)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("password %s: %v, want an error saying %q", bad.name, err, bad.want)
		}
		noSecret(t, err, bad.password)
	}
}

// Open takes a URL or key=value DSN, says why it refuses one without the
// DSN or its password, and refuses an admin that could not manage users.
func TestOpen(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	const secret = "s3cr3t-pw"

	keyValue := fmt.Sprintf("host=%s port=%d user=%s password='%s' dbname=postgres sslmode=disable",
		s.Host, s.Port, s.Superuser, s.SuperuserPassword)
	d := open(t, keyValue)
	pw := password(t)
	must(t, d.EnsureGroup(ctx, group))
	must(t, d.SetPassword(ctx, blue, group, pw))
	must(t, d.Test(ctx, blue, group, pw))

	addr := net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
	tests := []struct{ name, dsn, want string }{
		{"URL with a space in the password", "postgres://admin:s3cr3t pw@" + addr + "/postgres", "admin DSN does not parse: failed to parse as URL (in a URL, a password's spaces"},
		// A password's unescaped @ / ? # would make pgx look up, connect
		// to and quote the rest of it as a host, port or database: each
		// is refused before any of that.
		{"URL with an unencoded /", "postgres://admin:s3cr/3t-pw@" + addr + "/postgres", "its user info holds an unescaped /, ? or #"},
		{"URL with an unencoded @", "postgres://admin:s3cr@3t-pw@" + addr + "/postgres", "its user info holds an unescaped @: percent-encode a user name's or password's @ as %40"},
		{"URL with an unencoded / after digits", "postgres://admin:1234/3t-pw@" + addr + "/postgres", "its user info holds an unescaped /, ? or #"},
		{"URL with an unencoded ?", "postgresql://admin:1234?x=3t-pw@" + addr + "/postgres", "its user info holds an unescaped /, ? or #"},
		{"URL with an unencoded #", "postgres://admin:1234#3t-pw@" + addr + "/postgres", "percent-encode"},
		{"URL with a bad port", "postgres://admin:" + secret + "@127.0.0.1:port/postgres", "admin DSN does not parse: invalid port"},
		{"URL with a bad connect_timeout", "postgres://admin:" + secret + "@" + addr + "/postgres?connect_timeout=x" + secret, "admin DSN does not parse: invalid connect_timeout"},
		{"key=value with an unquoted space", "host=127.0.0.1 password=s3cr3t pw", "admin DSN does not parse: failed to parse as keyword/value"},
		{"key=value with an open quote", "host=127.0.0.1 password='" + secret, "admin DSN does not parse: failed to parse as keyword/value"},
		{"bad sslmode", "postgres://admin:" + secret + "@" + addr + "/postgres?sslmode=bogus", "admin DSN does not parse: failed to configure TLS: sslmode is invalid"},
		{"missing CA file", "postgres://admin:" + secret + "@" + addr + "/postgres?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem", "/nonexistent/ca.pem"},
		{"wrong admin password", s.URL(s.Superuser, secret, "postgres"), "password authentication failed"},
		{"unreachable server", "postgres://admin:" + secret + "@127.0.0.1:1/postgres?connect_timeout=2", "open admin connection: failed to connect"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := postgres.Open(ctx, tt.dsn)
			if err == nil {
				d.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to say %q", err, tt.want)
			}
			noSecret(t, err, "s3cr", "3t-pw", "t pw", tt.dsn)
			if _, perr := pgx.ParseConfig(tt.dsn); perr != nil && strings.Contains(perr.Error(), "s3cr") {
				t.Logf("pgx's own error leaks the password: %v", perr)
			}
		})
	}

	// Percent-encoded, such a password works.
	awkward := "s3cr@3t/pw?#%:x"
	s.Exec(t, "postgres", "CREATE ROLE awkward LOGIN SUPERUSER PASSWORD "+pgtest.Literal(awkward))
	if d, err := postgres.Open(ctx, s.URL("awkward", awkward, "postgres")); err != nil {
		t.Errorf("a password with @ / ? # %% : percent-encoded: %v", err)
	} else {
		d.Close()
	}

	s.CreateUser(t, "weak", pw)
	_, err := postgres.Open(ctx, s.URL("weak", pw, "postgres"))
	if err == nil || !strings.Contains(err.Error(), "admin role weak cannot manage users: it needs SUPERUSER, or CREATEROLE") {
		t.Errorf("an admin that cannot create roles: %v, want it refused saying what it needs", err)
	}
	noSecret(t, err, pw)
}

// An admin that is no superuser, with CREATEROLE and pg_signal_backend
// (what a managed database gives), runs a whole rotation.
func TestCreateRoleAdmin(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	adminPW := password(t)
	s.Exec(t, "postgres", "CREATE ROLE \"graft-admin\" LOGIN CREATEROLE PASSWORD "+pgtest.Literal(adminPW))
	s.Exec(t, "postgres", "GRANT pg_signal_backend TO \"graft-admin\"")
	d := open(t, s.URL("graft-admin", adminPW, "postgres"))

	bluePW, greenPW := password(t), password(t)
	must(t, d.EnsureGroup(ctx, group))
	must(t, d.SetPassword(ctx, blue, group, bluePW))
	must(t, d.Test(ctx, blue, group, bluePW))
	must(t, d.SetPassword(ctx, green, group, greenPW))
	must(t, d.Test(ctx, green, group, greenPW))
	blueConn := login(t, s, blue, bluePW)
	must(t, d.Retire(ctx, blue))
	if n := sessions(t, d, blue); n != 0 {
		t.Errorf("blue has %d sessions after it was retired, want 0", n)
	}
	if err := blueConn.Ping(ctx); err == nil {
		t.Error("blue's session still answers after blue was retired")
	}
	if err := d.Retire(ctx, "graft-admin"); err == nil || !strings.Contains(err.Error(), "admin role") {
		t.Errorf("retiring the admin itself: %v, want it refused", err)
	}
}

// With an admin DSN that asks for verify-full against its own CA, Test's
// login goes over TLS verified the same way: the server refuses every
// login without TLS, and the CA is in no system pool.
func TestTLS(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	caFile, _ := s.RequireTLS(t)

	q := url.Values{"sslmode": {"verify-full"}, "sslrootcert": {caFile}}
	verified := (&url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(s.Superuser, s.SuperuserPassword),
		Host:     net.JoinHostPort(s.Host, strconv.Itoa(s.Port)),
		Path:     "/postgres",
		RawQuery: q.Encode(),
	}).String()
	d := open(t, verified)
	pw := password(t)
	must(t, d.EnsureGroup(ctx, group))
	must(t, d.SetPassword(ctx, blue, group, pw))
	must(t, d.Test(ctx, blue, group, pw))

	if d, err := postgres.Open(ctx, s.DSN); err == nil {
		d.Close()
		t.Fatal("the admin logged in without TLS: the test proves nothing")
	}
}

func open(t *testing.T, dsn string) *postgres.Driver {
	t.Helper()
	return openConns(t, dsn, 2)
}

// openConns opens a driver with up to conns connections until the test
// ends.
func openConns(t *testing.T, dsn string, conns int) *postgres.Driver {
	t.Helper()
	d, err := postgres.OpenConns(t.Context(), dsn, conns)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// login connects as user, as a consumer would, until the test ends.
func login(t *testing.T, s *pgtest.Server, user, password string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), s.URL(user, password, "postgres"))
	if err != nil {
		t.Fatalf("log in as %s: %v", user, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func password(t *testing.T) string {
	t.Helper()
	pw, err := dbcred.Policy{}.Password()
	if err != nil {
		t.Fatal(err)
	}
	return pw
}

func sessions(t *testing.T, d *postgres.Driver, user string) int {
	t.Helper()
	n, err := d.Sessions(t.Context(), user)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// twice runs step twice, as a rotation that crashed after it does.
func twice(t *testing.T, name string, step func() error) {
	t.Helper()
	for i := 1; i <= 2; i++ {
		if err := step(); err != nil {
			t.Fatalf("%s (run %d): %v", name, i, err)
		}
	}
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(t.Context(), sql); err != nil {
		t.Fatalf("%s as %s: %v", sql, conn.Config().User, err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// noSecret fails the test if err's message holds any of secrets.
func noSecret(t *testing.T, err error, secrets ...string) {
	t.Helper()
	if err == nil {
		return
	}
	for i, s := range secrets {
		if s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("the error holds secret %d of %d: %v", i+1, len(secrets), err)
		}
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Two drivers creating the same group, or the same user, at the same
// moment both succeed: one creates, the other finds it created (the
// server says so with duplicate_object, or unique_violation when the
// other's CREATE had not committed yet).
func TestConcurrentCreate(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	drivers := []*postgres.Driver{open(t, s.DSN), open(t, s.DSN)}
	pw := password(t)
	for i := range 20 {
		g, u := fmt.Sprintf("group-%d", i), fmt.Sprintf("user-%d", i)
		errs := make(chan error, 2*len(drivers))
		start := make(chan struct{})
		for _, d := range drivers {
			go func() {
				<-start
				errs <- d.EnsureGroup(ctx, g)
				errs <- d.SetPassword(ctx, u, g, pw)
			}()
		}
		close(start)
		for range 2 * len(drivers) {
			if err := <-errs; err != nil {
				t.Errorf("round %d: %v", i, err)
			}
		}
		must(t, drivers[0].Test(ctx, u, g, pw))
	}
}

// On a machine without PostgreSQL every test here skips, and with
// GRAFT_REQUIRE_PG=1 they fail.
func TestSkipsWithoutPostgreSQL(t *testing.T) {
	dbproc.CheckSkipsWithout(t, ".", []string{"GRAFT_PG_BINDIR=/nonexistent"}, "GRAFT_REQUIRE_PG")
}
