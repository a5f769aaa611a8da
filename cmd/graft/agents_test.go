package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
)

// agents ls shows where each agent serves its HTTP endpoints, "-" for one
// that serves none.
func TestAgentsLsShowsTheHTTPAddress(t *testing.T) {
	g := graftdtest.Start(t)
	admin := newCLI(t, g)
	admin.put("/app/mp/config/x", "v1")
	tokenFile, _ := g.TokenFile(t, "app:mp", "app")
	dir := t.TempDir()
	addrs := map[string]string{}
	for id, listen := range map[string]string{"web": "127.0.0.1:0", "quiet": "off"} {
		cfg := agent.DefaultConfig()
		cfg.Server, cfg.TokenFile, cfg.App, cfg.ID, cfg.Listen = g.Addr, tokenFile, "mp", id, listen
		cfg.Templates = []agent.Template{{Destination: filepath.Join(dir, id), Contents: `{{ secret "config/x" }}`}}
		a := runAgent(t, cfg)
		testenv.WaitFor(t, 5*time.Second, a.Ready)
		addrs[id] = a.Addr()
	}
	if addrs["web"] == "" {
		t.Fatal("the agent with listen: serves no HTTP")
	}
	testenv.WaitFor(t, 5*time.Second, func() bool { return strings.Count(admin.run("agents", "ls").stdout, "\nmp ") == 2 })
	assertTable(t, admin.ok("agents", "ls", "--app", "mp"), [][]string{{"APP", "ID", "HOST", "HTTP", "REVISION"}, {"mp", "quiet", "*", "-"}, {"mp", "web", "*", addrs["web"]}})
	var v []agentView
	if err := json.Unmarshal([]byte(admin.ok("agents", "ls", "--app", "mp", "-o", "json")), &v); err != nil || len(v) != 2 {
		t.Fatalf("agents ls -o json: %d agents, %v", len(v), err)
	}
	for _, a := range v {
		if a.HTTPAddress != addrs[a.ID] {
			t.Errorf("agent %s: http_address %q, want %q", a.ID, a.HTTPAddress, addrs[a.ID])
		}
	}
}
