package mysql_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/dbcred/mysql"
	"github.com/graft-sh/graft/internal/dbproc"
	"github.com/graft-sh/graft/internal/mysqltest"
)

// creationSQL is the creation_sql the package documents for a role that
// reads testdb.
var creationSQL = []string{
	"CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'",
	"GRANT SELECT ON testdb.* TO '{{name}}'@'%'",
}

// startDynamic starts a server with testdb.items holding one row, and
// opens the driver as root.
func startDynamic(t *testing.T) (*mysqltest.Server, *mysql.Driver) {
	t.Helper()
	s := mysqltest.Start(t)
	s.CreateDatabase(t, "testdb")
	s.Exec(t, "CREATE TABLE testdb.items (id int)")
	s.Exec(t, "INSERT INTO testdb.items VALUES (1)")
	return s, open(t, s.DSN)
}

// leaseName is a dynamic user's name as dbcred.Role.Username makes one.
func leaseName(prefix string) string {
	return prefix + "-" + strings.ToLower(rand.Text()[:8])
}

func newUser(t *testing.T, name string) dbcred.NewUser {
	return dbcred.NewUser{Name: name, Password: password(t), Expiration: time.Now().Add(time.Hour)}
}

// A lease's whole life: the created user logs in with its password and
// may read testdb but not write it; the server and its general log saw
// only the password's hash; a default renewal keeps it; custom renewal
// statements run in order on one connection with the placeholders
// replaced; the default revocation ends an open session and drops the
// user, and a second revocation finds nothing to do.
func TestDynamicLifecycle(t *testing.T) {
	s, d := startDynamic(t)
	ctx := context.Background()
	s.Exec(t, "SET GLOBAL log_output = 'FILE'")
	s.Exec(t, "SET GLOBAL general_log = 1")
	u := newUser(t, leaseName("v-app-reader"))

	if err := d.CreateUser(ctx, creationSQL, u); err != nil {
		t.Fatalf("CreateUser: %v", err)
	}
	if ok, err := d.UserExists(ctx, u.Name); err != nil || !ok {
		t.Fatalf("UserExists after CreateUser = %v, %v", ok, err)
	}
	db := s.ConnectAs(t, u.Name, u.Password, "testdb")
	if got := count(t, db, "SELECT COUNT(*) FROM items"); got != 1 {
		t.Errorf("the user reads %d rows, want 1", got)
	}
	var me *mysqldriver.MySQLError
	if _, err := db.ExecContext(ctx, "INSERT INTO items VALUES (2)"); !errors.As(err, &me) || me.Number != 1142 {
		t.Errorf("INSERT by a user granted SELECT: %v, want error 1142 (command denied)", err)
	}
	hash := mysqltest.NativeHash(u.Password)
	var stored string
	if err := s.Connect(t).QueryRowContext(ctx, "SELECT authentication_string FROM mysql.user WHERE User = ? AND Host = '%'", u.Name).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != hash {
		t.Errorf("mysql.user holds %q, want the password's native hash %q", stored, hash)
	}
	log := s.GeneralLog()
	if !strings.Contains(log, "IDENTIFIED BY PASSWORD '"+hash+"'") {
		t.Fatalf("the general log did not record the creation with the hash:\n%s", dbproc.Tail(log, 40))
	}
	if strings.Contains(log, u.Password) {
		t.Errorf("the general log holds the password:\n%s", dbproc.Tail(log, 40))
	}

	renewed := time.Now().Add(2 * time.Hour)
	if err := d.RenewUser(ctx, nil, u.Name, renewed); err != nil {
		t.Fatalf("default RenewUser: %v", err)
	}
	if got := count(t, db, "SELECT COUNT(*) FROM items"); got != 1 {
		t.Errorf("after a default renewal the user reads %d rows, want 1", got)
	}
	s.Exec(t, "CREATE TABLE testdb.renewals (name text, until text)")
	renewSQL := []string{
		"SET @until = '{{expiration}}'",
		"INSERT INTO testdb.renewals SELECT '{{name}}', @until",
	}
	if err := d.RenewUser(ctx, renewSQL, u.Name, renewed); err != nil {
		t.Fatalf("RenewUser with renew_sql: %v", err)
	}
	var name, until string
	if err := s.Connect(t).QueryRowContext(ctx, "SELECT name, until FROM testdb.renewals").Scan(&name, &until); err != nil {
		t.Fatalf("renew_sql left no row: %v", err)
	}
	if want := dbcred.ExpirationText(renewed); name != u.Name || until != want {
		t.Errorf("renew_sql recorded (%s, %s), want (%s, %s)", name, until, u.Name, want)
	}

	held, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := held.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.RevokeUser(ctx, nil, u.Name); err != nil {
		t.Fatalf("RevokeUser: %v", err)
	}
	if _, err := held.ExecContext(ctx, "SELECT 1"); err == nil {
		t.Error("the user's open session survived RevokeUser")
	}
	if ok, err := d.UserExists(ctx, u.Name); err != nil || ok {
		t.Errorf("UserExists after RevokeUser = %v, %v", ok, err)
	}
	if err := s.ConnectAs(t, u.Name, u.Password, "").PingContext(ctx); err == nil {
		t.Error("a revoked user logs in")
	}
	if err := d.RevokeUser(ctx, nil, u.Name); err != nil {
		t.Errorf("a second RevokeUser: %v", err)
	}
	if err := d.RenewUser(ctx, nil, u.Name, renewed); !errors.Is(err, dbcred.ErrNoUser) {
		t.Errorf("RenewUser of a revoked user: %v, want ErrNoUser", err)
	}
}

