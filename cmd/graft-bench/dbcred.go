package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/internal/cmdline"
)

// dbcredConfig is what graft-bench dbcred is asked to do.
type dbcredConfig struct {
	duration    time.Duration
	clients     []int
	leases      int
	fillClients int
	drain       int
	idle        time.Duration
	grant       string
	dsn         string
	pgBinDir    string
	graftd      string
	metricsURL  string
	profile     string
}

// Where the bench puts its role, as a DBA and an application would: the
// admin DSN and the role in the DBA's tree, the role shared into the
// application's, which issues from its copy.
const (
	benchDSNPath  = "/dba/bench/admin/postgres"
	benchRolePath = "/dba/bench/creds/ro"
	benchCopyPath = "/app/bench/replicated/creds/ro"
	benchApp      = "app:bench"
	benchDBA      = "user:graft-bench-dba"
	// benchTable is the table the users may read; benchGroup the role
	// that may (--grant group).
	benchTable = "graft_bench_items"
	benchGroup = "graft_bench_ro"
)

// The issue's goal for 8 concurrent clients: 80% of the 723/s its
// database did alone (pgbench), with p99 within 20 ms. API latency while
// a backlog of revocations drains: within 2 times its idle p99.
const (
	goalClients    = 8
	goalPerSec     = 580
	goalP99MS      = 20
	goalDrainRatio = 2
)

// maxBenchClients is graftd's default bound on the calls one principal
// has open at once (server.DefaultMaxCallsPerPrincipal): every client
// here is the same application.
const maxBenchClients = 32

// creationSQL is what the role runs to make a user: the README's example
// (--grant table), or the same with the privileges granted through a
// group role (--grant group). PostgreSQL keeps a table's grants in one
// pg_class row, which has no TOAST table: a table granted to each user
// stops taking new grantees at about 2,400 ("row is too big"), and two
// GRANTs on it at once fail ("tuple concurrently updated"). A membership
// is a row of its own in pg_auth_members.
func creationSQL(grant string) []string {
	create := `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`
	if grant == "table" {
		return []string{create, `GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}"`}
	}
	return []string{create, `GRANT "` + benchGroup + `" TO "{{name}}"`}
}

// dbcredResult is what it reports; -o json prints it as is.
type dbcredResult struct {
	// Mode is "dev" (a graftd started for the run, as its own process)
	// or "remote"; Graftd its address and GraftdFrom why that one: "own",
	// "--addr" or "GRAFT_ADDR".
	Mode       string `json:"mode"`
	Graftd     string `json:"graftd"`
	GraftdFrom string `json:"graftd_from"`
	// Postgres is "own" (started for the run in a temporary directory) or
	// "--dsn".
	Postgres        string   `json:"postgres"`
	PostgresVersion string   `json:"postgres_version"`
	Grant           string   `json:"grant"`
	CreationSQL     []string `json:"creation_sql"`
	DurationS       float64  `json:"duration_s"`
	// CPUs is this machine's, LoadStart and LoadEnd its load averages
	// (1, 5, 15 minutes) when the bench began and ended: other work on
	// the machine moves every figure.
	CPUs      int    `json:"cpus"`
	LoadStart string `json:"load_start,omitempty"`
	LoadEnd   string `json:"load_end,omitempty"`
	// Issue is one entry per --clients: graft's Issue and the floor.
	Issue     []issueLoad `json:"issue"`
	Goal      *issueGoal  `json:"goal,omitempty"`
	Live      *liveLeases `json:"live,omitempty"`
	Drain     *drainRun   `json:"drain,omitempty"`
	RevokeAll *revokeAll  `json:"revoke_all,omitempty"`
	Notes     []string    `json:"notes,omitempty"`
}

// latency is what a series of calls took: those that succeeded (N), and
// how many failed.
type latency struct {
	N      int     `json:"n"`
	Errors int     `json:"errors"`
	P50MS  float64 `json:"p50_ms"`
	P99MS  float64 `json:"p99_ms"`
	MaxMS  float64 `json:"max_ms"`
}

// throughput is a latency with the rate of the calls that succeeded.
type throughput struct {
	latency
	PerSec float64 `json:"per_sec"`
}

