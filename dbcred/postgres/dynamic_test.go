package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/dbcred/postgres"
	"github.com/graft-sh/graft/internal/dbproc"
	"github.com/graft-sh/graft/internal/pgtest"
)

// creation is a role's creation_sql as the docs show it.
var creation = []string{
	`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`,
	`GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}"`,
}

// A lease's whole life, with every statement logged: the user logs in
// with its password and may read but not write, the server saw and
// stored only a SCRAM verifier, VALID UNTIL follows creation and each
// renewal, and revoking drops the user and ends its open session.
func TestDynamicLifecycle(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	logStatements(t, s)
	s.Exec(t, "postgres", "CREATE TABLE items (id int PRIMARY KEY)")
	s.Exec(t, "postgres", "INSERT INTO items VALUES (1), (2)")
	d := open(t, s.DSN)
	super := s.Connect(t, "postgres")
	if got := d.MaxUsername(); got != 63 {
		t.Errorf("MaxUsername() = %d, want 63", got)
	}

	const user = "v-app-items-k3x9q2ab-1700000000"
	pw := password(t)
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	must(t, d.CreateUser(ctx, creation, dbcred.NewUser{Name: user, Password: pw, Expiration: exp}))
	if ok, err := d.UserExists(ctx, user); err != nil || !ok {
		t.Fatalf("UserExists after CreateUser = %v, %v; want true", ok, err)
	}

	conn := login(t, s, user, pw)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil || n != 2 {
		t.Errorf("SELECT as the new user: %d rows, %v; want 2", n, err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO items VALUES (3)"); sqlState(err) != "42501" {
		t.Errorf("INSERT as the new user: %v, want insufficient_privilege", err)
	}

	var stored string
	if err := super.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", user).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stored, "SCRAM-SHA-256$4096:") {
		t.Errorf("stored password %.20q…: want a SCRAM-SHA-256 verifier", stored)
	}
	log := s.Log()
	// The verifier the statement carried is the one stored: the server
	// hashed nothing, so it never had the password.
	if want := `CREATE ROLE "` + user + `" WITH LOGIN PASSWORD '` + stored + `'`; !strings.Contains(log, want) {
		t.Errorf("the server's log lacks the CREATE ROLE with the stored verifier: were statements logged?")
	}
	if got := validUntil(t, super, user); !got.Equal(exp) {
		t.Errorf("VALID UNTIL after CreateUser = %v, want %v", got, exp)
	}

	renewed := exp.Add(2 * time.Hour)
	must(t, d.RenewUser(ctx, nil, user, renewed))
	if got := validUntil(t, super, user); !got.Equal(renewed) {
		t.Errorf("VALID UNTIL after the default renewal = %v, want %v", got, renewed)
	}
	again := renewed.Add(time.Hour)
	must(t, d.RenewUser(ctx, []string{`ALTER ROLE "{{name}}" WITH VALID UNTIL '{{expiration}}' CONNECTION LIMIT 3`}, user, again))
	var limit int
	if err := super.QueryRow(ctx, "SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", user).Scan(&limit); err != nil {
		t.Fatal(err)
	}
	if got := validUntil(t, super, user); !got.Equal(again) || limit != 3 {
		t.Errorf("after renew_sql: VALID UNTIL %v and connection limit %d, want %v and 3", got, limit, again)
	}
	if err := conn.Ping(ctx); err != nil {
		t.Errorf("the user's session ended on renewal: %v", err)
	}

	must(t, d.RevokeUser(ctx, nil, user))
	if ok, err := d.UserExists(ctx, user); err != nil || ok {
		t.Errorf("UserExists after RevokeUser = %v, %v; want false", ok, err)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Error("the user's session still answers after it was revoked")
	}
	if err := d.RevokeUser(ctx, nil, user); err != nil {
		t.Errorf("revoking a revoked user: %v, want success", err)
	}
	if err := d.RevokeUser(ctx, []string{"SELECT 1/0"}, "never-was"); err != nil {
		t.Errorf("revoking a user that never was: %v, want success without running the statements", err)
	}
	err := d.RenewUser(ctx, nil, user, again)
	if !errors.Is(err, dbcred.ErrNoUser) || !strings.Contains(err.Error(), user) {
		t.Errorf("renewing a revoked user: %v, want dbcred.ErrNoUser naming it", err)
	}
	if strings.Contains(s.Log(), pw) {
		t.Errorf("the server's log holds the password in clear:\n%s", dbproc.Tail(s.Log(), 20))
	}
}