// A user that does not exist is revoked already: RevokeUser succeeds and
// runs none of its statements. RenewUser fails with ErrNoUser, running
// none either.
func TestDynamicMissingUser(t *testing.T) {
	s, d := startDynamic(t)
	ctx := context.Background()
	s.Exec(t, "CREATE TABLE testdb.trace (name text)")
	trace := []string{"INSERT INTO testdb.trace VALUES ('{{name}}')"}
	if err := d.RevokeUser(ctx, trace, "v-never-created"); err != nil {
		t.Errorf("RevokeUser of a user that does not exist: %v", err)
	}
	if err := d.RevokeUser(ctx, nil, "v-never-created"); err != nil {
		t.Errorf("default RevokeUser of a user that does not exist: %v", err)
	}
	err := d.RenewUser(ctx, trace, "v-never-created", time.Now().Add(time.Hour))
	if !errors.Is(err, dbcred.ErrNoUser) {
		t.Errorf("RenewUser of a user that does not exist: %v, want ErrNoUser", err)
	}
	if ok, err := d.UserExists(ctx, "v-never-created"); err != nil || ok {
		t.Errorf("UserExists = %v, %v", ok, err)
	}
	if n := count(t, s.Connect(t), "SELECT COUNT(*) FROM testdb.trace"); n != 0 {
		t.Errorf("%d statements ran for a user that does not exist", n)
	}
}

// revocation_sql runs once the user is locked and its sessions have
// ended, so it sees none of them.
func TestDynamicCustomRevocation(t *testing.T) {
	s, d := startDynamic(t)
	ctx := context.Background()
	u := newUser(t, leaseName("v-custom"))
	if err := d.CreateUser(ctx, creationSQL, u); err != nil {
		t.Fatal(err)
	}
	held, err := s.ConnectAs(t, u.Name, u.Password, "").Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	s.Exec(t, "CREATE TABLE testdb.seen (sessions int)")
	revocation := []string{
		"INSERT INTO testdb.seen SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{{name}}'",
		"REVOKE ALL PRIVILEGES, GRANT OPTION FROM '{{name}}'@'%'",
		"DROP USER '{{name}}'@'%'",
	}
	if err := d.RevokeUser(ctx, revocation, u.Name); err != nil {
		t.Fatalf("RevokeUser: %v", err)
	}
	if n := count(t, s.Connect(t), "SELECT sessions FROM testdb.seen"); n != 0 {
		t.Errorf("revocation_sql saw %d sessions of the user, want 0", n)
	}
	if ok, err := d.UserExists(ctx, u.Name); err != nil || ok {
		t.Errorf("UserExists after RevokeUser = %v, %v", ok, err)
	}
	if _, err := held.ExecContext(ctx, "SELECT 1"); err == nil {
		t.Error("the user's session survived RevokeUser")
	}
}

