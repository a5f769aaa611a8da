package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/cmdline"
	"github.com/graft-sh/graft/sdk"
)

// agentsConfig is what graft-bench agents is asked to do.
type agentsConfig struct {
	count      int
	idle       time.Duration
	settle     time.Duration
	graftd     string
	metricsURL string
	waitMin    time.Duration
	dir        string
	bare       bool
	// profile, when set, is where CPU profiles of graftd and of this
	// process over the change's delivery go (profileFor long).
	profile    string
	profileFor time.Duration
}

// agentsResult is what it reports.
type agentsResult struct {
	// Mode is how graftd was run: "dev" (started for the run) or "remote".
	Mode string `json:"mode"`
	// Subscribers is what received the change: "agents", or "bare" sdk
	// watch streams (--bare), Agents of them.
	Subscribers string `json:"subscribers"`
	Agents      int    `json:"agents"`
	// SetupS is how long creating the applications' tokens and the share
	// took; StartS, from starting the first agent until every agent
	// rendered its file (bare: until every stream held the value, from its
	// snapshot or an event, and graftd had confirmed its watch).
	SetupS float64 `json:"setup_s"`
	StartS float64 `json:"start_s"`
	// IdleS is how long the agents ran idle (reporting every 30 s) before
	// the change, and GraftdCPU the share of one core graftd used then.
	// SettleS is how long the agents ran before that, for graftd to
	// finish the start.
	SettleS   float64 `json:"settle_s"`
	IdleS     float64 `json:"idle_s"`
	GraftdCPU float64 `json:"graftd_cpu_cores"`
	// Graftd RSS with no agent, with every agent idle, and after the
	// change reached all of them (process_resident_memory_bytes).
	RSSBeforeMB float64 `json:"graftd_rss_before_mb"`
	RSSIdleMB   float64 `json:"graftd_rss_idle_mb"`
	RSSAfterMB  float64 `json:"graftd_rss_after_mb"`
	// One source write replicated to every application: time from the
	// write until an agent's file holds it, over all agents (timed when
	// inotify reports the file's rename, and SweepMS is 0; where inotify
	// cannot watch them all, sampled by sweeps over the files, SweepMS
	// apart; bare: until a stream received the event, timestamped on
	// receipt).
	DeliverP50MS float64 `json:"deliver_p50_ms"`
	DeliverP99MS float64 `json:"deliver_p99_ms"`
	DeliverAllMS float64 `json:"deliver_all_ms"`
	SweepMS      float64 `json:"sweep_ms"`
	// ReportsLive is how many agents graftd lists after the change (bare
	// streams do not report: 0).
	ReportsLive int      `json:"reports_live"`
	Notes       []string `json:"notes,omitempty"`
}

