package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/sdk"
)

// dynamicEnv is petstore's settings template with a dynamic credential:
// one database user of its own, issued from the role shared into its
// tree, renewed and replaced by graft-agent.
func dynamicEnv(db testDB) string {
	host, port := db.hostPort()
	return "DB_DRIVER=" + db.driver() + "\nDB_HOST=" + host + "\nDB_PORT=" + strconv.Itoa(port) + "\nDB_NAME=petstore\nDB_SSLMODE=disable\n" +
		`{{ with dbcred "replicated/creds/petstore" }}DB_USER={{ .Username }}
DB_PASSWORD={{ .Password }}
{{ end }}`
}

// dynamicRole is the role's creation SQL on db: a login user in the
// group that owns petstore's tables (PostgreSQL), or granted petstore's
// tables (MariaDB).
func dynamicRole(db testDB) sdk.DBCredRole {
	if db.driver() == driverMySQL {
		return sdk.DBCredRole{Driver: "mysql", CreationSQL: []string{
			"CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'",
			"GRANT ALL PRIVILEGES ON petstore.* TO '{{name}}'@'%'"}}
	}
	return sdk.DBCredRole{Driver: "postgres", CreationSQL: []string{
		`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE ` + group}}
}

var connectedAsRE = regexp.MustCompile(`connected to database as user ([^\s"]+)`)

