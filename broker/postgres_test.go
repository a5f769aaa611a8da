package broker_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/graft-sh/graft/broker"
	"github.com/graft-sh/graft/internal/pgtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/internal/tlsfiles"
)

// creds is a credential the test switches, as the agent's tree would.
type creds struct {
	mu   sync.Mutex
	cred broker.Credential
}

func (c *creds) Current(context.Context) (broker.Credential, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cred.User == "" {
		return broker.Credential{}, fmt.Errorf("%w at replicated/db/user", broker.ErrNoCredential)
	}
	return c.cred, nil
}

func (c *creds) set(user, password string, rev int64) {
	c.mu.Lock()
	c.cred = broker.Credential{User: user, Password: password, Revision: rev, Source: "/app/petstore/replicated/db/{user,password}"}
	c.mu.Unlock()
}

// brokerRig is a PostgreSQL (SCRAM-SHA-256, TLS required when asked)
// and a broker listening on loopback for it.
type brokerRig struct {
	pg    *pgtest.Server
	creds *creds
	addr  string
	logs  *testenv.Buffer
	cert  string // the database's certificate, its own CA
}

// startBroker starts the rig; withTLS makes the database require TLS,
// the broker verify it (verify-full) and serve TLS to its clients with
// the same certificate.
func startBroker(t *testing.T, withTLS bool, opts ...func(*broker.PostgresConfig)) *brokerRig {
	t.Helper()
	pg := pgtest.Start(t)
	pg.CreateUser(t, "blue", "blue-pw")
	pg.CreateUser(t, "green", "green 'pw'")
	r := &brokerRig{pg: pg, creds: &creds{}, logs: &testenv.Buffer{}}
	r.creds.set("blue", "blue-pw", 7)
	mode := broker.TLSDisable
	backend := fmt.Sprintf("%s:%d", pg.Host, pg.Port)
	cfg := broker.PostgresConfig{Backend: backend, TLSMode: mode, Credentials: r.creds, Metrics: broker.NewMetrics(prometheus.NewRegistry()),
		Log: slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), ConnectTimeout: 5 * time.Second}
	if withTLS {
		cert, key := pg.RequireTLS(t)
		tc, err := broker.NewBackendTLS(broker.TLSVerifyFull, backend, cert, "")
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLSMode, cfg.BackendTLS = broker.TLSVerifyFull, tc
		if cfg.ClientTLS, err = tlsfiles.Server(cert, key, ""); err != nil {
			t.Fatal(err)
		}
		r.cert = cert
	}
	for _, o := range opts {
		o(&cfg)
	}
	p, err := broker.NewPostgres(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// url is a client's DSN to the broker: any user, no password.
func (r *brokerRig) url(sslmode string) string {
	return fmt.Sprintf("postgres://app@%s/postgres?sslmode=%s", r.addr, sslmode)
}

func (r *brokerRig) connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect through the broker (%s): %v\nbroker log:\n%s", dsn, err, r.logs)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func currentUser(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	var u string
	if err := conn.QueryRow(t.Context(), "SELECT current_user").Scan(&u); err != nil {
		t.Fatal(err)
	}
	return u
}

// A client with no password reaches the database through the broker,
// which logs in with SCRAM-SHA-256 over TLS verified against the
// database's CA; a new credential is used by the next connection while
// the open session goes on as the old user; the client's startup
// parameters reach the database.
func TestPostgresBrokerLogsInForTheClient(t *testing.T) {
	r := startBroker(t, true)
	first := r.connect(t, r.url("disable")+"&application_name=petstore")
	if u := currentUser(t, first); u != "blue" {
		t.Fatalf("current_user %q, want blue", u)
	}
	var ssl bool
	var app string
	if err := first.QueryRow(t.Context(), "SELECT s.ssl, a.application_name FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE pid = pg_backend_pid()").Scan(&ssl, &app); err != nil {
		t.Fatal(err)
	}
	if !ssl || app != "petstore" {
		t.Fatalf("the backend session: ssl %v, application_name %q; want TLS and petstore", ssl, app)
	}

	r.creds.set("green", "green 'pw'", 8)
	second := r.connect(t, r.url("disable"))
	if u := currentUser(t, second); u != "green" {
		t.Fatalf("after the switch, current_user %q, want green", u)
	}
	if u := currentUser(t, first); u != "blue" {
		t.Fatalf("the session open before the switch is now %q", u)
	}
	if strings.Contains(r.logs.String(), "blue-pw") || strings.Contains(r.logs.String(), "green 'pw'") {
		t.Fatalf("the broker's log holds a password:\n%s", r.logs)
	}
}

