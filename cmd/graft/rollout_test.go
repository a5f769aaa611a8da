package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
)

// rollout status --wait returns when the last of three agents runs the new
// value, and fails on timeout (exit 3) while one reports unhealthy; agents
// ls shows what each runs.
func TestRolloutStatusFollowsAgents(t *testing.T) {
	g := graftdtest.Start(t)
	admin := newCLI(t, g)
	admin.put("/dba/mp/mongo/password", "v1")
	admin.ok("share", "/dba/mp/mongo", "--to", "/app/mp/replicated/mongo")
	r := admin.run("token", "create", "--principal", "app:mp", "--role", "app")
	if r.code != 0 {
		t.Fatalf("token create: %+v", r)
	}
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte(strings.TrimSpace(r.stdout)), 0o600)
	start := func(id string, wait time.Duration, health agent.Health) {
		cfg := agent.DefaultConfig()
		cfg.Server, cfg.TokenFile, cfg.App, cfg.ID, cfg.Listen = g.Addr, tokenFile, "mp", id, "off"
		cfg.Templates = []agent.Template{{Destination: filepath.Join(dir, id, "pw"), Contents: `{{ secret "replicated/mongo/password" }}`}}
		cfg.Wait, cfg.Health = agent.Wait{Min: wait, Max: 2 * wait}, health
		a := runAgent(t, cfg)
		testenv.WaitFor(t, 5*time.Second, a.Ready)
	}
	start("a1", 10*time.Millisecond, agent.Health{})
	start("a2", 10*time.Millisecond, agent.Health{})
	start("a3", 1500*time.Millisecond, agent.Health{}) // the slow one
	testenv.WaitFor(t, 5*time.Second, func() bool { return strings.Count(admin.run("agents", "ls").stdout, "\nmp ") == 3 })

	if got := admin.fails("rollout", "status", "/dba/mp/mongo/nope"); !strings.Contains(got, "/dba/mp/mongo/nope has no value, so nothing can run it (see `graft ls /dba/mp/mongo`)") {
		t.Fatalf("rollout status of a missing path: %q", got)
	}
	if got := admin.ok("rollout", "status", "/dba/mp/mongo/password"); !strings.Contains(got, ": 3 of 3 consumers run it\n") {
		t.Fatalf("rollout status before the change:\n%s", got)
	}
	admin.put("/dba/mp/mongo/password", "v2")
	r = admin.run("rollout", "status", "/dba/mp/mongo/password")
	if r.code != exitNotRolledOut || !strings.Contains(r.stdout, "mp/a3") || !strings.Contains(r.stdout, "waiting: ") {
		t.Fatalf("rollout status right after the change (a3 waits 1.5 s): %+v", r)
	}
	began := time.Now()
	out := admin.ok("rollout", "status", "/dba/mp/mongo/password", "--wait", "--timeout", "20s")
	if !strings.Contains(out, ": 3 of 3 consumers run it\n") {
		t.Fatalf("rollout status --wait:\n%s", out)
	}
	if got := read(t, filepath.Join(dir, "a3", "pw")); got != "v2" {
		t.Fatalf("--wait returned while the last agent's file held %q", got)
	}
	t.Logf("--wait returned after %s", time.Since(began).Round(time.Millisecond))

	// An agent whose application fails its health check holds the
	// rollout: --wait times out with exit 3, naming why, also when it
	// waits longer than one call to graftd may take (10 s).
	start("a4", 10*time.Millisecond, agent.Health{TCP: testenv.FreeAddr(t), Timeout: 300 * time.Millisecond})
	admin.put("/dba/mp/mongo/password", "v3")
	r = admin.run("rollout", "status", "/dba/mp/mongo/password", "--wait", "--timeout", "11s")
	if r.code != exitNotRolledOut || !strings.Contains(r.stdout, "mp/a4") || !strings.Contains(r.stdout, "unhealthy: ") {
		t.Fatalf("rollout status --wait with an unhealthy agent: %+v", r)
	}
	var v []agentView
	if err := json.Unmarshal([]byte(admin.ok("agents", "ls", "--app", "mp", "-o", "json")), &v); err != nil || len(v) != 4 {
		t.Fatalf("agents ls -o json: %d agents, %v", len(v), err)
	}
	for _, a := range v {
		if len(a.Templates) != 1 || a.Templates[0].Keys[0] != "/app/mp/replicated/mongo/password" || a.Principal != "app:mp" {
			t.Fatalf("agent %+v", a)
		}
	}
	if strings.Contains(admin.ok("agents", "ls", "-o", "json"), "v3") {
		t.Fatal("a value appears in the agents' reports")
	}
}

