package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// Bad flags are refused before anything starts (no graftd, no
// PostgreSQL), every problem in one line, and a DSN's password never
// appears in it.
func TestDBCredFlags(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"--duration", "0s"}, []string{"--duration 0s: want a positive duration"}},
		{[]string{"--duration", "2h"}, []string{"--duration 2h0m0s: want a positive duration up to 1h"}},
		{[]string{"--clients", "0"}, []string{"--clients 0: want 1 to 32"}},
		{[]string{"--clients", "1,33"}, []string{"--clients 33: want 1 to 32"}},
		{[]string{"--clients", "8,8"}, []string{"--clients 8: given twice"}},
		{[]string{"--leases", "-1"}, []string{"--leases -1: want 0 (skip) to 1000000"}},
		{[]string{"--fill-clients", "31"}, []string{"--fill-clients 31: want 1 to 30"}},
		{[]string{"--drain", "100001"}, []string{"--drain 100001: want 0 (skip) to 100000"}},
		{[]string{"--idle", "500ms"}, []string{"--idle 500ms: want 1s or more"}},
		{[]string{"--grant", "schema"}, []string{`--grant "schema": want group or table`}},
		{[]string{"--dsn", "postgres://u:s3cret@h:port/db"}, []string{"--dsn: not a PostgreSQL URL"}},
		{[]string{"--dsn", "postgres://u:p@h/db", "--pg-bindir", "/usr/bin"}, []string{"--pg-bindir starts a PostgreSQL of the bench's own; --dsn measures yours"}},
		{[]string{"--metrics-url", "http://127.0.0.1:7421/metrics"}, []string{"--metrics-url is for a graftd given with --addr"}},
		{[]string{"--addr", "127.0.0.1:7420", "--graftd", "/usr/bin/graftd"}, []string{"--graftd starts a graftd of the bench's own"}},
		// Every problem at once, in one line.
		{[]string{"--duration", "0s", "--grant", "x", "--leases", "-5"}, []string{"--duration 0s", `--grant "x"`, "--leases -5"}},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), append([]string{"dbcred"}, tt.args...), &stdout, &stderr, func(string) string { return "" })
		got := stderr.String()
		if code != 1 || !strings.HasPrefix(got, "graft-bench: dbcred: ") || strings.Count(got, "\n") != 1 {
			t.Errorf("dbcred %v: exit %d, stderr %q; want exit 1 and one line graft-bench: dbcred: ...", tt.args, code, got)
		}
		for _, w := range tt.want {
			if !strings.Contains(got, w) {
				t.Errorf("dbcred %v: stderr %q lacks %q", tt.args, got, w)
			}
		}
		if strings.Contains(got, "s3cret") {
			t.Errorf("dbcred %v: stderr %q shows the DSN's password", tt.args, got)
		}
		if stdout.Len() > 0 {
			t.Errorf("dbcred %v: stdout %q, want nothing", tt.args, stdout.String())
		}
	}
}

func TestDBCredGoal(t *testing.T) {
	run := func(clients int, perSec, p99 float64) issueLoad {
		return issueLoad{Clients: clients, Graft: throughput{PerSec: perSec, latency: latency{P99MS: p99}}, RatioPerSec: 0.9}
	}
	tests := []struct {
		name string
		runs []issueLoad
		met  bool
	}{
		{"fast enough", []issueLoad{run(1, 300, 5), run(8, 580, 20)}, true},
		{"too slow", []issueLoad{run(8, 579, 10)}, false},
		{"p99 too long", []issueLoad{run(8, 900, 20.5)}, false},
	}
	for _, tt := range tests {
		g := goalOf(tt.runs)
		if g == nil || g.Met != tt.met || g.Clients != 8 || g.FloorShare != 0.9 {
			t.Errorf("%s: goal %+v, want met %v", tt.name, g, tt.met)
		}
	}
	if g := goalOf([]issueLoad{run(1, 1000, 1), run(16, 1000, 1)}); g != nil {
		t.Errorf("no run with 8 clients: goal %+v, want none", g)
	}
}

