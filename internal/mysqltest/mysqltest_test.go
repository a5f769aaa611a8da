package mysqltest

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/graft-sh/graft/internal/dbproc"
)

// A started server takes root's password over TCP and refuses a wrong
// one, runs as the mysql user when the test is root, and the helpers
// make databases, users and roles that work.
func TestStart(t *testing.T) {
	s := Start(t)
	t.Logf("start %v (install %v)", s.StartTime, s.InstallTime)
	ctx := context.Background()

	db, err := sql.Open("mysql", s.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var version, current string
	if err := db.QueryRowContext(ctx, "SELECT VERSION(), CURRENT_USER()").Scan(&version, &current); err != nil {
		t.Fatalf("log in with the DSN: %v", err)
	}
	if !strings.Contains(version, "MariaDB") || current != "root@127.0.0.1" {
		t.Errorf("version %q, current user %q: want MariaDB, root@127.0.0.1", version, current)
	}

	wrong := s.ConnectAs(t, s.RootUser, "not-"+s.RootPassword, "")
	var me *mysql.MySQLError
	if err := wrong.PingContext(ctx); !errors.As(err, &me) || me.Number != 1045 {
		t.Errorf("wrong password: %v, want error 1045 (access denied)", err)
	}

	if os.Geteuid() == 0 {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		cred, _ := runAs()
		if want := fmt.Sprintf("Uid:\t%d\t", cred.Uid); !strings.Contains(string(status), want) {
			t.Errorf("the server does not run as mysql (want %q):\n%s", want, status)
		}
	}

	s.CreateDatabase(t, "shop")
	s.Exec(t, "CREATE ROLE `shop-rw`")
	s.Exec(t, "GRANT ALL ON `shop`.* TO `shop-rw`")
	s.CreateUser(t, "clerk", `it's a \pass`, "shop-rw")
	clerk := s.ConnectAs(t, "clerk", `it's a \pass`, "shop")
	var role sql.NullString
	if err := clerk.QueryRowContext(ctx, "SELECT CURRENT_ROLE()").Scan(&role); err != nil {
		t.Fatalf("log in as the user CreateUser made: %v", err)
	}
	if role.String != "shop-rw" {
		t.Errorf("current role %v, want shop-rw (the default role)", role)
	}
	if _, err := clerk.ExecContext(ctx, "CREATE TABLE t (id int)"); err != nil {
		t.Errorf("the role's grant: %v", err)
	}
}

// The install runs once a process: a second server copies the first's
// initialised data directory and starts in well under a second.
func TestSecondStartCopies(t *testing.T) {
	Start(t)
	s := Start(t)
	t.Logf("second start %v", s.StartTime)
	if s.InstallTime != 0 {
		t.Errorf("the second start installed again (%v)", s.InstallTime)
	}
	if s.StartTime > 5*time.Second {
		t.Errorf("the second start took %v", s.StartTime)
	}
}

// A server TLS is required of refuses plain TCP, and its DSN connects
// over TLS, verifying the server's certificate.
func TestRequireTLS(t *testing.T) {
	s := Start(t, RequireTLS())
	ctx := context.Background()
	db := s.Connect(t)
	var cipher sql.NullString
	if err := db.QueryRowContext(ctx, "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'").Scan(&cipher); err != nil {
		t.Fatal(err)
	}
	if cipher.String == "" {
		t.Error("the DSN's connection does not use TLS")
	}
	plain := s.Config(s.RootUser, s.RootPassword, "")
	plain.TLSConfig = ""
	connector, err := mysql.NewConnector(plain)
	if err != nil {
		t.Fatal(err)
	}
	plainDB := sql.OpenDB(connector)
	defer plainDB.Close()
	if err := plainDB.PingContext(ctx); err == nil {
		t.Error("a plain TCP login was accepted")
	}
}

// The cleanup stops the server and removes its directory.
func TestCleanupStops(t *testing.T) {
	var s *Server
	var pid int
	t.Run("server", func(t *testing.T) {
		s = Start(t)
		pid = s.Pid()
		if pid == 0 {
			t.Fatal("no pid file")
		}
	})
	if s == nil {
		// The subtest skipped (no MariaDB here), or failed, which fails
		// this test too: there is nothing to check either way.
		t.Skip("the subtest started no server")
	}
	if !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		t.Errorf("the server (pid %d) still runs after its test", pid)
	}
	if _, err := os.Stat(s.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the directory %s is still there: %v", s.Dir, err)
	}
	if conn, err := net.Dial("tcp", net.JoinHostPort(s.Host, strconv.Itoa(s.Port))); err == nil {
		conn.Close()
		t.Errorf("port %d still accepts connections", s.Port)
	}
}