// The default revocation drops a user that owns a table and its
// sequence, granted SELECT on it and set default privileges for another
// role, holds grants on the schema, and has a session open: the session
// ends, the table goes to the admin's role and the other role keeps
// reading it. An admin that is no superuser (CREATEROLE and
// pg_signal_backend) does it too, though it lacks the user's privileges
// until it grants them to itself.
func TestDynamicRevokeOwner(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	super := s.Connect(t, "postgres")
	readerPW := password(t)
	s.CreateUser(t, "reader", readerPW)
	s.Exec(t, "postgres", "GRANT USAGE ON SCHEMA public TO reader")
	adminPW := password(t)
	s.Exec(t, "postgres", `CREATE ROLE "graft-admin" LOGIN CREATEROLE PASSWORD `+pgtest.Literal(adminPW))
	s.Exec(t, "postgres", `GRANT pg_signal_backend TO "graft-admin"`)
	s.Exec(t, "postgres", `GRANT USAGE, CREATE ON SCHEMA public TO "graft-admin" WITH GRANT OPTION`)

	writer := []string{
		`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`,
		`GRANT USAGE, CREATE ON SCHEMA public TO "{{name}}"`,
	}
	tests := []struct{ name, dsn, admin, user, table string }{
		{"superuser", s.DSN, s.Superuser, "v-writer-super-1", "owned_by_super_lease"},
		{"CREATEROLE admin", s.URL("graft-admin", adminPW, "postgres"), "graft-admin", "v-writer-createrole-1", "owned_by_createrole_lease"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := open(t, tt.dsn)
			pw := password(t)
			must(t, d.CreateUser(ctx, writer, dbcred.NewUser{Name: tt.user, Password: pw, Expiration: time.Now().Add(time.Hour)}))
			conn := login(t, s, tt.user, pw)
			mustExec(t, conn, "CREATE TABLE "+tt.table+" (id serial PRIMARY KEY, v text)")
			mustExec(t, conn, "INSERT INTO "+tt.table+" (v) VALUES ('kept')")
			mustExec(t, conn, "GRANT SELECT ON "+tt.table+" TO reader")
			mustExec(t, conn, "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO reader")

			must(t, d.RevokeUser(ctx, nil, tt.user))
			if ok, err := d.UserExists(ctx, tt.user); err != nil || ok {
				t.Fatalf("UserExists after RevokeUser = %v, %v; want false", ok, err)
			}
			if err := conn.Ping(ctx); err == nil {
				t.Error("the user's session still answers after it was revoked")
			}
			for _, rel := range []string{tt.table, tt.table + "_id_seq"} {
				var owner string
				if err := super.QueryRow(ctx, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = $1", rel).Scan(&owner); err != nil {
					t.Fatalf("%s after the revocation: %v", rel, err)
				}
				if owner != tt.admin {
					t.Errorf("%s is owned by %s after the revocation, want the admin %s", rel, owner, tt.admin)
				}
			}
			var v string
			if err := login(t, s, "reader", readerPW).QueryRow(ctx, "SELECT v FROM "+tt.table).Scan(&v); err != nil || v != "kept" {
				t.Errorf("reader's SELECT after the revocation: %q, %v; want the row", v, err)
			}
		})
	}
}

