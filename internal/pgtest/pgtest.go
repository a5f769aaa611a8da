// Package pgtest runs a real PostgreSQL server for a test, started from the
// machine's binaries (initdb, postgres) in a temporary directory on a
// loopback port, and stopped when the test ends.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/graft-sh/graft/internal/dbproc"
)

// DefaultBinDir is where Debian's postgresql-15 package puts the server's
// programs; GRAFT_PG_BINDIR overrides it.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// Server is a running PostgreSQL.
type Server struct {
	// Host and Port are the TCP address (Host is always 127.0.0.1).
	Host string
	Port int
	// Superuser logs in with SuperuserPassword over TCP (scram-sha-256).
	Superuser, SuperuserPassword string
	// DSN is the superuser's URL for the postgres database.
	DSN string
	// Dir holds the data directory (data), the unix socket and the
	// server's log (postgres.log); it is removed when the test ends.
	Dir string
	// StartTime is how long initdb and the start until the first
	// accepted connection took.
	StartTime time.Duration

	bin  string
	cred *syscall.Credential
	mu   sync.Mutex
	proc *dbproc.Process // nil while stopped
	// tls is set once RequireTLS made the server refuse plaintext: URL
	// asks for TLS then. Not under mu, which start holds while it
	// connects.
	tls atomic.Bool
}

// Start runs a PostgreSQL server until the test ends. It skips the test
// when the binaries are missing, or fails it instead when GRAFT_REQUIRE_PG=1.
// As root, the server runs as the postgres system user, since PostgreSQL
// refuses to run as root.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, cred, err := prerequisites()
	if err != nil {
		dbproc.Unavailable(t, "pgtest", "GRAFT_REQUIRE_PG", err.Error())
	}
	removeStale()

	began := time.Now()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The owner file lets a later Start remove this directory if this
	// process dies before its cleanup runs.
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &Server{Host: "127.0.0.1", Superuser: "postgres", SuperuserPassword: dbproc.RandomHex(16), Dir: dir, bin: bin, cred: cred}
	if err := s.initdb(bin, cred); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	for attempt := 1; ; attempt++ {
		s.Port = dbproc.FreePort(t)
		s.proc, err = s.start(bin, cred)
		if err == nil {
			break
		}
		// Another process may take the free port before postgres binds it.
		if !errors.Is(err, dbproc.ErrPortTaken) || attempt == 3 {
			t.Fatalf("pgtest: %v\n%s", err, s.Log())
		}
	}
	s.DSN = s.URL(s.Superuser, s.SuperuserPassword, "postgres")
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("pgtest: the server's log, its last %d lines:\n%s", logTail, dbproc.Tail(s.Log(), logTail))
		}
	})
	s.StartTime = time.Since(began)
	return s
}

// Stop shuts the server down (fast: its sessions are ended) and keeps
// its data, as a database that goes away under its clients; StartAgain
// brings it back.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if !s.stop() {
		t.Fatal("pgtest: Stop: the server is not running")
	}
}

func (s *Server) stop() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return false
	}
	s.proc.Stop(fastShutdown)
	s.proc = nil
	return true
}

// StartAgain starts a stopped server again on its data and its port, and
// returns once the superuser can log in. It fails the test if another
// process took the port meanwhile.
func (s *Server) StartAgain(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		t.Fatal("pgtest: StartAgain: the server is running already")
	}
	p, err := s.start(s.bin, s.cred)
	if err != nil {
		t.Fatalf("pgtest: start again on port %d: %v\n%s", s.Port, err, dbproc.Tail(s.Log(), logTail))
	}
	s.proc = p
}

const (
	dirPrefix = "graft-pgtest-"
	ownerFile = "owner.pid"
	logFile   = "postgres.log"
)

// fastShutdown is PostgreSQL's fast shutdown: sessions are ended, no
// waiting for clients.
const fastShutdown = syscall.SIGINT

// prerequisites finds the server's programs and the user to run them as.
func prerequisites() (bin string, cred *syscall.Credential, err error) {
	bin = os.Getenv("GRAFT_PG_BINDIR")
	if bin == "" {
		bin = DefaultBinDir
	}
	for _, prog := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(bin, prog)); err != nil {
			return "", nil, fmt.Errorf("PostgreSQL's %s is not in %s (apt-get install postgresql-15, or set GRAFT_PG_BINDIR)", prog, bin)
		}
	}
	cred, err = dbproc.RunAs("postgres", "adduser --system --group postgres")
	return bin, cred, err
}

// command runs a program of bin as cred; SIGQUIT, sent by the kernel
// should this process die, is PostgreSQL's immediate shutdown, which also
// ends the server's own children.
func command(bin, prog string, cred *syscall.Credential, args ...string) *exec.Cmd {
	return dbproc.Command(filepath.Join(bin, prog), cred, syscall.SIGQUIT, args...)
}

