package main

// The phases of graft-bench broker: the database and its pgbench tables,
// the broker's process and pgbouncer, the interleaved pgbench rounds,
// connection setup one at a time, and idle connections' memory.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/internal/dbproc"
	"github.com/graft-sh/graft/internal/pgtest"
)

// The login user and database the bench creates, owned by it.
const (
	brokerBenchUser = "graft_bench_broker"
	brokerBenchDB   = "graft_bench_broker"
)

// brokerBench is one run's setup and what it must undo.
type brokerBench struct {
	bc      brokerConfig
	res     *brokerResult
	out     io.Writer
	start   time.Time
	admin   string // the superuser's DSN
	backend string // the database's host:port
	// password is the bench user's; the broker and pgbouncer log in with it.
	password  string
	brk       *brokerProcess
	pgb       *pgbouncerProcess
	pgbouncer string // the pgbouncer binary, "" without one
}

func (b *brokerBench) say(format string, args ...any) {
	fmt.Fprintf(b.out, "graft-bench broker [%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

// target is where pgbench connects: host, port and the password to give
// (direct only), and the process in the middle whose CPU is counted.
type target struct {
	name, addr, password string
	pid                  func() int
}

func (a *app) benchBroker(cmd *cobra.Command, bc brokerConfig) (brokerResult, error) {
	ctx := cmd.Context()
	res := brokerResult{Postgres: "own", Scale: bc.scale, Clients: bc.clients, Threads: bc.threads,
		DurationS: bc.duration.Seconds(), Rounds: bc.rounds, CPUs: runtime.NumCPU(), LoadStart: loadAverage()}
	b := &brokerBench{bc: bc, res: &res, out: cmd.ErrOrStderr(), start: time.Now(), password: dbproc.RandomHex(16), pgbouncer: bc.pgbouncer}
	pgbench := filepath.Join(bc.pgBinDir, "pgbench")
	if _, err := os.Stat(pgbench); err != nil {
		return res, fmt.Errorf("broker: pgbench is not in %s: install postgresql-15 (its client), or give --pg-bindir", bc.pgBinDir)
	}
	if b.pgbouncer != "" {
		v, err := pgbouncerVersion(b.pgbouncer)
		if err != nil {
			return res, fmt.Errorf("broker: %s --version: %w (apt-get install pgbouncer, which make bench-broker does; or --pgbouncer '' to measure without it)", b.pgbouncer, err)
		}
		res.PgBouncerVersion = v
	}
	// Each idle connection holds a descriptor here, two in the broker.
	if err := raiseOpenFiles(3 * bc.idle); err != nil {
		return res, fmt.Errorf("broker: %w", err)
	}

	b.admin = bc.dsn
	if b.admin == "" {
		b.say("starting PostgreSQL from %s in a temporary directory", bc.pgBinDir)
		pg, err := startPostgres(ctx, "broker", bc.pgBinDir)
		if err != nil {
			return res, err
		}
		defer func() { b.say("stopping PostgreSQL"); pg.stop() }()
		b.admin = pg.dsn
		if err := b.roomForIdle(ctx, pg); err != nil {
			return res, err
		}
	} else {
		res.Postgres = "--dsn"
	}
	cfg, err := pgconn.ParseConfig(b.admin)
	if err != nil {
		return res, errors.New("broker: the superuser DSN does not parse")
	}
	if strings.HasPrefix(cfg.Host, "/") {
		return res, errors.New("broker: --dsn names a unix socket: the broker and pgbouncer reach the database over TCP, give its host and port")
	}
	b.backend = net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
	if err := b.setupDatabase(ctx); err != nil {
		return res, err
	}
	defer b.cleanupDatabase()

	direct := target{name: targetDirect, addr: b.backend, password: b.password, pid: func() int { return 0 }}
	b.say("pgbench -i -s %d", bc.scale)
	if _, err := b.pgbench(ctx, direct, "-i", "-q", "-s", strconv.Itoa(bc.scale)); err != nil {
		return res, err
	}

	b.say("starting the broker (graft-bench broker serve) and pgbouncer")
	if b.brk, err = startBrokerProcess(ctx, b.backend, brokerBenchUser, b.password, b.bc.gomaxprocs); err != nil {
		return res, err
	}
	defer func() { b.brk.stop() }()
	m, err := b.brk.goMemory(ctx)
	if err != nil {
		return res, fmt.Errorf("broker: the broker's process: %w", err)
	}
	res.BrokerGOMAXPROCS = m.GOMAXPROCS
	targets := []target{direct, {name: targetBroker, addr: b.brk.addr, pid: func() int { return b.brk.pid() }}}
	if b.pgbouncer != "" {
		if b.pgb, err = b.startPgBouncer(ctx, bc.clients); err != nil {
			return res, err
		}
		defer func() { b.pgb.stop() }()
		targets = append(targets, target{name: targetPgBouncer, addr: b.pgb.addr, pid: func() int { return b.pgb.pid() }})
	}

	if err := b.throughput(ctx, targets); err != nil {
		return res, err
	}
	if bc.profile != "" {
		if err := b.profileBroker(ctx, targets[1]); err != nil {
			return res, err
		}
	}
	if bc.connects > 0 {
		b.say("connection setup: %d connections one at a time through each", bc.connects)
		if res.Connect, err = b.connectSetup(ctx, targets); err != nil {
			return res, err
		}
	}
	if bc.idle > 0 {
		if res.Idle, err = b.idleConns(ctx); err != nil {
			return res, err
		}
	}
	res.LoadEnd = loadAverage()
	if load, err := strconv.ParseFloat(strings.Fields(res.LoadStart + " 0")[0], 64); err == nil && load > float64(res.CPUs)/2 {
		res.Notes = append(res.Notes, fmt.Sprintf("the machine was busy when the run started (load %s on %d CPUs): the figures may be low and their ratios off; run again on a quiet machine", res.LoadStart, res.CPUs))
	}
	return res, nil
}

// roomForIdle raises the server's max_connections, and restarts it, when
// --idle connections and pgbench's would not fit.
func (b *brokerBench) roomForIdle(ctx context.Context, pg *benchPostgres) error {
	want := b.bc.idle + b.bc.clients + 20
	conn, err := pgx.Connect(ctx, pg.dsn)
	if err != nil {
		return fmt.Errorf("broker: connect to PostgreSQL: %w", err)
	}
	defer conn.Close(context.Background())
	var have int
	if err := conn.QueryRow(ctx, "SELECT current_setting('max_connections')::int").Scan(&have); err != nil {
		return fmt.Errorf("broker: max_connections: %w", err)
	}
	if have >= want {
		return nil
	}
	if _, err := conn.Exec(ctx, "ALTER SYSTEM SET max_connections = "+strconv.Itoa(want)); err != nil {
		return fmt.Errorf("broker: raise max_connections: %w", err)
	}
	conn.Close(context.Background())
	cred, err := dbproc.RunAs("postgres", "adduser --system --group postgres")
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	u, err := pgconn.ParseConfig(pg.dsn)
	if err != nil {
		return err
	}
	b.say("restarting PostgreSQL with max_connections %d", want)
	pg.proc.Stop(fastShutdown)
	if pg.proc, err = pg.start(ctx, b.bc.pgBinDir, cred, int(u.Port)); err != nil {
		return fmt.Errorf("broker: restart PostgreSQL: %w\n%s", err, dbproc.Tail(pg.log(), 20))
	}
	return nil
}

// setupDatabase creates the login user, with a password (SCRAM, the
// server's default), and its database.
func (b *brokerBench) setupDatabase(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, b.admin)
	if err != nil {
		return fmt.Errorf("broker: connect to PostgreSQL: %w", err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version'), current_setting('max_connections')::int").Scan(&b.res.PostgresVersion, &b.res.MaxConnections); err != nil {
		return fmt.Errorf("broker: server version: %w", err)
	}
	for _, sql := range []string{
		// Left by a run that died.
		"DROP DATABASE IF EXISTS " + pgtest.Ident(brokerBenchDB) + " WITH (FORCE)",
		"DROP ROLE IF EXISTS " + pgtest.Ident(brokerBenchUser),
		"CREATE ROLE " + pgtest.Ident(brokerBenchUser) + " LOGIN PASSWORD " + pgtest.Literal(b.password),
		"CREATE DATABASE " + pgtest.Ident(brokerBenchDB) + " OWNER " + pgtest.Ident(brokerBenchUser),
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("broker: %s: %w", strings.ReplaceAll(sql, b.password, "<password>"), err)
		}
	}
	return nil
}

// cleanupDatabase drops what setupDatabase created.
func (b *brokerBench) cleanupDatabase() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, b.admin)
	if err != nil {
		b.say("cannot drop database %s and user %s: %v", brokerBenchDB, brokerBenchUser, err)
		return
	}
	defer conn.Close(context.Background())
	for _, sql := range []string{
		"DROP DATABASE IF EXISTS " + pgtest.Ident(brokerBenchDB) + " WITH (FORCE)",
		"DROP ROLE IF EXISTS " + pgtest.Ident(brokerBenchUser),
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			b.say("%s: %v", sql, err)
		}
	}
}

