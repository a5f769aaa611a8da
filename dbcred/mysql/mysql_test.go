package mysql_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/dbcred/mysql"
	"github.com/graft-sh/graft/internal/dbproc"
	"github.com/graft-sh/graft/internal/mysqltest"
)

const (
	group = "message-processor"
	blue  = "message-processor-blue"
	green = "message-processor-green"
)

// A rotation from an empty server: the group and both users are
// created, each user logs in acting as the group, a table blue made is
// green's to read and write, and a retired blue is locked out with its
// open session ended. Every step runs twice, as a resumed rotation
// repeats the step it crashed in.
func TestRotation(t *testing.T) {
	s := mysqltest.Start(t)
	s.CreateDatabase(t, "shop")
	d := open(t, s.DSN)
	ctx := context.Background()

	twice(t, "EnsureGroup", func() error { return d.EnsureGroup(ctx, group) })
	s.Exec(t, "GRANT ALL ON `shop`.* TO `"+group+"`")

	bluePW := password(t)
	twice(t, "SetPassword blue", func() error { return d.SetPassword(ctx, blue, group, bluePW) })
	twice(t, "Test blue", func() error { return d.Test(ctx, blue, group, bluePW) })
	blueDB := s.ConnectAs(t, blue, bluePW, "shop")
	exec(t, blueDB, "CREATE TABLE pets (id int PRIMARY KEY AUTO_INCREMENT, name text)")
	exec(t, blueDB, "INSERT INTO pets (name) VALUES ('rex')")

	greenPW := password(t)
	twice(t, "SetPassword green", func() error { return d.SetPassword(ctx, green, group, greenPW) })
	twice(t, "Test green", func() error { return d.Test(ctx, green, group, greenPW) })
	greenDB := s.ConnectAs(t, green, greenPW, "shop")
	exec(t, greenDB, "INSERT INTO pets (name) VALUES ('tom')")
	exec(t, greenDB, "UPDATE pets SET name = 'rex the first' WHERE name = 'rex'")
	if got := count(t, greenDB, "SELECT COUNT(*) FROM pets"); got != 2 {
		t.Errorf("green sees %d of blue's and its own rows, want 2", got)
	}
	if err := d.Test(ctx, green, group, "not-"+greenPW); !errors.Is(err, dbcred.ErrLogin) {
		t.Errorf("Test with a wrong password: %v, want ErrLogin", err)
	}

	// An open session of blue, as a consumer that has not moved yet has.
	held, err := blueDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := held.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := d.Sessions(ctx, blue); err != nil || n < 1 {
		t.Fatalf("Sessions(blue) with one held open = %d, %v", n, err)
	}
	twice(t, "Retire blue", func() error { return d.Retire(ctx, blue) })
	// Counted at once: the refused logins below are listed for a moment
	// while the server turns them away.
	if n, err := d.Sessions(ctx, blue); err != nil || n != 0 {
		t.Errorf("Sessions(blue) after Retire = %d, %v, want 0", n, err)
	}
	if _, err := held.ExecContext(ctx, "SELECT 1"); err == nil {
		t.Error("blue's session survived Retire")
	}
	if err := d.Test(ctx, blue, group, bluePW); !errors.Is(err, dbcred.ErrLogin) {
		t.Errorf("Test of retired blue: %v, want ErrLogin", err)
	}
	if err := s.ConnectAs(t, blue, bluePW, "").PingContext(ctx); err == nil {
		t.Error("retired blue can log in")
	}
	if got := count(t, greenDB, "SELECT COUNT(*) FROM pets"); got != 2 {
		t.Errorf("green after blue's retirement sees %d rows, want 2", got)
	}

	// The next rotation re-keys blue, which logs in again.
	bluePW2 := password(t)
	twice(t, "SetPassword retired blue", func() error { return d.SetPassword(ctx, blue, group, bluePW2) })
	twice(t, "Test blue again", func() error { return d.Test(ctx, blue, group, bluePW2) })
	if err := d.Test(ctx, blue, group, bluePW); !errors.Is(err, dbcred.ErrLogin) {
		t.Errorf("Test with blue's old password: %v, want ErrLogin", err)
	}
	if got := count(t, s.ConnectAs(t, blue, bluePW2, "shop"), "SELECT COUNT(*) FROM pets"); got != 2 {
		t.Errorf("blue with its new password sees %d rows, want 2", got)
	}

	if err := d.Retire(ctx, "never-created"); err != nil {
		t.Errorf("Retire of a user that does not exist: %v", err)
	}
	if n, err := d.Sessions(ctx, "never-created"); err != nil || n != 0 {
		t.Errorf("Sessions of a user that does not exist = %d, %v", n, err)
	}
}

