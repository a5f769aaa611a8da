package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/internal/cmdline"
)

// brokerConfig is what graft-bench broker is asked to do.
type brokerConfig struct {
	duration  time.Duration
	rounds    int
	scale     int
	clients   int
	threads   int
	connects  int
	idle      int
	dsn       string
	pgBinDir  string
	pgbouncer string
	profile   string
	// gomaxprocs is the broker process's GOMAXPROCS (0: Go's default).
	gomaxprocs int
}

// The goals: through the broker, TPC-B at least 90% and
// select-only at least 70% of the database's own tps, each ahead of
// pgbouncer in session mode measured in the same run.
const (
	goalTPCB       = 0.90
	goalSelectOnly = 0.70
)

// The workloads: pgbench's built-in scripts.
const (
	workloadTPCB       = "tpcb"        // tpcb-like: 5 statements in a transaction, 7 round trips
	workloadSelectOnly = "select-only" // -S: one SELECT by primary key
)

// The targets pgbench connects to.
const (
	targetDirect    = "direct"
	targetBroker    = "broker"
	targetPgBouncer = "pgbouncer"
)

// brokerResult is what it reports; -o json prints it as is.
type brokerResult struct {
	// Postgres is "own" (started for the run in a temporary directory) or
	// "--dsn".
	Postgres         string  `json:"postgres"`
	PostgresVersion  string  `json:"postgres_version"`
	MaxConnections   int     `json:"max_connections"`
	PgBouncerVersion string  `json:"pgbouncer_version,omitempty"`
	Scale            int     `json:"scale"`
	Clients          int     `json:"clients"`
	Threads          int     `json:"threads"`
	DurationS        float64 `json:"duration_s"`
	Rounds           int     `json:"rounds"`
	CPUs             int     `json:"cpus"`
	// BrokerGOMAXPROCS is the broker process's GOMAXPROCS.
	BrokerGOMAXPROCS int `json:"broker_gomaxprocs"`
	// LoadStart and LoadEnd are the machine's load averages (1, 5, 15
	// minutes) when the run started and ended.
	LoadStart  string         `json:"load_start"`
	LoadEnd    string         `json:"load_end"`
	Throughput []workloadRuns `json:"throughput"`
	Connect    *connectSetup  `json:"connect,omitempty"`
	Idle       *idleConns     `json:"idle,omitempty"`
	Profiles   []string       `json:"profiles,omitempty"`
	Notes      []string       `json:"notes,omitempty"`
}

// workloadRuns is one pgbench script against each target, --rounds times.
type workloadRuns struct {
	Workload  string      `json:"workload"`
	Direct    *targetRuns `json:"direct"`
	Broker    *targetRuns `json:"broker"`
	PgBouncer *targetRuns `json:"pgbouncer,omitempty"`
	// Ratio* are the target's mean tps over direct's.
	RatioBroker    float64 `json:"ratio_broker"`
	RatioPgBouncer float64 `json:"ratio_pgbouncer,omitempty"`
	// Goal is the share of direct's tps the broker must reach, GoalMet
	// whether it did and was ahead of pgbouncer (when measured).
	Goal    float64 `json:"goal"`
	GoalMet bool    `json:"goal_met"`
}

// targetRuns is one target's pgbench runs of a workload.
type targetRuns struct {
	// TPS is the mean of the rounds' tps (pgbench's, without the initial
	// connection time); RoundsTPS each round's.
	TPS       float64   `json:"tps"`
	RoundsTPS []float64 `json:"rounds_tps"`
	LatencyMS float64   `json:"latency_ms"`
	// Transactions and Failed add up the rounds'.
	Transactions int64 `json:"transactions"`
	Failed       int64 `json:"failed"`
	// CPUUSPerTx is the CPU time (user and system) of the process in the
	// middle, the broker or pgbouncer, per transaction, in microseconds;
	// CPUCores that time over the runs' length, CPUSystemShare the part
	// of it spent in the kernel, SwitchesPerTx its threads' context
	// switches per transaction. Direct has none of them.
	CPUUSPerTx     float64 `json:"cpu_us_per_tx,omitempty"`
	CPUCores       float64 `json:"cpu_cores,omitempty"`
	CPUSystemShare float64 `json:"cpu_system_share,omitempty"`
	SwitchesPerTx  float64 `json:"switches_per_tx,omitempty"`
}

