package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/pgtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/sdk"
)

// freeAddr is a loopback address nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func brokerUser(t *testing.T, dsn string) (*pgx.Conn, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect through the broker: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	var u string
	if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&u); err != nil {
		t.Fatal(err)
	}
	return conn, u
}

// shareCredential has the DBA write user and password at /dba/pp/db in
// one transaction and share them into orders' tree, replicated/db.
func (r *dbcredRig) shareCredential(t *testing.T, user, password string) {
	t.Helper()
	ctx := t.Context()
	if _, err := r.dba.PutTree(ctx, "/dba/pp/db", map[string][]byte{"user": []byte(user), "password": []byte(password)}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.dba.Share(ctx, "/dba/pp/db", []string{"/app/orders/replicated/db"}, sdk.ShareOptions{}); err != nil {
		t.Fatal(err)
	}
}

// whoAmI connects through the broker, asks who it is, and disconnects.
func whoAmI(t *testing.T, dsn string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect through the broker: %v", err)
	}
	defer conn.Close(context.Background())
	var u string
	if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&u); err != nil {
		t.Fatal(err)
	}
	return u
}

// The application connects to the agent's broker with no password, over
// TCP and over a unix socket (0600); the broker logs in with the
// credential in the application's tree; when the DBA publishes another
// (user and password in one PutTree), the next connection takes it at
// once, with no render or reload, while a session already open goes on.
func TestBrokerStaticCredential(t *testing.T) {
	pg := pgtest.Start(t)
	pg.CreateUser(t, "blue", "blue-pw")
	pg.CreateUser(t, "green", "green-pw")
	r := newDBCredRig(t, nil)
	ctx := t.Context()
	r.shareCredential(t, "blue", "blue-pw")
	addr := freeAddr(t)
	sock := filepath.Join(t.TempDir(), ".s.PGSQL.5432")
	cfg := r.config("")
	cfg.Templates = nil
	backend := agent.BrokerBackend{Address: fmt.Sprintf("%s:%d", pg.Host, pg.Port), TLS: agent.BrokerBackendTLS{Mode: "disable"}}
	creds := &agent.BrokerCredentials{User: "replicated/db/user", Password: "/app/orders/replicated/db/password"}
	cfg.Brokers = []agent.Broker{
		{Listen: addr, Protocol: "postgres", Backend: backend, Credentials: creds},
		{Listen: "unix:" + sock, Protocol: "postgres", Backend: backend, Credentials: creds},
	}
	a, logs := startLogged(t, cfg)
	testenv.WaitFor(t, 10*time.Second, a.Ready)

	open, u := brokerUser(t, "postgres://app@"+addr+"/postgres?sslmode=disable")
	if u != "blue" {
		t.Fatalf("through the broker: %s, want blue", u)
	}
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the unix socket: %v", err)
	}
	if u := whoAmI(t, "host="+filepath.Dir(sock)+" user=app dbname=postgres sslmode=disable"); u != "blue" {
		t.Fatalf("through the unix socket: %s, want blue", u)
	}

	if _, err := r.dba.PutTree(ctx, "/dba/pp/db", map[string][]byte{"user": []byte("green"), "password": []byte("green-pw")}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, func() bool { return whoAmI(t, "postgres://app@"+addr+"/postgres?sslmode=disable") == "green" })
	var still string
	if err := open.QueryRow(ctx, "SELECT current_user").Scan(&still); err != nil || still != "blue" {
		t.Fatalf("the session open before the change: %q, %v", still, err)
	}
	// The agent consumes the credential through its broker: rollout
	// status counts it, with the session still open as blue, until that
	// session ends.
	rev, err := r.dba.Get(ctx, "/dba/pp/db/password")
	if err != nil {
		t.Fatal(err)
	}
	oldSessions := func() int {
		ro, err := r.dba.RolloutStatus(ctx, "/dba/pp/db/password", rev.Revision)
		if err != nil || len(ro.Consumers) != 1 || !ro.Consumers[0].OK || !ro.Consumers[0].BrokerOnly {
			return -1
		}
		return ro.Consumers[0].OldSessions
	}
	testenv.WaitFor(t, 10*time.Second, func() bool { return oldSessions() == 1 })
	agents, err := r.app.ListAgents(ctx, "orders")
	if err != nil || len(agents) != 1 || len(agents[0].Brokers) != 2 || agents[0].Brokers[0].User != "green" ||
		agents[0].Brokers[0].Keys[0] != "/app/orders/replicated/db/user" {
		t.Fatalf("agents ls: %v %+v", err, agents)
	}
	open.Close(ctx)
	// The last session as blue ends: the agent reports at once, not at
	// its next heartbeat.
	testenv.WaitFor(t, 5*time.Second, func() bool { return oldSessions() == 0 })
	if strings.Contains(logs.String(), "blue-pw") || strings.Contains(logs.String(), "green-pw") {
		t.Fatalf("the agent's log holds a password:\n%s", logs)
	}

	// A credential the tree lacks: the client is told what is missing.
	if _, err := r.dba.Delete(ctx, "/dba/pp/db/password", sdk.Force()); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, func() bool {
		_, err := pgx.Connect(ctx, "postgres://app@"+addr+"/postgres?sslmode=disable")
		var pgErr *pgconn.PgError
		return errors.As(err, &pgErr) && strings.Contains(pgErr.Message, "/app/orders/replicated/db/password is missing from the tree")
	})
}