// A creation whose second statement fails leaves no user behind, and its
// error names the statement by index with the server's message, holding
// neither the password nor the hash nor a piece of it the server quoted
// (a syntax error quotes 80 characters of the statement, cutting the
// hash).
func TestDynamicFailedCreationCleansUp(t *testing.T) {
	s, d := startDynamic(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name, second, want string
		redacted           bool // the server's message quoted the hash
	}{
		{"missing-table", "GRANT SELECT ON testdb.nosuch TO '{{name}}'@'%'", "Error 1146", false},
		{"syntax", "GRANT BOGUS ON testdb.* TO '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'", "Error 1064", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Short enough that the syntax error's 80 characters reach
			// into the hash.
			u := newUser(t, leaseName("v-bad"))
			err := d.CreateUser(ctx, []string{creationSQL[0], tc.second}, u)
			if err == nil {
				t.Fatal("CreateUser with a failing statement succeeded")
			}
			t.Log(err)
			msg := err.Error()
			if !strings.Contains(msg, "creation_sql[1]") || !strings.Contains(msg, tc.want) {
				t.Errorf("the error does not name creation_sql[1] and say %q", tc.want)
			}
			if strings.Contains(msg, "GRANT") {
				t.Errorf("the error holds the statement's text")
			}
			if tc.redacted != strings.Contains(msg, "[redacted]") {
				t.Errorf("[redacted] in the error: %v, want %v", !tc.redacted, tc.redacted)
			}
			hash := mysqltest.NativeHash(u.Password)
			for i := 1; i+8 <= len(hash); i++ {
				if strings.Contains(msg, hash[i:i+8]) {
					t.Fatalf("the error holds a piece of the hash, %s", hash[i:i+8])
				}
			}
			if strings.Contains(msg, u.Password) || strings.Contains(msg, s.RootPassword) {
				t.Error("the error holds a password")
			}
			if ok, err := d.UserExists(ctx, u.Name); err != nil || ok {
				t.Errorf("UserExists after the failed creation = %v, %v, want false", ok, err)
			}
		})
	}
}

// What CreateUser, RenewUser and RevokeUser refuse before any statement:
// names outside a-z 0-9 - _ or longer than MaxUsername, the admin's own
// name, {{password}} where MariaDB would take the hash for a password
// or outside creation, and the name of an account that exists, which
// stays as it was.
func TestDynamicRefusals(t *testing.T) {
	s, d := startDynamic(t)
	ctx := context.Background()
	if got := d.MaxUsername(); got != 80 {
		t.Errorf("MaxUsername = %d, want 80", got)
	}
	long := "v-" + strings.Repeat("a", d.MaxUsername()-2)
	u := newUser(t, long)
	if err := d.CreateUser(ctx, creationSQL, u); err != nil {
		t.Fatalf("a name of MaxUsername bytes: %v", err)
	}
	if err := s.ConnectAs(t, long, u.Password, "").PingContext(ctx); err != nil {
		t.Errorf("a user with a name of MaxUsername bytes cannot log in: %v", err)
	}
	if err := d.RevokeUser(ctx, nil, long); err != nil {
		t.Fatal(err)
	}

	later := time.Now().Add(time.Hour)
	for _, bad := range []string{"", long + "a", "V-upper", "v.dot", "v'q", "v x", "v;drop", "vø"} {
		nu := newUser(t, bad)
		for call, err := range map[string]error{
			"CreateUser": d.CreateUser(ctx, creationSQL, nu),
			"RenewUser":  d.RenewUser(ctx, nil, bad, later),
			"RevokeUser": d.RevokeUser(ctx, nil, bad),
		} {
			if !errors.Is(err, mysql.ErrName) || !strings.Contains(err.Error(), "a-z 0-9 - _") {
				t.Errorf("%s(%q) = %v, want ErrName saying what to use", call, bad, err)
			}
		}
		if _, err := d.UserExists(ctx, bad); !errors.Is(err, mysql.ErrName) {
			t.Errorf("UserExists(%q) = %v, want ErrName", bad, err)
		}
	}
	if err := d.RevokeUser(ctx, nil, s.RootUser); err == nil || !strings.Contains(err.Error(), "is the admin") {
		t.Errorf("RevokeUser of the admin's own user: %v, want it refused", err)
	}

	name := leaseName("v-refused")
	for _, tc := range []struct {
		call string
		err  error
	}{
		{"plain IDENTIFIED BY", d.CreateUser(ctx, []string{"CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'"}, newUser(t, name))},
		{"PASSWORD()", d.CreateUser(ctx, []string{"CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD('{{password}}')"}, newUser(t, name))},
		{"unquoted", d.CreateUser(ctx, []string{"CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD {{password}}"}, newUser(t, name))},
		{"second use", d.CreateUser(ctx, []string{creationSQL[0], "SELECT '{{password}}'"}, newUser(t, name))},
	} {
		if tc.err == nil || !strings.Contains(tc.err.Error(), "where MariaDB would take it for a plain password") {
			t.Errorf("CreateUser with {{password}} %s: %v, want it refused", tc.call, tc.err)
		}
	}
	if ok, err := d.UserExists(ctx, name); err != nil || ok {
		t.Errorf("a refused creation made the user: %v, %v", ok, err)
	}
	if err := d.RenewUser(ctx, []string{"SET PASSWORD FOR '{{name}}'@'%' = '{{password}}'"}, name, later); err == nil {
		t.Error("renew_sql with {{password}} was accepted")
	}
	if err := d.RevokeUser(ctx, []string{"SELECT '{{expiration}}'"}, name); err == nil {
		t.Error("revocation_sql with {{expiration}} was accepted")
	}

	taken := leaseName("v-taken")
	s.CreateUser(t, taken, "the-first-password-0123")
	err := d.CreateUser(ctx, creationSQL, newUser(t, taken))
	if err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Errorf("CreateUser of an existing account: %v, want it refused", err)
	}
	if err := s.ConnectAs(t, taken, "the-first-password-0123", "").PingContext(ctx); err != nil {
		t.Errorf("the existing account no longer logs in with its password: %v", err)
	}
}

