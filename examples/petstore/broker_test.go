package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/sdk"
)

// brokerGrace is the rotation's retire grace in the broker test: long,
// so that a rotation that finishes well within it proves the broker's
// report ended it early.
const brokerGrace = 30 * time.Second

// Secretless's rotation demo, automated, through graft-agent's broker:
// petstore's settings name the broker on loopback and hold no password;
// its agent renders nothing and reloads nothing. A rotator runs blue/
// green rotations back to back while a poller runs. Each new credential
// takes effect on petstore's next connection (its pool recycles
// connections every 500 ms); once the broker reports no session left as
// the old user, the rotation retires it without waiting out its grace.
// No request may fail, and each retired user ends with no session.
func TestRotationsThroughTheBrokerUnderPoller(t *testing.T) {
	const rotations = 20
	db := pgDB{newEmptyDatabase(t)}
	r, g, appFile := newRotator(t, db, nil, brokerGrace)
	host, port := db.hostPort()

	// petstore's agent: a broker, no template, no reload.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := agent.DefaultConfig()
	cfg.Server, cfg.TokenFile, cfg.App, cfg.ID, cfg.Listen = g.Addr, appFile, "petstore", "petstore-0", "off"
	cfg.Brokers = []agent.Broker{{Listen: addr, Protocol: "postgres",
		Backend:     agent.BrokerBackend{Address: fmt.Sprintf("%s:%d", host, port), TLS: agent.BrokerBackendTLS{Mode: "disable"}},
		Credentials: &agent.BrokerCredentials{User: "replicated/db/user", Password: "replicated/db/password"}}}
	a := startAgent(t, cfg)
	testenv.WaitFor(t, 10*time.Second, a.Ready)

	_, brokerPort, _ := net.SplitHostPort(addr)
	conf := filepath.Join(t.TempDir(), "petstore.env")
	settings := "DB_HOST=127.0.0.1\nDB_PORT=" + brokerPort + "\nDB_NAME=petstore\nDB_USER=petstore\nDB_SSLMODE=disable\nDB_CONN_MAX_LIFETIME=500ms\n"
	if err := os.WriteFile(conf, []byte(settings), 0o600); err != nil {
		t.Fatal(err)
	}
	first, _ := r.published()
	p := startPetstore(t, nil, "--config", conf, "--schema-owner", group)
	p.waitLog("connected to database as user "+first, 1)
	poll := startPoller(t, p.url)
	poll.waitOK(t, 50)

	var took []time.Duration
	for range rotations {
		oldUser, _ := r.published()
		began := time.Now()
		rot := r.run()
		took = append(took, time.Since(began))
		if rot.State.Phase != rotation.PhaseDone {
			t.Fatalf("run %d: %s: %s", rot.State.Run, rot.State.Phase, rot.State.Reason)
		}
		if time.Since(began) >= brokerGrace {
			t.Fatalf("run %d took %s, the whole retire grace: the broker's sessions did not end it early", rot.State.Run, time.Since(began))
		}
		if n := db.sessions(t, oldUser); n != 0 {
			t.Fatalf("run %d retired %s with %d sessions left", rot.State.Run, oldUser, n)
		}
		poll.waitOK(t, 20)
	}
	poll.check(t)
	slices.Sort(took)
	t.Logf("%d rotations through the broker, retire grace %s: p50 %s, max %s (%s)", len(took), brokerGrace,
		took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), durations(took))
}

// The same through a dynamic credential: petstore's agent logs it in
// with a user of its own that the agent issues, renews at two-thirds of
// its lease and replaces before its max TTL. A poller sees no failed
// request across the replacements; each old user is revoked by the agent
// as soon as the broker has no session left on it (well within a grace of
// a minute), and at the end only the current user is left.
func TestDynamicCredentialThroughTheBrokerUnderPoller(t *testing.T) {
	pg := newEmptyDatabase(t)
	g := graftdtest.Start(t)
	ctx := t.Context()
	_, dbaToken := g.TokenFile(t, "user:dora", "dba")
	appFile, _ := g.TokenFile(t, "app:petstore", "app")
	dba, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: dbaToken})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dba.Close() })
	if _, err := dba.Put(ctx, "/dba/pp/admin/db/dsn", []byte(pg.DSN)); err != nil {
		t.Fatal(err)
	}
	// Leases of 4 s, renewed at 2.7 s, replaced at 6 s: a margin for a
	// loaded machine, where a renewal may take a while.
	role := sdk.DBCredRole{Driver: "postgres", Admin: "/dba/pp/admin/db", DefaultTTL: 4 * time.Second, MaxTTL: 9 * time.Second,
		CreationSQL: []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE ` + group}}
	if _, err := dba.PutRole(ctx, "/dba/pp/creds/petstore", role); err != nil {
		t.Fatal(err)
	}
	if _, _, err := dba.Share(ctx, "/dba/pp/creds/petstore", []string{"/app/petstore/replicated/creds/petstore"}, sdk.ShareOptions{}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	grace := time.Minute
	cfg := agent.DefaultConfig()
	cfg.Server, cfg.TokenFile, cfg.App, cfg.ID, cfg.Listen = g.Addr, appFile, "petstore", "petstore-0", "off"
	cfg.DBCred = agent.DBCred{StateFile: filepath.Join(dir, "dbcred.json"), Grace: &grace}
	cfg.Brokers = []agent.Broker{{Listen: addr, Protocol: "postgres", DBCred: "replicated/creds/petstore",
		Backend: agent.BrokerBackend{Address: fmt.Sprintf("%s:%d", pg.Host, pg.Port), TLS: agent.BrokerBackendTLS{Mode: "disable"}}}}
	logs := &testenv.Buffer{}
	startLoggedAgent(t, cfg, logs)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the agent's log:\n%s", logs)
		}
	})

	_, brokerPort, _ := net.SplitHostPort(addr)
	conf := filepath.Join(dir, "petstore.env")
	settings := "DB_HOST=127.0.0.1\nDB_PORT=" + brokerPort + "\nDB_NAME=petstore\nDB_USER=petstore\nDB_SSLMODE=disable\nDB_CONN_MAX_LIFETIME=500ms\n"
	if err := os.WriteFile(conf, []byte(settings), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startPetstore(t, nil, "--config", conf, "--schema-owner", group)
	p.waitLog("connected to database as user v-petstore-", 1)
	poll := startPoller(t, p.url)
	poll.waitOK(t, 50)

	// Three replacements, each revoked early by the agent.
	testenv.WaitFor(t, 60*time.Second, func() bool { return strings.Count(logs.String(), "old dynamic credential revoked") >= 3 })
	poll.waitOK(t, 50)
	poll.check(t)
	testenv.WaitFor(t, 10*time.Second, func() bool {
		ls, _, err := dba.ListLeases(ctx, "/dba/pp/creds", "")
		return err == nil && len(ls) == 1
	})
	var users int
	admin := pg.Connect(t, "postgres")
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-petstore-%'").Scan(&users); err != nil || users != 1 {
		t.Fatalf("%d dynamic users left (%v), want the current one", users, err)
	}
}

// startLoggedAgent runs an agent until the test ends, its log in logs.
func startLoggedAgent(t *testing.T, cfg agent.Config, logs *testenv.Buffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := agent.New(ctx, cfg, slog.New(slog.NewTextHandler(logs, nil)), nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testenv.WaitFor(t, 10*time.Second, a.Ready)
}