func (a *app) agentsCmd() *cobra.Command {
	var ac agentsConfig
	cmd := &cobra.Command{
		Use:   "agents",
		Short: "Run many idle graft-agents against one graftd and deliver one change to all",
		Long: `Run --count graft-agents in this process, each for its own application with
its own token and connection, each rendering one replicated value into a
file. Once all have rendered, graftd settles for --settle and they idle for
--idle (reporting to graftd every 30 s, as agents do); then one write at the
source is replicated to every application, and the time until each agent's
file holds it (its rename into place, seen by inotify) is measured.
The files go to --dir, tmpfs (/dev/shm) by default, so that the figure is
graft's and not one disk's doing an fsync for every agent.

graftd's memory is read from its /metrics (process_resident_memory_bytes)
before the agents start, while they idle and after the change. So graftd
runs as its own process: without --addr graft-bench starts --graftd (default:
the graftd next to graft-bench) in dev mode in a temporary directory. With
--addr it uses that graftd and needs the root token, and --metrics-url for
the memory figures.

With --bare it runs no agents but --count sdk watch streams, one per
application, each with its own token and connection as an agent has, each
watching the application's tree from its snapshot's revision. They write
no files and send no reports, and each stream takes the time it received
the change itself. Set against a run with agents on the same machine, the
delivery figures show how much of the time graftd takes and how much the
agents (which share its cores here); graftd's idle CPU then lacks the
agents' reports.

Each agent (or stream) holds one connection: raise the open-files limit
(ulimit -n) above --count in this shell and in graftd's.`,
		Example: `  make build && bin/graft-bench agents --count 10000
  graft-bench agents --count 1000 --idle 10s -o json
  graft-bench agents --count 10000 --bare`,
		Args: cmdline.Args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case ac.count < 1 || ac.count > 100000:
				return fmt.Errorf("agents: --count %d: want 1 to 100000 agents", ac.count)
			case ac.idle < 0:
				return fmt.Errorf("agents: --idle %s: want a duration of 0 or more", ac.idle)
			case ac.settle < 0:
				return fmt.Errorf("agents: --settle %s: want a duration of 0 or more", ac.settle)
			case ac.profileFor < time.Second:
				return fmt.Errorf("agents: --profile-for %s: want 1s or more", ac.profileFor)
			case ac.bare && (cmd.Flags().Changed("dir") || cmd.Flags().Changed("wait-min")):
				return errors.New("agents: --bare runs watch streams, which render no files: --dir and --wait-min are for agents")
			}
			res, err := a.benchAgents(cmd, ac)
			if err != nil {
				return err
			}
			return a.Emit(res, func(w io.Writer) error { return writeAgents(w, res) })
		},
	}
	f := cmd.Flags()
	f.IntVar(&ac.count, "count", 10000, "how many agents")
	f.DurationVar(&ac.idle, "idle", 30*time.Second, "how long the agents run idle before the change, graftd's idle CPU measured over it")
	f.DurationVar(&ac.settle, "settle", 30*time.Second, "how long to let graftd finish the start (first reports, garbage) before the idle measurement begins")
	f.StringVar(&ac.graftd, "graftd", "", "the graftd binary to start without --addr (default: graftd next to graft-bench)")
	f.StringVar(&ac.metricsURL, "metrics-url", "", "graftd's /metrics, for its memory, with --addr")
	f.DurationVar(&ac.waitMin, "wait-min", 0, "the agents' debounce (wait.min; wait.max is 10 times it)")
	f.StringVar(&ac.dir, "dir", defaultAgentsDir(), "where the agents render their files")
	f.BoolVar(&ac.bare, "bare", false, "run bare sdk watch streams instead of agents: no files, no reports")
	f.StringVar(&ac.profile, "profile", "", "write CPU profiles over the change's delivery to this directory: graftd.pprof (graftd's /debug/pprof; with --addr it needs --enable-pprof) and bench.pprof (the agents, in this process), and graftd's allocations before and after")
	f.DurationVar(&ac.profileFor, "profile-for", 10*time.Second, "how long --profile profiles, from the change on")
	return cmd
}