// issueLoad is one number of concurrent clients: graft's Issue over gRPC
// and the floor, the same statements through pgx, each for the duration.
type issueLoad struct {
	Clients int        `json:"clients"`
	Graft   throughput `json:"graft"`
	Floor   throughput `json:"floor"`
	// Ratio* are graft's figure over the floor's.
	RatioPerSec float64 `json:"ratio_per_sec"`
	RatioP50    float64 `json:"ratio_p50"`
	RatioP99    float64 `json:"ratio_p99"`
	// GraftdCPUMSPerIssue is graftd's CPU time over the run (its
	// process_cpu_seconds_total) for each issue; with graftd --dev it
	// includes its embedded etcd's and NATS's.
	GraftdCPUMSPerIssue float64 `json:"graftd_cpu_ms_per_issue,omitempty"`
}

// issueGoal is the issue's goal against the run with goalClients.
type issueGoal struct {
	Clients    int     `json:"clients"`
	WantPerSec float64 `json:"want_per_sec"`
	WantP99MS  float64 `json:"want_p99_ms"`
	PerSec     float64 `json:"per_sec"`
	P99MS      float64 `json:"p99_ms"`
	Met        bool    `json:"met"`
	// FloorShare is graft's rate as a share of the floor's in this run
	// (the goal's 580/s is 80% of the issue's database).
	FloorShare float64 `json:"floor_share"`
}

// liveLeases is graftd and etcd holding many live leases.
type liveLeases struct {
	// Leases are the role's live leases after the fill, Filled those the
	// fill issued (the rest came from the runs before).
	Leases     int     `json:"leases"`
	Filled     int     `json:"filled"`
	FillErrors int     `json:"fill_errors"`
	FillS      float64 `json:"fill_s"`
	FillPerSec float64 `json:"fill_per_sec"`
	// RSSFrom says where graftd's memory was read: its
	// /proc/<pid>/status (VmRSS), --metrics-url, or "" (not measured).
	RSSFrom     string  `json:"rss_from"`
	RSSBeforeMB float64 `json:"graftd_rss_before_mb"`
	RSSMB       float64 `json:"graftd_rss_mb"`
	// RSSAnonMB and RSSFileMB split RSSMB (from /proc only): anonymous
	// pages (the Go heap and stacks) and file pages (the binary, and the
	// etcd database file that bbolt maps). graftd --dev runs etcd and
	// NATS in its own process: both count for all three.
	RSSAnonMB      float64 `json:"graftd_rss_anon_mb,omitempty"`
	RSSFileMB      float64 `json:"graftd_rss_file_mb,omitempty"`
	EtcdDBFrom     string  `json:"etcd_db_from"`
	EtcdDBBeforeMB float64 `json:"etcd_db_before_mb"`
	EtcdDBMB       float64 `json:"etcd_db_mb"`
	// PGRoles is the rows of pg_roles after the fill.
	PGRoles int `json:"pg_roles"`
}

// drainRun is a set of leases that all expire at once, on top of the
// live ones, and graftd's API while the reaper drops their users.
type drainRun struct {
	// Leases is how many were issued (--drain, less any issue that
	// failed), IssueS how long that took.
	Leases int     `json:"leases"`
	IssueS float64 `json:"issue_s"`
	// IssuedLate is how many were issued after the common expiry (they
	// expire as they are issued).
	IssuedLate int `json:"issued_late"`
	// ReaperPaused says that the bench paused the reaper while it issued
	// them (its own graftd only), and resumed it ResumedAfterMS after
	// their common expiry (0 unless issuing took longer than planned):
	// lateness and the drain count from then.
	ReaperPaused   bool    `json:"reaper_paused"`
	ResumedAfterMS float64 `json:"resumed_after_ms"`
	// Gone is how many of their users were gone from pg_roles when the
	// bench stopped looking (every one, unless it gave up after a minute
	// without progress).
	Gone int `json:"gone"`
	// DrainS is from when they were all due (the common expiry, or the
	// reaper's resumption after it) until the last user was gone, PerSec
	// the users dropped a second over it.
	DrainS float64 `json:"drain_s"`
	PerSec float64 `json:"per_sec"`
	// Lateness is each user's, from its lease's expiry (or the
	// reaper's resumption, if later) until it was seen gone (pg_roles is
	// polled every PollMS).
	LateP50MS   float64 `json:"late_p50_ms"`
	LateP99MS   float64 `json:"late_p99_ms"`
	LateMaxMS   float64 `json:"late_max_ms"`
	FirstGoneMS float64 `json:"first_gone_ms"`
	PollMS      float64 `json:"poll_ms"`
	// Idle and During are graftd's API, as the application sees it: a KV
	// Get of its role copy every 20 ms and an Issue every 200 ms, at idle
	// (before the set is issued) and while its users are dropped.
	Idle   apiProbe `json:"idle"`
	During apiProbe `json:"during"`
	// Ratio* are During's p99 over Idle's; GoalMet whether the Get's is
	// within goalDrainRatio.
	RatioGetP99   float64 `json:"ratio_get_p99"`
	RatioIssueP99 float64 `json:"ratio_issue_p99"`
	GoalMet       bool    `json:"goal_met"`
}

