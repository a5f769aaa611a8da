package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/graft-sh/graft/internal/dbproc"
)

// pgbouncerProcess is a pgbouncer graft-bench broker started in a
// temporary directory, on a loopback port, in session mode: the pooler
// the broker is compared with.
type pgbouncerProcess struct {
	dir  string
	addr string
	cmd  *exec.Cmd
	proc *dbproc.Process
}

// pgbouncerSetup is what a pgbouncer is started for: one database on the
// backend, its user and password, and room for clients connections.
type pgbouncerSetup struct {
	bin, backendHost, backendPort string
	database, user, password      string
	clients                       int
}

// pgbouncerVersion is the first line of bin --version ("PgBouncer 1.18.0").
func pgbouncerVersion(bin string) (string, error) {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line), nil
}

// startPgBouncer writes a configuration and runs pgbouncer with it, as
// the postgres system user when run as root (pgbouncer refuses root),
// stopped by the kernel should graft-bench die. Clients are trusted, as
// the broker trusts its local ones; pgbouncer logs in to the database
// with the password from its auth_file (SCRAM, as the server asks). It
// logs no connection, as the broker at its default level does not.
func startPgBouncer(ctx context.Context, s pgbouncerSetup) (*pgbouncerProcess, error) {
	if _, err := os.Stat(s.bin); err != nil {
		return nil, fmt.Errorf("broker: pgbouncer: %w (apt-get install pgbouncer, which make bench-broker does; or --pgbouncer '' to measure without it)", err)
	}
	cred, err := dbproc.RunAs("postgres", "adduser --system --group postgres")
	if err != nil {
		return nil, fmt.Errorf("broker: pgbouncer: %w", err)
	}
	dir, err := os.MkdirTemp("", "graft-bench-pgbouncer-")
	if err != nil {
		return nil, err
	}
	p := &pgbouncerProcess{dir: dir}
	for attempt := 1; ; attempt++ {
		if p.addr, err = freeAddr(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		err = p.start(ctx, s, cred)
		if err == nil {
			return p, nil
		}
		// Another process may take the free port before pgbouncer binds it.
		if !errors.Is(err, dbproc.ErrPortTaken) || attempt == 3 {
			log := p.log()
			os.RemoveAll(dir)
			return nil, fmt.Errorf("broker: pgbouncer: %w\n%s", err, dbproc.Tail(log, 20))
		}
	}
}

func (p *pgbouncerProcess) start(ctx context.Context, s pgbouncerSetup, cred *syscall.Credential) error {
	_, port, _ := net.SplitHostPort(p.addr)
	ini := filepath.Join(p.dir, "pgbouncer.ini")
	users := filepath.Join(p.dir, "userlist.txt")
	config := fmt.Sprintf(`[databases]
%s = host=%s port=%s dbname=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %s
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = session
max_client_conn = %d
default_pool_size = %d
log_connections = 0
log_disconnections = 0
log_stats = 0
ignore_startup_parameters = extra_float_digits
`, s.database, s.backendHost, s.backendPort, s.database, port, users, s.clients+100, s.clients+10)
	quote := func(v string) string { return `"` + strings.ReplaceAll(v, `"`, `""`) + `"` }
	if err := os.WriteFile(ini, []byte(config), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(users, []byte(quote(s.user)+" "+quote(s.password)+"\n"), 0o600); err != nil {
		return err
	}
	if err := dbproc.Chown(cred, p.dir, ini, users); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(p.dir, "pgbouncer.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // pgbouncer holds its own descriptor
	p.cmd = dbproc.Command(s.bin, cred, syscall.SIGTERM, ini)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if p.proc, err = dbproc.Start(p.cmd); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	cfg, err := pgconn.ParseConfig("host=127.0.0.1 port=" + port + " sslmode=disable")
	if err != nil {
		return err
	}
	cfg.User, cfg.Database, cfg.Password = s.user, s.database, ""
	ready := func() error {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		conn, err := pgconn.ConnectConfig(cctx, cfg)
		if err == nil {
			conn.Close(context.Background())
		}
		return err
	}
	portTaken := func() bool { return strings.Contains(p.log(), "Address already in use") }
	return p.proc.AwaitReady("pgbouncer", ready, portTaken, syscall.SIGTERM)
}

func (p *pgbouncerProcess) pid() int { return p.cmd.Process.Pid }

func (p *pgbouncerProcess) log() string {
	data, _ := os.ReadFile(filepath.Join(p.dir, "pgbouncer.log"))
	return string(data)
}

// stop ends pgbouncer at once (SIGTERM: its immediate shutdown) and
// removes its directory. A second stop does nothing.
func (p *pgbouncerProcess) stop() {
	p.proc.Stop(syscall.SIGTERM)
	os.RemoveAll(p.dir)
}
