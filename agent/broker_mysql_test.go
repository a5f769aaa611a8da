package agent_test

import (
	"database/sql"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/mysqltest"
	"github.com/graft-sh/graft/internal/testenv"
)

// A MariaDB application connects to the agent's mysql broker with no
// password; the broker logs in with the credential in the application's
// tree, and the next connection takes a new one at once.
func TestBrokerMySQLStaticCredential(t *testing.T) {
	db := mysqltest.Start(t)
	db.CreateUser(t, "blue", "blue-pw")
	db.CreateUser(t, "green", "green-pw")
	r := newDBCredRig(t, nil)
	ctx := t.Context()
	r.shareCredential(t, "blue", "blue-pw")
	addr := freeAddr(t)
	cfg := r.config("")
	cfg.Templates = nil
	cfg.Brokers = []agent.Broker{{Listen: addr, Protocol: "mysql",
		Backend:     agent.BrokerBackend{Address: net.JoinHostPort(db.Host, strconv.Itoa(db.Port)), TLS: agent.BrokerBackendTLS{Mode: "disable"}},
		Credentials: &agent.BrokerCredentials{User: "replicated/db/user", Password: "replicated/db/password"}}}
	a, logs := startLogged(t, cfg)
	testenv.WaitFor(t, 10*time.Second, a.Ready)

	who := func() string {
		c := mysql.NewConfig()
		c.User, c.Net, c.Addr, c.Timeout = "app", "tcp", addr, 10*time.Second
		connector, err := mysql.NewConnector(c)
		if err != nil {
			t.Fatal(err)
		}
		pool := sql.OpenDB(connector)
		defer pool.Close()
		var u string
		if err := pool.QueryRowContext(ctx, "SELECT CURRENT_USER()").Scan(&u); err != nil {
			t.Fatalf("through the broker: %v", err)
		}
		return u
	}
	if u := who(); u != "blue@%" {
		t.Fatalf("through the broker: %s, want blue@%%", u)
	}
	if _, err := r.dba.PutTree(ctx, "/dba/pp/db", map[string][]byte{"user": []byte("green"), "password": []byte("green-pw")}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, func() bool { return who() == "green@%" })
	if strings.Contains(logs.String(), "blue-pw") || strings.Contains(logs.String(), "green-pw") {
		t.Fatalf("the agent's log holds a password:\n%s", logs)
	}
}