// connectSetup is the time from dialling to ReadyForQuery, one
// connection at a time, the targets taking turns.
type connectSetup struct {
	N         int      `json:"n"`
	Direct    latency  `json:"direct"`
	Broker    latency  `json:"broker"`
	PgBouncer *latency `json:"pgbouncer,omitempty"`
}

// idleConns is the memory that idle client connections cost the broker
// and pgbouncer, each measured on a process started for it.
type idleConns struct {
	Connections int       `json:"connections"`
	Broker      idleCost  `json:"broker"`
	PgBouncer   *idleCost `json:"pgbouncer,omitempty"`
}

// idleCost is one process's memory before and with the idle connections.
type idleCost struct {
	RSSBeforeMB  float64 `json:"rss_before_mb"`
	RSSMB        float64 `json:"rss_mb"`
	RSSPerConnKB float64 `json:"rss_per_conn_kb"`
	// Go's own accounting after a collection (the broker only): live
	// heap and goroutine stacks per connection, and goroutines.
	HeapPerConnKB  float64 `json:"heap_per_conn_kb,omitempty"`
	StackPerConnKB float64 `json:"stack_per_conn_kb,omitempty"`
	GoroutinesPer  float64 `json:"goroutines_per_conn,omitempty"`
	FDsPerConn     float64 `json:"fds_per_conn"`
}

func (a *app) brokerCmd() *cobra.Command {
	var bc brokerConfig
	cmd := &cobra.Command{
		Use:   "broker",
		Short: "Measure graft-agent's PostgreSQL credential broker against the database alone and pgbouncer",
		Long: `Measure the credential broker (package broker, graft-agent's broker:
listeners) with pgbench: the database alone, through the broker, and
through pgbouncer in session mode, on this machine's loopback.

1. Throughput: pgbench -c --clients -j --threads -T --duration, TPC-B (its
   default script) then select-only (-S), against direct, broker and
   pgbouncer in turn, --rounds times, so that the machine's drift hits all
   three alike. It prints each one's tps (the mean of the rounds), the
   ratios broker/direct and pgbouncer/direct, and whether the goal is met:
   TPC-B at least 90% and select-only at least 70% of direct, each ahead of
   pgbouncer. A goal never fails the command.
2. CPU: the broker's and pgbouncer's CPU time (user and system, from
   /proc) over their runs, per transaction.
3. Connection setup: --connects connections one at a time, opened and
   closed, the targets taking turns (pgx's pgconn, from dialling until the
   session is ready): the direct ones and the broker's log in with SCRAM;
   pgbouncer hands out a server connection from its pool.
4. Idle connections: --idle connections held open through a broker started
   for it, then through a pgbouncer started for it: the resident memory
   each gained, per connection (and the broker's Go heap and stacks).

The broker runs as a process of its own (graft-bench broker serve, this
program again): a broker.Postgres as graft-agent builds one, with a static
credential, plaintext to the database. pgbouncer (--pgbouncer; Debian's
package, 'make bench-broker' installs it) trusts its clients and logs in
with the user's password from its auth_file (SCRAM with the server), as
the broker does; connection logging is off in both. Both run as the
postgres system user when graft-bench runs as root.

Without --dsn it starts PostgreSQL from --pg-bindir in a temporary
directory on a loopback port, with PostgreSQL's durable defaults and
max_connections raised for --idle, SCRAM-SHA-256 over TCP. With --dsn (a
superuser URL) it measures that server, which must allow --idle more
connections; either way it creates a login user with a password and a
database owned by it, pgbench -i's them at --scale and drops them at the
end.`,
		Example: `  make bench-broker
  graft-bench broker --duration 15s --rounds 2 --scale 10 -o json
  graft-bench broker --duration 5s --rounds 1 --idle 100 --profile /tmp/broker-prof
  graft-bench broker --dsn 'postgres://postgres:...@127.0.0.1:5432/postgres?sslmode=disable'`,
		Args: cmdline.Args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := bc.validate(cmd); err != nil {
				return err
			}
			res, err := a.benchBroker(cmd, bc)
			if err != nil {
				return err
			}
			return a.Emit(res, func(w io.Writer) error { return writeBroker(w, res) })
		},
	}
	f := cmd.Flags()
	f.DurationVar(&bc.duration, "duration", 15*time.Second, "how long each pgbench run lasts (whole seconds)")
	f.IntVar(&bc.rounds, "rounds", 2, "how many times each workload runs against each target, interleaved")
	f.IntVar(&bc.scale, "scale", 10, "pgbench -i's scale factor (100,000 accounts each)")
	f.IntVar(&bc.clients, "clients", 8, "pgbench's concurrent clients (-c)")
	f.IntVar(&bc.threads, "threads", 2, "pgbench's threads (-j)")
	f.IntVar(&bc.connects, "connects", 500, "connections opened one at a time per target for the setup time (0: skip)")
	f.IntVar(&bc.idle, "idle", 500, "idle connections held open for the memory per connection (0: skip)")
	f.StringVar(&bc.dsn, "dsn", "", "a PostgreSQL superuser URL to measure instead of starting one")
	f.StringVar(&bc.pgBinDir, "pg-bindir", defaultPGBinDir, "where initdb, postgres and pgbench are")
	f.StringVar(&bc.pgbouncer, "pgbouncer", "/usr/sbin/pgbouncer", "the pgbouncer to compare with ('' to measure without it)")
	f.IntVar(&bc.gomaxprocs, "broker-gomaxprocs", 0, "the broker process's GOMAXPROCS (0: Go's default, the CPUs it may use)")
	f.StringVar(&bc.profile, "profile", "", "after the rounds, run each workload once more through the broker, not counted, with the broker's CPU profile written to this directory (broker-tpcb.pprof, broker-select-only.pprof)")
	cmd.AddCommand(a.brokerServeCmd())
	return cmd
}

