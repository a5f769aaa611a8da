package broker_test

import (
	"context"
	"database/sql"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/graft-sh/graft/broker"
	"github.com/graft-sh/graft/internal/mysqltest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/internal/tlsfiles"
)

// mysqlRig is a MariaDB and a broker listening on loopback for it.
type mysqlRig struct {
	db    *mysqltest.Server
	b     *broker.MySQL
	creds *creds
	addr  string
	logs  *testenv.Buffer
}

// startMySQLBroker starts the rig; withTLS makes the database require
// TLS, the broker verify it (verify-full against the database's CA) and
// serve TLS to its clients with the database's certificate.
func startMySQLBroker(t *testing.T, withTLS bool) *mysqlRig {
	t.Helper()
	var opts []mysqltest.Option
	if withTLS {
		opts = append(opts, mysqltest.RequireTLS())
	}
	db := mysqltest.Start(t, opts...)
	db.CreateDatabase(t, "shop")
	db.CreateUser(t, "blue", "blue-pw")
	db.CreateUser(t, "green", "green 'pw'")
	db.Exec(t, "GRANT ALL ON shop.* TO 'blue'@'%', 'green'@'%'")
	r := &mysqlRig{db: db, creds: &creds{}, logs: &testenv.Buffer{}}
	r.creds.set("blue", "blue-pw", 7)
	backend := net.JoinHostPort(db.Host, strconv.Itoa(db.Port))
	cfg := broker.MySQLConfig{Backend: backend, TLSMode: broker.TLSDisable, Credentials: r.creds, Metrics: broker.NewMetrics(prometheus.NewRegistry()),
		Log: slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), ConnectTimeout: 5 * time.Second}
	if withTLS {
		ca := filepath.Join(db.Dir, "ca.pem")
		tc, err := broker.NewBackendTLS(broker.TLSVerifyFull, backend, ca, "")
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLSMode, cfg.BackendTLS = broker.TLSVerifyFull, tc
		if cfg.ClientTLS, err = tlsfiles.Server(filepath.Join(db.Dir, "server.pem"), filepath.Join(db.Dir, "server-key.pem"), ""); err != nil {
			t.Fatal(err)
		}
	}
	b, err := broker.NewMySQL(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.b = b
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// config is a client's configuration to the broker: any user, no
// password.
func (r *mysqlRig) config(database string) *mysql.Config {
	cfg := mysql.NewConfig()
	cfg.User, cfg.Net, cfg.Addr, cfg.DBName = "app", "tcp", r.addr, database
	cfg.Timeout = 10 * time.Second
	return cfg
}

// conn opens one client connection through the broker.
func (r *mysqlRig) conn(t *testing.T, cfg *mysql.Config) *sql.Conn {
	t.Helper()
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(connector)
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatalf("connect through the broker: %v\nbroker log:\n%s", err, r.logs)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func queryString(t *testing.T, c *sql.Conn, q string) string {
	t.Helper()
	var s sql.NullString
	if err := c.QueryRowContext(t.Context(), q).Scan(&s); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return s.String
}

// A client with no password reaches MariaDB through the broker, which
// logs in over TLS verified against the database's CA; the client's
// database reaches the session; a new credential is used by the next
// connection while the open session goes on as the old user, and the
// sessions are counted by user.
func TestMySQLBrokerLogsInForTheClient(t *testing.T) {
	r := startMySQLBroker(t, true)
	first := r.conn(t, r.config("shop"))
	if u := queryString(t, first, "SELECT CURRENT_USER()"); u != "blue@%" {
		t.Fatalf("CURRENT_USER() %q, want blue@%%", u)
	}
	if d := queryString(t, first, "SELECT DATABASE()"); d != "shop" {
		t.Fatalf("DATABASE() %q, want shop", d)
	}
	if c := queryString(t, first, "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'"); c == "" {
		t.Fatal("the broker's session with the database is not TLS")
	}

	r.creds.set("green", "green 'pw'", 8)
	second := r.conn(t, r.config(""))
	if u := queryString(t, second, "SELECT CURRENT_USER()"); u != "green@%" {
		t.Fatalf("after the switch, CURRENT_USER() %q, want green@%%", u)
	}
	if u := queryString(t, first, "SELECT CURRENT_USER()"); u != "blue@%" {
		t.Fatalf("the session open before the switch is now %q", u)
	}
	if got := r.b.Sessions(); got["blue"] != 1 || got["green"] != 1 {
		t.Fatalf("Sessions() = %v, want blue:1 green:1", got)
	}
	// TLS from the client to the broker as well.
	tlsCfg := r.config("")
	tlsCfg.TLSConfig = r.db.TLSConfigName // trusts the CA of the certificate the broker serves
	third := r.conn(t, tlsCfg)
	if u := queryString(t, third, "SELECT CURRENT_USER()"); u != "green@%" {
		t.Fatalf("over TLS to the broker, CURRENT_USER() %q, want green@%%", u)
	}
	if logs := r.logs.String(); strings.Contains(logs, "blue-pw") || strings.Contains(logs, "green 'pw'") {
		t.Fatalf("the broker's log holds a password:\n%s", logs)
	}
}

// A credential the database refuses gives the client an ERR naming the
// user and where the credential comes from, never the password, and the
// broker's log holds none either; with no credential at all the client
// is told so.
func TestMySQLBrokerRefusedLogin(t *testing.T) {
	r := startMySQLBroker(t, false)
	r.creds.set("blue", "not-the-pw", 9)
	connector, err := mysql.NewConnector(r.config(""))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	err = db.PingContext(t.Context())
	if err == nil {
		t.Fatal("a wrong password logged in")
	}
	msg := err.Error()
	for _, want := range []string{`user "blue"`, "/app/petstore/replicated/db/{user,password}", "revision 9", "Access denied"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the client's error %q does not name %q", msg, want)
		}
	}
	if strings.Contains(msg, "not-the-pw") || strings.Contains(r.logs.String(), "not-the-pw") {
		t.Fatalf("the password shows: client %q\nlog:\n%s", msg, r.logs)
	}
	if !strings.Contains(r.logs.String(), "login to the database failed") {
		t.Errorf("the broker's log does not say the login failed:\n%s", r.logs)
	}

	r.creds.set("", "", 10)
	if err := db.PingContext(t.Context()); err == nil || !strings.Contains(err.Error(), "no database credential") {
		t.Fatalf("with no credential: %v", err)
	}
	if n := len(r.b.Sessions()); n != 0 {
		t.Fatalf("refused logins left sessions: %v", r.b.Sessions())
	}
}

// The relay carries a row larger than a protocol packet (16 MiB, split
// in two by the server), many rows, and prepared statements in the
// binary protocol.
func TestMySQLBrokerRelaysLargeResultsAndPreparedStatements(t *testing.T) {
	r := startMySQLBroker(t, false)
	r.db.Exec(t, "SET GLOBAL max_allowed_packet = 64 * 1024 * 1024")
	c := r.conn(t, r.config("shop"))
	const big = 17 << 20
	var n int
	var s string
	if err := c.QueryRowContext(t.Context(), "SELECT ?, REPEAT('x', ?)", big, big).Scan(&n, &s); err != nil {
		t.Fatal(err)
	}
	if len(s) != big || strings.Trim(s, "x") != "" {
		t.Fatalf("a %d-byte value came back as %d bytes", big, len(s))
	}
	rows, err := c.QueryContext(t.Context(), "SELECT seq, REPEAT('y', 100) FROM seq_1_to_50000")
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	for rows.Next() {
		var i int
		var y string
		if err := rows.Scan(&i, &y); err != nil {
			t.Fatal(err)
		}
		count++
	}
	if err := rows.Err(); err != nil || count != 50000 {
		t.Fatalf("%d rows, %v; want 50000", count, err)
	}
	if _, err := c.ExecContext(t.Context(), "CREATE TABLE pets (id INT PRIMARY KEY, name MEDIUMTEXT)"); err != nil {
		t.Fatal(err)
	}
	ins, err := c.PrepareContext(t.Context(), "INSERT INTO pets VALUES (?, ?)")
	if err != nil {
		t.Fatal(err)
	}
	defer ins.Close()
	for i, name := range []string{"rex", "tom", strings.Repeat("z", 70000)} {
		if _, err := ins.ExecContext(t.Context(), i, name); err != nil {
			t.Fatal(err)
		}
	}
	sel, err := c.PrepareContext(t.Context(), "SELECT name FROM pets WHERE id = ?")
	if err != nil {
		t.Fatal(err)
	}
	defer sel.Close()
	for i, want := range []string{"rex", "tom", strings.Repeat("z", 70000)} {
		var got string
		if err := sel.QueryRowContext(t.Context(), i).Scan(&got); err != nil || got != want {
			t.Fatalf("prepared SELECT of %d: %d bytes, %v; want %d bytes", i, len(got), err, len(want))
		}
	}
}

// The mariadb command-line client logs in through the broker with no
// password and runs a query, in plaintext and over TLS to the broker.
func TestMySQLBrokerMariaDBClient(t *testing.T) {
	r := startMySQLBroker(t, true)
	host, port, _ := net.SplitHostPort(r.addr)
	for _, tlsArgs := range [][]string{{"--skip-ssl"}, {"--ssl", "--ssl-ca=" + filepath.Join(r.db.Dir, "ca.pem"), "--ssl-verify-server-cert"}} {
		args := append([]string{"--no-defaults", "--protocol=tcp", "-h", host, "-P", port, "-u", "app", "--batch", "--skip-column-names",
			"-D", "shop", "-e", "SELECT CURRENT_USER(), DATABASE(), VARIABLE_VALUE <> '' FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'"}, tlsArgs...)
		cmd := exec.CommandContext(t.Context(), "mariadb", args...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			if _, lookErr := exec.LookPath("mariadb"); lookErr != nil {
				t.Skip("no mariadb client")
			}
			t.Fatalf("mariadb %s: %v\n%s\nbroker log:\n%s", tlsArgs[0], err, out, r.logs)
		}
		if got, want := strings.TrimSpace(string(out)), "blue@%\tshop\t1"; got != want {
			t.Fatalf("mariadb %s printed %q, want %q", tlsArgs[0], got, want)
		}
	}
}

// A client that sends garbage, or announces a packet larger than a
// handshake response can be, is closed without the broker reading it,
// and the next client is served.
func TestMySQLBrokerClosesGarbage(t *testing.T) {
	r := startMySQLBroker(t, false)
	for name, junk := range map[string][]byte{
		"http":     []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"oversize": {0xff, 0xff, 0xff, 1},
		"wrongseq": {4, 0, 0, 7, 1, 2, 3, 4},
		"short":    {4, 0, 0, 1, 0, 2, 0, 0},
	} {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(junk); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1<<16)
		var err2 error
		for err2 == nil {
			_, err2 = c.Read(buf)
		}
		if ne, ok := err2.(net.Error); ok && ne.Timeout() {
			t.Errorf("%s: the broker kept the connection open", name)
		}
		c.Close()
	}
	if u := queryString(t, r.conn(t, r.config("")), "SELECT CURRENT_USER()"); u != "blue@%" {
		t.Fatalf("after the garbage, CURRENT_USER() %q", u)
	}
	if n := len(r.b.Sessions()); n != 1 {
		t.Fatalf("Sessions() = %v, want the one good session", r.b.Sessions())
	}
}