// initdb creates the cluster with a superuser who logs in by password
// over TCP; the unix socket, in Dir and reachable only by the server's
// user, trusts (for psql -h Dir while debugging).
func (s *Server) initdb(bin string, cred *syscall.Credential) error {
	pwfile := filepath.Join(s.Dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(s.SuperuserPassword+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(pwfile)
	if err := dbproc.Chown(cred, s.Dir, pwfile); err != nil {
		return err
	}
	cmd := command(bin, "initdb", cred,
		"--pgdata", filepath.Join(s.Dir, "data"), "--username", s.Superuser, "--pwfile", pwfile,
		"--auth-host", "scram-sha-256", "--auth-local", "trust",
		"--encoding", "UTF8", "--no-locale", "--no-sync", "--no-instructions")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	return nil
}

// start runs postgres, tuned for tests (nothing is durable), and waits
// until the superuser can log in.
func (s *Server) start(bin string, cred *syscall.Credential) (*dbproc.Process, error) {
	logf, err := os.OpenFile(filepath.Join(s.Dir, logFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the server holds its own descriptor
	cmd := command(bin, "postgres", cred,
		"-D", filepath.Join(s.Dir, "data"),
		"-c", "listen_addresses=127.0.0.1", "-c", "port="+strconv.Itoa(s.Port),
		"-c", "unix_socket_directories="+s.Dir,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "log_line_prefix=%m [%p] %q%u@%d ")
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := dbproc.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	ready := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, s.URL(s.Superuser, s.SuperuserPassword, "postgres"))
		if err == nil {
			conn.Close(context.Background())
		}
		return err
	}
	portTaken := func() bool { return strings.Contains(s.Log(), "Address already in use") }
	if err := p.AwaitReady("postgres", ready, portTaken, fastShutdown); err != nil {
		return nil, err
	}
	return p, nil
}

// Log is the server's log so far.
func (s *Server) Log() string {
	data, _ := os.ReadFile(filepath.Join(s.Dir, logFile))
	return string(data)
}

// logTail is how much of the server's log a failed test shows.
const logTail = 60

// URL is a connection URL for user on database, over TCP: TLS without
// verification after RequireTLS, plaintext before.
func (s *Server) URL(user, password, database string) string {
	sslmode := "disable"
	if s.tls.Load() {
		sslmode = "require"
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     net.JoinHostPort(s.Host, strconv.Itoa(s.Port)),
		Path:     "/" + database,
		RawQuery: "sslmode=" + sslmode,
	}
	return u.String()
}

// Connect connects as the superuser to database until the test ends.
func (s *Server) Connect(t testing.TB, database string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL(s.Superuser, s.SuperuserPassword, database))
	if err != nil {
		t.Fatalf("pgtest: connect to %s: %v", database, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Exec runs sql as the superuser in database, failing the test on error.
func (s *Server) Exec(t testing.TB, database, sql string, args ...any) {
	t.Helper()
	conn := s.Connect(t, database)
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
}

// CreateDatabase creates database name owned by owner.
func (s *Server) CreateDatabase(t testing.TB, name, owner string) {
	t.Helper()
	s.Exec(t, "postgres", "CREATE DATABASE "+Ident(name)+" OWNER "+Ident(owner))
}

// CreateUser creates a role that logs in with password, a member of the
// roles in inRoles (it inherits their privileges).
func (s *Server) CreateUser(t testing.TB, name, password string, inRoles ...string) {
	t.Helper()
	sql := "CREATE ROLE " + Ident(name) + " LOGIN PASSWORD " + Literal(password)
	if len(inRoles) > 0 {
		quoted := make([]string, len(inRoles))
		for i, r := range inRoles {
			quoted[i] = Ident(r)
		}
		sql += " IN ROLE " + strings.Join(quoted, ", ")
	}
	s.Exec(t, "postgres", sql)
}

// Ident quotes an SQL identifier.
func Ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// Literal quotes an SQL string literal, for statements that take no
// parameters (CREATE ROLE … PASSWORD).
func Literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// removeStale removes the directories of servers whose test process died
// before its cleanup (a timeout's panic, a SIGKILL). Pdeathsig has
// already stopped their servers.
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		data, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(string(data))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) && !postmasterAlive(dir) {
			os.RemoveAll(dir)
		}
	}
}

// postmasterAlive says whether the server whose data is in dir/data still
// runs (its pid is the first line of postmaster.pid).
func postmasterAlive(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		return false
	}
	line, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(line)
	return err == nil && !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}