// apiProbe is the probes' latencies over one window.
type apiProbe struct {
	S     float64 `json:"s"`
	Get   latency `json:"get"`
	Issue latency `json:"issue"`
	// GraftdCores is the CPU graftd used over the window (its
	// process_cpu_seconds_total), MachineBusy the share of the machine's
	// CPU time that was not idle.
	GraftdCores float64 `json:"graftd_cpu_cores"`
	MachineBusy float64 `json:"machine_busy"`
}

// revokeAll is revoking every lease of the role at the end, with one
// RevokePrefix.
type revokeAll struct {
	Revoked int     `json:"revoked"`
	Failed  int     `json:"failed"`
	S       float64 `json:"s"`
	PerSec  float64 `json:"per_sec"`
	// UsersLeft is how many users the database still had afterwards
	// (members of the group role; -1 with --grant table).
	UsersLeft int `json:"users_left"`
}

func (a *app) dbcredCmd() *cobra.Command {
	var dc dbcredConfig
	cmd := &cobra.Command{
		Use:   "dbcred",
		Short: "Measure issuing and revoking dynamic database credentials on PostgreSQL",
		Long: `Measure dynamic database credentials on PostgreSQL, as an application uses
them: a DBA puts the admin DSN and a role in /dba/bench and shares the role
to /app/bench/replicated/creds/ro; the application (app:bench, with a token
of its own) issues there. The role's creation_sql makes a LOGIN user with a
password and an expiry and gives it SELECT on a table the bench creates.

1. Issue: --clients concurrent clients (each its own connection) call
   Issue for --duration, once per number in --clients. The floor, in the
   same run: the same statements in one transaction straight through pgx,
   with as many connections, for as long. graft/floor ratios follow, and
   the issue's goal (8 clients: at least 580/s with p99 within 20 ms) is
   said met or not; it never fails the command.
2. Live leases: issue (--fill-clients at once) until --leases are live,
   then read graftd's memory (/proc/<pid>/status of its own graftd, or
   --metrics-url) and the size of its etcd's database file.
3. Drain: --drain leases that all expire at the same instant; the time
   until each user is gone from pg_roles (the reaper's lateness), and
   graftd's API (a KV Get and an Issue, as the application) while they
   are dropped against at idle (--idle, before they are issued).
4. Revoke all: one RevokePrefix of the role, timed; then the role, its
   share, its DSN and the tokens go, and what the bench started stops.

Without --dsn it starts PostgreSQL from --pg-bindir in a temporary
directory on a loopback port (as the postgres system user when run as
root), with PostgreSQL's durable defaults. Without --addr or GRAFT_ADDR it
starts --graftd (default: the graftd beside graft-bench) in dev mode as its
own process; with either it needs an admin token, and that graftd must
reach the database (--dsn, or this machine's loopback).

The floor sends each password in clear, so the server hashes it (SCRAM,
4,096 iterations), as pgbench or a DBA would; graftd hashes it itself and
sends the verifier: the same work, on this machine, done elsewhere.

--grant group (the default) grants a group role that may read the table;
--grant table runs the README's GRANT SELECT ON ALL TABLES IN SCHEMA public
TO each user. PostgreSQL keeps a table's grants in one catalog row: past
about 2,400 grantees it refuses more ("row is too big"), and two GRANTs on
one table at once fail ("tuple concurrently updated"). graftd's driver
runs such a transaction again, in turn with the others that met one; the
floor does not, so with --grant table and several clients expect errors
in the floor, and a fill that stops early.`,
		Example: `  make build && bin/graft-bench dbcred
  graft-bench dbcred --duration 5s --leases 10000 --drain 1000 -o json
  graft-bench dbcred --clients 1,4,8,16 --leases 0 --drain 0
  graft-bench dbcred --dsn 'postgres://admin:...@127.0.0.1:5432/app?sslmode=disable'`,
		Args: cmdline.Args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := dc.validate(cmd, a.Remote(cmd)); err != nil {
				return err
			}
			res, err := a.benchDBCred(cmd, dc)
			if err != nil {
				return err
			}
			return a.Emit(res, func(w io.Writer) error { return writeDBCred(w, res) })
		},
	}
	f := cmd.Flags()
	f.DurationVar(&dc.duration, "duration", 10*time.Second, "how long each issue run (graft and floor, at each --clients) lasts")
	f.IntSliceVar(&dc.clients, "clients", []int{1, 8}, "numbers of concurrent clients to issue with, one run each")
	f.IntVar(&dc.leases, "leases", 100000, "live leases to hold while graftd's memory and etcd's size are read (0: skip)")
	f.IntVar(&dc.fillClients, "fill-clients", 16, "concurrent clients issuing the --leases and --drain sets")
	f.IntVar(&dc.drain, "drain", 5000, "leases that expire at once for the drain (0: skip)")
	f.DurationVar(&dc.idle, "idle", 5*time.Second, "how long to measure graftd's API at idle, before the drain")
	f.StringVar(&dc.grant, "grant", "group", "how a user gets SELECT on the table: group (GRANT a group role) or table (GRANT SELECT ON ALL TABLES IN SCHEMA public)")
	f.StringVar(&dc.dsn, "dsn", "", "a PostgreSQL admin URL (superuser, or CREATEROLE) to measure instead of starting one")
	f.StringVar(&dc.pgBinDir, "pg-bindir", defaultPGBinDir, "where initdb and postgres are, without --dsn")
	f.StringVar(&dc.graftd, "graftd", "", "the graftd binary to start without --addr (default: graftd beside graft-bench)")
	f.StringVar(&dc.metricsURL, "metrics-url", "", "graftd's /metrics, for its memory, with --addr")
	f.StringVar(&dc.profile, "profile", "", "write CPU profiles over graft's issue run with the most clients to this directory: graftd.pprof (with --addr it needs --metrics-url and --enable-pprof), bench.pprof, and graftd's allocations before and after; and graftd-drain.pprof over the drain's first 3 s")
	return cmd
}