// With channel binding require, the broker logs in over TLS only with
// SCRAM-SHA-256-PLUS: it logs in while the server asks for SCRAM, and
// once the server asks for the password in clear, on the same TLS, it
// refuses to send it, and says so to the client. Require without TLS, or
// an unknown setting, is refused when the listener is made.
func TestPostgresBrokerChannelBinding(t *testing.T) {
	r := startBroker(t, true, func(c *broker.PostgresConfig) { c.ChannelBinding = broker.ChannelBindingRequire })
	if u := currentUser(t, r.connect(t, r.url("disable"))); u != "blue" {
		t.Fatalf("current_user %q, want blue", u)
	}
	hba := filepath.Join(r.pg.Dir, "data", "pg_hba.conf")
	rules, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hba, append([]byte("hostssl all blue all password\n"), rules...), 0o600); err != nil {
		t.Fatal(err)
	}
	r.pg.Exec(t, "postgres", "SELECT pg_reload_conf()")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		conn, err := pgx.Connect(t.Context(), r.url("disable"))
		if err == nil {
			conn.Close(t.Context())
			if time.Now().After(deadline) {
				t.Fatal("the broker still logs in with channel binding required and the password asked in clear")
			}
			continue
		}
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Severity != "FATAL" || !strings.Contains(pe.Message, "channel binding") {
			t.Fatalf("refused login: %v, want a FATAL error saying channel binding failed", err)
		}
		if strings.Contains(err.Error(), "blue-pw") {
			t.Fatalf("the refusal holds the password: %v", err)
		}
		break
	}

	for _, tt := range []struct{ mode, binding, want string }{
		{broker.TLSDisable, broker.ChannelBindingRequire, "needs TLS"},
		{broker.TLSVerifyFull, "always", "want prefer, require or disable"},
	} {
		cfg := broker.PostgresConfig{Backend: "127.0.0.1:5432", TLSMode: tt.mode, ChannelBinding: tt.binding, Credentials: &creds{}}
		if tt.mode != broker.TLSDisable {
			cfg.BackendTLS = &tls.Config{ServerName: "127.0.0.1"}
		}
		_, err := broker.NewPostgres(cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("mode %s, channel binding %q: %v, want an error saying %q", tt.mode, tt.binding, err, tt.want)
		}
	}
}

// sslmode=prefer and require clients work: without client TLS the
// broker answers N and prefer goes on in plaintext while require fails
// cleanly; with client TLS both get TLS, and verify-full verifies the
// broker's certificate.
func TestPostgresBrokerSSLModes(t *testing.T) {
	plain := startBroker(t, false)
	currentUser(t, plain.connect(t, plain.url("prefer")))
	if _, err := pgx.Connect(t.Context(), plain.url("require")); err == nil || !strings.Contains(err.Error(), "server refused TLS connection") {
		t.Fatalf("sslmode=require to a broker without client TLS: %v", err)
	}

	withTLS := startBroker(t, true)
	for _, mode := range []string{"prefer", "require", "verify-full&sslrootcert=" + withTLS.cert} {
		conn := withTLS.connect(t, withTLS.url(mode))
		if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
			t.Errorf("sslmode=%s: the connection to the broker is not TLS", mode)
		}
		currentUser(t, conn)
	}
	// GSSAPI encryption is declined with N, as libpq's gssencmode=prefer
	// expects, and the startup goes on.
	c, err := net.Dial("tcp", withTLS.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.GSSEncRequest{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	answer := make([]byte, 1)
	if _, err := io.ReadFull(c, answer); err != nil || answer[0] != 'N' {
		t.Fatalf("GSSEncRequest answered %q, %v; want N", answer, err)
	}
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "app", "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if msg, err := fe.Receive(); err != nil {
		t.Fatal(err)
	} else if _, ok := msg.(*pgproto3.AuthenticationOk); !ok {
		t.Fatalf("after the GSSEncRequest, the startup got %T, want AuthenticationOk", msg)
	}
}