// A user that holds a privilege in another database cannot be dropped
// from this one: the revocation fails saying so, and leaves the user
// unable to log in and without sessions. Once the privilege is gone,
// revoking again drops it.
func TestDynamicRevokeElsewhere(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	d := open(t, s.DSN)
	super := s.Connect(t, "postgres")
	const user = "v-elsewhere-1"
	pw := password(t)
	must(t, d.CreateUser(ctx, creation, dbcred.NewUser{Name: user, Password: pw, Expiration: time.Now().Add(time.Hour)}))
	s.CreateDatabase(t, "other", s.Superuser)
	s.Exec(t, "other", `CREATE TABLE t (id int); GRANT SELECT ON t TO "`+user+`"`)
	conn := login(t, s, user, pw)

	err := d.RevokeUser(ctx, nil, user)
	if err == nil || !strings.Contains(err.Error(), "another database") || !strings.Contains(err.Error(), "1 object in database other") {
		t.Fatalf("revoking a user with a privilege in another database: %v, want an error saying so", err)
	}
	t.Log(err)
	var canLogin bool
	if err := super.QueryRow(ctx, "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", user).Scan(&canLogin); err != nil {
		t.Fatalf("the user after the failed revocation: %v", err)
	}
	if canLogin {
		t.Error("the user may still log in after a failed revocation")
	}
	if err := conn.Ping(ctx); err == nil {
		t.Error("the user's session still answers after a failed revocation")
	}

	s.Exec(t, "other", `REVOKE ALL ON t FROM "`+user+`"`)
	must(t, d.RevokeUser(ctx, nil, user))
	if ok, err := d.UserExists(ctx, user); err != nil || ok {
		t.Errorf("UserExists after RevokeUser = %v, %v; want false", ok, err)
	}
}

// Custom revocation statements run after the user's sessions end, in one
// transaction; one that fails names its statement and leaves the user
// unable to log in.
func TestDynamicRevokeStatements(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	s.Exec(t, "postgres", "CREATE TABLE items (id int)")
	d := open(t, s.DSN)
	super := s.Connect(t, "postgres")
	const user = "v-custom-revoke-1"
	pw := password(t)
	must(t, d.CreateUser(ctx, creation, dbcred.NewUser{Name: user, Password: pw, Expiration: time.Now().Add(time.Hour)}))
	conn := login(t, s, user, pw)

	err := d.RevokeUser(ctx, []string{`REVOKE ALL ON items FROM "{{name}}"`, `DROP TABLE no_such_table`, `DROP ROLE "{{name}}"`}, user)
	if err == nil || !strings.Contains(err.Error(), "revocation_sql[1]") || !strings.Contains(err.Error(), "no_such_table") {
		t.Fatalf("a failing revocation_sql: %v, want an error naming revocation_sql[1] and the server's message", err)
	}
	var canLogin, canSelect bool
	if err := super.QueryRow(ctx, "SELECT rolcanlogin, has_table_privilege($1, 'items', 'SELECT') FROM pg_roles WHERE rolname = $1", user).Scan(&canLogin, &canSelect); err != nil {
		t.Fatalf("the user after the failed revocation: %v", err)
	}
	if canLogin || !canSelect {
		t.Errorf("after a failed revocation: may log in %v, may select %v; want false and true (NOLOGIN committed, the statements rolled back)", canLogin, canSelect)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Error("the user's session still answers after a failed revocation")
	}

	must(t, d.RevokeUser(ctx, []string{`REVOKE ALL ON items FROM "{{name}}"; DROP ROLE "{{name}}"`}, user))
	if ok, err := d.UserExists(ctx, user); err != nil || ok {
		t.Errorf("UserExists after RevokeUser = %v, %v; want false", ok, err)
	}
}