// The promise through the agent: petstore's template takes a
// dynamic credential with dbcred. graft-agent issues it once, renews it
// at two-thirds of its lease, and before its max TTL issues a new one,
// renders it, reloads petstore, waits for its health, and only then,
// after the grace period, revokes the old lease. With short TTLs, a
// poller sees no failed request across several replacements, old users
// are dropped, graft lease ls names the agent that holds each lease, and
// a restarted agent goes on with its lease instead of issuing a new user.
func TestDynamicCredentialUnderGraftAgent(t *testing.T) {
	forEachEmptyDB(t, func(t *testing.T, db testDB) {
		g := graftdtest.Start(t)
		ctx := t.Context()
		dir := t.TempDir()
		_, dbaToken := g.TokenFile(t, "user:dora", "dba")
		appFile, appToken := g.TokenFile(t, "app:petstore", "app")
		dba, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: dbaToken})
		if err != nil {
			t.Fatal(err)
		}
		defer dba.Close()
		app, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: appToken})
		if err != nil {
			t.Fatal(err)
		}
		defer app.Close()
		if _, err := dba.Put(ctx, "/dba/pp/admin/db/dsn", []byte(db.adminDSN())); err != nil {
			t.Fatal(err)
		}
		role := dynamicRole(db)
		role.Admin = "/dba/pp/admin/db"
		// PostgreSQL's leases renew (VALID UNTIL moves); MariaDB's do not
		// by default, so there the agent replaces at two-thirds of the TTL.
		role.DefaultTTL, role.MaxTTL = 3*time.Second, 9*time.Second
		if db.driver() == driverMySQL {
			role.DefaultTTL, role.MaxTTL = 6*time.Second, 6*time.Second
		}
		if _, err := dba.PutRole(ctx, "/dba/pp/creds/petstore", role); err != nil {
			t.Fatal(err)
		}
		if _, _, err := dba.Share(ctx, "/dba/pp/creds/petstore", []string{"/app/petstore/replicated/creds/petstore"}, sdk.ShareOptions{}); err != nil {
			t.Fatal(err)
		}

		conf := filepath.Join(dir, "petstore.env")
		cfg := agent.DefaultConfig()
		cfg.Server, cfg.TokenFile, cfg.App, cfg.ID, cfg.Listen = g.Addr, appFile, "petstore", "petstore-0", "off"
		cfg.Templates = []agent.Template{{Destination: conf, Contents: dynamicEnv(db)}}
		cfg.Wait = agent.Wait{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond}
		grace := time.Second
		cfg.DBCred.Grace = &grace
		once := cfg
		once.Once = true
		runAgent(t, once)
		first := settingsUser(t, conf)
		p := startPetstore(t, nil, "--config", conf, "--schema-owner", group)
		p.waitLog("connected to database as user "+first, 1)

		cfg.Reload = []agent.Action{{Signal: &agent.SignalAction{Pidfile: p.pidfile, Signal: "SIGHUP"}}}
		cfg.Health = agent.Health{HTTP: p.url + "/healthz", Timeout: 10 * time.Second}
		a := startAgentUntil(t, cfg)
		testenv.WaitFor(t, 10*time.Second, a.agent.Ready)
		// --once's lease goes on: no second user.
		if got := settingsUser(t, conf); got != first {
			t.Fatalf("the agent issued %s instead of going on with %s, the lease --once left", got, first)
		}
		poll := startPoller(t, p.url)
		poll.waitOK(t, 20)

		// The agent holds the lease, and lease ls says so.
		testenv.WaitFor(t, 10*time.Second, func() bool {
			ls, _, err := app.ListLeases(ctx, "", "")
			for _, l := range ls {
				if l.Username == first && strings.HasPrefix(l.Holder, "petstore-0 on ") {
					return err == nil
				}
			}
			return false
		})

		// Two replacements; then the agent restarts and goes on with
		// the lease it holds.
		users := []string{first}
		next := func() string {
			t.Helper()
			var u string
			testenv.WaitFor(t, 30*time.Second, func() bool {
				u = settingsUser(t, conf)
				return u != users[len(users)-1]
			})
			p.waitLog("connected to database as user "+u, 1)
			users = append(users, u)
			poll.waitOK(t, 20)
			return u
		}
		next()
		next()
		a.stop()
		current := settingsUser(t, conf)
		a = startAgentUntil(t, cfg)
		testenv.WaitFor(t, 10*time.Second, a.agent.Ready)
		if got := settingsUser(t, conf); got != current {
			t.Fatalf("the restarted agent issued %s instead of going on with its lease of %s", got, current)
		}
		next()
		poll.waitOK(t, 50)
		poll.check(t)

		// Every replaced user is dropped: by the agent after the grace,
		// or by graftd's reaper at its expiry.
		testenv.WaitFor(t, 30*time.Second, func() bool {
			ls, _, err := dba.ListLeases(ctx, "/dba/pp/creds", "")
			if err != nil {
				return false
			}
			for _, l := range ls {
				for _, old := range users[:len(users)-1] {
					if l.Username == old {
						return false
					}
				}
			}
			return true
		})
		for _, old := range users[:len(users)-1] {
			lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := db.logIn(lctx, old, "any")
			cancel()
			if err == nil {
				t.Errorf("the replaced user %s still logs in", old)
			}
		}
		// petstore connected as each user in turn, and as no other.
		var seen []string
		for _, m := range connectedAsRE.FindAllStringSubmatch(p.log.String(), -1) {
			if len(seen) == 0 || seen[len(seen)-1] != m[1] {
				seen = append(seen, m[1])
			}
		}
		if strings.Join(seen, " ") != strings.Join(users, " ") {
			t.Errorf("petstore connected as %v; the agent rendered %v", seen, users)
		}
		if st, err := os.Stat(filepath.Join(dir, ".graft-dbcred-petstore-0.json")); err != nil {
			t.Errorf("the state file: %v", err)
		} else if st.Mode().Perm() != 0o600 {
			t.Errorf("the state file's mode is %v: want 0600", st.Mode().Perm())
		}
		t.Logf("%s: petstore ran as %d users in turn: %v", db.driver(), len(users), users)
	})
}

// settingsUser is the DB_USER of petstore's settings file.
func settingsUser(t *testing.T, conf string) string {
	t.Helper()
	for _, line := range strings.Split(read(t, conf), "\n") {
		if u, ok := strings.CutPrefix(line, "DB_USER="); ok {
			return u
		}
	}
	t.Fatalf("%s has no DB_USER", conf)
	return ""
}

// runningAgent is an agent the test may stop before it ends.
type runningAgent struct {
	agent *agent.Agent
	stop  func()
}

func startAgentUntil(t *testing.T, cfg agent.Config) runningAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := agent.New(ctx, cfg, testenv.Logger(t), nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return runningAgent{agent: a, stop: stop}
}