// With dbcred, the broker logs in with a dynamic credential the agent
// issues and renews; replaced before its max TTL, the next connection
// takes the new user, and the old lease is revoked after the grace.
func TestBrokerDynamicCredential(t *testing.T) {
	pg := pgtest.Start(t)
	r := newDBCredRig(t, nil)
	ctx := t.Context()
	if _, err := r.dba.Put(ctx, "/dba/pp/admin/pg/dsn", []byte(pg.URL(pg.Superuser, pg.SuperuserPassword, "postgres"))); err != nil {
		t.Fatal(err)
	}
	role := sdk.DBCredRole{Driver: "postgres", Admin: "/dba/pp/admin/pg", DefaultTTL: 3 * time.Second, MaxTTL: 6 * time.Second,
		CreationSQL: []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`}}
	if _, err := r.dba.PutRole(ctx, "/dba/pp/creds/ro", role); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.dba.Share(ctx, "/dba/pp/creds/ro", []string{"/app/orders/replicated/creds/ro"}, sdk.ShareOptions{}); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cfg := r.config("")
	cfg.Templates = nil
	grace := 500 * time.Millisecond
	cfg.DBCred = agent.DBCred{StateFile: filepath.Join(r.dir, "dbcred.json"), Grace: &grace}
	cfg.Brokers = []agent.Broker{{Listen: addr, Protocol: "postgres", DBCred: "replicated/creds/ro",
		Backend: agent.BrokerBackend{Address: fmt.Sprintf("%s:%d", pg.Host, pg.Port), TLS: agent.BrokerBackendTLS{Mode: "disable"}}}}
	a, logs := startLogged(t, cfg)
	testenv.WaitFor(t, 10*time.Second, a.Ready)
	defer func() {
		if t.Failed() {
			t.Logf("the agent's log:\n%s", logs)
		}
	}()

	dsn := "postgres://app@" + addr + "/postgres?sslmode=disable"
	first := whoAmI(t, dsn)
	seen := map[string]bool{first: true}
	testenv.WaitFor(t, 30*time.Second, func() bool {
		seen[whoAmI(t, dsn)] = true
		return len(seen) >= 3
	})
	// The first user's lease is revoked (by the agent after the grace,
	// or the reaper at its end) and its user dropped.
	testenv.WaitFor(t, 20*time.Second, func() bool {
		ls, _, err := r.dba.ListLeases(ctx, "/dba/pp/creds", "")
		for _, l := range ls {
			if l.Username == first {
				return false
			}
		}
		return err == nil
	})
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var exists bool
	admin := pg.Connect(t, "postgres")
	if err := admin.QueryRow(lctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", first).Scan(&exists); err != nil || exists {
		t.Fatalf("the first user %s: exists %v, %v", first, exists, err)
	}
}

// The broker's configuration problems are listed with the rest: a
// remote listen address without allow_remote, a credential outside the
// tree, both or neither kind of credential, a bad TLS mode or channel
// binding, MySQL.
func TestBrokerConfigProblems(t *testing.T) {
	cfg := agent.DefaultConfig()
	cfg.App, cfg.TokenFile = "orders", "/t"
	cfg.Brokers = []agent.Broker{
		{Listen: "0.0.0.0:5432", Protocol: "postgres", Backend: agent.BrokerBackend{Address: "db:5432"}, Credentials: &agent.BrokerCredentials{User: "/app/billing/u", Password: "p"}},
		{Listen: "unix:relative.sock", Protocol: "mysql", Backend: agent.BrokerBackend{Address: "db", TLS: agent.BrokerBackendTLS{Mode: "prefer"}}},
		{Listen: "127.0.0.1:5432", Protocol: "postgres", Backend: agent.BrokerBackend{Address: "db:5432"}, DBCred: "../x/creds", Credentials: &agent.BrokerCredentials{User: "u", Password: "p"}},
		{Listen: "127.0.0.1:27017", Protocol: "mongodb", Backend: agent.BrokerBackend{Address: "db:27017"}, DBCred: "replicated/db/creds"},
		{Listen: "127.0.0.1:5433", Protocol: "postgres", Backend: agent.BrokerBackend{Address: "db:5432", TLS: agent.BrokerBackendTLS{Mode: "disable", ChannelBinding: "require"}}, DBCred: "replicated/db/creds"},
		{Listen: "127.0.0.1:5434", Protocol: "postgres", Backend: agent.BrokerBackend{Address: "db:5432", TLS: agent.BrokerBackendTLS{ChannelBinding: "on"}}, DBCred: "replicated/db/creds"},
		{Listen: "127.0.0.1:3306", Protocol: "mysql", Backend: agent.BrokerBackend{Address: "db:3306", TLS: agent.BrokerBackendTLS{ChannelBinding: "prefer"}}, DBCred: "replicated/db/creds"},
	}
	err := cfg.Validate()
	for _, want := range []string{
		`broker[0]: listen "0.0.0.0:5432" is not loopback`,
		"broker[0]: credentials: /app/billing/u is outside the application's tree /app/orders",
		`broker[1]: listen "unix:relative.sock": a unix socket needs an absolute path`,
		`broker[1]: backend.address "db": want the database's host:port`,
		`broker[1]: backend.tls.mode "prefer": want disable, require, verify-ca or verify-full`,
		"broker[1]: give credentials:",
		"broker[2]: give one of credentials and dbcred",
		`broker[3]: protocol "mongodb": want postgres or mysql`,
		"broker[4]: backend.tls.channel_binding require needs TLS",
		`broker[5]: backend.tls.channel_binding "on": want prefer, require or disable`,
		"broker[6]: backend.tls.channel_binding: MySQL has no channel binding",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("the problems lack %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "broker[1]: protocol") {
		t.Errorf("protocol mysql is refused:\n%v", err)
	}
	cfg.Brokers = cfg.Brokers[:1]
	cfg.Brokers[0].AllowRemote = true
	cfg.Brokers[0].Credentials = &agent.BrokerCredentials{User: "replicated/db/user", Password: "replicated/db/password"}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("allow_remote with credentials in the tree and no templates: %v", err)
	}
}

