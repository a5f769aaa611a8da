package pgtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/graft-sh/graft/internal/dbproc"
)

// The superuser logs in with its password over TCP and nothing else does;
// a user made with CreateUser logs in to a database made with
// CreateDatabase and has its group's privileges.
func TestStart(t *testing.T) {
	s := Start(t)
	t.Logf("PostgreSQL started in %s (initdb and start)", s.StartTime)
	ctx := t.Context()

	s.Exec(t, "postgres", "CREATE ROLE app NOLOGIN")
	s.CreateUser(t, "app-blue", "it's blue", "app")
	s.CreateDatabase(t, "shop", "app")
	conn, err := pgx.Connect(ctx, s.URL("app-blue", "it's blue", "shop"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var user, db string
	if err := conn.QueryRow(ctx, "SELECT current_user, current_database()").Scan(&user, &db); err != nil {
		t.Fatal(err)
	}
	if user != "app-blue" || db != "shop" {
		t.Fatalf("connected as %s to %s, want app-blue to shop", user, db)
	}
	// The database's owner is the group, so its member may create in it.
	if _, err := conn.Exec(ctx, "CREATE SCHEMA inventory"); err != nil {
		t.Fatalf("a member of the owning group creates a schema: %v", err)
	}

	tests := []struct{ name, user, password string }{
		{"wrong superuser password", s.Superuser, "nope"},
		{"wrong user password", "app-blue", "its blue"},
		{"group role", "app", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := pgx.Connect(ctx, s.URL(tt.user, tt.password, "shop"))
			if err == nil {
				c.Close(ctx)
				t.Fatal("connected")
			}
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || (pe.Code != "28P01" && pe.Code != "28000") {
				t.Fatalf("err = %v, want an authentication failure", err)
			}
		})
	}
}

// A stopped server refuses connections and ends its sessions; started
// again it serves the same data on the same port.
func TestStopAndStartAgain(t *testing.T) {
	s := Start(t)
	ctx := t.Context()
	s.Exec(t, "postgres", "CREATE TABLE kept (x int)")
	s.Exec(t, "postgres", "INSERT INTO kept VALUES (42)")
	held := s.Connect(t, "postgres")
	port := s.Port

	s.Stop(t)
	if _, err := held.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a session survived Stop")
	}
	if c, err := pgx.Connect(ctx, s.DSN); err == nil {
		c.Close(ctx)
		t.Fatal("a stopped server took a connection")
	}

	s.StartAgain(t)
	if s.Port != port {
		t.Fatalf("started again on port %d, not %d", s.Port, port)
	}
	var x int
	if err := s.Connect(t, "postgres").QueryRow(ctx, "SELECT x FROM kept").Scan(&x); err != nil || x != 42 {
		t.Fatalf("after StartAgain: %d, %v; want the row written before", x, err)
	}
}

// A test binary that dies without its cleanup (a timeout's panic, SIGKILL)
// leaves no server running, and the next Start removes its directory.
func TestNoServerOutlivesItsTest(t *testing.T) {
	if os.Getenv("PGTEST_CHILD") == "1" {
		s := Start(t)
		fmt.Println(s.Dir)
		select {}
	}
	if _, _, err := prerequisites(); err != nil {
		dbproc.Unavailable(t, "pgtest", "GRAFT_REQUIRE_PG", err.Error())
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command(exe, "-test.run=^TestNoServerOutlivesItsTest$", "-test.v")
	child.Env = append(os.Environ(), "PGTEST_CHILD=1")
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	lines := bufio.NewScanner(out)
	var dir string
	for lines.Scan() {
		if strings.Contains(lines.Text(), dirPrefix) {
			dir = strings.TrimSpace(lines.Text())
			break
		}
	}
	if dir == "" {
		child.Process.Kill()
		child.Wait()
		t.Fatal("the child started no server (see its output)")
	}
	pid := postmasterPid(t, dir)

	child.Process.Kill()
	child.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("postgres (pid %d) still runs 10 s after its test binary was killed", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The killed process is gone, but may not yet be reaped by init.
	testWait(t, 5*time.Second, func() bool { removeStale(); _, err := os.Stat(dir); return os.IsNotExist(err) })
}

func postmasterPid(t *testing.T, dir string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(data), &pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

func testWait(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("condition not met within %s", timeout)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// On a machine without PostgreSQL every test here skips, and with
// GRAFT_REQUIRE_PG=1 they fail.
func TestSkipsWithoutPostgreSQL(t *testing.T) {
	dbproc.CheckSkipsWithout(t, ".", []string{"GRAFT_PG_BINDIR=/nonexistent"}, "GRAFT_REQUIRE_PG")
}
