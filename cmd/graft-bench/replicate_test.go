package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/graft-sh/graft/internal/graftdtest"
)

// graft-bench replicate starts its own dev graftd, replicates every write
// and reports a floor, measured through that graftd's own in-process etcd
// client as replication is (over TCP it came out slower than graft
// itself); nothing may go missing.
func TestBenchReplicate(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), strings.Fields("replicate --duration 1s --rate 50 --fanout 2 -o json"), &stdout, &stderr, func(string) string { return "" })
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	var r benchResult
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("-o json output %q: %v", stdout.String(), err)
	}
	if r.Mode != "dev" || r.GraftdFrom != "own" || r.Graftd == "" || r.Writes != 50 || r.Missing != 0 || r.Superseded != 0 || r.DestinationWrites != 100 || r.P50MS <= 0 || r.MaxMS < r.P99MS || r.P99MS < r.P50MS || r.FloorP50MS <= 0 || r.FloorVia != "in process" || r.RatioP50 <= 0 || r.SeenP50MS < r.P50MS || r.SeenMaxMS < r.SeenP99MS {
		t.Fatalf("result %+v", r)
	}
	for _, bad := range []string{"--rate 0", "--duration 0s", "--fanout 0", "--fanout 100001"} {
		stderr.Reset()
		if code := run(t.Context(), append([]string{"replicate"}, strings.Fields(bad)...), &stdout, &stderr, func(string) string { return "" }); code != 1 || !strings.HasPrefix(stderr.String(), "graft-bench: replicate: ") {
			t.Errorf("replicate %s: exit %d, %q", bad, code, stderr.String())
		}
	}
}

// graft-bench agents starts graftd as its own process, runs the agents,
// delivers one change to all of them and reads graftd's memory.
func TestBenchAgents(t *testing.T) {
	graftd := buildGraftd(t)
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"agents", "--count", "20", "--idle", "0s", "--settle", "0s", "--graftd", graftd, "-o", "json"}, &stdout, &stderr, func(string) string { return "" })
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	var r agentsResult
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("-o json output %q: %v", stdout.String(), err)
	}
	if r.Subscribers != "agents" || r.Agents != 20 || r.ReportsLive != 20 || r.DeliverAllMS <= 0 || r.DeliverAllMS < r.DeliverP50MS || r.RSSBeforeMB <= 0 || r.RSSAfterMB <= 0 || len(r.Notes) != 0 {
		t.Fatalf("result %+v", r)
	}
	stderr.Reset()
	if code := run(t.Context(), []string{"agents", "--count", "1", "--graftd", "/nonexistent/graftd"}, &stdout, &stderr, func(string) string { return "" }); code != 1 || !strings.Contains(stderr.String(), "make build") {
		t.Errorf("a missing graftd binary: exit %d, %q", code, stderr.String())
	}
}

// graft-bench agents --bare runs watch streams instead of agents: each must
// receive the change, timestamped on receipt, and the result says what
// it left out.
func TestBenchAgentsBare(t *testing.T) {
	graftd := buildGraftd(t)
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"agents", "--bare", "--count", "20", "--idle", "0s", "--settle", "0s", "--graftd", graftd, "-o", "json"}, &stdout, &stderr, func(string) string { return "" })
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	var r agentsResult
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("-o json output %q: %v", stdout.String(), err)
	}
	if r.Mode != "dev" || r.Subscribers != "bare" || r.Agents != 20 || r.StartS <= 0 || r.DeliverP50MS <= 0 || r.DeliverP99MS < r.DeliverP50MS || r.DeliverAllMS < r.DeliverP99MS || r.SweepMS != 0 || r.ReportsLive != 0 || r.RSSBeforeMB <= 0 || r.RSSIdleMB <= 0 || r.RSSAfterMB <= 0 {
		t.Fatalf("result %+v", r)
	}
	if len(r.Notes) != 2 || !strings.HasPrefix(r.Notes[0], "bare: ") || !strings.HasPrefix(r.Notes[1], "bare: ") {
		t.Fatalf("notes %q: want the two that say what bare streams leave out, and no other", r.Notes)
	}
	stderr.Reset()
	if code := run(t.Context(), []string{"agents", "--bare", "--count", "1", "--dir", t.TempDir()}, &stdout, &stderr, func(string) string { return "" }); code != 1 || !strings.Contains(stderr.String(), "--dir and --wait-min are for agents") {
		t.Errorf("--bare --dir: exit %d, %q", code, stderr.String())
	}
}

// buildGraftd builds graftd for graft-bench agents to start.
func buildGraftd(t *testing.T) string {
	t.Helper()
	graftd := filepath.Join(t.TempDir(), "graftd")
	if out, err := exec.Command("go", "build", "-o", graftd, "github.com/graft-sh/graft/cmd/graftd").CombinedOutput(); err != nil {
		t.Fatalf("go build graftd: %v\n%s", err, out)
	}
	return graftd
}

// An exported GRAFT_ADDR (the README exports it) makes graft-bench measure
// that graftd, not one of its own; it says which it measured.
func TestBenchReplicateSaysWhichGraftd(t *testing.T) {
	g := graftdtest.Start(t)
	env := map[string]string{"GRAFT_ADDR": g.Addr, "GRAFT_TOKEN": g.Token}
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), strings.Fields("replicate --duration 200ms --rate 10"), &stdout, &stderr, func(k string) string { return env[k] }); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	if want := "  measured: the graftd at " + g.Addr + " (from GRAFT_ADDR; unset it to measure a graftd of its own)\n"; !strings.Contains(stdout.String(), want) {
		t.Fatalf("output lacks %q:\n%s", want, stdout.String())
	}
}
