package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/graft-sh/graft/internal/dbproc"
)

// defaultPGBinDir is where Debian's postgresql-15 package puts the
// server's programs (as internal/pgtest assumes too).
const defaultPGBinDir = "/usr/lib/postgresql/15/bin"

// benchPostgres is a PostgreSQL server graft-bench dbcred started in a
// temporary directory, on a loopback port. It starts it as
// internal/pgtest does for tests (through internal/dbproc: as the
// postgres system user when run as root, stopped by the kernel should
// graft-bench die), except that it keeps PostgreSQL's durable defaults
// (fsync, synchronous_commit, full_page_writes): the floor is a database
// as one would run it.
type benchPostgres struct {
	dir  string
	dsn  string
	proc *dbproc.Process
}

// fastShutdown is PostgreSQL's fast shutdown: sessions are ended, no
// waiting for clients.
const fastShutdown = syscall.SIGINT

// startPostgres runs initdb and postgres from bin in a temporary
// directory and waits until the superuser can log in.
// startPostgres starts a PostgreSQL for the subcommand named cmd, whose
// name begins its errors.
func startPostgres(ctx context.Context, cmd, bin string) (*benchPostgres, error) {
	for _, prog := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(bin, prog)); err != nil {
			return nil, fmt.Errorf("%s: PostgreSQL's %s is not in %s: install postgresql-15, give --pg-bindir, or measure a server of your own with --dsn", cmd, prog, bin)
		}
	}
	cred, err := dbproc.RunAs("postgres", "adduser --system --group postgres")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	dir, err := os.MkdirTemp("", "graft-bench-pg-")
	if err != nil {
		return nil, err
	}
	pg := &benchPostgres{dir: dir}
	password := dbproc.RandomHex(16)
	if err := pg.initdb(bin, cred, password); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	for attempt := 1; ; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		_, portText, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(portText)
		pg.dsn = (&url.URL{
			Scheme: "postgres", User: url.UserPassword("postgres", password),
			Host: addr, Path: "/postgres", RawQuery: "sslmode=disable",
		}).String()
		pg.proc, err = pg.start(ctx, bin, cred, port)
		if err == nil {
			return pg, nil
		}
		// Another process may take the free port before postgres binds it.
		if !errors.Is(err, dbproc.ErrPortTaken) || attempt == 3 {
			log := pg.log()
			os.RemoveAll(dir)
			return nil, fmt.Errorf("%s: %w\n%s", cmd, err, dbproc.Tail(log, 20))
		}
	}
}

func (pg *benchPostgres) initdb(bin string, cred *syscall.Credential, password string) error {
	pwfile := filepath.Join(pg.dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(pwfile)
	if err := dbproc.Chown(cred, pg.dir, pwfile); err != nil {
		return err
	}
	cmd := dbproc.Command(filepath.Join(bin, "initdb"), cred, syscall.SIGQUIT,
		"--pgdata", filepath.Join(pg.dir, "data"), "--username", "postgres", "--pwfile", pwfile,
		"--auth-host", "scram-sha-256", "--auth-local", "trust",
		"--encoding", "UTF8", "--no-locale", "--no-sync", "--no-instructions")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	return nil
}

func (pg *benchPostgres) start(ctx context.Context, bin string, cred *syscall.Credential, port int) (*dbproc.Process, error) {
	logf, err := os.OpenFile(filepath.Join(pg.dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the server holds its own descriptor
	// SIGQUIT, sent by the kernel should graft-bench die, is PostgreSQL's
	// immediate shutdown, which also ends the server's own children.
	cmd := dbproc.Command(filepath.Join(bin, "postgres"), cred, syscall.SIGQUIT,
		"-D", filepath.Join(pg.dir, "data"),
		"-c", "listen_addresses=127.0.0.1", "-c", "port="+strconv.Itoa(port),
		"-c", "unix_socket_directories="+pg.dir,
		"-c", "log_line_prefix=%m [%p] %q%u@%d ")
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := dbproc.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	ready := func() error {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		conn, err := pgx.Connect(cctx, pg.dsn)
		if err == nil {
			conn.Close(context.Background())
		}
		return err
	}
	portTaken := func() bool { return strings.Contains(pg.log(), "Address already in use") }
	if err := p.AwaitReady("postgres", ready, portTaken, fastShutdown); err != nil {
		return nil, err
	}
	return p, nil
}

func (pg *benchPostgres) log() string {
	data, _ := os.ReadFile(filepath.Join(pg.dir, "postgres.log"))
	return string(data)
}

// stop shuts the server down and removes its directory.
func (pg *benchPostgres) stop() {
	pg.proc.Stop(fastShutdown)
	os.RemoveAll(pg.dir)
}