// helperEnv makes the test binary, run as a child by
// TestNoOrphanServer, start a server, print its pid and directory, and
// wait to be killed.
const helperEnv = "GRAFT_MYSQLTEST_HELPER"

func TestHelperServer(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("run by TestNoOrphanServer")
	}
	s := Start(t)
	fmt.Printf("server %d %s\n", s.Pid(), s.Dir)
	time.Sleep(time.Minute)
}

// A test binary killed with SIGKILL, whose cleanups never run, leaves no
// server behind (Pdeathsig), and the next Start removes its directories.
func TestNoOrphanServer(t *testing.T) {
	if _, _, err := prerequisites(); err != nil {
		unavailable(t, err.Error())
	}
	child := exec.Command(os.Args[0], "-test.run=^TestHelperServer$", "-test.v")
	child.Env = append(os.Environ(), helperEnv+"=1")
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	var dir string
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		if _, err := fmt.Sscanf(lines.Text(), "server %d %s", &pid, &dir); err == nil {
			break
		}
	}
	if pid == 0 {
		child.Process.Kill()
		child.Wait()
		t.Fatal("the child printed no server")
	}
	child.Process.Kill()
	child.Wait()

	deadline := time.Now().Add(10 * time.Second)
	for !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the server (pid %d) outlived its test binary by 10s", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	removeStale()
	dirs, _ := filepath.Glob(filepath.Join(baseDir, dirPrefix+"*"))
	for _, d := range dirs {
		if data, _ := os.ReadFile(filepath.Join(d, ownerFile)); string(data) == strconv.Itoa(child.Process.Pid) {
			t.Errorf("the dead child's directory %s is still there", d)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the dead child's server directory %s is still there", dir)
	}
}

// A server still running for a dead test process (one Pdeathsig missed)
// is killed by the next Start's sweep, and its directory removed.
func TestRemoveStaleKillsSurvivor(t *testing.T) {
	progs, cred, err := prerequisites()
	if err != nil {
		unavailable(t, err.Error())
	}
	tmpl, _, err := template(progs, cred)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := newDir(cred)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Server{Host: "127.0.0.1", RootUser: "root", RootPassword: dbproc.RandomHex(16), Dir: dir, Socket: filepath.Join(dir, socketFile)}
	if err := copyTree(filepath.Join(tmpl, "data"), filepath.Join(dir, "data"), cred); err != nil {
		t.Fatal(err)
	}
	if err := s.writeInitFile(cred); err != nil {
		t.Fatal(err)
	}
	s.Port = dbproc.FreePort(t)
	p, err := s.start(progs, cred, options{})
	if err != nil {
		t.Fatalf("%v\n%s", err, s.Log())
	}
	t.Cleanup(func() { p.Stop(syscall.SIGTERM) })

	// The directory now belongs to a process that has exited.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(gone.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	removeStale()
	select {
	case <-p.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("the stale server still runs")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stale directory %s is still there", dir)
	}
}

func TestLiteralAndHash(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", "'plain'"},
		{"it's", "'it''s'"},
		{`a\b`, `'a\\b'`},
	} {
		if got := Literal(tc.in); got != tc.want {
			t.Errorf("Literal(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
	// The server's own PASSWORD('secretpw').
	if got, want := NativeHash("secretpw"), "*7648E52EC79D4BB879B7B913F0B8BBF8DC4AB6CC"; got != want {
		t.Errorf("NativeHash = %s, want %s", got, want)
	}
}

// On a machine without MariaDB every test here skips (none fails because
// another skipped), and with GRAFT_REQUIRE_MYSQL=1 they fail.
func TestSkipsWithoutMariaDB(t *testing.T) {
	dbproc.CheckSkipsWithout(t, ".", []string{BinDirEnv + "=/nonexistent"}, "GRAFT_REQUIRE_MYSQL")
}