// client_password_file makes a PostgreSQL listener ask the application
// for a local password (SCRAM-SHA-256) before it logs in for it; a file
// others may read is refused when the agent starts.
func TestBrokerClientPasswordFile(t *testing.T) {
	pg := pgtest.Start(t)
	pg.CreateUser(t, "blue", "blue-pw")
	r := newDBCredRig(t, nil)
	ctx := t.Context()
	r.shareCredential(t, "blue", "blue-pw")
	pwFile := filepath.Join(r.dir, "client.pw")
	if err := os.WriteFile(pwFile, []byte("local-pw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cfg := r.config("")
	cfg.Templates = nil
	cfg.Brokers = []agent.Broker{{Listen: addr, Protocol: "postgres", ClientPasswordFile: pwFile,
		Backend:     agent.BrokerBackend{Address: fmt.Sprintf("%s:%d", pg.Host, pg.Port), TLS: agent.BrokerBackendTLS{Mode: "disable"}},
		Credentials: &agent.BrokerCredentials{User: "replicated/db/user", Password: "replicated/db/password"}}}
	if _, err := agent.New(ctx, cfg, nil, nil); err == nil || !strings.Contains(err.Error(), "is readable by others (mode 0644): chmod 600 it") {
		t.Fatalf("a client password file others may read: %v", err)
	}
	if err := os.Chmod(pwFile, 0o600); err != nil {
		t.Fatal(err)
	}
	a, _ := startLogged(t, cfg)
	testenv.WaitFor(t, 10*time.Second, a.Ready)
	if u := whoAmI(t, "postgres://app:local-pw@"+addr+"/postgres?sslmode=disable"); u != "blue" {
		t.Fatalf("with the client password: %s", u)
	}
	_, err := pgx.Connect(ctx, "postgres://app:wrong@"+addr+"/postgres?sslmode=disable")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("a wrong client password: %v", err)
	}
}