func (a *app) benchAgents(cmd *cobra.Command, ac agentsConfig) (agentsResult, error) {
	ctx := cmd.Context()
	res := agentsResult{Mode: "dev", Subscribers: "agents", Agents: ac.count}
	if err := raiseOpenFiles(ac.count); err != nil {
		return res, err
	}
	var addr, token string
	if cmd.Flags().Changed("addr") || a.Getenv("GRAFT_ADDR") != "" {
		res.Mode = "remote"
		c, err := a.Client(ctx, cmd)
		if err != nil {
			return res, err
		}
		c.Close()
		addr, token = a.Addr, a.Token
	} else {
		g, err := startGraftdProcess(ctx, "agents", ac.graftd)
		if err != nil {
			return res, err
		}
		defer g.stop()
		addr, token, ac.metricsURL = g.addr, g.token, g.metricsURL
	}
	c, err := sdk.New(ctx, sdk.Config{Addr: addr, Token: token, Insecure: true})
	if err != nil {
		return res, err
	}
	defer c.Close()
	rss := func() float64 {
		if ac.metricsURL == "" {
			return 0
		}
		v, err := metric(ac.metricsURL, "process_resident_memory_bytes")
		if err != nil {
			res.Notes = append(res.Notes, "graftd memory: "+err.Error())
		}
		return math.Round(v/(1<<20)*10) / 10
	}
	res.RSSBeforeMB = rss()

	// The applications: a token each, and one share copying the source
	// into every application's tree.
	run := fmt.Sprintf("agents-%d", time.Now().UnixNano())
	source := "/bench/" + run + "/password"
	apps := make([]string, ac.count)
	dests := make([]string, ac.count)
	for i := range apps {
		apps[i] = fmt.Sprintf("bench-agent-%05d", i)
		dests[i] = "/app/" + apps[i] + "/replicated/" + run
	}
	setup := time.Now()
	if _, err := c.Put(ctx, source, []byte("v0")); err != nil {
		return res, fmt.Errorf("agents: put %s: %w", source, err)
	}
	rule, _, err := c.Share(ctx, "/bench/"+run, dests, sdk.ShareOptions{})
	if err != nil {
		return res, fmt.Errorf("agents: share: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		c.Unshare(cctx, rule.ID, false)
		c.Delete(cctx, source)
	}()
	tokens := make([]string, ac.count)
	errs := make([]error, ac.count)
	var wg sync.WaitGroup
	slots := make(chan struct{}, 16)
	for i, name := range apps {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			tokens[i], _, errs[i] = c.CreateToken(ctx, "app:"+name, []string{"app"}, 2*time.Hour)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return res, fmt.Errorf("agents: create the applications' tokens: %w", err)
	}
	res.SetupS = seconds(time.Since(setup))

	// The subscribers: one per application.
	var subs subscribers = &renderingAgents{addr: addr, dir: ac.dir, run: run, apps: apps, tokens: tokens, waitMin: ac.waitMin}
	if ac.bare {
		subs = &bareStreams{addr: addr, run: run, apps: apps, tokens: tokens}
		res.Subscribers = "bare"
		res.Notes = append(res.Notes,
			"bare: watch streams, no agents: no files rendered, no reports or heartbeats sent (graftd's idle CPU and memory lack them; reports_live is 0)",
			"bare: each stream took the time it received the change itself; there are no sweeps (sweep_ms is 0)")
	}
	defer subs.stop()
	start := time.Now()
	if _, err := subs.start(ctx, "v0"); err != nil {
		return res, fmt.Errorf("agents: start: %w", err)
	}
	res.StartS = seconds(time.Since(start))

	select {
	case <-time.After(ac.settle):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	res.SettleS = seconds(ac.settle)
	cpu0, _ := metric(ac.metricsURL, "process_cpu_seconds_total")
	idle := time.Now()
	select {
	case <-time.After(ac.idle):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	res.IdleS = seconds(time.Since(idle))
	if cpu1, err := metric(ac.metricsURL, "process_cpu_seconds_total"); err == nil && res.IdleS > 0 {
		res.GraftdCPU = math.Round((cpu1-cpu0)/res.IdleS*100) / 100
	}
	res.RSSIdleMB = rss()

	// One change for all of them.
	var profiled func() error
	if ac.profile != "" {
		if profiled, err = profileCPU(ctx, "agents", ac.profile, ac.metricsURL, token, ac.profileFor); err != nil {
			return res, err
		}
	}
	sent := time.Now()
	if _, err := c.Put(ctx, source, []byte("v1")); err != nil {
		return res, fmt.Errorf("agents: put %s: %w", source, err)
	}
	seen, err := subs.wait(ctx, "v1")
	if err != nil {
		return res, fmt.Errorf("agents: the change: %w", err)
	}
	if profiled != nil {
		if err := profiled(); err != nil {
			return res, err
		}
		res.Notes = append(res.Notes, "CPU profiles over the change's first "+ac.profileFor.String()+" in "+ac.profile+": graftd.pprof, bench.pprof (go tool pprof -top FILE); graftd's allocations over it: go tool pprof -sample_index=alloc_space -base graftd-allocs-before.pprof graftd-allocs-after.pprof")
	}
	lat := make([]time.Duration, len(seen.at))
	for i, t := range seen.at {
		lat[i] = t.Sub(sent)
	}
	res.DeliverP50MS, res.DeliverP99MS, res.DeliverAllMS = quantileMS(lat, 0.5), quantileMS(lat, 0.99), quantileMS(lat, 1)
	res.SweepMS = math.Round(float64(seen.sweep)/float64(time.Microsecond)) / 1000
	res.RSSAfterMB = rss()
	if ac.bare {
		return res, nil
	}
	if live, err := c.ListAgents(ctx, ""); err == nil {
		for _, r := range live {
			if strings.HasPrefix(r.App, "bench-agent-") {
				res.ReportsLive++
			}
		}
	}
	return res, nil
}

// subscribers are what graftd serves in the benchmark: one per
// application, each following the application's replicated value.
type subscribers interface {
	// start starts them all and returns once each holds want.
	start(ctx context.Context, want string) (sweeps, error)
	// wait returns when each one first held want.
	wait(ctx context.Context, want string) (sweeps, error)
	// stop stops them all and waits until they have.
	stop()
}

var _ subscribers = (*renderingAgents)(nil)

// renderingAgents are real graft-agents, each rendering its application's
// replicated value into a file under dir.
type renderingAgents struct {
	addr, dir, run string
	apps, tokens   []string
	waitMin        time.Duration

	files   []string
	tmp     string
	cancel  context.CancelFunc
	running sync.WaitGroup
	// notices times the change's delivery by inotify once every agent
	// rendered (nil: by sweeps).
	notices *fileNotices
}

func (r *renderingAgents) start(ctx context.Context, want string) (sweeps, error) {
	tmp, err := os.MkdirTemp(r.dir, "graft-bench-agents-")
	if err != nil {
		return sweeps{}, err
	}
	r.tmp = tmp
	actx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	r.files = make([]string, len(r.apps))
	for i, name := range r.apps {
		tokenFile := filepath.Join(tmp, name+".token")
		if err := os.WriteFile(tokenFile, []byte(r.tokens[i]), 0o600); err != nil {
			return sweeps{}, err
		}
		r.files[i] = filepath.Join(tmp, name, "password")
		cfg := agent.DefaultConfig()
		cfg.Server, cfg.TokenFile, cfg.App, cfg.ID, cfg.Listen = r.addr, tokenFile, name, "bench", "off"
		cfg.Insecure = true
		cfg.Templates = []agent.Template{{Destination: r.files[i], Contents: `{{ secret "replicated/` + r.run + `/password" }}`}}
		cfg.Wait = agent.Wait{Min: r.waitMin, Max: 10 * r.waitMin}
		ag, err := agent.New(actx, cfg, quiet, nil)
		if err != nil {
			return sweeps{}, fmt.Errorf("agent %d: %w", i, err)
		}
		r.running.Add(1)
		go func() { defer r.running.Done(); ag.Run(actx) }()
	}
	s, err := waitFiles(ctx, r.files, want, 5*time.Minute)
	if err == nil {
		// Where inotify is short of watches, sweeps time the change too.
		r.notices, _ = notifyFiles(r.files)
	}
	return s, err
}

func (r *renderingAgents) wait(ctx context.Context, want string) (sweeps, error) {
	if r.notices != nil {
		return r.notices.wait(ctx, want, 5*time.Minute)
	}
	return waitFiles(ctx, r.files, want, 5*time.Minute)
}

func (r *renderingAgents) stop() {
	if r.cancel != nil {
		r.cancel()
	}
	r.running.Wait()
	if r.notices != nil {
		r.notices.close()
	}
	if r.tmp != "" {
		os.RemoveAll(r.tmp)
	}
}

// defaultAgentsDir is tmpfs where there is one: each agent's write ends in
// two fsyncs, and 10,000 agents on one disk would measure the disk, where
// in production each has its own (and secrets usually go to tmpfs).
func defaultAgentsDir() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

// sweeps is when each file was first seen holding the value, and the
// longest time one sweep over all files took (the figures' resolution).
type sweeps struct {
	at    []time.Time
	sweep time.Duration
}

// waitFiles reads every file over and over until each holds want.
func waitFiles(ctx context.Context, files []string, want string, timeout time.Duration) (sweeps, error) {
	s := sweeps{at: make([]time.Time, len(files))}
	deadline := time.Now().Add(timeout)
	left := len(files)
	for left > 0 {
		begin := time.Now()
		for i, f := range files {
			if !s.at[i].IsZero() {
				continue
			}
			if data, err := os.ReadFile(f); err == nil && string(data) == want {
				s.at[i] = time.Now()
				left--
			}
		}
		s.sweep = max(s.sweep, time.Since(begin))
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("%d of %d files do not hold the value after %s", left, len(files), timeout)
		}
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return s, nil
}

// metric reads one unlabelled sample from a Prometheus text endpoint.
func metric(url, name string) (float64, error) {
	if url == "" {
		return 0, errors.New("no --metrics-url")
	}
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s has no %s", url, name)
}

// raiseOpenFiles lifts the soft open-files limit to the hard one and
// checks that it leaves room for n connections.
func raiseOpenFiles(n int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	if need := uint64(n) + 1000; lim.Cur < need {
		return fmt.Errorf("agents: %d agents need %d open files and the limit is %d: raise it (ulimit -n %d) or use fewer agents", n, need, lim.Cur, need)
	}
	return nil
}

// graftdProcess is a dev graftd graft-bench started as its own process.
type graftdProcess struct {
	cmd                     *exec.Cmd
	dir                     string
	addr, token, metricsURL string
}

// startGraftdProcess runs binary (default: graftd beside this program) in
// dev mode in a temporary directory, and waits until it is ready; who (the
// subcommand) starts its errors.
func startGraftdProcess(ctx context.Context, who, binary string) (*graftdProcess, error) {
	if binary == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		binary = filepath.Join(filepath.Dir(self), "graftd")
	}
	if _, err := os.Stat(binary); err != nil {
		return nil, fmt.Errorf("%s: graftd binary: %w (build it with make build, or give --graftd or --addr)", who, err)
	}
	dir, err := os.MkdirTemp("", "graft-bench-graftd-")
	if err != nil {
		return nil, err
	}
	g := &graftdProcess{dir: dir, token: "graft_bench-" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	g.addr, err = freeAddr()
	if err != nil {
		return nil, err
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	g.metricsURL = "http://" + httpAddr + "/metrics"
	g.cmd = exec.CommandContext(ctx, binary, "--dev", "--data-dir", filepath.Join(dir, "data"), "--listen", g.addr,
		"--http-listen", httpAddr, "--dev-root-token", g.token, "--log-level", "warn", "--enable-pprof")
	logFile, err := os.Create(filepath.Join(dir, "graftd.log"))
	if err != nil {
		return nil, err
	}
	g.cmd.Stdout, g.cmd.Stderr = logFile, logFile
	if err := g.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: start %s: %w", who, binary, err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if resp, err := http.Get("http://" + httpAddr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return g, nil
			}
		}
		if time.Now().After(deadline) {
			g.stop()
			return nil, fmt.Errorf("%s: graftd not ready after 30 s (its log was in %s)", who, logFile.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (g *graftdProcess) stop() {
	g.cmd.Process.Signal(syscall.SIGTERM)
	g.cmd.Wait()
	os.RemoveAll(g.dir)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func seconds(d time.Duration) float64 { return math.Round(d.Seconds()*100) / 100 }

func writeAgents(w io.Writer, r agentsResult) error {
	bare := r.Subscribers == "bare"
	if bare {
		fmt.Fprintf(w, "bare watch streams: %d (%s graftd)\n", r.Agents, r.Mode)
	} else {
		fmt.Fprintf(w, "agents:             %d (%s graftd)\n", r.Agents, r.Mode)
	}
	fmt.Fprintf(w, "setup:              %.2f s (tokens and one share to every application)\n", r.SetupS)
	if bare {
		fmt.Fprintf(w, "start:              %.2f s until every stream read its snapshot and watched\n", r.StartS)
	} else {
		fmt.Fprintf(w, "start:              %.2f s until every agent rendered\n", r.StartS)
	}
	fmt.Fprintf(w, "graftd rss:         %.1f MB before, %.1f MB idle, %.1f MB after the change\n", r.RSSBeforeMB, r.RSSIdleMB, r.RSSAfterMB)
	fmt.Fprintf(w, "graftd cpu idle:    %.2f cores over %.1f s, after %.0f s to settle\n", r.GraftdCPU, r.IdleS, r.SettleS)
	if bare {
		fmt.Fprintf(w, "one change, to all: p50 %.0f ms, p99 %.0f ms, all %.0f ms (on receipt)\n", r.DeliverP50MS, r.DeliverP99MS, r.DeliverAllMS)
	} else {
		how := "timed by inotify"
		if r.SweepMS > 0 {
			how = fmt.Sprintf("sweeps up to %.0f ms apart", r.SweepMS)
		}
		fmt.Fprintf(w, "one change, to all: p50 %.0f ms, p99 %.0f ms, all %.0f ms (%s)\n", r.DeliverP50MS, r.DeliverP99MS, r.DeliverAllMS, how)
		fmt.Fprintf(w, "reports live:       %d\n", r.ReportsLive)
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note: "+n)
	}
	return nil
}