// A session busy in a long query is ended too, at once rather than when
// its query ends.
func TestRetireEndsBusySession(t *testing.T) {
	s := mysqltest.Start(t)
	d := open(t, s.DSN)
	ctx := context.Background()
	pw := password(t)
	if err := d.EnsureGroup(ctx, group); err != nil {
		t.Fatal(err)
	}
	if err := d.SetPassword(ctx, blue, group, pw); err != nil {
		t.Fatal(err)
	}
	blueDB := s.ConnectAs(t, blue, pw, "")
	busy := make(chan error, 1)
	go func() {
		_, err := blueDB.ExecContext(ctx, "SELECT SLEEP(60)")
		busy <- err
	}()
	waitFor(t, func() bool { n, _ := d.Sessions(ctx, blue); return n == 1 })

	began := time.Now()
	if err := d.Retire(ctx, blue); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("Retire took %v", took)
	}
	select {
	case err := <-busy:
		if err == nil {
			t.Error("the busy session's query succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Error("the busy session's query still runs after Retire")
	}
}

// Test fails with ErrLogin, saying why, when the session would not act
// as the group: a user without the group as its default role, or
// another account of the user's name that the server matches first.
func TestTestChecksTheSession(t *testing.T) {
	s := mysqltest.Start(t)
	d := open(t, s.DSN)
	ctx := context.Background()
	if err := d.EnsureGroup(ctx, group); err != nil {
		t.Fatal(err)
	}
	s.Exec(t, "CREATE ROLE other")

	s.CreateUser(t, "norole", "pw-of-norole-0123456789")
	s.Exec(t, "GRANT `"+group+"` TO 'norole'@'%'")
	s.CreateUser(t, "elsewhere", "pw-of-elsewhere-0123456789", "other")
	s.Exec(t, "CREATE USER 'shadowed'@'127.0.0.1' IDENTIFIED BY 'pw-of-shadowed-0123456789'")
	if err := d.SetPassword(ctx, "shadowed", group, "pw-of-shadowed-0123456789"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ user, password, want string }{
		{"norole", "pw-of-norole-0123456789", `acts as role ""`},
		{"elsewhere", "pw-of-elsewhere-0123456789", `acts as role "other"`},
		{"shadowed", "pw-of-shadowed-0123456789", "the session is the account shadowed@127.0.0.1"},
	} {
		err := d.Test(ctx, tc.user, group, tc.password)
		if !errors.Is(err, dbcred.ErrLogin) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Test(%s) = %v, want ErrLogin saying %q", tc.user, err, tc.want)
		}
	}
}

// A SetPassword that crashed between its statements leaves the account
// locked, or without its role; the repeated call completes it.
func TestSetPasswordCompletesAPartialOne(t *testing.T) {
	s := mysqltest.Start(t)
	d := open(t, s.DSN)
	ctx := context.Background()
	if err := d.EnsureGroup(ctx, group); err != nil {
		t.Fatal(err)
	}
	s.Exec(t, "CREATE USER '"+blue+"'@'%' ACCOUNT LOCK")
	s.Exec(t, "CREATE USER '"+green+"'@'%' IDENTIFIED BY 'old-green-password-0123'")
	s.Exec(t, "GRANT `"+group+"` TO '"+green+"'@'%'")
	for _, user := range []string{blue, green} {
		pw := password(t)
		if err := d.SetPassword(ctx, user, group, pw); err != nil {
			t.Fatalf("SetPassword(%s): %v", user, err)
		}
		if err := d.Test(ctx, user, group, pw); err != nil {
			t.Errorf("Test(%s) after SetPassword: %v", user, err)
		}
	}
}