func (b *brokerBench) startPgBouncer(ctx context.Context, clients int) (*pgbouncerProcess, error) {
	host, port, _ := net.SplitHostPort(b.backend)
	return startPgBouncer(ctx, pgbouncerSetup{bin: b.pgbouncer, backendHost: host, backendPort: port,
		database: brokerBenchDB, user: brokerBenchUser, password: b.password, clients: clients})
}

// pgbenchResult is what one pgbench run printed.
type pgbenchResult struct {
	tps, latencyMS       float64
	transactions, failed int64
}

// The lines of pgbench's report that the bench reads.
var (
	pgbenchTPS     = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)`)
	pgbenchTx      = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	pgbenchFailed  = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
	pgbenchLatency = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
)

// parsePgbench reads a run's report; a report without tps is an error.
func parsePgbench(out string) (pgbenchResult, error) {
	var r pgbenchResult
	m := pgbenchTPS.FindStringSubmatch(out)
	if m == nil {
		return r, errors.New("no tps in pgbench's report")
	}
	r.tps, _ = strconv.ParseFloat(m[1], 64)
	if m := pgbenchTx.FindStringSubmatch(out); m != nil {
		r.transactions, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := pgbenchFailed.FindStringSubmatch(out); m != nil {
		r.failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := pgbenchLatency.FindStringSubmatch(out); m != nil {
		r.latencyMS, _ = strconv.ParseFloat(m[1], 64)
	}
	return r, nil
}

// pgbench runs pgbench against t with args, as the bench user (its
// password given only to direct), over TCP in plaintext.
func (b *brokerBench) pgbench(ctx context.Context, t target, args ...string) (string, error) {
	host, port, _ := net.SplitHostPort(t.addr)
	cmd := exec.CommandContext(ctx, filepath.Join(b.bc.pgBinDir, "pgbench"), append(args, brokerBenchDB)...)
	cmd.SysProcAttr = dbproc.SysProcAttr(nil, syscall.SIGKILL)
	cmd.Env = []string{"LC_ALL=C", "TZ=UTC", "PGHOST=" + host, "PGPORT=" + port, "PGUSER=" + brokerBenchUser,
		"PGSSLMODE=disable", "PGGSSENCMODE=disable", "PGCONNECT_TIMEOUT=10"}
	if t.password != "" {
		cmd.Env = append(cmd.Env, "PGPASSWORD="+t.password)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("broker: pgbench %s against %s: %w\n%s", strings.Join(args, " "), t.name, err, dbproc.Tail(out.String(), 20))
	}
	return out.String(), nil
}

// run is one pgbench run of a workload against t, with what the process
// in the middle used over it.
func (b *brokerBench) run(ctx context.Context, t target, workload string) (pgbenchResult, procUsage, error) {
	args := []string{"-c", strconv.Itoa(b.bc.clients), "-j", strconv.Itoa(b.bc.threads), "-T", strconv.Itoa(int(b.bc.duration / time.Second))}
	if workload == workloadSelectOnly {
		args = append(args, "-S")
	}
	usage := func() procUsage { return procUsage{} }
	if pid := t.pid(); pid != 0 {
		usage = func() procUsage { u, _ := processUsage(pid); return u }
	}
	before := usage()
	out, err := b.pgbench(ctx, t, args...)
	if err != nil {
		return pgbenchResult{}, procUsage{}, err
	}
	used := usage().minus(before)
	r, err := parsePgbench(out)
	if err != nil {
		return r, procUsage{}, fmt.Errorf("broker: pgbench against %s: %w\n%s", t.name, err, dbproc.Tail(out, 20))
	}
	return r, used, nil
}

// throughput runs each workload against each target in turn, --rounds
// times, after a warm-up run that is not counted.
func (b *brokerBench) throughput(ctx context.Context, targets []target) error {
	b.say("warm-up: select-only against direct, %s", b.bc.duration)
	if _, _, err := b.run(ctx, targets[0], workloadSelectOnly); err != nil {
		return err
	}
	type sums struct {
		tps, latency []float64
		tx, failed   int64
		used         procUsage
		runTimeS     float64
	}
	workloads := []string{workloadTPCB, workloadSelectOnly}
	acc := map[string]map[string]*sums{}
	for _, wl := range workloads {
		acc[wl] = map[string]*sums{}
		for _, t := range targets {
			acc[wl][t.name] = &sums{}
		}
	}
	for round := 1; round <= b.bc.rounds; round++ {
		for _, wl := range workloads {
			for _, t := range targets {
				r, used, err := b.run(ctx, t, wl)
				if err != nil {
					return err
				}
				b.say("round %d/%d, %s, %s: %.0f tps", round, b.bc.rounds, wl, t.name, r.tps)
				s := acc[wl][t.name]
				s.tps = append(s.tps, math.Round(r.tps))
				s.latency = append(s.latency, r.latencyMS)
				s.tx += r.transactions
				s.failed += r.failed
				s.used = s.used.plus(used)
				s.runTimeS += b.bc.duration.Seconds()
			}
		}
	}
	mean := func(v []float64) float64 {
		var sum float64
		for _, x := range v {
			sum += x
		}
		return sum / float64(len(v))
	}
	runsOf := func(wl, name string) *targetRuns {
		s, ok := acc[wl][name]
		if !ok {
			return nil
		}
		tr := &targetRuns{TPS: math.Round(mean(s.tps)), RoundsTPS: s.tps, LatencyMS: math.Round(mean(s.latency)*1000) / 1000,
			Transactions: s.tx, Failed: s.failed}
		if cpu := s.used.user + s.used.system; name != targetDirect && s.tx > 0 && cpu > 0 {
			tr.CPUUSPerTx = math.Round(cpu/float64(s.tx)*1e7) / 10
			tr.CPUCores = math.Round(cpu/s.runTimeS*100) / 100
			tr.CPUSystemShare = math.Round(s.used.system/cpu*100) / 100
			tr.SwitchesPerTx = math.Round(s.used.switches/float64(s.tx)*100) / 100
		}
		return tr
	}
	for _, wl := range workloads {
		w := workloadRuns{Workload: wl, Direct: runsOf(wl, targetDirect), Broker: runsOf(wl, targetBroker), PgBouncer: runsOf(wl, targetPgBouncer), Goal: goalTPCB}
		if wl == workloadSelectOnly {
			w.Goal = goalSelectOnly
		}
		w.RatioBroker = ratio(w.Broker.TPS, w.Direct.TPS)
		w.GoalMet = w.Broker.TPS >= w.Goal*w.Direct.TPS
		if w.PgBouncer != nil {
			w.RatioPgBouncer = ratio(w.PgBouncer.TPS, w.Direct.TPS)
			w.GoalMet = w.GoalMet && w.Broker.TPS > w.PgBouncer.TPS
		}
		b.res.Throughput = append(b.res.Throughput, w)
		for _, t := range targets {
			if spread := roundSpread(acc[wl][t.name].tps); spread > maxRoundSpread {
				b.res.Notes = append(b.res.Notes, fmt.Sprintf("%s, %s: the rounds' tps differ by %.0f%% (%v): the machine's load changed during the run, and the ratios are only as good as the interleaving; run again on a quiet machine",
					wl, t.name, spread*100, acc[wl][t.name].tps))
			}
		}
	}
	return nil
}

// maxRoundSpread is how far apart a target's rounds may be before the
// bench says the machine changed under it.
const maxRoundSpread = 0.2

// roundSpread is (highest - lowest) / highest of the rounds' tps.
func roundSpread(tps []float64) float64 {
	if len(tps) < 2 {
		return 0
	}
	lo, hi := slices.Min(tps), slices.Max(tps)
	if hi <= 0 {
		return 0
	}
	return (hi - lo) / hi
}

// profileBroker runs each workload once more through the broker, not
// counted, with the broker's CPU profile over it.
func (b *brokerBench) profileBroker(ctx context.Context, broker target) error {
	if err := os.MkdirAll(b.bc.profile, 0o755); err != nil {
		return fmt.Errorf("broker: --profile: %w", err)
	}
	for _, wl := range []string{workloadTPCB, workloadSelectOnly} {
		path := filepath.Join(b.bc.profile, "broker-"+wl+".pprof")
		b.say("profiling the broker over %s", wl)
		seconds := max(1, int(b.bc.duration/time.Second)-1)
		fetched := make(chan error, 1)
		go func() {
			fetched <- fetchTo(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", b.brk.debug, seconds), path)
		}()
		if _, _, err := b.run(ctx, broker, wl); err != nil {
			return err
		}
		if err := <-fetched; err != nil {
			return fmt.Errorf("broker: the broker's profile: %w", err)
		}
		b.res.Profiles = append(b.res.Profiles, path)
	}
	return nil
}

// connectSetup opens and closes --connects connections through each
// target, one at a time, the targets taking turns.
func (b *brokerBench) connectSetup(ctx context.Context, targets []target) (*connectSetup, error) {
	cfgs := make([]*pgconn.Config, len(targets))
	for i, t := range targets {
		cfg, err := connConfig(t.addr, t.password)
		if err != nil {
			return nil, err
		}
		cfgs[i] = cfg
	}
	got := make([]samples, len(targets))
	for range b.bc.connects {
		for i, cfg := range cfgs {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			t0 := time.Now()
			conn, err := pgconn.ConnectConfig(cctx, cfg)
			took := time.Since(t0)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				got[i].errors++
				if got[i].firstErr == nil {
					got[i].firstErr = err
				}
				continue
			}
			got[i].lat = append(got[i].lat, took)
			conn.Close(ctx)
		}
	}
	c := &connectSetup{N: b.bc.connects, Direct: got[0].latency(), Broker: got[1].latency()}
	if len(targets) > 2 {
		l := got[2].latency()
		c.PgBouncer = &l
	}
	for i, s := range got {
		if s.errors > 0 {
			b.res.Notes = append(b.res.Notes, fmt.Sprintf("connection setup: %d of %d connections to %s failed, the first: %v", s.errors, b.bc.connects, targets[i].name, s.firstErr))
		}
	}
	return c, nil
}

// connConfig is the bench user's connection to addr, in plaintext.
func connConfig(addr, password string) (*pgconn.Config, error) {
	host, port, _ := net.SplitHostPort(addr)
	cfg, err := pgconn.ParseConfig("host=" + host + " port=" + port + " sslmode=disable")
	if err != nil {
		return nil, err
	}
	cfg.User, cfg.Database, cfg.Password = brokerBenchUser, brokerBenchDB, password
	return cfg, nil
}

// idleConns measures --idle idle connections on a broker, then a
// pgbouncer, each started for it.
func (b *brokerBench) idleConns(ctx context.Context) (*idleConns, error) {
	// The processes of the throughput runs go: their memory holds what
	// those runs left. Both stop twice (here and with the run): a second
	// stop does nothing.
	b.brk.stop()
	if b.pgb != nil {
		b.pgb.stop()
	}
	res := &idleConns{Connections: b.bc.idle}
	b.say("idle: %d connections through a new broker", b.bc.idle)
	brk, err := startBrokerProcess(ctx, b.backend, brokerBenchUser, b.password, b.bc.gomaxprocs)
	if err != nil {
		return nil, err
	}
	b.brk = brk // stopped with the run
	if res.Broker, err = b.idleCost(ctx, brk.addr, brk.pid(), brk.goMemory); err != nil {
		return nil, err
	}
	brk.stop()
	if b.pgb != nil {
		b.say("idle: %d connections through a new pgbouncer", b.bc.idle)
		pgb, err := b.startPgBouncer(ctx, b.bc.idle)
		if err != nil {
			return nil, err
		}
		b.pgb = pgb
		c, err := b.idleCost(ctx, pgb.addr, pgb.pid(), nil)
		if err != nil {
			return nil, err
		}
		res.PgBouncer = &c
	}
	return res, nil
}

// idleCost opens --idle connections through addr, each running one
// query, and reads what the process pid gained while they are open. goMem, when set, reads its Go
// memory.
func (b *brokerBench) idleCost(ctx context.Context, addr string, pid int, goMem func(context.Context) (goMemory, error)) (idleCost, error) {
	var c idleCost
	cfg, err := connConfig(addr, "")
	if err != nil {
		return c, err
	}
	read := func() (procMem, int, goMemory, error) {
		m, err := readProcMem(pid)
		if err != nil {
			return m, 0, goMemory{}, err
		}
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			return m, 0, goMemory{}, err
		}
		var g goMemory
		if goMem != nil {
			if g, err = goMem(ctx); err != nil {
				return m, 0, g, err
			}
		}
		return m, len(fds), g, nil
	}
	time.Sleep(500 * time.Millisecond)
	m0, fds0, g0, err := read()
	if err != nil {
		return c, fmt.Errorf("broker: idle: %w", err)
	}
	conns := make([]*pgconn.PgConn, b.bc.idle)
	defer func() {
		var wg sync.WaitGroup
		for _, conn := range conns {
			if conn != nil {
				wg.Go(func() { conn.Close(context.Background()) })
			}
		}
		wg.Wait()
	}()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  = make(chan int)
	)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				conn, err := pgconn.ConnectConfig(cctx, cfg)
				if err == nil {
					// A query first, as a pool's connection has had:
					// pgbouncer links a server connection to a client
					// at its first query.
					_, err = conn.Exec(cctx, "SELECT 1").ReadAll()
				}
				cancel()
				mu.Lock()
				if err != nil && first == nil {
					first = err
				}
				conns[i] = conn
				mu.Unlock()
			}
		})
	}
	for i := range conns {
		next <- i
	}
	close(next)
	wg.Wait()
	if first != nil {
		return c, fmt.Errorf("broker: idle: open %d connections through %s: %w", b.bc.idle, addr, first)
	}
	time.Sleep(time.Second)
	m1, fds1, g1, err := read()
	if err != nil {
		return c, fmt.Errorf("broker: idle: %w", err)
	}
	n := float64(b.bc.idle)
	perKB := func(before, after float64) float64 { return math.Round((after-before)/n/1024*10) / 10 }
	c = idleCost{
		RSSBeforeMB: math.Round(m0.rss/(1<<20)*10) / 10, RSSMB: math.Round(m1.rss/(1<<20)*10) / 10,
		RSSPerConnKB: perKB(m0.rss, m1.rss), FDsPerConn: math.Round(float64(fds1-fds0)/n*10) / 10,
	}
	if goMem != nil {
		c.HeapPerConnKB = perKB(g0.HeapBytes, g1.HeapBytes)
		c.StackPerConnKB = perKB(g0.StackBytes, g1.StackBytes)
		c.GoroutinesPer = math.Round((g1.Goroutines-g0.Goroutines)/n*10) / 10
	}
	return c, nil
}

// procUsage is what a process used: CPU time, user and system, in
// seconds, and context switches, voluntary or not, of all its threads.
type procUsage struct {
	user, system, switches float64
}

func (u procUsage) minus(v procUsage) procUsage {
	return procUsage{u.user - v.user, u.system - v.system, u.switches - v.switches}
}

func (u procUsage) plus(v procUsage) procUsage {
	return procUsage{u.user + v.user, u.system + v.system, u.switches + v.switches}
}

// processUsage reads a process's usage so far: its CPU time from
// /proc/<pid>/stat (in clock ticks of 1/100 s, its threads' together),
// its context switches from each thread's /proc/<pid>/task/<tid>/status.
func processUsage(pid int) (procUsage, error) {
	var u procUsage
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// The command's name, in parentheses, may hold spaces: the fields
	// counted here start after it, with the state (field 3).
	_, rest, ok := strings.Cut(string(data), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return u, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, data)
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return u, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	u.user, u.system = utime/100, stime/100
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil {
		return u, err
	}
	for _, status := range tasks {
		data, err := os.ReadFile(status)
		if err != nil {
			continue // a thread that ended
		}
		for _, line := range strings.Split(string(data), "\n") {
			name, value, _ := strings.Cut(line, ":")
			if name == "voluntary_ctxt_switches" || name == "nonvoluntary_ctxt_switches" {
				n, _ := strconv.ParseFloat(strings.TrimSpace(value), 64)
				u.switches += n
			}
		}
	}
	return u, nil
}

// brokerProcess is the broker graft-bench broker measures: this program
// again, as graft-bench broker serve.
type brokerProcess struct {
	cmd         *exec.Cmd
	addr, debug string
	log         *os.File
	exited      chan struct{}
}

// startBrokerProcess runs the broker for backend, logging in as user with
// password, and waits until it listens.
func startBrokerProcess(ctx context.Context, backend, user, password string, gomaxprocs int) (*brokerProcess, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logf, err := os.CreateTemp("", "graft-bench-broker-*.log")
	if err != nil {
		return nil, err
	}
	p := &brokerProcess{log: logf, exited: make(chan struct{})}
	p.cmd = exec.Command(self, "broker", "serve", "--backend", backend, "--user", user)
	p.cmd.Env = append(os.Environ(), brokerPasswordEnv+"="+password)
	if gomaxprocs > 0 {
		p.cmd.Env = append(p.cmd.Env, "GOMAXPROCS="+strconv.Itoa(gomaxprocs))
	}
	p.cmd.SysProcAttr = dbproc.SysProcAttr(nil, syscall.SIGKILL)
	p.cmd.Stderr = logf
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		os.Remove(logf.Name())
		return nil, fmt.Errorf("broker: start %s broker serve: %w", self, err)
	}
	type addrs struct {
		addr, debug string
		err         error
	}
	got := make(chan addrs, 1)
	go func() {
		r := bufio.NewReader(stdout)
		a, d, err := readBrokerAddrs(r)
		got <- addrs{a, d, err}
		io.Copy(io.Discard, r)
		p.cmd.Wait()
		close(p.exited)
	}()
	select {
	case a := <-got:
		if a.err == nil {
			p.addr, p.debug = a.addr, a.debug
			return p, nil
		}
		err = a.err
	case <-time.After(30 * time.Second):
		err = errors.New("it did not listen within 30 s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.stop()
	data, _ := os.ReadFile(logf.Name())
	return nil, fmt.Errorf("broker: the broker's process: %w\n%s", err, dbproc.Tail(string(data), 20))
}

func (p *brokerProcess) pid() int { return p.cmd.Process.Pid }

// goMemory reads the broker's Go memory, after a collection.
func (p *brokerProcess) goMemory(ctx context.Context) (goMemory, error) {
	var m goMemory
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.debug+"/memory", nil)
	if err != nil {
		return m, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	return m, json.NewDecoder(resp.Body).Decode(&m)
}

// stop ends the broker (SIGTERM: it closes its listener and sessions),
// killing it after 10 s, and removes its log. A second stop does nothing.
func (p *brokerProcess) stop() {
	select {
	case <-p.exited:
	default:
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.exited
		}
	}
	p.log.Close()
	os.Remove(p.log.Name())
}

// fetchTo writes what url answers to path.
func fetchTo(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
