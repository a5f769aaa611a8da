// Command petstore is graft's example application: an HTTP service that
// keeps pets in PostgreSQL or MariaDB (GET /pets, POST /pet, GET /healthz)
// and takes its database settings from a file that graft-agent renders, or
// else from its environment. On SIGHUP it reads the file again and, when
// the settings changed, moves to a new connection pool without failing a
// request; its log says which database user it is connected as.
//
//	petstore --config petstore.env [--listen 127.0.0.1:8080] [--pidfile petstore.pid] [--schema-owner ROLE]
//
// The settings are KEY=VALUE lines: DB_DRIVER, DB_HOST, DB_PORT, DB_NAME,
// DB_USER, DB_PASSWORD, DB_SSLMODE (default prefer) and
// DB_CONN_MAX_LIFETIME (how long a pooled connection lives, default 1h;
// behind graft-agent's broker, a short one moves the pool to a new
// credential soon after it is published).
//
// DB_DRIVER is postgres (the default) or mysql, for MariaDB through
// go-sql-driver/mysql. DB_PORT's default is 5432 for postgres and 3306
// for mysql. DB_SSLMODE is libpq's sslmode for postgres; for mysql it is
// disable (no TLS), prefer or preferred (TLS when the server offers it,
// unverified), require (TLS, unverified) or verify-full (TLS, the
// certificate verified for DB_HOST against the system's CAs). Moving to
// another DB_DRIVER takes a restart: a SIGHUP that changes it keeps the
// current connection.
//
// --schema-owner ROLE makes the pets table, when petstore creates it, as
// ROLE (PostgreSQL's SET ROLE), so that it belongs to the group of the
// blue/green users. MariaDB has no owner of a table, only grants: there
// the flag is ignored, with a line in the log, and the users' privileges
// come from the grants to their role.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

func main() {
	err := run(context.Background(), os.Args[1:], os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintf(os.Stderr, "petstore: %v\n", err)
		os.Exit(1)
	}
}

// shutdownTimeout bounds how long requests in flight may take to finish
// after SIGTERM or SIGINT.
const shutdownTimeout = 10 * time.Second

func run(ctx context.Context, args []string, stderr io.Writer) error {
	// SIGHUP's default action ends the process: take it over before
	// anything (the pidfile) invites graft-agent to send it.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	fs := flag.NewFlagSet("petstore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", "", "file of KEY=VALUE database settings, read again on SIGHUP (default: the environment)")
	listen := fs.String("listen", "127.0.0.1:8080", "HTTP address")
	pidfile := fs.String("pidfile", "", "write the process id here, for graft-agent's signal reload")
	schemaOwner := fs.String("schema-owner", "", "PostgreSQL: create the pets table as this role (SET ROLE), e.g. the group of blue/green users (ignored on MariaDB)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	src := source{file: *configFile}
	settings, err := src.load()
	if err != nil {
		return err
	}
	db, err := openDB(ctx, settings, log)
	if err != nil {
		return err
	}
	defer db.close()
	if err := db.ensureSchema(ctx, *schemaOwner); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           (&api{db: db, src: src, log: log}).routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String())
	if *pidfile != "" {
		if err := writePidfile(*pidfile); err != nil {
			srv.Close()
			return err
		}
		defer os.Remove(*pidfile)
	}

	reloads := make(chan struct{})
	go func() {
		defer close(reloads)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				db.reload(ctx, src)
			}
		}
	}()

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing the requests in flight", "timeout", shutdownTimeout)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err = srv.Shutdown(shutdownCtx)
	<-reloads // then no reload replaces the pool the deferred close closes
	return err
}

// writePidfile writes the pid to a temporary file and renames it into
// place, so that a reader never sees an empty file.
func writePidfile(name string) error {
	tmp := filepath.Join(filepath.Dir(name), "."+filepath.Base(name)+".tmp")
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("write the pidfile: %w", err)
	}
	if err := os.Rename(tmp, name); err != nil {
		return fmt.Errorf("write the pidfile: %w", err)
	}
	return nil
}