// A CancelRequest through the broker reaches the database: a pg_sleep
// of a minute ends at once.
func TestPostgresBrokerCancel(t *testing.T) {
	r := startBroker(t, false)
	conn := r.connect(t, r.url("disable"))
	began := time.Now()
	// pgconn's CancelRequest sends the key the broker gave, to the
	// broker, as libpq's PQcancel does.
	time.AfterFunc(300*time.Millisecond, func() {
		if err := conn.PgConn().CancelRequest(context.Background()); err != nil {
			t.Errorf("cancel request: %v", err)
		}
	})
	_, err := conn.Exec(t.Context(), "SELECT pg_sleep(60)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("pg_sleep cancelled: %v, want query_canceled (57014)", err)
	}
	if took := time.Since(began); took > 20*time.Second {
		t.Fatalf("the cancel took %s", took)
	}
}

// A credential the database refuses reaches the client as a FATAL
// ErrorResponse that says which user and where it came from, never the
// password; no credential at all says what to check.
func TestPostgresBrokerRefusal(t *testing.T) {
	r := startBroker(t, false)
	r.creds.set("blue", "wrong-password-xyz", 9)
	_, err := pgx.Connect(t.Context(), r.url("disable"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" || !strings.Contains(pgErr.Hint, `graft broker logged in as user "blue" with the credential from /app/petstore/replicated/db/{user,password} (revision 9)`) {
		t.Fatalf("a wrong password: %v (hint %q)", err, hintOf(pgErr))
	}
	if strings.Contains(err.Error()+pgErr.Hint+r.logs.String(), "wrong-password-xyz") {
		t.Fatalf("the password reached the client or the log")
	}
	r.creds.set("", "", 0)
	_, err = pgx.Connect(t.Context(), r.url("disable"))
	if !errors.As(err, &pgErr) || !strings.Contains(pgErr.Message, "no database credential to log in with: no credential at replicated/db/user") {
		t.Fatalf("no credential: %v", err)
	}
}

func hintOf(e *pgconn.PgError) string {
	if e == nil {
		return ""
	}
	return e.Hint
}

// The database ending a session closes the client's connection at once,
// with the server's own FATAL error and nothing of the broker's after it.
func TestPostgresBrokerBackendGone(t *testing.T) {
	r := startBroker(t, false)
	conn := r.connect(t, r.url("disable"))
	var pid int
	if err := conn.QueryRow(t.Context(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	slept := make(chan error, 1)
	go func() { _, err := conn.Exec(ctx, "SELECT pg_sleep(30)"); slept <- err }()
	super := r.pg.Connect(t, "postgres")
	for n := 0; n != 1; time.Sleep(20 * time.Millisecond) {
		if err := super.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE 'SELECT pg_sleep%'", pid).Scan(&n); err != nil {
			t.Fatalf("waiting for the query to run: %v", err)
		}
	}
	r.pg.Exec(t, "postgres", "SELECT pg_terminate_backend($1)", pid)
	var pe *pgconn.PgError
	if err := <-slept; !errors.As(err, &pe) || pe.Code != "57P01" || ctx.Err() != nil {
		t.Fatalf("a query on a terminated session: %v (ctx %v), want the server's 57P01", err, ctx.Err())
	}
}

// A database connection cut without a word (a crashed server, a network
// gone) reaches the client at once as a FATAL error of the broker's
// saying what happened, when the cut falls between two messages; cut in
// the middle of one, the client's connection is closed, since a message
// of the broker's own would be read as the rest of the cut one.
func TestPostgresBrokerBackendCut(t *testing.T) {
	for _, mid := range []bool{false, true} {
		t.Run(fmt.Sprintf("mid-message %t", mid), func(t *testing.T) {
			var proxy *cutter
			r := startBroker(t, false, func(c *broker.PostgresConfig) {
				proxy = startCutter(t, c.Backend)
				c.Backend = proxy.addr
			})
			conn := r.connect(t, r.url("disable"))
			currentUser(t, conn)
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			slept := make(chan error, 1)
			go func() { _, err := conn.Exec(ctx, "SELECT pg_sleep(30)"); slept <- err }()
			time.Sleep(200 * time.Millisecond) // the query sent, its answer awaited
			proxy.cut(mid)
			err := <-slept
			if ctx.Err() != nil {
				t.Fatalf("the client waited out its query: %v", err)
			}
			var pe *pgconn.PgError
			switch {
			case mid && errors.As(err, &pe):
				t.Errorf("cut mid-message: the client read %v, want its connection closed", pe)
			case !mid && (!errors.As(err, &pe) || pe.Code != "08006" || pe.Severity != "FATAL"):
				t.Errorf("cut between messages: %v, want FATAL 08006 from the broker", err)
			case !mid && (!strings.Contains(pe.Message, "closed the connection") || !strings.Contains(pe.Hint, "connect again")):
				t.Errorf("cut between messages: %q (hint %q): want what happened and what to do", pe.Message, pe.Hint)
			}
			if !strings.Contains(r.logs.String(), "the database ended a session") {
				t.Errorf("the broker logged nothing of it:\n%s", r.logs)
			}
		})
	}
}

// cutter relays TCP connections to a target until cut, which closes them
// all, as a crashed server or a lost network would, after writing the
// first bytes of a message to the broker when mid is true.
type cutter struct {
	addr  string
	mu    sync.Mutex
	conns [][2]net.Conn // the broker's side, the target's
}

func startCutter(t *testing.T, target string) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c := &cutter{addr: ln.Addr().String()}
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			c.mu.Lock()
			c.conns = append(c.conns, [2]net.Conn{in, out})
			c.mu.Unlock()
			go io.Copy(out, in)
			go io.Copy(in, out)
		}
	}()
	return c
}

