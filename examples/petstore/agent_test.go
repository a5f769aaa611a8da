package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/sdk"
)

// petstoreEnv is the template of petstore's settings file, as in the README.
const petstoreEnv = `DB_HOST={{ secret "replicated/postgres/host" }}
DB_PORT={{ secret "replicated/postgres/port" }}
DB_NAME={{ secret "replicated/postgres/database" }}
DB_USER={{ secret "replicated/postgres/user" }}
DB_PASSWORD={{ secret "replicated/postgres/password" }}
DB_SSLMODE=disable
`

// The README's tour as a test. A DBA keeps petstore's database settings
// in their tree and shares them into petstore's; graft-agent renders them
// into petstore's settings file and sends SIGHUP when it changes. The DBA
// then switches the source to a second user: petstore moves to it with no
// failed request, the rollout of the new password completes only once it
// has, and the first user can then be locked out.
func TestUnderGraftAgent(t *testing.T) {
	pg := newDatabase(t)
	began := time.Now()
	g := graftdtest.Start(t)
	t.Logf("graftd started in %s", time.Since(began))
	ctx := t.Context()
	root, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: g.Token})
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	const source = "/dba/passpack/services/petstore/postgres"
	put := func(key, value string) int64 {
		t.Helper()
		e, err := root.Put(ctx, source+"/"+key, []byte(value))
		if err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		return e.Revision
	}
	put("host", pg.Host)
	put("port", strconv.Itoa(pg.Port))
	put("database", "petstore")
	put("user", "petstore_blue")
	put("password", passwords["petstore_blue"])
	if _, _, err := root.Share(ctx, source, []string{"/app/petstore/replicated/postgres"}, sdk.ShareOptions{}); err != nil {
		t.Fatal(err)
	}
	token, _, err := root.CreateToken(ctx, "app:petstore", []string{"app"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenFile, conf := filepath.Join(dir, "petstore.token"), filepath.Join(dir, "petstore.env")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	cfg := agent.DefaultConfig()
	cfg.Server, cfg.TokenFile, cfg.App = g.Addr, tokenFile, "petstore"
	cfg.Templates = []agent.Template{{Destination: conf, Contents: petstoreEnv}}
	// Long enough that the user and the password, two writes, are one render.
	cfg.Wait = agent.Wait{Min: 300 * time.Millisecond, Max: 2 * time.Second}

	// graft-agent --once renders the file petstore starts from.
	once := cfg
	once.Once, once.Listen = true, "off"
	runAgent(t, once)
	p := startPetstore(t, nil, "--config", conf, "--schema-owner", group)
	p.waitLog("connected to database as user petstore_blue", 1)

	// Then graft-agent follows, with petstore's pidfile and health check.
	cfg.Listen = "127.0.0.1:0"
	cfg.Reload = []agent.Action{{Signal: &agent.SignalAction{Pidfile: p.pidfile, Signal: "SIGHUP"}}}
	cfg.Health = agent.Health{HTTP: p.url + "/healthz", Timeout: 10 * time.Second}
	a := startAgent(t, cfg)
	testenv.WaitFor(t, 10*time.Second, a.Ready)
	if status, body := p.call("POST", "/pet", `{"name": "Rex"}`); status != 201 {
		t.Fatalf("POST /pet = %d %s", status, body)
	}

	poll := startPoller(t, p.url)
	poll.waitOK(t, 50)
	put("user", "petstore_green")
	rev := put("password", passwords["petstore_green"])
	testenv.WaitFor(t, 30*time.Second, func() bool {
		r, err := root.RolloutStatus(ctx, source+"/password", rev)
		return err == nil && r.Complete
	})
	// The rollout is complete only once petstore runs as green: its health
	// check failed until then.
	if !strings.Contains(p.log.String(), "connected to database as user petstore_green") {
		t.Fatalf("the rollout completed before petstore connected as petstore_green:\n%s", p.log)
	}
	poll.waitOK(t, 50)

	pg.Exec(t, "postgres", "ALTER ROLE petstore_blue NOLOGIN")
	admin := pg.Connect(t, "petstore")
	var ended int
	if err := admin.QueryRow(ctx, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'petstore_blue'").Scan(&ended); err != nil {
		t.Fatal(err)
	}
	if ended != 0 {
		t.Errorf("%d sessions of petstore_blue were still open after the rollout", ended)
	}
	poll.waitOK(t, 100)
	poll.check(t)
	if status, body := p.call("GET", "/healthz", ""); status != 200 || !strings.Contains(body, `"user":"petstore_green"`) {
		t.Fatalf("GET /healthz = %d %s", status, body)
	}
	if got := read(t, conf); !strings.Contains(got, "DB_USER=petstore_green\n") {
		t.Fatalf("the settings file does not name petstore_green:\n%s", strings.ReplaceAll(got, passwords["petstore_green"], "<password>"))
	}
}

// runAgent runs an agent with Once set to its end.
func runAgent(t *testing.T, cfg agent.Config) {
	t.Helper()
	a, err := agent.New(t.Context(), cfg, testenv.Logger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Run(t.Context()); err != nil {
		t.Fatalf("graft-agent --once: %v", err)
	}
}

// startAgent runs an agent until the test ends.
func startAgent(t *testing.T, cfg agent.Config) *agent.Agent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := agent.New(ctx, cfg, testenv.Logger(t), nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

func read(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