// validate reports every problem with the flags at once.
func (bc brokerConfig) validate(cmd *cobra.Command) error {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if bc.duration < time.Second || bc.duration > time.Hour || bc.duration%time.Second != 0 {
		add("--duration %s: want whole seconds from 1s to 1h, such as 15s (pgbench -T)", bc.duration)
	}
	if bc.rounds < 1 || bc.rounds > 20 {
		add("--rounds %d: want 1 to 20", bc.rounds)
	}
	if bc.scale < 1 || bc.scale > 1000 {
		add("--scale %d: want 1 to 1000", bc.scale)
	}
	if bc.clients < 1 || bc.clients > 200 {
		add("--clients %d: want 1 to 200", bc.clients)
	}
	if bc.threads < 1 || bc.threads > bc.clients {
		add("--threads %d: want 1 to --clients (%d)", bc.threads, bc.clients)
	}
	if bc.connects < 0 || bc.connects > 100000 {
		add("--connects %d: want 0 (skip) to 100000", bc.connects)
	}
	if bc.idle < 0 || bc.idle > 5000 {
		add("--idle %d: want 0 (skip) to 5000", bc.idle)
	}
	if bc.gomaxprocs < 0 || bc.gomaxprocs > 1024 {
		add("--broker-gomaxprocs %d: want 0 (Go's default) to 1024", bc.gomaxprocs)
	}
	if bc.dsn != "" {
		if _, err := pgx.ParseConfig(bc.dsn); err != nil {
			// pgx's message may quote the DSN, password and all.
			add("--dsn: not a PostgreSQL URL or key=value connection string")
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("broker: %s", strings.Join(problems, "; "))
	}
	return nil
}

func writeBroker(w io.Writer, r brokerResult) error {
	var b strings.Builder
	fmt.Fprintf(&b, "credential broker: pgbench -c %d -j %d -T %.0f, scale %d, %d round(s) of direct, broker, pgbouncer in turn\n",
		r.Clients, r.Threads, r.DurationS, r.Scale, r.Rounds)
	if r.Postgres == "own" {
		fmt.Fprintf(&b, "  postgres:   its own PostgreSQL %s on loopback (durable defaults, max_connections %d), SCRAM-SHA-256 over TCP\n", r.PostgresVersion, r.MaxConnections)
	} else {
		fmt.Fprintf(&b, "  postgres:   PostgreSQL %s from --dsn (max_connections %d)\n", r.PostgresVersion, r.MaxConnections)
	}
	fmt.Fprintf(&b, "  broker:     graft-bench broker serve, a process of its own (GOMAXPROCS %d), static credential, plaintext to the database\n", r.BrokerGOMAXPROCS)
	if r.PgBouncerVersion != "" {
		fmt.Fprintf(&b, "  pgbouncer:  %s, session mode, clients trusted, logs in with the user's password\n", r.PgBouncerVersion)
	} else {
		fmt.Fprintf(&b, "  pgbouncer:  not measured\n")
	}
	fmt.Fprintf(&b, "  load:       %s at the start, %s at the end (%d CPUs)\n", r.LoadStart, r.LoadEnd, r.CPUs)
	fmt.Fprintf(&b, "  tps                   direct     broker  pgbouncer  broker/direct  pgbouncer/direct  goal\n")
	for _, wl := range r.Throughput {
		pgb, pgbRatio := "-", "-"
		if wl.PgBouncer != nil {
			pgb, pgbRatio = fmt.Sprintf("%.0f", wl.PgBouncer.TPS), fmt.Sprintf("%.2f", wl.RatioPgBouncer)
		}
		ahead := ""
		if wl.PgBouncer != nil {
			ahead = " and ahead of pgbouncer"
		}
		fmt.Fprintf(&b, "    %-16s %10.0f %10.0f %10s %14.2f %17s  ≥ %.2f%s: %s\n",
			wl.Workload, wl.Direct.TPS, wl.Broker.TPS, pgb, wl.RatioBroker, pgbRatio, wl.Goal, ahead, metOrNot(wl.GoalMet))
		rounds := func(t *targetRuns) string {
			if t == nil {
				return "-"
			}
			s := make([]string, len(t.RoundsTPS))
			for i, v := range t.RoundsTPS {
				s[i] = fmt.Sprintf("%.0f", v)
			}
			return strings.Join(s, " ")
		}
		fmt.Fprintf(&b, "      rounds:  direct %s; broker %s; pgbouncer %s\n", rounds(wl.Direct), rounds(wl.Broker), rounds(wl.PgBouncer))
		fmt.Fprintf(&b, "      latency: direct %.3f ms, broker %.3f ms", wl.Direct.LatencyMS, wl.Broker.LatencyMS)
		if wl.PgBouncer != nil {
			fmt.Fprintf(&b, ", pgbouncer %.3f ms", wl.PgBouncer.LatencyMS)
		}
		fmt.Fprintf(&b, " (pgbench's average per transaction)\n")
		cpu := func(t *targetRuns) string {
			return fmt.Sprintf("%.1f µs per transaction (%.2f cores, %.0f%% in the kernel, %.2f context switches)", t.CPUUSPerTx, t.CPUCores, t.CPUSystemShare*100, t.SwitchesPerTx)
		}
		fmt.Fprintf(&b, "      CPU:     broker %s", cpu(wl.Broker))
		if wl.PgBouncer != nil {
			fmt.Fprintf(&b, "\n               pgbouncer %s", cpu(wl.PgBouncer))
		}
		fmt.Fprintf(&b, "\n")
		if failed := wl.Direct.Failed + wl.Broker.Failed; failed > 0 || (wl.PgBouncer != nil && wl.PgBouncer.Failed > 0) {
			fmt.Fprintf(&b, "      failed transactions: direct %d, broker %d", wl.Direct.Failed, wl.Broker.Failed)
			if wl.PgBouncer != nil {
				fmt.Fprintf(&b, ", pgbouncer %d", wl.PgBouncer.Failed)
			}
			fmt.Fprintf(&b, "\n")
		}
	}
	if c := r.Connect; c != nil {
		fmt.Fprintf(&b, "  connection setup, %d each, one at a time:  p50 ms    p99 ms    max ms   errors\n", c.N)
		row := func(label string, l latency) {
			fmt.Fprintf(&b, "    %-38s %9.3f %9.3f %9.3f %8d\n", label, l.P50MS, l.P99MS, l.MaxMS, l.Errors)
		}
		row("direct (SCRAM)", c.Direct)
		row("broker (SCRAM to the database)", c.Broker)
		if c.PgBouncer != nil {
			row("pgbouncer (a pooled server connection)", *c.PgBouncer)
		}
	}
	if i := r.Idle; i != nil {
		fmt.Fprintf(&b, "  idle connections: %d held open through each\n", i.Connections)
		c := i.Broker
		fmt.Fprintf(&b, "    broker:     RSS %.1f MB → %.1f MB, %.1f KB per connection (Go heap %.1f KB, stacks %.1f KB, %.0f goroutines, %.0f fds)\n",
			c.RSSBeforeMB, c.RSSMB, c.RSSPerConnKB, c.HeapPerConnKB, c.StackPerConnKB, c.GoroutinesPer, c.FDsPerConn)
		if p := i.PgBouncer; p != nil {
			fmt.Fprintf(&b, "    pgbouncer:  RSS %.1f MB → %.1f MB, %.1f KB per connection (%.0f fds)\n", p.RSSBeforeMB, p.RSSMB, p.RSSPerConnKB, p.FDsPerConn)
		}
	}
	for _, p := range r.Profiles {
		fmt.Fprintf(&b, "  profile: %s\n", p)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