func (c *cutter) cut(mid bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, pair := range c.conns {
		if mid {
			pair[0].Write([]byte{'D', 0, 0, 0, 100, 0, 1})
		}
		pair[1].Close()
		pair[0].Close()
	}
}

// Many concurrent connections, opened and closed repeatedly, all log in
// and leave no connection behind in the broker or the database.
func TestPostgresBrokerManyConnections(t *testing.T) {
	r := startBroker(t, false)
	r.pg.Exec(t, "postgres", "ALTER SYSTEM SET max_connections = 200")
	const workers, rounds = 50, 4
	var failed atomic.Int32
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range rounds {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				conn, err := pgx.Connect(ctx, r.url("disable"))
				if err != nil {
					err = fmt.Errorf("connect: %w", err)
				} else {
					if err = conn.QueryRow(ctx, "SELECT 1").Scan(new(int)); err != nil {
						err = fmt.Errorf("query: %w", err)
					}
					conn.Close(ctx)
				}
				cancel()
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d connections failed; the first: %v\n%s", n, workers*rounds, firstErr, r.logs)
	}
	admin := r.pg.Connect(t, "postgres")
	testenv.WaitFor(t, 10*time.Second, func() bool {
		var n int
		admin.QueryRow(t.Context(), "SELECT count(*) FROM pg_stat_activity WHERE usename = 'blue'").Scan(&n)
		return n == 0
	})
}

// psql, libpq's own client, through the broker: in plaintext, and with
// sslmode=require and verify-full against the broker's certificate.
func TestPostgresBrokerPsql(t *testing.T) {
	r := startBroker(t, true)
	psql := filepath.Join(pgtest.DefaultBinDir, "psql")
	if dir := os.Getenv("GRAFT_PG_BINDIR"); dir != "" {
		psql = filepath.Join(dir, "psql")
	}
	if _, err := os.Stat(psql); err != nil {
		t.Fatalf("psql: %v (PostgreSQL started, so its client should be beside it)", err)
	}
	host, port, _ := net.SplitHostPort(r.addr)
	for _, mode := range []string{"prefer", "require", "verify-full"} {
		cmd := exec.Command(psql, "-X", "-tA", "-c", "SELECT current_user || ' ' || (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())")
		cmd.Env = append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER=app", "PGDATABASE=postgres", "PGSSLMODE="+mode,
			"PGSSLROOTCERT="+r.cert, "PGPASSWORD=", "PGCONNECT_TIMEOUT=10")
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "blue true" {
			t.Errorf("psql sslmode=%s: %v: %q; want \"blue true\" (blue, over TLS to the database)", mode, err, out)
		}
	}
}

