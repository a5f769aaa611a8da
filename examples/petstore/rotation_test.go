package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/pgtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/sdk"
)

// The seed's demo as a test: three petstores, each under its own
// graft-agent, serve a poller while a rotator runs 20 blue/green
// rotations of their database credential back to back. No request may
// fail, and after each rotation the retired user must be unable to log
// in. It reports the rotation wall time, from `rotation run` to done,
// the retire grace excluded (docs/PERFORMANCE.md).
func TestTwentyRotationsUnderPoller(t *testing.T) {
	const (
		admin     = "/dba/passpack/admin/postgres"
		target    = "/dba/passpack/services/petstore/postgres"
		name      = "petstore-pg"
		grace     = 100 * time.Millisecond
		rotations = 20
	)
	pg := pgtest.Start(t)
	pg.Exec(t, "postgres", "CREATE ROLE "+group+" NOLOGIN")
	pg.CreateDatabase(t, "petstore", group)
	g := graftdtest.Start(t)
	ctx := t.Context()
	root, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: g.Token})
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	dir := t.TempDir()
	tokenFile := func(principal, role string) (string, string) {
		tok, _, err := root.CreateToken(ctx, principal, []string{role}, 0)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, role+".token")
		if err := os.WriteFile(f, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return f, tok
	}
	dbaFile, dbaToken := tokenFile("user:dora", "dba")
	appFile, _ := tokenFile("app:petstore", "app")
	dba, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: dbaToken})
	if err != nil {
		t.Fatal(err)
	}
	defer dba.Close()
	for k, v := range map[string]string{admin + "/dsn": pg.DSN, target + "/host": pg.Host, target + "/port": strconv.Itoa(pg.Port), target + "/database": "petstore"} {
		if _, err := dba.Put(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := dba.Share(ctx, target, []string{"/app/petstore/replicated/postgres"}, sdk.ShareOptions{}); err != nil {
		t.Fatal(err)
	}

	// The rotator, with the DBA's identity, and the first run, which
	// creates both users and publishes blue.
	rcfg := agent.DefaultConfig()
	rcfg.Server, rcfg.TokenFile, rcfg.Listen, rcfg.ID = g.Addr, dbaFile, "off", "rotator"
	rcfg.Rotations = agent.Rotations{All: true}
	startAgent(t, rcfg)
	if _, err := dba.CreateRotation(ctx, rotation.Spec{Name: name, Driver: rotation.DriverPostgres, Admin: admin, Target: target,
		Users: []string{"petstore_blue", "petstore_green"}, Group: group, Consumers: []string{"app:petstore"},
		RolloutTimeout: time.Minute, RetireGrace: grace}); err != nil {
		t.Fatal(err)
	}
	run := func() sdk.Rotation {
		t.Helper()
		start, err := dba.RunRotation(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		var rot sdk.Rotation
		testenv.WaitFor(t, 2*time.Minute, func() bool {
			rot, err = dba.GetRotation(ctx, name)
			return err == nil && rot.State.Run > start.State.Run && !rot.State.Phase.InProgress()
		})
		if rot.State.Phase != rotation.PhaseDone {
			t.Fatalf("run %d: %s: %s", rot.State.Run, rot.State.Phase, rot.State.Reason)
		}
		return rot
	}
	run()

	// Three consumers: a petstore and its agent each.
	var pollers []*poller
	for i := range 3 {
		conf := filepath.Join(dir, fmt.Sprintf("petstore-%d.env", i))
		cfg := agent.DefaultConfig()
		cfg.Server, cfg.TokenFile, cfg.App, cfg.ID = g.Addr, appFile, "petstore", fmt.Sprintf("petstore-%d", i)
		cfg.Templates = []agent.Template{{Destination: conf, Contents: petstoreEnv}}
		cfg.Wait = agent.Wait{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond}
		once := cfg
		once.Once, once.Listen = true, "off"
		runAgent(t, once)
		p := startPetstore(t, nil, "--config", conf, "--schema-owner", group)
		p.waitLog("connected to database as user petstore_blue", 1)
		cfg.Listen = "off"
		cfg.Reload = []agent.Action{{Signal: &agent.SignalAction{Pidfile: p.pidfile, Signal: "SIGHUP"}}}
		cfg.Health = agent.Health{HTTP: p.url + "/healthz", Timeout: 10 * time.Second}
		a := startAgent(t, cfg)
		testenv.WaitFor(t, 10*time.Second, a.Ready)
		pollers = append(pollers, startPoller(t, p.url))
	}
	for _, p := range pollers {
		p.waitOK(t, 20)
	}

	var took []time.Duration
	for range rotations {
		old, err := dba.Get(ctx, target+"/password")
		if err != nil {
			t.Fatal(err)
		}
		oldUser, err := dba.Get(ctx, target+"/user")
		if err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		rot := run()
		took = append(took, time.Since(began)-grace)
		if rot.State.ActiveUser == string(oldUser.Value) {
			t.Fatalf("run %d kept %s active", rot.State.Run, oldUser.Value)
		}
		if len(rot.State.Acked) != 3 {
			t.Fatalf("run %d: acked %v: want the three agents", rot.State.Run, rot.State.Acked)
		}
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := pgx.Connect(lctx, pg.URL(string(oldUser.Value), string(old.Value), "petstore"))
		cancel()
		if err == nil {
			c.Close(ctx)
			t.Fatalf("run %d: the retired user %s still logs in", rot.State.Run, oldUser.Value)
		}
		for _, p := range pollers {
			p.waitOK(t, 5)
		}
	}
	for _, p := range pollers {
		p.check(t)
	}
	slices.Sort(took)
	t.Logf("rotation wall time over %d runs with 3 consumers, grace excluded: p50 %s, p90 %s, max %s (%s)",
		len(took), took[len(took)/2].Round(time.Millisecond), took[len(took)*9/10].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), durations(took))
}

func durations(ds []time.Duration) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.Round(10*time.Millisecond).String())
	}
	return strings.Join(s, " ")
}
