package main

// The phases of graft-bench dbcred: setting up graft and the database as
// a DBA and an application would, the issue runs and their floor, the
// live leases, the drain and the final revocation.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/internal/dbproc"
	"github.com/graft-sh/graft/internal/tlsfiles"
	"github.com/graft-sh/graft/sdk"
)

// progress tells the user on stderr what the bench is doing, with the
// time since it started.
type progress struct {
	w     io.Writer
	start time.Time
}

func (p progress) say(format string, args ...any) {
	fmt.Fprintf(p.w, "graft-bench dbcred [%6.1fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

// dbcredBench is one run's connections and what it must undo.
type dbcredBench struct {
	dc    dbcredConfig
	p     progress
	res   *dbcredResult
	dsn   string
	admin *pgx.Conn // the bench's own: setup, the floor's cleanup, pg_roles
	// dial connects to the graftd measured with a token.
	dial func(ctx context.Context, token string) (*sdk.Client, error)
	dba  *sdk.Client
	// apps are the application's clients, each its own connection.
	apps []*sdk.Client
	// live counts the leases issued and not yet revoked (by the drain).
	live atomic.Int64
	// bestRate is the fastest issue rate seen, for the drain's schedule.
	bestRate float64
	// fillRate is the fill's issue rate, for the drain's schedule.
	fillRate float64
	// root is the admin token's client: tokens, the reaper's switch.
	root   *sdk.Client
	graftd *graftdProcess // nil with --addr
	token  string         // the admin token
	mem    func() (procMem, error)
	// rule is the share of the role, cleanupTokens the tokens made for
	// the DBA and the application: cleanup removes them.
	rule          string
	cleanupTokens []string
}

func (a *app) benchDBCred(cmd *cobra.Command, dc dbcredConfig) (dbcredResult, error) {
	ctx := cmd.Context()
	res := dbcredResult{Mode: "dev", GraftdFrom: "own", Postgres: "own", Grant: dc.grant, CreationSQL: creationSQL(dc.grant), DurationS: dc.duration.Seconds(),
		CPUs: runtime.NumCPU(), LoadStart: loadAverage()}
	b := &dbcredBench{dc: dc, p: progress{w: cmd.ErrOrStderr(), start: time.Now()}, res: &res}

	// graftd: its own, as a process, or the one named.
	var root *sdk.Client
	if a.Remote(cmd) {
		res.Mode, res.GraftdFrom = "remote", "GRAFT_ADDR"
		if cmd.Flags().Changed("addr") {
			res.GraftdFrom = "--addr"
		}
		c, err := a.Client(ctx, cmd)
		if err != nil {
			return res, err
		}
		root, b.token, res.Graftd = c, a.Token, a.Addr
		tc, err := tlsfiles.Client(a.CAFile, "", "")
		if err != nil {
			return res, err
		}
		b.dial = func(ctx context.Context, token string) (*sdk.Client, error) {
			return sdk.New(ctx, sdk.Config{Addr: a.Addr, Token: token, TLS: tc, Insecure: a.Insecure})
		}
		b.mem = func() (procMem, error) {
			rss, err := metric(dc.metricsURL, "process_resident_memory_bytes")
			return procMem{rss: rss}, err
		}
	} else {
		b.p.say("starting graftd --dev as its own process")
		g, err := startGraftdProcess(ctx, "dbcred", dc.graftd)
		if err != nil {
			return res, err
		}
		defer func() { b.p.say("stopping graftd"); g.stop() }()
		b.graftd, b.token, res.Graftd = g, g.token, g.addr
		b.dc.metricsURL = g.metricsURL
		b.dial = func(ctx context.Context, token string) (*sdk.Client, error) {
			return sdk.New(ctx, sdk.Config{Addr: g.addr, Token: token})
		}
		b.mem = func() (procMem, error) { return readProcMem(g.cmd.Process.Pid) }
		if root, err = b.dial(ctx, g.token); err != nil {
			return res, err
		}
	}
	defer root.Close()
	b.root = root

	// PostgreSQL: its own, or --dsn.
	b.dsn = dc.dsn
	if b.dsn == "" {
		b.p.say("starting PostgreSQL from %s in a temporary directory", dc.pgBinDir)
		pg, err := startPostgres(ctx, "dbcred", dc.pgBinDir)
		if err != nil {
			return res, err
		}
		defer func() { b.p.say("stopping PostgreSQL, removing its directory"); pg.stop() }()
		b.dsn = pg.dsn
	} else {
		res.Postgres = "--dsn"
	}
	var err error
	if b.admin, err = pgx.Connect(ctx, b.dsn); err != nil {
		return res, fmt.Errorf("dbcred: connect to PostgreSQL: %w", dbcred.ScrubDSN(err, b.dsn))
	}
	defer b.admin.Close(context.WithoutCancel(ctx))
	if err := b.admin.QueryRow(ctx, "SHOW server_version").Scan(&res.PostgresVersion); err != nil {
		return res, fmt.Errorf("dbcred: %w", err)
	}
	if err := b.setupDatabase(ctx); err != nil {
		return res, err
	}
	defer b.cleanupDatabase(context.WithoutCancel(ctx))

	if err := b.setupGraft(ctx, root); err != nil {
		return res, err
	}
	defer b.cleanupGraft(context.WithoutCancel(ctx), root)

	before, err := b.sizes()
	if err != nil {
		return res, err
	}
	for _, n := range dc.clients {
		if err := b.issueRun(ctx, n); err != nil {
			return res, err
		}
	}
	res.Goal = goalOf(res.Issue)
	if dc.leases > 0 {
		if err := b.fill(ctx, before); err != nil {
			return res, err
		}
	}
	if dc.drain > 0 {
		if err := b.drain(ctx); err != nil {
			return res, err
		}
	}
	err = b.revokeAll(ctx)
	res.LoadEnd = loadAverage()
	return res, err
}

// setupDatabase creates the table the users may read and, for --grant
// group, the group role that may read it.
func (b *dbcredBench) setupDatabase(ctx context.Context) error {
	stmts := []string{"CREATE TABLE IF NOT EXISTS " + benchTable + " (id int PRIMARY KEY)"}
	if b.dc.grant == "group" {
		stmts = append(stmts,
			`DO $$ BEGIN CREATE ROLE `+benchGroup+` NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$`,
			"GRANT SELECT ON "+benchTable+" TO "+benchGroup)
	}
	for _, s := range stmts {
		if _, err := b.admin.Exec(ctx, s); err != nil {
			return fmt.Errorf("dbcred: set up the database (%s): %w", s, err)
		}
	}
	return nil
}

// cleanupDatabase drops what setupDatabase made, once no user is left
// that was granted it.
func (b *dbcredBench) cleanupDatabase(ctx context.Context) {
	if b.res.Postgres == "own" {
		return // the server and its directory go
	}
	for _, s := range []string{"DROP TABLE IF EXISTS " + benchTable, "DROP ROLE IF EXISTS " + benchGroup} {
		if _, err := b.admin.Exec(ctx, s); err != nil {
			b.p.say("cleanup: %s: %v", s, err)
		}
	}
}

// setupGraft does what the DBA and the application would: tokens for
// both, the DSN and the role in the DBA's tree, the role shared to the
// application, and a first issue from its copy.
func (b *dbcredBench) setupGraft(ctx context.Context, root *sdk.Client) error {
	b.p.say("setting up: tokens for %s and %s, the DSN and role at %s, shared to %s", benchDBA, benchApp, benchRolePath, benchCopyPath)
	dbaToken, _, err := root.CreateToken(ctx, benchDBA, []string{"dba"}, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("dbcred: token for %s: %w", benchDBA, err)
	}
	appToken, _, err := root.CreateToken(ctx, benchApp, []string{"app"}, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("dbcred: token for %s: %w", benchApp, err)
	}
	b.cleanupTokens = []string{dbaToken, appToken}
	if b.dba, err = b.dial(ctx, dbaToken); err != nil {
		return err
	}
	if _, err := b.dba.Put(ctx, benchDSNPath+"/dsn", []byte(b.dsn)); err != nil {
		return fmt.Errorf("dbcred: put the admin DSN: %w", err)
	}
	role := sdk.DBCredRole{
		Driver: dbcred.DriverPostgres, Admin: benchDSNPath, CreationSQL: b.res.CreationSQL,
		// A day: the live leases must outlast the run.
		DefaultTTL: 24 * time.Hour, MaxTTL: 24 * time.Hour,
	}
	if _, err := b.dba.PutRole(ctx, benchRolePath, role); err != nil {
		return fmt.Errorf("dbcred: put the role: %w", err)
	}
	rule, _, err := b.dba.Share(ctx, benchRolePath, []string{benchCopyPath}, sdk.ShareOptions{})
	if err != nil {
		return fmt.Errorf("dbcred: share the role: %w", err)
	}
	b.rule = rule.ID
	n := max(slices.Max(b.dc.clients), b.dc.fillClients) + 2
	for range n {
		c, err := b.dial(ctx, appToken)
		if err != nil {
			return err
		}
		b.apps = append(b.apps, c)
	}
	// Share fills the copy before it returns; a remote graftd's cluster
	// may take a moment more.
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err := b.apps[0].Issue(ctx, benchCopyPath, 0)
		if err == nil {
			b.live.Add(1)
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("dbcred: a first issue at %s as %s: %w", benchCopyPath, benchApp, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cleanupGraft revokes what is left (after an error), then removes the
// share, the role, the DSN and the tokens.
func (b *dbcredBench) cleanupGraft(ctx context.Context, root *sdk.Client) {
	for _, c := range b.apps {
		c.Close()
	}
	if b.dba == nil {
		return
	}
	defer b.dba.Close()
	if b.res.GraftdFrom == "own" && b.res.Postgres == "own" {
		return // both go with their directories, every lease and user with them
	}
	if b.res.RevokeAll == nil && b.live.Load() > 0 {
		b.p.say("cleanup: revoking the role's leases (%d issued)", b.live.Load())
		rctx, cancel := context.WithTimeout(ctx, time.Hour)
		if _, failed, err := b.dba.RevokePrefix(rctx, benchRolePath); err != nil || len(failed) > 0 {
			b.p.say("cleanup: revoke: %d failed, %v: see graft lease ls --prefix %s", len(failed), err, benchRolePath)
		}
		cancel()
	}
	b.p.say("cleanup: unsharing and removing the role, the DSN and the tokens")
	if b.rule != "" {
		if _, _, err := b.dba.Unshare(ctx, b.rule, false); err != nil {
			b.p.say("cleanup: unshare %s: %v", b.rule, err)
		}
	}
	if _, err := b.dba.DeleteRole(ctx, benchRolePath); err != nil {
		b.p.say("cleanup: role rm %s: %v", benchRolePath, err)
	}
	if _, err := b.dba.Delete(ctx, benchDSNPath+"/dsn"); err != nil {
		b.p.say("cleanup: rm %s/dsn: %v", benchDSNPath, err)
	}
	for _, t := range b.cleanupTokens {
		if _, err := root.RevokeToken(ctx, t); err != nil {
			b.p.say("cleanup: revoke a token: %v", err)
		}
	}
}

// issueRun measures graft's Issue and the floor with n clients each.
func (b *dbcredBench) issueRun(ctx context.Context, n int) error {
	run := issueLoad{Clients: n}

	b.p.say("floor, %d connection(s): the role's statements through pgx for %s", n, b.dc.duration)
	floor, err := b.floor(ctx, n)
	if err != nil {
		return err
	}
	run.Floor = floor

	b.p.say("graft, %d client(s): Issue at %s as %s for %s", n, benchCopyPath, benchApp, b.dc.duration)
	var profiled func() error
	if b.dc.profile != "" && n == slices.Max(b.dc.clients) {
		if profiled, err = profileCPU(ctx, "dbcred", b.dc.profile, b.dc.metricsURL, b.token, b.dc.duration); err != nil {
			return err
		}
	}
	cpu0, cpuErr := metric(b.dc.metricsURL, "process_cpu_seconds_total")
	s := runFor(ctx, n, b.dc.duration, func(ctx context.Context, w, _ int) error {
		_, err := b.apps[w].Issue(ctx, benchCopyPath, 0)
		if err == nil {
			b.live.Add(1)
		}
		return err
	})
	if profiled != nil {
		if err := profiled(); err != nil {
			return err
		}
		b.res.Notes = append(b.res.Notes, "CPU profiles over graft's issue run with "+strconv.Itoa(n)+" clients in "+b.dc.profile+": graftd.pprof, bench.pprof (go tool pprof -top FILE)")
	}
	if err := b.noteErrors(fmt.Sprintf("graft, %d client(s)", n), s); err != nil {
		return err
	}
	run.Graft = s.throughput()
	// runFor's first, untimed call on each client is in the CPU figure
	// too: n calls among thousands.
	if cpu1, err := metric(b.dc.metricsURL, "process_cpu_seconds_total"); err == nil && cpuErr == nil && run.Graft.N > 0 {
		run.GraftdCPUMSPerIssue = math.Round((cpu1-cpu0)*1000/float64(run.Graft.N+n)*100) / 100
	}
	b.bestRate = max(b.bestRate, run.Graft.PerSec)
	run.RatioPerSec = ratio(run.Graft.PerSec, run.Floor.PerSec)
	run.RatioP50 = ratio(run.Graft.P50MS, run.Floor.P50MS)
	run.RatioP99 = ratio(run.Graft.P99MS, run.Floor.P99MS)
	b.p.say("  graft %.0f/s (p50 %.1f ms, p99 %.1f ms), floor %.0f/s (p50 %.1f ms, p99 %.1f ms)", run.Graft.PerSec, run.Graft.P50MS, run.Graft.P99MS, run.Floor.PerSec, run.Floor.P50MS, run.Floor.P99MS)
	b.res.Issue = append(b.res.Issue, run)
	return nil
}

// floor runs the role's statements as graftd's driver does (one
// transaction, each statement a simple query) on n connections of the
// bench's own, then drops the users it made: what the database does
// alone.
func (b *dbcredBench) floor(ctx context.Context, n int) (throughput, error) {
	conns := make([]*pgx.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	for i := range conns {
		c, err := pgx.Connect(ctx, b.dsn)
		if err != nil {
			return throughput{}, fmt.Errorf("dbcred: floor: connect: %w", dbcred.ScrubDSN(err, b.dsn))
		}
		conns[i] = c
	}
	stmts := creationSQL(b.dc.grant)
	prefix := "graft-bench-floor-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	made := make([][]string, n)
	s := runFor(ctx, n, b.dc.duration, func(ctx context.Context, w, i int) error {
		name := fmt.Sprintf("%s-%d-%d", prefix, w, i)
		password := dbproc.RandomHex(16)
		exp := time.Now().Add(24 * time.Hour)
		err := pgx.BeginFunc(ctx, conns[w], func(tx pgx.Tx) error {
			for _, st := range stmts {
				if _, err := tx.Exec(ctx, dbcred.Expand(st, name, password, exp), pgx.QueryExecModeSimpleProtocol); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			made[w] = append(made[w], name)
		}
		return err
	})
	users := slices.Concat(made...)
	b.p.say("  floor: dropping its %d users", len(users))
	parallel := n
	if b.dc.grant == "table" {
		// Each DROP OWNED rewrites the table's grants: two at once fail
		// ("tuple concurrently updated").
		parallel = 1
	}
	// On connections of their own: a connection whose query an
	// interrupt cancelled is closed, and its users must go all the same.
	if err := dropUsers(context.WithoutCancel(ctx), b.dsn, parallel, users); err != nil {
		return throughput{}, fmt.Errorf("dbcred: floor: drop its users (%s-…): %w", prefix, err)
	}
	if err := ctx.Err(); err != nil {
		return throughput{}, err
	}
	if err := b.noteErrors(fmt.Sprintf("floor, %d connection(s)", n), s); err != nil {
		return throughput{}, err
	}
	return s.throughput(), nil
}

// dropUsers drops users (and their privileges) over parallel
// connections to dsn.
func dropUsers(ctx context.Context, dsn string, parallel int, users []string) error {
	var next atomic.Int64
	errs := make([]error, parallel)
	var wg sync.WaitGroup
	for i := range parallel {
		wg.Go(func() {
			c, err := pgx.Connect(ctx, dsn)
			if err != nil {
				errs[i] = dbcred.ScrubDSN(err, dsn)
				return
			}
			defer c.Close(ctx)
			for {
				j := int(next.Add(1)) - 1
				if j >= len(users) {
					return
				}
				q := pgx.Identifier{users[j]}.Sanitize()
				if _, err := c.Exec(ctx, "DROP OWNED BY "+q+"; DROP ROLE "+q, pgx.QueryExecModeSimpleProtocol); err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// noteErrors records a run's failed calls in the notes, and fails the
// bench when none succeeded.
func (b *dbcredBench) noteErrors(what string, s samples) error {
	if s.errors == 0 {
		return nil
	}
	if len(s.lat) == 0 {
		return fmt.Errorf("dbcred: %s: every call failed, the first with: %w", what, s.firstErr)
	}
	b.res.Notes = append(b.res.Notes, fmt.Sprintf("%s: %d of %d calls failed, the first with: %v", what, s.errors, s.errors+len(s.lat), s.firstErr))
	return nil
}

// fill issues until --leases are live, then reads graftd's memory and
// etcd's size.
func (b *dbcredBench) fill(ctx context.Context, before sizes) error {
	live := &liveLeases{RSSFrom: before.rssFrom, RSSBeforeMB: before.rssMB, EtcdDBFrom: before.etcdFrom, EtcdDBBeforeMB: before.etcdMB}
	b.res.Live = live
	want := int64(b.dc.leases) - b.live.Load()
	b.p.say("live leases: issuing %d more, %d at once, until %d are live", max(want, 0), b.dc.fillClients, b.dc.leases)
	start := time.Now()
	var left, done, failed, streak atomic.Int64
	left.Store(want)
	var firstErr atomic.Value
	stop := make(chan struct{})
	var ticker sync.WaitGroup
	ticker.Go(func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		var before int64
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				d := done.Load()
				b.p.say("  %d of %d live (%.0f/s over the last 5 s, %d failed)", b.live.Load(), b.dc.leases, float64(d-before)/5, failed.Load())
				before = d
			}
		}
	})
	var wg sync.WaitGroup
	for w := range b.dc.fillClients {
		wg.Go(func() {
			// A run of failures with no success between (the database
			// refusing every grant) ends the fill.
			for left.Add(-1) >= 0 && streak.Load() < 200 && ctx.Err() == nil {
				if _, err := b.apps[w].Issue(ctx, benchCopyPath, 0); err != nil {
					left.Add(1)
					failed.Add(1)
					streak.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				streak.Store(0)
				done.Add(1)
				b.live.Add(1)
			}
		})
	}
	wg.Wait()
	close(stop)
	ticker.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	elapsed := time.Since(start)
	live.Leases, live.Filled, live.FillErrors = int(b.live.Load()), int(done.Load()), int(failed.Load())
	live.FillS = seconds(elapsed)
	if live.Filled > 0 {
		live.FillPerSec = math.Round(float64(live.Filled) / elapsed.Seconds())
		b.fillRate = live.FillPerSec
	}
	if failed.Load() > 0 {
		b.res.Notes = append(b.res.Notes, fmt.Sprintf("live leases: %d issues failed, the first with: %v", failed.Load(), firstErr.Load()))
	}
	if live.Leases < b.dc.leases {
		b.res.Notes = append(b.res.Notes, fmt.Sprintf("live leases: the fill stopped at %d of %d after 200 failures in a row", live.Leases, b.dc.leases))
	}
	now, err := b.sizes()
	if err != nil {
		return err
	}
	live.RSSMB, live.RSSAnonMB, live.RSSFileMB, live.EtcdDBMB = now.rssMB, now.anonMB, now.fileMB, now.etcdMB
	if b.dc.profile != "" && b.dc.metricsURL != "" {
		heap := filepath.Join(b.dc.profile, "graftd-heap-live.pprof")
		if err := fetch(ctx, "dbcred", strings.TrimSuffix(b.dc.metricsURL, "/metrics")+"/debug/pprof/heap", b.token, heap); err != nil {
			return err
		}
		b.res.Notes = append(b.res.Notes, "graftd's heap with the live leases: "+heap+" (go tool pprof -sample_index=inuse_space -top FILE)")
	}
	if err := b.admin.QueryRow(ctx, "SELECT count(*) FROM pg_roles").Scan(&live.PGRoles); err != nil {
		return fmt.Errorf("dbcred: count pg_roles: %w", err)
	}
	b.p.say("  %d live leases: graftd RSS %.0f MB (%.0f MB before), etcd database %.0f MB (%.0f MB before)", live.Leases, live.RSSMB, live.RSSBeforeMB, live.EtcdDBMB, live.EtcdDBBeforeMB)
	return nil
}

// sizes are graftd's memory and its etcd database's size at one moment.
type sizes struct {
	rssFrom, etcdFrom string
	rssMB, etcdMB     float64
	// anonMB and fileMB split rssMB, from /proc only.
	anonMB, fileMB float64
}

func (b *dbcredBench) sizes() (sizes, error) {
	var s sizes
	mb := func(v float64) float64 { return math.Round(v/(1<<20)*10) / 10 }
	switch {
	case b.graftd != nil:
		s.rssFrom = fmt.Sprintf("/proc/%d/status VmRSS", b.graftd.cmd.Process.Pid)
	case b.dc.metricsURL != "":
		s.rssFrom = "--metrics-url"
	}
	if s.rssFrom != "" {
		m, err := b.mem()
		if err != nil {
			return s, fmt.Errorf("dbcred: graftd's memory: %w", err)
		}
		s.rssMB, s.anonMB, s.fileMB = mb(m.rss), mb(m.anon), mb(m.file)
	}
	if b.graftd != nil {
		// etcd's Maintenance Status DbSize is this file's size; graftd's
		// embedded etcd serves no client port to ask.
		db := filepath.Join(b.graftd.dir, "data", "etcd", "member", "snap", "db")
		st, err := os.Stat(db)
		if err != nil {
			return s, fmt.Errorf("dbcred: etcd's database: %w", err)
		}
		s.etcdFrom, s.etcdMB = "the size of "+db, mb(float64(st.Size()))
	}
	return s, nil
}

// procMem is a process's resident memory in bytes: all of it, and its
// anonymous pages (heap, stacks) and file pages (the binary, mapped
// files) apart, which only /proc tells.
type procMem struct {
	rss, anon, file float64
}

// readProcMem reads a process's resident memory from /proc/<pid>/status.
func readProcMem(pid int) (procMem, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMem{}, err
	}
	defer f.Close()
	var m procMem
	fields := map[string]*float64{"VmRSS:": &m.rss, "RssAnon:": &m.anon, "RssFile:": &m.file}
	seen := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, value, _ := strings.Cut(sc.Text(), "\t")
		dst, ok := fields[name]
		if !ok {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(value), "kB")), 64)
		if err != nil {
			return procMem{}, fmt.Errorf("/proc/%d/status: %s %q: %w", pid, name, value, err)
		}
		*dst = kb * 1024
		seen++
	}
	if seen < len(fields) {
		return procMem{}, fmt.Errorf("/proc/%d/status lacks VmRSS, RssAnon or RssFile", pid)
	}
	return m, sc.Err()
}

// loadAverage is the machine's 1, 5 and 15 minute load averages, or ""
// where /proc/loadavg is not.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(data))
	return strings.Join(f[:min(3, len(f))], " ")
}

// drainPoll is how often the drain looks at pg_roles.
const drainPoll = 50 * time.Millisecond

// drain issues --drain leases that all expire at one instant, then times
// the reaper dropping their users and graftd's API meanwhile.
func (b *dbcredBench) drain(ctx context.Context) error {
	n := b.dc.drain
	d := &drainRun{Leases: n, PollMS: float64(drainPoll / time.Millisecond)}
	b.res.Drain = d
	get, issue := b.apps[len(b.apps)-2], b.apps[len(b.apps)-1]

	b.p.say("drain: graftd's API at idle for %s (a Get every 20 ms, an Issue every 200 ms)", b.dc.idle)
	stop := make(chan struct{})
	time.AfterFunc(b.dc.idle, func() { close(stop) })
	cpu := b.startCPU()
	d.Idle = b.probe(ctx, get, issue, stop)
	d.Idle.GraftdCores, d.Idle.MachineBusy = cpu.end()

	// Every lease expires at expireAt: its TTL is what remains until
	// then when it is issued. Twice the time the fill (or the fastest
	// run) took for as many leases leaves room for a slower one. With a
	// graftd of its own the bench pauses the reaper meanwhile and
	// resumes it at expireAt, or once the last lease is issued if that
	// is later, so that they are all due at once however slow issuing
	// was; a graftd given with --addr reaps others' leases too, and its
	// reaper is left alone.
	rate := b.bestRate
	if b.fillRate > 0 {
		rate = b.fillRate
	}
	expireAt := time.Now().Add(2*time.Duration(float64(n)/max(rate, 10)*float64(time.Second)) + 3*time.Second)
	d.ReaperPaused = b.graftd != nil
	if d.ReaperPaused {
		if _, err := b.root.SetReaper(ctx, true); err != nil {
			return fmt.Errorf("dbcred: drain: pause the reaper: %w", err)
		}
		defer b.root.SetReaper(context.WithoutCancel(ctx), false) // again after an error; harmless otherwise
	}
	b.p.say("drain: issuing %d leases, %d at once, that all expire at %s (reaper paused: %t)", n, b.dc.fillClients, expireAt.Format("15:04:05.000"), d.ReaperPaused)
	type issued struct {
		user    string
		expires time.Time
	}
	set := make([]issued, n)
	var next, late, failed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	var wg sync.WaitGroup
	for w := range b.dc.fillClients {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				ttl := time.Until(expireAt)
				if ttl < 10*time.Millisecond {
					late.Add(1)
					ttl = 10 * time.Millisecond
				}
				got, err := b.apps[w].Issue(ctx, benchCopyPath, ttl)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				b.live.Add(1)
				set[i] = issued{got.Username, got.Lease.ExpireTime}
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	set = slices.DeleteFunc(set, func(is issued) bool { return is.user == "" })
	d.Leases, d.IssueS, d.IssuedLate = len(set), seconds(time.Since(start)), int(late.Load())
	if f := failed.Load(); f > 0 {
		b.res.Notes = append(b.res.Notes, fmt.Sprintf("drain: %d of %d issues failed, the first with: %v", f, n, firstErr.Load()))
	}
	if len(set) == 0 {
		return nil
	}
	names := make([]string, len(set))
	first := set[0].expires
	for i, is := range set {
		names[i] = is.user
		if is.expires.Before(first) {
			first = is.expires
		}
	}
	if wait := time.Until(first); wait > 0 {
		b.p.say("drain: issued in %.1f s; waiting %.1f s until they expire", d.IssueS, wait.Seconds())
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// due is when the whole set was due: the common expiry, or when the
	// paused reaper was resumed after it.
	due := first
	if d.ReaperPaused {
		if _, err := b.root.SetReaper(ctx, false); err != nil {
			return fmt.Errorf("dbcred: drain: resume the reaper: %w", err)
		}
		due = time.Now()
		d.ResumedAfterMS = float64(due.Sub(first).Milliseconds())
		if d.IssuedLate > 0 {
			b.res.Notes = append(b.res.Notes, fmt.Sprintf("drain: %d leases were issued after the common expiry; the reaper, paused meanwhile, was resumed once the last was, %.1f s after the expiry, and lateness counts from then", d.IssuedLate, d.ResumedAfterMS/1000))
		}
	} else if d.IssuedLate > 0 {
		b.res.Notes = append(b.res.Notes, fmt.Sprintf("drain: %d leases were issued after the common expiry, so the reaper began before all were issued", d.IssuedLate))
	}

	b.p.say("drain: the reaper drops %d users; graftd's API meanwhile", len(names))
	drainProfile := make(chan error, 1)
	if b.dc.profile != "" && b.dc.metricsURL != "" {
		go func() {
			base := strings.TrimSuffix(b.dc.metricsURL, "/metrics") + "/debug/pprof/"
			drainProfile <- fetch(ctx, "dbcred", base+"profile?seconds=3", b.token, filepath.Join(b.dc.profile, "graftd-drain.pprof"))
		}()
	} else {
		drainProfile <- nil
	}
	stop = make(chan struct{})
	probed := make(chan apiProbe, 1)
	cpu = b.startCPU()
	go func() { probed <- b.probe(ctx, get, issue, stop) }()
	gone, err := b.watchGone(ctx, names)
	close(stop)
	d.During = <-probed
	d.During.GraftdCores, d.During.MachineBusy = cpu.end()
	if perr := <-drainProfile; err == nil {
		err = perr
	}
	if err != nil {
		return err
	}
	var lateness []time.Duration
	var last time.Time
	for i, t := range gone {
		if t.IsZero() {
			continue
		}
		d.Gone++
		lateness = append(lateness, t.Sub(latest(set[i].expires, due)))
		if t.After(last) {
			last = t
		}
	}
	b.live.Add(-int64(d.Gone))
	if d.Gone < len(names) {
		b.res.Notes = append(b.res.Notes, fmt.Sprintf("drain: %d of %d users were still in pg_roles after a minute without progress; graft lease ls --prefix %s says why", len(names)-d.Gone, len(names), benchRolePath))
	}
	if d.Gone > 0 {
		d.LateP50MS, d.LateP99MS, d.LateMaxMS = quantileMS(lateness, 0.5), quantileMS(lateness, 0.99), quantileMS(lateness, 1)
		d.FirstGoneMS = quantileMS(lateness, 0)
		span := last.Sub(due)
		d.DrainS = seconds(span)
		if span > 0 {
			d.PerSec = math.Round(float64(d.Gone) / span.Seconds())
		}
	}
	d.RatioGetP99 = ratio(d.During.Get.P99MS, d.Idle.Get.P99MS)
	d.RatioIssueP99 = ratio(d.During.Issue.P99MS, d.Idle.Issue.P99MS)
	d.GoalMet = d.RatioGetP99 > 0 && d.RatioGetP99 <= goalDrainRatio
	b.p.say("  %d users gone %.1f s after they were due (%.0f/s); Get p99 %.2f ms idle, %.2f ms draining", d.Gone, d.DrainS, d.PerSec, d.Idle.Get.P99MS, d.During.Get.P99MS)
	return nil
}

// cpuWindow is graftd's CPU time and the machine's at the start of a
// window.
type cpuWindow struct {
	b                    *dbcredBench
	at                   time.Time
	graftd               float64
	graftdErr            error
	machineIdle, jiffies float64
}

func (b *dbcredBench) startCPU() cpuWindow {
	w := cpuWindow{b: b, at: time.Now()}
	w.graftd, w.graftdErr = metric(b.dc.metricsURL, "process_cpu_seconds_total")
	w.machineIdle, w.jiffies = machineCPU()
	return w
}

// end returns the cores graftd used over the window (0 if unknown) and
// the share of the machine's CPU time that was busy.
func (w cpuWindow) end() (graftdCores, machineBusy float64) {
	elapsed := time.Since(w.at).Seconds()
	if g, err := metric(w.b.dc.metricsURL, "process_cpu_seconds_total"); err == nil && w.graftdErr == nil && elapsed > 0 {
		graftdCores = math.Round((g-w.graftd)/elapsed*100) / 100
	}
	if idle, total := machineCPU(); total > w.jiffies {
		machineBusy = math.Round((1-(idle-w.machineIdle)/(total-w.jiffies))*100) / 100
	}
	return graftdCores, machineBusy
}

// machineCPU is the machine's idle and total CPU time so far, in
// jiffies, from /proc/stat (zeros where there is none).
func machineCPU() (idle, total float64) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	for i, v := range f[1:] {
		n, _ := strconv.ParseFloat(v, 64)
		total += n
		if i == 3 || i == 4 { // idle, iowait
			idle += n
		}
	}
	return idle, total
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// watchGone polls pg_roles until none of names is left, or a minute
// passes with none going, and returns when each was first seen gone.
func (b *dbcredBench) watchGone(ctx context.Context, names []string) ([]time.Time, error) {
	gone := make([]time.Time, len(names))
	index := make(map[string]int, len(names))
	for i, n := range names {
		index[n] = i
	}
	left := slices.Clone(names)
	progressed, said := time.Now(), time.Now()
	for len(left) > 0 && time.Since(progressed) < time.Minute {
		rows, err := b.admin.Query(ctx, "SELECT rolname FROM pg_roles WHERE rolname = ANY($1)", left)
		if err != nil {
			return nil, fmt.Errorf("dbcred: drain: read pg_roles: %w", err)
		}
		still, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("dbcred: drain: read pg_roles: %w", err)
		}
		now := time.Now()
		if len(still) < len(left) {
			progressed = now
			present := make(map[string]bool, len(still))
			for _, s := range still {
				present[s] = true
			}
			for _, n := range left {
				if !present[n] {
					gone[index[n]] = now
				}
			}
			left = still
		}
		if time.Since(said) >= 5*time.Second {
			b.p.say("  %d of %d users left", len(left), len(names))
			said = now
		}
		select {
		case <-time.After(drainPoll):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return gone, nil
}

// probe calls Get (every 20 ms) and Issue (every 200 ms) as the
// application until stop closes, each waiting for its last call.
func (b *dbcredBench) probe(ctx context.Context, get, issue *sdk.Client, stop <-chan struct{}) apiProbe {
	start := time.Now()
	every := func(interval time.Duration, call func(ctx context.Context) error) latency {
		var s samples
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			t0 := time.Now()
			if err := call(ctx); err != nil {
				s.errors++
			} else {
				s.lat = append(s.lat, time.Since(t0))
			}
			select {
			case <-stop:
				return s.latency()
			case <-ctx.Done():
				return s.latency()
			case <-t.C:
			}
		}
	}
	var p apiProbe
	var wg sync.WaitGroup
	wg.Go(func() {
		p.Get = every(20*time.Millisecond, func(ctx context.Context) error {
			_, err := get.Get(ctx, benchCopyPath)
			return err
		})
	})
	wg.Go(func() {
		p.Issue = every(200*time.Millisecond, func(ctx context.Context) error {
			_, err := issue.Issue(ctx, benchCopyPath, 0)
			if err == nil {
				b.live.Add(1)
			}
			return err
		})
	})
	wg.Wait()
	p.S = seconds(time.Since(start))
	return p
}

// revokeAll revokes every lease of the role with one RevokePrefix and
// checks that the database has no user of it left.
func (b *dbcredBench) revokeAll(ctx context.Context) error {
	n := b.live.Load()
	b.p.say("revoke all: RevokePrefix %s (%d leases)", benchRolePath, n)
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	// One call does it all: the users left in the group say how far it
	// got. The bench's own connection is free meanwhile.
	done := make(chan struct{})
	var ticker sync.WaitGroup
	if b.dc.grant == "group" {
		ticker.Go(func() {
			t := time.NewTicker(10 * time.Second)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					var left int
					if err := b.admin.QueryRow(rctx, "SELECT count(*) FROM pg_auth_members WHERE roleid = $1::regrole", benchGroup).Scan(&left); err == nil {
						b.p.say("  %d users left", left)
					}
				}
			}
		})
	}
	revoked, failed, err := b.dba.RevokePrefix(rctx, benchRolePath)
	close(done)
	ticker.Wait()
	if err != nil {
		return fmt.Errorf("dbcred: revoke all: %w", err)
	}
	elapsed := time.Since(start)
	r := &revokeAll{Revoked: revoked, Failed: len(failed), S: seconds(elapsed), UsersLeft: -1}
	if elapsed > 0 {
		r.PerSec = math.Round(float64(revoked) / elapsed.Seconds())
	}
	b.res.RevokeAll = r
	if len(failed) > 0 {
		b.res.Notes = append(b.res.Notes, fmt.Sprintf("revoke all: %d leases failed, the first with: %s", len(failed), failed[0].LastError))
	}
	if b.dc.grant == "group" {
		if err := b.admin.QueryRow(ctx, "SELECT count(*) FROM pg_auth_members WHERE roleid = $1::regrole", benchGroup).Scan(&r.UsersLeft); err != nil {
			return fmt.Errorf("dbcred: revoke all: count the users left: %w", err)
		}
	}
	b.p.say("  %d revoked in %.1f s (%.0f/s), %d failed", revoked, r.S, r.PerSec, r.Failed)
	return nil
}

// samples are the latencies of the calls that succeeded, and the
// failures.
type samples struct {
	lat      []time.Duration
	errors   int
	firstErr error
	elapsed  time.Duration
}

func (s samples) latency() latency {
	return latency{N: len(s.lat), Errors: s.errors, P50MS: quantileMS(s.lat, 0.5), P99MS: quantileMS(s.lat, 0.99), MaxMS: quantileMS(s.lat, 1)}
}

func (s samples) throughput() throughput {
	t := throughput{latency: s.latency()}
	if s.elapsed > 0 {
		t.PerSec = math.Round(float64(len(s.lat)) / s.elapsed.Seconds())
	}
	return t
}

// runFor runs workers goroutines, each calling op once untimed (to open
// its connection) and then over and over until d has passed, and returns
// what they saw. A call begun before d ends is counted, and the elapsed
// time runs until the last one returned.
func runFor(ctx context.Context, workers int, d time.Duration, op func(ctx context.Context, worker, i int) error) samples {
	var (
		mu    sync.Mutex
		s     samples
		wg    sync.WaitGroup
		ready sync.WaitGroup
		start = make(chan struct{})
	)
	ready.Add(workers)
	var deadline time.Time
	for w := range workers {
		wg.Go(func() {
			var lat []time.Duration
			var errs int
			var first error
			op(ctx, w, -1)
			ready.Done()
			<-start
			for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
				t0 := time.Now()
				if err := op(ctx, w, i); err != nil {
					errs++
					if first == nil {
						first = err
					}
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			defer mu.Unlock()
			s.lat = append(s.lat, lat...)
			s.errors += errs
			if s.firstErr == nil {
				s.firstErr = first
			}
		})
	}
	ready.Wait()
	begun := time.Now()
	deadline = begun.Add(d)
	close(start)
	wg.Wait()
	s.elapsed = time.Since(begun)
	return s
}