// With the general log on, no password the driver sets or tests reaches
// it: the server is sent only hashes, and a login's password is not a
// statement.
func TestNoPasswordInTheGeneralLog(t *testing.T) {
	s := mysqltest.Start(t)
	d := open(t, s.DSN)
	ctx := context.Background()
	s.Exec(t, "SET GLOBAL log_output = 'FILE'")
	s.Exec(t, "SET GLOBAL general_log = 1")

	pw, pw2 := password(t), password(t)
	if err := d.EnsureGroup(ctx, group); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{pw, pw2} {
		if err := d.SetPassword(ctx, blue, group, p); err != nil {
			t.Fatal(err)
		}
		if err := d.Test(ctx, blue, group, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Test(ctx, blue, group, pw); !errors.Is(err, dbcred.ErrLogin) {
		t.Errorf("Test with the replaced password: %v, want ErrLogin", err)
	}
	if err := d.Retire(ctx, blue); err != nil {
		t.Fatal(err)
	}

	log := s.GeneralLog()
	if !strings.Contains(log, "ALTER USER '"+blue+"'@'%'") {
		t.Fatalf("the general log did not record SetPassword's statements:\n%s", dbproc.Tail(log, 40))
	}
	for _, p := range []string{pw, pw2, s.RootPassword} {
		if strings.Contains(log, p) {
			t.Errorf("the general log holds a password:\n%s", dbproc.Tail(log, 40))
		}
	}
}

// Names that are not 1 to 80 of A-Z a-z 0-9 _ . - (and the group names
// MariaDB reserves) are refused before any statement, with ErrName and
// a message saying what to use; an 80-character name works.
func TestNames(t *testing.T) {
	s := mysqltest.Start(t)
	d := open(t, s.DSN)
	ctx := context.Background()
	if err := d.EnsureGroup(ctx, group); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("a", 80)
	pw := password(t)
	if err := d.SetPassword(ctx, long, group, pw); err != nil {
		t.Fatalf("an 80-character user: %v", err)
	}
	if err := d.Test(ctx, long, group, pw); err != nil {
		t.Fatalf("an 80-character user: %v", err)
	}

	for _, bad := range []string{"", strings.Repeat("a", 81), "bob'@'%", "bob`", `bob\`, "bob smith", "bøb", "bob;DROP"} {
		for name, err := range map[string]error{
			"EnsureGroup":       d.EnsureGroup(ctx, bad),
			"SetPassword user":  d.SetPassword(ctx, bad, group, pw),
			"SetPassword group": d.SetPassword(ctx, blue, bad, pw),
			"Test user":         d.Test(ctx, bad, group, pw),
			"Test group":        d.Test(ctx, blue, bad, pw),
			"Retire":            d.Retire(ctx, bad),
		} {
			if !errors.Is(err, mysql.ErrName) || !strings.Contains(err.Error(), "A-Z a-z 0-9 _ . -") {
				t.Errorf("%s(%q) = %v, want ErrName saying what to use", name, bad, err)
			}
		}
		if _, err := d.Sessions(ctx, bad); !errors.Is(err, mysql.ErrName) {
			t.Errorf("Sessions(%q) = %v, want ErrName", bad, err)
		}
	}
	for _, reserved := range []string{"none", "PUBLIC"} {
		if err := d.EnsureGroup(ctx, reserved); !errors.Is(err, mysql.ErrName) {
			t.Errorf("EnsureGroup(%q) = %v, want ErrName", reserved, err)
		}
	}
	if err := d.SetPassword(ctx, group, group, pw); !errors.Is(err, mysql.ErrName) {
		t.Errorf("SetPassword of a user named as its group: %v, want ErrName", err)
	}
	if err := d.Retire(ctx, s.RootUser); err == nil {
		t.Error("Retire of the admin's own user was accepted")
	}
	if n := count(t, s.Connect(t), "SELECT COUNT(*) FROM mysql.user WHERE User NOT IN ('root', 'mysql', 'mariadb.sys', '"+group+"', '"+long+"')"); n != 0 {
		t.Errorf("refused names left %d users or roles behind", n)
	}
}

// No error holds a password or the admin DSN's: not a DSN that does not
// parse, not a refused admin login, not a failed statement or login.
func TestErrorsHoldNoPassword(t *testing.T) {
	s := mysqltest.Start(t)
	ctx := context.Background()
	const secret = "Sup3rSecretAdminPW"
	var errs []error
	for _, dsn := range []string{
		"admin:" + secret + "@tcp(127.0.0.1:3306)/db%zz",
		"admin:x/" + secret + "%zz@tcp(127.0.0.1:3306)",
		"admin:" + secret + "@tcp(127.0.0.1:3306/",
		"admin:" + secret + "@tcp(127.0.0.1:3306)/?tls=no-such-config",
		"admin:" + secret + "@tcp(127.0.0.1:3306)/?timeout=" + secret,
		":" + secret + "@tcp(127.0.0.1:3306)/",
		"admin:" + secret + "@tcp(127.0.0.1:1)/",
		"root:" + secret + "@" + strings.TrimPrefix(s.DSN, s.RootUser+":"+s.RootPassword+"@"),
	} {
		_, err := mysql.Open(ctx, dsn)
		if err == nil {
			t.Fatalf("Open of a bad DSN succeeded")
		}
		errs = append(errs, err)
	}

	d := open(t, s.DSN)
	pw := password(t)
	noGroup := d.SetPassword(ctx, blue, "missing-group", pw)
	if noGroup == nil || !strings.Contains(noGroup.Error(), "does not exist (EnsureGroup creates it)") {
		t.Errorf("SetPassword without its group: %v, want it to say so", noGroup)
	}
	errs = append(errs, noGroup, d.Test(ctx, blue, group, pw))
	if err := d.EnsureGroup(ctx, group); err != nil {
		t.Fatal(err)
	}
	if err := d.SetPassword(ctx, blue, group, pw); err != nil {
		t.Fatal(err)
	}
	errs = append(errs, d.Test(ctx, blue, group, "wrong-"+pw), d.Test(ctx, blue, "other-group", pw))

	for _, err := range errs {
		if err == nil {
			t.Error("a failing call returned nil")
			continue
		}
		t.Log(err)
		for _, p := range []string{secret, pw, s.RootPassword} {
			if strings.Contains(err.Error(), p) {
				t.Errorf("an error holds a password: %v", err)
			}
		}
	}
}

// Under a server that requires TLS, a DSN that asks for it (a
// registered configuration, or skip-verify) opens the driver, and Test's
// logins use TLS too: the server refuses any other.
func TestTLS(t *testing.T) {
	s := mysqltest.Start(t, mysqltest.RequireTLS())
	ctx := context.Background()
	skipVerify := s.Config(s.RootUser, s.RootPassword, "")
	skipVerify.TLSConfig = "skip-verify"
	for _, dsn := range []string{s.DSN, skipVerify.FormatDSN()} {
		d := open(t, dsn)
		pw := password(t)
		if err := d.EnsureGroup(ctx, group); err != nil {
			t.Fatal(err)
		}
		if err := d.SetPassword(ctx, blue, group, pw); err != nil {
			t.Fatal(err)
		}
		if err := d.Test(ctx, blue, group, pw); err != nil {
			t.Errorf("Test over TLS: %v", err)
		}
	}
	plain := s.Config(blue, "whatever", "")
	plain.TLSConfig = ""
	if _, err := mysql.Open(ctx, plain.FormatDSN()); err == nil {
		t.Error("the server accepted a login without TLS; this test proves nothing")
	}
}

// An admin with only the privileges Open's documentation lists runs a
// whole rotation (PROCESS through a role works too), and one without
// any of them fails saying which it lacks: at Open for PROCESS, whose
// absence would otherwise hide sessions silently.
func TestAdminPrivileges(t *testing.T) {
	s := mysqltest.Start(t)
	ctx := context.Background()
	s.Exec(t, "CREATE ROLE `sees-sessions`")
	s.Exec(t, "GRANT PROCESS ON *.* TO `sees-sessions`")
	all := []string{"CREATE USER", "PROCESS", "CONNECTION ADMIN", "UPDATE ON mysql"}
	for i, tc := range []struct {
		name    string
		without string // one of all
		role    bool   // PROCESS through the role sees-sessions
		want    string // in the first error, "" for none
	}{
		{name: "least", want: ""},
		{name: "process-by-role", without: "PROCESS", role: true, want: ""},
		{name: "no-process", without: "PROCESS", want: "lacks the PROCESS privilege"},
		{name: "no-create-user", without: "CREATE USER", want: "the CREATE USER privilege"},
		{name: "no-connection-admin", without: "CONNECTION ADMIN", want: "needs the CONNECTION ADMIN privilege"},
		{name: "no-update-mysql", without: "UPDATE ON mysql", want: "to database 'mysql'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			admin, adminPW := "rotator-"+tc.name, "rotator-password-0123456789"
			user := "user-" + strconv.Itoa(i)
			var global []string
			for _, p := range all {
				if p != tc.without && p != "UPDATE ON mysql" {
					global = append(global, p)
				}
			}
			s.CreateUser(t, admin, adminPW)
			s.Exec(t, "GRANT "+strings.Join(global, ", ")+" ON *.* TO '"+admin+"'@'%'")
			if tc.without != "UPDATE ON mysql" {
				s.Exec(t, "GRANT UPDATE ON mysql.* TO '"+admin+"'@'%'")
			}
			if tc.role {
				s.Exec(t, "GRANT `sees-sessions` TO '"+admin+"'@'%'")
				s.Exec(t, "SET DEFAULT ROLE `sees-sessions` FOR '"+admin+"'@'%'")
			}
			err := rotate(ctx, s, s.Config(admin, adminPW, "").FormatDSN(), group+"-"+tc.name, user)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("rotation: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("rotation: %v, want an error saying %q", err, tc.want)
			case err != nil && strings.Contains(err.Error(), adminPW):
				t.Errorf("the error holds the admin's password: %v", err)
			}
		})
	}
}

// rotate opens a driver with dsn and takes user through a rotation's
// steps with a session open, checking it ends.
func rotate(ctx context.Context, s *mysqltest.Server, dsn, group, user string) error {
	d, err := mysql.Open(ctx, dsn)
	if err != nil {
		return err
	}
	defer d.Close()
	pw, err := dbcred.Policy{}.Password()
	if err != nil {
		return err
	}
	if err := d.EnsureGroup(ctx, group); err != nil {
		return err
	}
	if err := d.SetPassword(ctx, user, group, pw); err != nil {
		return err
	}
	if err := d.Test(ctx, user, group, pw); err != nil {
		return err
	}
	connector, err := mysqldriver.NewConnector(s.Config(user, pw, ""))
	if err != nil {
		return err
	}
	held := sql.OpenDB(connector)
	defer held.Close()
	if err := held.PingContext(ctx); err != nil {
		return err
	}
	// Test's own login may linger in the process list for a moment after
	// it closed (the server ends a session asynchronously): wait for it
	// to go, never for a count below one.
	n, err := d.Sessions(ctx, user)
	for deadline := time.Now().Add(5 * time.Second); err == nil && n > 1 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		n, err = d.Sessions(ctx, user)
	}
	if err != nil || n != 1 {
		return fmt.Errorf("Sessions with one open = %d, %v", n, err)
	}
	if err := d.Retire(ctx, user); err != nil {
		return err
	}
	if n, err := d.Sessions(ctx, user); err != nil || n != 0 {
		return fmt.Errorf("Sessions after Retire = %d, %v", n, err)
	}
	return nil
}

func open(t *testing.T, dsn string) *mysql.Driver {
	t.Helper()
	d, err := mysql.Open(context.Background(), dsn)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// twice runs step twice, failing the test if either run fails.
func twice(t *testing.T, step string, f func() error) {
	t.Helper()
	for _, run := range []string{"first", "second"} {
		if err := f(); err != nil {
			t.Fatalf("%s (%s run): %v", step, run, err)
		}
	}
}

func password(t *testing.T) string {
	t.Helper()
	pw, err := dbcred.Policy{}.Password()
	if err != nil {
		t.Fatal(err)
	}
	return pw
}

func exec(t *testing.T, db *sql.DB, stmt string) {
	t.Helper()
	if _, err := db.ExecContext(context.Background(), stmt); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
}

func count(t *testing.T, db *sql.DB, query string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(context.Background(), query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// In go-sql-driver/mysql's form a password holds @ and / as they are, so
// long as the DSN has its / after the address. Without that /, the
// parser takes a / of the password for it: the password's rest would
// become the database name (and the address), and the driver would
// connect and quote it. Such a DSN is refused before any connection,
// saying what to write; the right form opens with the same password.
func TestOpenRefusesAPasswordSlashTakenForTheDatabases(t *testing.T) {
	s := mysqltest.Start(t)
	ctx := t.Context()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	trap := ln.Addr().String()
	for _, dsn := range []string{
		"admin:Zq9@tcp(" + trap + ")/Kx7cd@tcp(" + trap + ")", // password Zq9@tcp(…)/Kx7cd, no / after the address
		"admin:Zq9@/Kx7cd@tcp(" + trap + ")",                  // password Zq9@/Kx7cd
	} {
		_, err := mysql.Open(ctx, dsn)
		if err == nil || !strings.Contains(err.Error(), "write user:password@tcp(host:port)/ with that /") {
			t.Errorf("Open(%q) = %v, want it refused, saying to put the / after the address", dsn, err)
		}
		if err != nil && (strings.Contains(err.Error(), "Zq9") || strings.Contains(err.Error(), "Kx7cd")) {
			t.Errorf("the refusal holds a piece of the password: %v", err)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("the refused DSNs made %d connections", n)
	}

	const awkward = "Zq9@tcp(x)/Kx7cd"
	s.CreateUser(t, "awkward", awkward)
	s.Exec(t, "GRANT ALL PRIVILEGES ON *.* TO 'awkward'@'%' WITH GRANT OPTION")
	dsn := s.Config("awkward", awkward, "").FormatDSN()
	if !strings.Contains(dsn, awkward+"@tcp(") {
		t.Fatalf("the DSN %q does not hold the password as it is", dsn)
	}
	open(t, dsn)
}

// On a machine without MariaDB every test here skips, and with
// GRAFT_REQUIRE_MYSQL=1 they fail.
func TestSkipsWithoutMariaDB(t *testing.T) {
	dbproc.CheckSkipsWithout(t, ".", []string{mysqltest.BinDirEnv + "=/nonexistent"}, "GRAFT_REQUIRE_MYSQL")
}
