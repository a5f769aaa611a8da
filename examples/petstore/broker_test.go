package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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
	pg := newEmptyDatabase(t)
	db := pgDB{pg}
	g := graftdtest.Start(t)
	ctx := t.Context()
	dbaFile, dbaToken := g.TokenFile(t, "user:dora", "dba")
	appFile, _ := g.TokenFile(t, "app:petstore", "app")
	dba, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: dbaToken})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dba.Close() })
	host, port := db.hostPort()
	for k, v := range map[string]string{rotationAdmin + "/dsn": db.adminDSN(), rotationTarget + "/host": host,
		rotationTarget + "/port": strconv.Itoa(port), rotationTarget + "/database": "petstore"} {
		if _, err := dba.Put(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := dba.Share(ctx, rotationTarget, []string{"/app/petstore/replicated/db"}, sdk.ShareOptions{}); err != nil {
		t.Fatal(err)
	}
	rcfg := agent.DefaultConfig()
	rcfg.Server, rcfg.TokenFile, rcfg.Listen, rcfg.ID = g.Addr, dbaFile, "off", "rotator"
	rcfg.Rotations = agent.Rotations{All: true}
	startAgent(t, rcfg)
	if _, err := dba.CreateRotation(ctx, rotation.Spec{Name: rotationName, Driver: "postgres", Admin: rotationAdmin,
		Target: rotationTarget, Users: []string{"petstore_blue", "petstore_green"}, Group: group,
		Consumers: []string{"app:petstore"}, RolloutTimeout: time.Minute, RetireGrace: brokerGrace}); err != nil {
		t.Fatal(err)
	}
	r := &rotationRig{t: t, db: db, dba: dba}
	if rot := r.run(); rot.State.Phase != rotation.PhaseDone {
		t.Fatalf("the first run: %s: %s", rot.State.Phase, rot.State.Reason)
	}

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
