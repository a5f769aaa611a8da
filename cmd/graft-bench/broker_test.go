package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/graft-sh/graft/internal/dbproc"
	"github.com/graft-sh/graft/internal/pgtest"
)

// TestMain lets graft-bench broker, run by a test, start this test
// binary as its broker's process (graft-bench broker serve).
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "broker" && os.Args[2] == "serve" {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
	}
	os.Exit(m.Run())
}

// Bad flags are refused before anything starts, every problem in one
// line, and a DSN's password never appears in it.
func TestBrokerFlags(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"--duration", "0s"}, []string{"--duration 0s: want whole seconds from 1s to 1h"}},
		{[]string{"--duration", "1500ms"}, []string{"--duration 1.5s: want whole seconds"}},
		{[]string{"--rounds", "0"}, []string{"--rounds 0: want 1 to 20"}},
		{[]string{"--scale", "0"}, []string{"--scale 0: want 1 to 1000"}},
		{[]string{"--clients", "0"}, []string{"--clients 0: want 1 to 200"}},
		{[]string{"--clients", "4", "--threads", "5"}, []string{"--threads 5: want 1 to --clients (4)"}},
		{[]string{"--connects", "-1"}, []string{"--connects -1: want 0 (skip) to 100000"}},
		{[]string{"--idle", "5001"}, []string{"--idle 5001: want 0 (skip) to 5000"}},
		{[]string{"--broker-gomaxprocs", "-1"}, []string{"--broker-gomaxprocs -1: want 0 (Go's default) to 1024"}},
		{[]string{"--dsn", "postgres://u:s3cret@h:port/db"}, []string{"--dsn: not a PostgreSQL URL"}},
		// Every problem at once, in one line.
		{[]string{"--duration", "0s", "--rounds", "0", "--idle", "-1"}, []string{"--duration 0s", "--rounds 0", "--idle -1"}},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), append([]string{"broker"}, tt.args...), &stdout, &stderr, func(string) string { return "" })
		got := stderr.String()
		if code != 1 || !strings.HasPrefix(got, "graft-bench: broker: ") || strings.Count(got, "\n") != 1 {
			t.Errorf("broker %v: exit %d, stderr %q; want exit 1 and one line graft-bench: broker: ...", tt.args, code, got)
		}
		for _, w := range tt.want {
			if !strings.Contains(got, w) {
				t.Errorf("broker %v: stderr %q lacks %q", tt.args, got, w)
			}
		}
		if strings.Contains(got, "s3cret") {
			t.Errorf("broker %v: stderr %q shows the DSN's password", tt.args, got)
		}
		if stdout.Len() > 0 {
			t.Errorf("broker %v: stdout %q, want nothing", tt.args, stdout.String())
		}
	}
}

func TestParsePgbench(t *testing.T) {
	// pgbench 15's report, and the two tps lines of pgbench 13 and older.
	pg15 := `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 55131
number of failed transactions: 3 (0.005%)
latency average = 0.726 ms
initial connection time = 22.812 ms
tps = 11026.317205 (without initial connection time)
`
	pg13 := `number of transactions actually processed: 1000
latency average = 8.000 ms
tps = 990.000000 (including connections establishing)
tps = 1000.500000 (excluding connections establishing)
`
	tests := []struct {
		name string
		out  string
		want pgbenchResult
	}{
		{"pgbench 15", pg15, pgbenchResult{tps: 11026.317205, latencyMS: 0.726, transactions: 55131, failed: 3}},
		{"pgbench 13", pg13, pgbenchResult{tps: 1000.5, latencyMS: 8, transactions: 1000}},
	}
	for _, tt := range tests {
		got, err := parsePgbench(tt.out)
		if err != nil || got != tt.want {
			t.Errorf("%s: got %+v, %v; want %+v", tt.name, got, err, tt.want)
		}
	}
	if _, err := parsePgbench("pgbench: error: connection to server failed\n"); err == nil {
		t.Error("a report without tps parsed; want an error")
	}
}

func TestRoundSpread(t *testing.T) {
	tests := []struct {
		tps  []float64
		want float64
	}{
		{nil, 0},
		{[]float64{100}, 0},
		{[]float64{100, 100}, 0},
		{[]float64{33040, 18696}, (33040 - 18696) / 33040.0},
		{[]float64{80, 100, 90}, 0.2},
	}
	for _, tt := range tests {
		if got := roundSpread(tt.tps); got != tt.want {
			t.Errorf("roundSpread(%v) = %v, want %v", tt.tps, got, tt.want)
		}
	}
}

func TestProcessUsage(t *testing.T) {
	before, err := processUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if before.switches <= 0 {
		t.Errorf("processUsage = %+v, want context switches", before)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		// Spin until the clock ticks (1/100 s).
		if now, _ := processUsage(os.Getpid()); now.user+now.system > before.user+before.system {
			return
		}
	}
	t.Errorf("processUsage stayed at %+v over 5 s of spinning", before)
}