// The text output says what was measured and how each goal came out;
// -o json keeps the field names scripts read.
func TestWriteDBCred(t *testing.T) {
	r := dbcredResult{
		Mode: "dev", Graftd: "127.0.0.1:1234", GraftdFrom: "own", Postgres: "own", PostgresVersion: "15.18",
		Grant: "group", CreationSQL: creationSQL("group"), DurationS: 10, CPUs: 2, LoadStart: "0.10 0.20 0.30", LoadEnd: "1.00 0.50 0.40",
		Issue: []issueLoad{{
			Clients:     8,
			Graft:       throughput{PerSec: 400, latency: latency{N: 4000, P50MS: 18, P99MS: 31}},
			Floor:       throughput{PerSec: 700, latency: latency{N: 7000, P50MS: 11, P99MS: 22}},
			RatioPerSec: 0.57, RatioP50: 1.64, RatioP99: 1.41, GraftdCPUMSPerIssue: 3.25,
		}},
		Live:      &liveLeases{Leases: 100000, Filled: 92000, RSSFrom: "/proc/1/status VmRSS", RSSBeforeMB: 60, RSSMB: 300, RSSAnonMB: 250, RSSFileMB: 50, EtcdDBFrom: "the size of db", EtcdDBMB: 400, PGRoles: 100020},
		Drain:     &drainRun{Leases: 5000, Gone: 5000, DrainS: 12.5, PerSec: 400, Idle: apiProbe{Get: latency{P99MS: 2}, GraftdCores: 0.05, MachineBusy: 0.1}, During: apiProbe{Get: latency{P99MS: 5}, GraftdCores: 0.8, MachineBusy: 0.97}, RatioGetP99: 2.5},
		RevokeAll: &revokeAll{Revoked: 100000, S: 250, PerSec: 400, UsersLeft: 0},
		Notes:     []string{"a note"},
	}
	r.Goal = goalOf(r.Issue)
	var b bytes.Buffer
	if err := writeDBCred(&b, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"its own graftd --dev at 127.0.0.1:1234",
		`GRANT "graft_bench_ro" TO "{{name}}" (--grant group)`,
		"8 client(s), graft/floor",
		"8 client(s), graftd      3.25 ms CPU per issue",
		"2 CPUs; load average 0.10 0.20 0.30 at the start, 1.00 0.50 0.40 at the end",
		"goal, 8 clients ≥ 580/s with p99 ≤ 20 ms: not met (400/s, p99 31.00 ms; 57% of the floor's rate)",
		"live leases: 100000",
		"graftd RSS:  60.0 MB before any lease, 300.0 MB with them (/proc/1/status VmRSS)",
		"of which 250.0 MB anonymous (heap, stacks) and 50.0 MB file pages",
		"Get 2.00 ms idle, 5.00 ms draining (2.50×)",
		"CPU:         graftd 0.05 cores idle, 0.80 draining; the machine 10% busy idle, 97% draining",
		"goal, Get p99 draining within 2× idle: not met",
		"revoke all:  100000 leases in 250.0 s (400/s), 0 failed, 0 users left",
		"note: a note",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, b.String())
		}
	}
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"per_sec":400`, `"p99_ms":31`, `"graftd_rss_mb":300`, `"ratio_get_p99":2.5`, `"met":false`} {
		if !bytes.Contains(data, []byte(key)) {
			t.Errorf("JSON lacks %s: %s", key, data)
		}
	}
}

func TestReadProcMem(t *testing.T) {
	got, err := readProcMem(os.Getpid())
	if err != nil || got.rss < 1<<20 || got.anon <= 0 || got.file <= 0 || got.anon+got.file > got.rss+1<<20 {
		t.Fatalf("readProcMem(self) = %+v, %v; want VmRSS of 1 MiB or more, split into RssAnon and RssFile", got, err)
	}
	if _, err := readProcMem(-1); err == nil {
		t.Fatal("readProcMem(-1): no error")
	}
}

func TestMachineCPU(t *testing.T) {
	idle, total := machineCPU()
	if total <= 0 || idle < 0 || idle > total {
		t.Fatalf("machineCPU() = %v idle of %v: want 0 ≤ idle ≤ total, total > 0", idle, total)
	}
}