// A thousand concurrent connections through one listener, opened, used
// and closed, twice: all log in, and afterwards the broker holds no
// goroutine and no file descriptor more than before.
func TestPostgresBrokerThousandConnections(t *testing.T) {
	r := startBroker(t, false)
	r.pg.Exec(t, "postgres", "ALTER SYSTEM SET max_connections = 1100")
	r.pg.Stop(t)
	r.pg.StartAgain(t)
	// The pgx clients' goroutines end with their connections too; wait
	// for the startup's to settle before counting.
	time.Sleep(200 * time.Millisecond)
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)
	const n = 1000
	for round := range 2 {
		conns := make([]*pgx.Conn, n)
		var failed atomic.Int32
		var firstErr atomic.Value
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64) // logins in flight: SCRAM costs the server CPU
		for i := range conns {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				c, err := pgx.Connect(ctx, r.url("disable"))
				if err == nil {
					err = c.Ping(ctx)
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					return
				}
				conns[i] = c
			})
		}
		wg.Wait()
		if f := failed.Load(); f > 0 {
			t.Fatalf("round %d: %d of %d connections failed; the first: %v", round, f, n, firstErr.Load())
		}
		var open int
		admin := r.pg.Connect(t, "postgres")
		if err := admin.QueryRow(t.Context(), "SELECT count(*) FROM pg_stat_activity WHERE usename = 'blue'").Scan(&open); err != nil || open != n {
			t.Fatalf("round %d: %d sessions of blue open at once, want %d (%v)", round, open, n, err)
		}
		admin.Close(t.Context())
		for _, c := range conns {
			c.Close(context.Background())
		}
	}
	testenv.WaitFor(t, 20*time.Second, func() bool {
		return runtime.NumGoroutine() <= goroutines+5 && openFDs(t) <= fds+5
	})
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// With a client password, the broker asks every client for it with
// SCRAM-SHA-256 (what libpq and pgx already speak) before it logs in:
// the right one gets the session, a wrong or missing one a clean 28P01.
func TestPostgresBrokerClientPassword(t *testing.T) {
	pg := pgtest.Start(t)
	pg.CreateUser(t, "blue", "blue-pw")
	cp, err := broker.NewClientPassword("local secret 'x'")
	if err != nil {
		t.Fatal(err)
	}
	c := &creds{}
	c.set("blue", "blue-pw", 1)
	logs := &testenv.Buffer{}
	p, err := broker.NewPostgres(broker.PostgresConfig{Backend: fmt.Sprintf("%s:%d", pg.Host, pg.Port), TLSMode: broker.TLSDisable,
		Credentials: c, ClientPassword: cp, Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	dsn := func(pw string) string {
		return (&url.URL{Scheme: "postgres", User: url.UserPassword("app", pw), Host: ln.Addr().String(), Path: "/postgres", RawQuery: "sslmode=disable"}).String()
	}
	conn, err := pgx.Connect(t.Context(), dsn("local secret 'x'"))
	if err != nil {
		t.Fatalf("with the client password: %v", err)
	}
	if u := currentUser(t, conn); u != "blue" {
		t.Fatalf("current_user %s", u)
	}
	conn.Close(t.Context())
	for _, pw := range []string{"wrong", ""} {
		_, err := pgx.Connect(t.Context(), dsn(pw))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28P01" || !strings.Contains(pgErr.Message, "client_password_file") {
			t.Errorf("password %q: %v, want 28P01 naming client_password_file", pw, err)
		}
	}
	if strings.Contains(logs.String(), "local secret") {
		t.Fatalf("the log holds the client password:\n%s", logs)
	}
}