// A creation that fails anywhere leaves no user, and its error names the
// statement and gives the server's message without the statement's text,
// the password or the verifier, even where the server quoted it.
func TestDynamicCreateFails(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	logStatements(t, s)
	d := open(t, s.DSN)
	create := creation[0]
	tests := []struct {
		name       string
		statements []string
		want       []string
	}{
		{"second statement", []string{create, `GRANT SELECT ON no_such_table TO "{{name}}"`},
			[]string{"creation_sql[1]", `relation "no_such_table" does not exist`}},
		{"server quotes the verifier", []string{create, `SELECT '{{password}}'::int`},
			[]string{"creation_sql[1]", "invalid input syntax for type integer", "[redacted]"}},
		{"two statements in one", []string{create + `; SELECT 1/0`},
			[]string{"creation_sql[0]", "division by zero"}},
		{"user exists", []string{`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}'`, create},
			[]string{"creation_sql[1]", "already exists"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			user := "v-create-fails-" + string(rune('a'+i))
			pw := password(t)
			err := d.CreateUser(ctx, tt.statements, dbcred.NewUser{Name: user, Password: pw, Expiration: time.Now().Add(time.Hour)})
			if err == nil {
				t.Fatal("created")
			}
			t.Log(err)
			for _, want := range append(tt.want, user) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("err = %v, want it to say %q", err, want)
				}
			}
			noSecret(t, err, pw, "SCRAM-SHA-256$", "$4096:", "CREATE ROLE", "GRANT", "SELECT")
			if ok, err := d.UserExists(ctx, user); err != nil || ok {
				t.Errorf("UserExists after a failed creation = %v, %v; want false", ok, err)
			}
			if strings.Contains(s.Log(), pw) {
				t.Errorf("the server's log holds the password in clear:\n%s", dbproc.Tail(s.Log(), 20))
			}
		})
	}
	// The admin connection is fine after the failures.
	must(t, d.CreateUser(ctx, creation, dbcred.NewUser{Name: "v-create-fails-after", Password: password(t), Expiration: time.Now().Add(time.Hour)}))
}