// The broker's process logs in for its clients with its credential,
// prints where it listens, and serves its Go memory.
func TestBrokerServe(t *testing.T) {
	pg := pgtest.Start(t)
	pg.CreateUser(t, "bench", "bench-pw")
	ctx, cancel := context.WithCancel(t.Context())
	r, w := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- serveBroker(ctx, w, pg.Host+":"+strconv.Itoa(pg.Port), "bench", "bench-pw") }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serveBroker: %v", err)
		}
	})
	addr, debug, err := readBrokerAddrs(bufio.NewReader(r))
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, r)
	cfg, err := connConfig(addr, "")
	if err != nil {
		t.Fatal(err)
	}
	cfg.User, cfg.Database = "anyone", "postgres"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect through the broker: %v", err)
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(ctx, "SELECT current_user").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res[0].Rows[0][0]); got != "bench" {
		t.Errorf("current_user through the broker = %q, want bench", got)
	}
	resp, err := http.Get("http://" + debug + "/memory")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m goMemory
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	if m.HeapBytes <= 0 || m.StackBytes <= 0 || m.Goroutines < 3 {
		t.Errorf("the broker's memory = %+v, want a heap, stacks and at least 3 goroutines (one session)", m)
	}
	if err := serveBroker(ctx, io.Discard, "127.0.0.1:1", "bench", ""); err == nil {
		t.Error("serveBroker without a password started; want an error")
	}
}

// The whole bench, short: PostgreSQL of its own, the broker's process
// (this test binary again, through TestMain), pgbouncer when installed.
func TestBrokerBench(t *testing.T) {
	if testing.Short() {
		t.Skip("runs pgbench for a few seconds")
	}
	bin := os.Getenv("GRAFT_PG_BINDIR")
	if bin == "" {
		bin = pgtest.DefaultBinDir
	}
	if _, err := os.Stat(filepath.Join(bin, "pgbench")); err != nil {
		dbproc.Unavailable(t, "graft-bench broker", "GRAFT_REQUIRE_PG", "no pgbench in "+bin)
	}
	pgbouncer := "/usr/sbin/pgbouncer"
	if _, err := os.Stat(pgbouncer); err != nil {
		pgbouncer = ""
	}
	var stdout, stderr bytes.Buffer
	args := []string{"broker", "--pg-bindir", bin, "--pgbouncer", pgbouncer, "--duration", "1s", "--rounds", "1", "--scale", "1",
		"--connects", "3", "--idle", "5", "--broker-gomaxprocs", "1", "-o", "json"}
	if code := run(t.Context(), args, &stdout, &stderr, func(string) string { return "" }); code != 0 {
		t.Fatalf("graft-bench %v: exit %d\n%s", args, code, stderr.String())
	}
	var res brokerResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("-o json: %v\n%s", err, stdout.String())
	}
	if len(res.Throughput) != 2 {
		t.Fatalf("throughput = %+v, want tpcb and select-only", res.Throughput)
	}
	for _, wl := range res.Throughput {
		if wl.Direct.TPS <= 0 || wl.Broker.TPS <= 0 || wl.RatioBroker <= 0 || wl.Broker.Transactions <= 0 || wl.Broker.CPUUSPerTx <= 0 || wl.Broker.SwitchesPerTx <= 0 {
			t.Errorf("%s: direct %+v, broker %+v, ratio %.2f; want tps and transactions through both", wl.Workload, wl.Direct, wl.Broker, wl.RatioBroker)
		}
		if (pgbouncer != "") != (wl.PgBouncer != nil) {
			t.Errorf("%s: pgbouncer %+v with --pgbouncer %q", wl.Workload, wl.PgBouncer, pgbouncer)
		}
	}
	if c := res.Connect; c == nil || c.Direct.N != 3 || c.Broker.N != 3 || c.Broker.P50MS <= 0 {
		t.Errorf("connect = %+v, want 3 connections each", c)
	}
	if i := res.Idle; i == nil || i.Connections != 5 || i.Broker.GoroutinesPer < 2 || i.Broker.FDsPerConn < 2 {
		t.Errorf("idle = %+v, want 5 connections with the broker's goroutines and descriptors", i)
	}
	if res.BrokerGOMAXPROCS != 1 {
		t.Errorf("broker_gomaxprocs = %d, want 1 (--broker-gomaxprocs 1)", res.BrokerGOMAXPROCS)
	}
	if res.MaxConnections < 5+8+20 {
		t.Errorf("max_connections = %d, want room for --idle and pgbench", res.MaxConnections)
	}
}