// validate reports every problem with the flags at once.
func (dc dbcredConfig) validate(cmd *cobra.Command, remote bool) error {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if dc.duration <= 0 || dc.duration > time.Hour {
		add("--duration %s: want a positive duration up to 1h, such as 10s", dc.duration)
	}
	if len(dc.clients) == 0 {
		add("--clients: want at least one number of clients, such as 1,8")
	}
	for i, n := range dc.clients {
		if n < 1 || n > maxBenchClients {
			add("--clients %d: want 1 to %d (graftd lets one application have %d calls open at once)", n, maxBenchClients, maxBenchClients)
		} else if slices.Contains(dc.clients[:i], n) {
			add("--clients %d: given twice", n)
		}
	}
	if dc.leases < 0 || dc.leases > 1000000 {
		add("--leases %d: want 0 (skip) to 1000000", dc.leases)
	}
	if dc.fillClients < 1 || dc.fillClients > maxBenchClients-2 {
		add("--fill-clients %d: want 1 to %d (graftd lets one application have %d calls open at once, and the drain's probes take 2)", dc.fillClients, maxBenchClients-2, maxBenchClients)
	}
	if dc.drain < 0 || dc.drain > 100000 {
		add("--drain %d: want 0 (skip) to 100000", dc.drain)
	}
	if dc.drain > 0 && dc.idle < time.Second {
		add("--idle %s: want 1s or more for the drain's idle figures", dc.idle)
	}
	if dc.grant != "group" && dc.grant != "table" {
		add("--grant %q: want group or table", dc.grant)
	}
	if dc.dsn != "" {
		if _, err := pgx.ParseConfig(dc.dsn); err != nil {
			// pgx's message may quote the DSN, password and all.
			add("--dsn: not a PostgreSQL URL or key=value connection string")
		}
		if cmd.Flags().Changed("pg-bindir") {
			add("--pg-bindir starts a PostgreSQL of the bench's own; --dsn measures yours: give one of them")
		}
	}
	if remote && cmd.Flags().Changed("graftd") {
		add("--graftd starts a graftd of the bench's own; --addr or GRAFT_ADDR measures that one: give one of them (GRAFT_ADDR= graft-bench dbcred for its own)")
	}
	if !remote && dc.metricsURL != "" {
		add("--metrics-url is for a graftd given with --addr; the bench reads its own graftd's memory from /proc")
	}
	if len(problems) > 0 {
		return fmt.Errorf("dbcred: %s", strings.Join(problems, "; "))
	}
	return nil
}