// Names that are not a dynamic user's, and the admin's own, are refused
// by every method before any SQL; the longest name PostgreSQL keeps
// works. Statements that would run other than meant are refused too.
func TestDynamicRefuses(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	d := open(t, s.DSN)
	super := s.Connect(t, "postgres")
	var before int
	if err := super.QueryRow(ctx, "SELECT count(*) FROM pg_roles").Scan(&before); err != nil {
		t.Fatal(err)
	}
	pw := password(t)
	exp := time.Now().Add(time.Hour)

	names := []struct{ name, user, want string }{
		{"empty", "", "user name is empty"},
		{"64 bytes", strings.Repeat("u", 64), "is 64 bytes: PostgreSQL keeps 63"},
		{"reserved", "pg_lease", "reserves names that begin with pg_"},
		{"upper case", "V-lease", "want only a-z, 0-9, - and _"},
		{"quote", `v-"; DROP ROLE postgres; --`, "want only a-z, 0-9, - and _"},
		{"space", "v lease", "want only a-z, 0-9, - and _"},
		{"not ASCII", "v-lëase", "want only a-z, 0-9, - and _"},
		{"the admin", s.Superuser, "is the admin role"},
	}
	for _, tt := range names {
		t.Run(tt.name, func(t *testing.T) {
			errs := map[string]error{
				"CreateUser": d.CreateUser(ctx, creation, dbcred.NewUser{Name: tt.user, Password: pw, Expiration: exp}),
				"RenewUser":  d.RenewUser(ctx, nil, tt.user, exp),
				"RevokeUser": d.RevokeUser(ctx, nil, tt.user),
			}
			if tt.user != s.Superuser { // whether the admin exists is no secret
				_, errs["UserExists"] = d.UserExists(ctx, tt.user)
			}
			for method, err := range errs {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("%s: %v, want an error saying %q", method, err, tt.want)
				}
			}
		})
	}
	var after int
	if err := super.QueryRow(ctx, "SELECT count(*) FROM pg_roles").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("%d roles before the refused calls, %d after", before, after)
	}

	const user = "v-refuses-1"
	calls := []struct {
		name string
		call func() error
		want string
	}{
		{"no creation_sql", func() error { return d.CreateUser(ctx, nil, dbcred.NewUser{Name: user, Password: pw, Expiration: exp}) }, "no creation_sql"},
		{"empty statement", func() error {
			return d.CreateUser(ctx, []string{creation[0], " \n"}, dbcred.NewUser{Name: user, Password: pw, Expiration: exp})
		}, "creation_sql[1] is empty"},
		{"no expiration", func() error { return d.CreateUser(ctx, creation, dbcred.NewUser{Name: user, Password: pw}) }, "creation_sql[0] uses {{expiration}}, but there is no expiration"},
		{"empty password", func() error { return d.CreateUser(ctx, creation, dbcred.NewUser{Name: user, Expiration: exp}) }, "password is empty"},
		{"password not ASCII", func() error {
			return d.CreateUser(ctx, creation, dbcred.NewUser{Name: user, Password: "pässwordpässword", Expiration: exp})
		}, "outside printable ASCII"},
		{"renewal without expiration", func() error { return d.RenewUser(ctx, nil, user, time.Time{}) }, "no expiration"},
		{"renew_sql with a password", func() error {
			return d.RenewUser(ctx, []string{`ALTER ROLE "{{name}}" PASSWORD '{{password}}'`}, user, exp)
		}, "renew_sql[0] uses {{password}}"},
		{"revocation_sql with a password", func() error {
			return d.RevokeUser(ctx, []string{`ALTER ROLE "{{name}}" PASSWORD '{{password}}'`}, user)
		}, "revocation_sql[0] uses {{password}}"},
		{"revocation_sql with an expiration", func() error {
			return d.RevokeUser(ctx, []string{`ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}'`}, user)
		}, "revocation_sql[0] uses {{expiration}}"},
	}
	for _, tt := range calls {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%v, want an error saying %q", err, tt.want)
			}
			noSecret(t, err, pw, "pässwordpässword")
		})
	}
	if ok, err := d.UserExists(ctx, user); err != nil || ok {
		t.Errorf("UserExists after the refused calls = %v, %v; want false", ok, err)
	}

	longest := strings.Repeat("v", 63)
	must(t, d.CreateUser(ctx, creation, dbcred.NewUser{Name: longest, Password: pw, Expiration: exp}))
	login(t, s, longest, pw)
	must(t, d.RevokeUser(ctx, nil, longest))
}

// Users made and dropped at the same moment by several drivers (graftds,
// or one graftd's connections), each granted on the same tables, all
// are made and all dropped: PostgreSQL updates a table's ACL in place
// and fails the second of two transactions changing it at once with
// "tuple concurrently updated" unless the driver runs them again.
func TestDynamicConcurrentGrants(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	s.Exec(t, "postgres", "CREATE TABLE items (id int)")
	s.Exec(t, "postgres", "CREATE TABLE orders (id int)")
	drivers := []*postgres.Driver{openConns(t, s.DSN, 8), openConns(t, s.DSN, 8), openConns(t, s.DSN, 8)}
	const perDriver = 8
	each := func(f func(d *postgres.Driver, user string) error) {
		t.Helper()
		errs := make(chan error, len(drivers)*perDriver)
		for i, d := range drivers {
			for j := range perDriver {
				go func() { errs <- f(d, fmt.Sprintf("v-app-items-%d-%d", i, j)) }()
			}
		}
		for range len(drivers) * perDriver {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	}
	each(func(d *postgres.Driver, user string) error {
		return d.CreateUser(ctx, creation, dbcred.NewUser{Name: user, Password: password(t), Expiration: time.Now().Add(time.Hour)})
	})
	each(func(d *postgres.Driver, user string) error { return d.RevokeUser(ctx, nil, user) })
	var left int
	if err := s.Connect(t, "postgres").QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%'").Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d users left, %v", left, err)
	}
}