func read(t *testing.T, name string) string {
	t.Helper()
	data, _ := os.ReadFile(name)
	return string(data)
}

// A path no agent reports has rolled out nowhere: rollout status exits 3
// saying so, and --wait waits for a consumer until its timeout (a "0 of
// 0" that exited 0 at once let a retire take an application down whose
// agent was not running). --allow-none accepts none; an agent that starts
// reporting while --wait waits ends the wait with 0.
func TestRolloutStatusWithNoConsumer(t *testing.T) {
	g := graftdtest.Start(t)
	admin := newCLI(t, g)
	const path = "/dba/mp/pg/password"
	admin.put(path, "v1")
	admin.ok("share", "/dba/mp/pg", "--to", "/app/mp/replicated/pg")

	r := admin.run("rollout", "status", path)
	if r.code != exitNotRolledOut || !strings.Contains(r.stdout, "0 of 0 consumers run it") ||
		!strings.Contains(r.stderr, "no consumer reports "+path) || !strings.Contains(r.stderr, "--allow-none") {
		t.Fatalf("rollout status with no consumer: %+v; want exit 3 saying no consumer reports it", r)
	}
	if out := admin.ok("rollout", "status", path, "--allow-none"); !strings.Contains(out, "0 of 0 consumers run it") {
		t.Fatalf("rollout status --allow-none: %q", out)
	}
	var v rolloutView
	if r := admin.run("rollout", "status", path, "-o", "json"); r.code != exitNotRolledOut || json.Unmarshal([]byte(r.stdout), &v) != nil || v.Complete {
		t.Fatalf("rollout status -o json with no consumer: %+v (complete %v); want exit 3 and complete false", r, v.Complete)
	}

	began := time.Now()
	r = admin.run("rollout", "status", path, "--wait", "--timeout", "1500ms")
	if took := time.Since(began); r.code != exitNotRolledOut || took < 1500*time.Millisecond || !strings.Contains(r.stderr, "no consumer reports "+path) {
		t.Fatalf("rollout status --wait with no consumer: %+v after %s; want exit 3 at the timeout", r, took)
	}
	admin.ok("rollout", "status", path, "--wait", "--timeout", "1m", "--allow-none")

	// An agent that comes while --wait waits ends it.
	waited := make(chan result, 1)
	go func() { waited <- admin.run("rollout", "status", path, "--wait", "--timeout", "30s") }()
	tokenFile, _ := g.TokenFile(t, "app:mp", "app")
	dir := t.TempDir()
	cfg := agent.DefaultConfig()
	cfg.Server, cfg.TokenFile, cfg.App, cfg.ID, cfg.Listen = g.Addr, tokenFile, "mp", "a1", "off"
	cfg.Templates = []agent.Template{{Destination: filepath.Join(dir, "pw"), Contents: `{{ secret "replicated/pg/password" }}`}}
	cfg.Wait = agent.Wait{Min: 10 * time.Millisecond, Max: 20 * time.Millisecond}
	runAgent(t, cfg)
	select {
	case r := <-waited:
		if r.code != 0 || !strings.Contains(r.stdout, "1 of 1 consumers run it") {
			t.Fatalf("rollout status --wait when an agent came: %+v", r)
		}
	case <-time.After(25 * time.Second):
		t.Fatal("rollout status --wait did not end when an agent reported")
	}
}

// runAgent starts a graft-agent in-process with cfg; the test stops it.
func runAgent(t *testing.T, cfg agent.Config) *agent.Agent {
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