// goalOf checks the issue's goal against the run with goalClients.
func goalOf(runs []issueLoad) *issueGoal {
	for _, r := range runs {
		if r.Clients != goalClients {
			continue
		}
		return &issueGoal{
			Clients: goalClients, WantPerSec: goalPerSec, WantP99MS: goalP99MS,
			PerSec: r.Graft.PerSec, P99MS: r.Graft.P99MS,
			Met:        r.Graft.PerSec >= goalPerSec && r.Graft.P99MS <= goalP99MS,
			FloorShare: r.RatioPerSec,
		}
	}
	return nil
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return math.Round(a/b*100) / 100
}

func writeDBCred(w io.Writer, r dbcredResult) error {
	var b strings.Builder
	fmt.Fprintf(&b, "dynamic credentials (%s)\n", r.Mode)
	if r.GraftdFrom == "own" {
		fmt.Fprintf(&b, "  graftd:     its own graftd --dev at %s, as a process, in a temporary directory\n", r.Graftd)
	} else {
		fmt.Fprintf(&b, "  graftd:     the graftd at %s (from %s)\n", r.Graftd, r.GraftdFrom)
	}
	if r.Postgres == "own" {
		fmt.Fprintf(&b, "  postgres:   its own PostgreSQL %s on loopback, in a temporary directory (durable defaults)\n", r.PostgresVersion)
	} else {
		fmt.Fprintf(&b, "  postgres:   PostgreSQL %s from --dsn\n", r.PostgresVersion)
	}
	fmt.Fprintf(&b, "  statements: %s (--grant %s)\n", strings.Join(r.CreationSQL, "; "), r.Grant)
	fmt.Fprintf(&b, "  machine:    %d CPUs; load average %s at the start, %s at the end\n", r.CPUs, r.LoadStart, r.LoadEnd)
	fmt.Fprintf(&b, "  issue, %.0f s each:        per second    p50 ms    p99 ms    max ms   errors\n", r.DurationS)
	row := func(label string, t throughput) {
		fmt.Fprintf(&b, "    %-24s %10.0f %9.2f %9.2f %9.2f %8d\n", label, t.PerSec, t.P50MS, t.P99MS, t.MaxMS, t.Errors)
	}
	for _, run := range r.Issue {
		clients := fmt.Sprintf("%d client(s)", run.Clients)
		row(clients+", graft", run.Graft)
		row(clients+", floor", run.Floor)
		fmt.Fprintf(&b, "    %-24s %10.2f %9.2f %9.2f\n", clients+", graft/floor", run.RatioPerSec, run.RatioP50, run.RatioP99)
		if run.GraftdCPUMSPerIssue > 0 {
			fmt.Fprintf(&b, "    %-24s %.2f ms CPU per issue\n", clients+", graftd", run.GraftdCPUMSPerIssue)
		}
	}
	if g := r.Goal; g != nil {
		fmt.Fprintf(&b, "  goal, %d clients ≥ %.0f/s with p99 ≤ %.0f ms: %s (%.0f/s, p99 %.2f ms; %.0f%% of the floor's rate)\n",
			g.Clients, g.WantPerSec, g.WantP99MS, metOrNot(g.Met), g.PerSec, g.P99MS, g.FloorShare*100)
	}
	if l := r.Live; l != nil {
		fmt.Fprintf(&b, "  live leases: %d (%d issued by the fill in %.1f s, %.0f/s; %d failed)\n", l.Leases, l.Filled, l.FillS, l.FillPerSec, l.FillErrors)
		if l.RSSFrom != "" {
			fmt.Fprintf(&b, "    graftd RSS:  %.1f MB before any lease, %.1f MB with them (%s)\n", l.RSSBeforeMB, l.RSSMB, l.RSSFrom)
			if l.RSSAnonMB > 0 {
				fmt.Fprintf(&b, "                 of which %.1f MB anonymous (heap, stacks) and %.1f MB file pages (the binary, etcd's mapped database)\n", l.RSSAnonMB, l.RSSFileMB)
			}
		} else {
			fmt.Fprintf(&b, "    graftd RSS:  not measured (a remote graftd: give --metrics-url)\n")
		}
		if l.EtcdDBFrom != "" {
			fmt.Fprintf(&b, "    etcd db:     %.1f MB before any lease, %.1f MB with them (%s)\n", l.EtcdDBBeforeMB, l.EtcdDBMB, l.EtcdDBFrom)
		} else {
			fmt.Fprintf(&b, "    etcd db:     not measured (a remote graftd's etcd)\n")
		}
		fmt.Fprintf(&b, "    pg_roles:    %d rows\n", l.PGRoles)
	}
	if d := r.Drain; d != nil && d.Leases == 0 {
		fmt.Fprintf(&b, "  drain: no lease could be issued (see the notes)\n")
	} else if d != nil {
		fmt.Fprintf(&b, "  drain: %d leases expiring at once (issued in %.1f s", d.Leases, d.IssueS)
		if d.ReaperPaused {
			fmt.Fprintf(&b, ", the reaper paused meanwhile and resumed %.1f s after their expiry", d.ResumedAfterMS/1000)
		}
		fmt.Fprintf(&b, ")\n")
		fmt.Fprintf(&b, "    users gone:  %d, the last %.2f s after they were due (%.0f/s); the first after %.0f ms\n", d.Gone, d.DrainS, d.PerSec, d.FirstGoneMS)
		fmt.Fprintf(&b, "    lateness:    p50 %.0f ms, p99 %.0f ms, max %.0f ms (pg_roles polled every %.0f ms)\n", d.LateP50MS, d.LateP99MS, d.LateMaxMS, d.PollMS)
		fmt.Fprintf(&b, "    API p99:     Get %.2f ms idle, %.2f ms draining (%.2f×); Issue %.2f ms idle, %.2f ms draining (%.2f×)\n",
			d.Idle.Get.P99MS, d.During.Get.P99MS, d.RatioGetP99, d.Idle.Issue.P99MS, d.During.Issue.P99MS, d.RatioIssueP99)
		fmt.Fprintf(&b, "    API p50:     Get %.2f ms idle, %.2f ms draining; Issue %.2f ms idle, %.2f ms draining\n",
			d.Idle.Get.P50MS, d.During.Get.P50MS, d.Idle.Issue.P50MS, d.During.Issue.P50MS)
		fmt.Fprintf(&b, "    CPU:         graftd %.2f cores idle, %.2f draining; the machine %.0f%% busy idle, %.0f%% draining\n",
			d.Idle.GraftdCores, d.During.GraftdCores, d.Idle.MachineBusy*100, d.During.MachineBusy*100)
		fmt.Fprintf(&b, "    goal, Get p99 draining within %d× idle: %s\n", goalDrainRatio, metOrNot(d.GoalMet))
	}
	if ra := r.RevokeAll; ra != nil {
		left := "users left unknown (--grant table)"
		if ra.UsersLeft >= 0 {
			left = fmt.Sprintf("%d users left", ra.UsersLeft)
		}
		fmt.Fprintf(&b, "  revoke all:  %d leases in %.1f s (%.0f/s), %d failed, %s\n", ra.Revoked, ra.S, ra.PerSec, ra.Failed, left)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func metOrNot(met bool) string {
	if met {
		return "met"
	}
	return "not met"
}