// Statements that change only their own user run side by side: a
// transaction that met another and runs again in turn, holding the turn
// (here, another session holds it), keeps no creation through a group
// role, renewal or revocation waiting.
func TestDynamicOwnStatementsDoNotWait(t *testing.T) {
	s := pgtest.Start(t)
	s.Exec(t, "postgres", "CREATE TABLE items (id int)")
	s.Exec(t, "postgres", "CREATE ROLE readers NOLOGIN")
	s.Exec(t, "postgres", "GRANT SELECT ON items TO readers")
	d := open(t, s.DSN)
	holder := s.Connect(t, "postgres")
	if _, err := holder.Exec(t.Context(), "SELECT pg_advisory_lock($1)", int64(0x6772616674646263)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	const user = "v-app-items-grouped"
	grouped := []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE readers`}
	must(t, d.CreateUser(ctx, grouped, dbcred.NewUser{Name: user, Password: password(t), Expiration: time.Now().Add(time.Hour)}))
	must(t, d.RenewUser(ctx, nil, user, time.Now().Add(2*time.Hour)))
	must(t, d.RevokeUser(ctx, nil, user))
}

// A role that grants on a table to each user directly fills the table's
// ACL, whose catalog row must fit in a page, after some 2,400 users: the
// creation then fails saying to grant to a group role instead.
func TestDynamicCreateFullACL(t *testing.T) {
	s := pgtest.Start(t)
	ctx := t.Context()
	s.Exec(t, "postgres", "CREATE TABLE items (id int)")
	// Fill the ACL in ever smaller steps: one GRANT a user at a time
	// rewrites the row thousands of times, seconds.
	s.Exec(t, "postgres", `DO $$
DECLARE
	n int := 0;
	step int;
BEGIN
	FOR i IN 1..5000 LOOP
		EXECUTE format('CREATE ROLE %I', 'filler-' || i);
	END LOOP;
	FOREACH step IN ARRAY ARRAY[500, 50, 5, 1] LOOP
		LOOP
			BEGIN
				EXECUTE (SELECT 'GRANT SELECT ON items TO ' || string_agg(format('%I', 'filler-' || j), ', ') FROM generate_series(n + 1, n + step) j);
				n := n + step;
			EXCEPTION WHEN program_limit_exceeded THEN
				EXIT;
			END;
		END LOOP;
	END LOOP;
	IF n >= 5000 THEN
		RAISE 'the ACL took every filler';
	END IF;
END $$`)
	d := open(t, s.DSN)
	err := d.CreateUser(ctx, creation, dbcred.NewUser{Name: "v-app-items-full", Password: password(t), Expiration: time.Now().Add(time.Hour)})
	if err == nil || !strings.Contains(err.Error(), "row is too big") || !strings.Contains(err.Error(), "IN ROLE <group>") {
		t.Fatalf("creating a user the table's ACL has no room for: %v; want the server's refusal and what to do", err)
	}
	if ok, err := d.UserExists(ctx, "v-app-items-full"); err != nil || ok {
		t.Fatalf("UserExists after the failed creation = %v, %v; want false", ok, err)
	}
}

// logStatements turns on log_statement=all and waits until the server
// logs; drivers opened after it log their statements.
func logStatements(t *testing.T, s *pgtest.Server) {
	t.Helper()
	s.Exec(t, "postgres", "ALTER SYSTEM SET log_statement = 'all'")
	s.Exec(t, "postgres", "SELECT pg_reload_conf()")
	eventually(t, "log_statement=all in effect", func() bool {
		marker := "graft-" + password(t)
		s.Exec(t, "postgres", "SELECT "+pgtest.Literal(marker))
		return strings.Contains(s.Log(), marker)
	})
}

// validUntil is user's VALID UNTIL; the test fails if it has none.
func validUntil(t *testing.T, conn *pgx.Conn, user string) time.Time {
	t.Helper()
	var v *time.Time
	if err := conn.QueryRow(t.Context(), "SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", user).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v == nil {
		t.Fatalf("%s has no VALID UNTIL", user)
	}
	return *v
}

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}