// An admin with Open's privileges, SELECT on mysql.user and the grants
// the role hands out (WITH GRANT OPTION) runs a lease's whole life; one
// without SELECT on mysql.user is told to grant it.
func TestDynamicAdminPrivileges(t *testing.T) {
	s, _ := startDynamic(t)
	ctx := context.Background()
	for _, tc := range []struct {
		admin     string
		userTable bool
		want      string
	}{
		{"dyn-least", true, ""},
		{"dyn-no-user-table", false, "GRANT SELECT ON mysql.user"},
	} {
		t.Run(tc.admin, func(t *testing.T) {
			const adminPW = "dynamic-admin-password-0123"
			s.CreateUser(t, tc.admin, adminPW)
			s.Exec(t, "GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO '"+tc.admin+"'@'%'")
			s.Exec(t, "GRANT SELECT ON testdb.* TO '"+tc.admin+"'@'%' WITH GRANT OPTION")
			if tc.userTable {
				s.Exec(t, "GRANT SELECT ON mysql.user TO '"+tc.admin+"'@'%'")
			}
			d := open(t, s.Config(tc.admin, adminPW, "").FormatDSN())
			err := lease(ctx, s, d, newUser(t, leaseName("v-"+tc.admin)))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("lease: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("lease: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// lease creates u, logs in as it, holds a session open, renews and
// revokes it, and checks the session ended and the user is gone.
func lease(ctx context.Context, s *mysqltest.Server, d *mysql.Driver, u dbcred.NewUser) error {
	if err := d.CreateUser(ctx, creationSQL, u); err != nil {
		return err
	}
	connector, err := mysqldriver.NewConnector(s.Config(u.Name, u.Password, "testdb"))
	if err != nil {
		return err
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	held, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer held.Close()
	if _, err := held.ExecContext(ctx, "SELECT * FROM items"); err != nil {
		return err
	}
	if err := d.RenewUser(ctx, nil, u.Name, u.Expiration.Add(time.Hour)); err != nil {
		return err
	}
	if err := d.RevokeUser(ctx, nil, u.Name); err != nil {
		return err
	}
	if _, err := held.ExecContext(ctx, "SELECT 1"); err == nil {
		return errors.New("the session survived RevokeUser")
	}
	if ok, err := d.UserExists(ctx, u.Name); err != nil || ok {
		return errors.New("the user exists after RevokeUser")
	}
	return nil
}
