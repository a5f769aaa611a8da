package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/graftd"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/sdk"
)

// TestMain doubles as the example application of the signal test: with
// GRAFT_AGENT_TEST_APP set it writes its pid and, on every SIGHUP, copies
// the file it was given to the file it serves from. It is also the graftd
// of graftdtest.StartProcess, and the rotator of the crash matrix.
func TestMain(m *testing.M) {
	graftdtest.Main()
	if os.Getenv("GRAFT_AGENT_TEST_APP") != "" {
		testApp(os.Args[1], os.Args[2], os.Args[3])
		return
	}
	if os.Getenv("GRAFT_AGENT_TEST_EXEC") != "" {
		execApp(os.Args[1])
		return
	}
	if os.Getenv("GRAFT_AGENT_TEST_ROTATOR") != "" {
		rotatorProcess(os.Args[1], os.Args[2], os.Args[3], os.Args[4])
		return
	}
	os.Exit(m.Run())
}

func testApp(pidfile, config, served string) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	os.WriteFile(pidfile, []byte(strconv.Itoa(os.Getpid())), 0o600)
	for range hup {
		data, _ := os.ReadFile(config)
		os.WriteFile(served, data, 0o600)
	}
}

// execApp is the application the exec tests run: it appends a line with
// its pid and DB_PASSWORD to a file, then the signals it gets, and exits 0
// on SIGTERM, or at once with GRAFT_TEST_EXIT's code.
func execApp(out string) {
	f, _ := os.OpenFile(out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	defer f.Close()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM)
	fmt.Fprintf(f, "start %d %s\n", os.Getpid(), os.Getenv("DB_PASSWORD"))
	if code := os.Getenv("GRAFT_TEST_EXIT"); code != "" {
		n, _ := strconv.Atoi(code)
		os.Exit(n)
	}
	for sig := range sigs {
		fmt.Fprintf(f, "%d got %s\n", os.Getpid(), sig)
		if sig == syscall.SIGTERM {
			return
		}
	}
}

// env is a dev graftd with an application, message-processor, whose
// replicated tree is fed by a share from the DBA's tree.
type env struct {
	t     testing.TB
	g     *graftdtest.Graftd
	root  *sdk.Client
	token string // app:message-processor's
	dir   string
}

func newEnv(t testing.TB, opts ...graftdtest.Option) *env {
	t.Helper()
	g := graftdtest.Start(t, opts...)
	ctx := t.Context()
	root, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: g.Token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	e := &env{t: t, g: g, root: root, dir: t.TempDir()}
	e.put("/dba/mp/mongo/user", "mp-user")
	e.put("/dba/mp/mongo/password", "s3cret-1")
	if _, _, err := root.Share(ctx, "/dba/mp/mongo", []string{"/app/message-processor/replicated/mongo"}, sdk.ShareOptions{}); err != nil {
		t.Fatal(err)
	}
	e.token, _, err = root.CreateToken(ctx, "app:message-processor", []string{"app"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) put(path, value string) {
	e.t.Helper()
	if _, err := e.root.Put(e.t.Context(), path, []byte(value)); err != nil {
		e.t.Fatalf("put %s: %v", path, err)
	}
}

// tokenFile writes the application's token to a file and returns its
// name.
func (e *env) tokenFile() string {
	tokenFile := filepath.Join(e.dir, "token")
	if err := os.WriteFile(tokenFile, []byte(e.token+"\n"), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return tokenFile
}

// config is an agent configuration for the application with the given
// templates and reloads, debounced by 50 ms.
func (e *env) config(templates []agent.Template, reload ...agent.Action) agent.Config {
	tokenFile := e.tokenFile()
	cfg := agent.DefaultConfig()
	cfg.Server, cfg.TokenFile, cfg.App, cfg.Listen = e.g.Addr, tokenFile, "message-processor", "127.0.0.1:0"
	cfg.Templates, cfg.Reload = templates, reload
	cfg.Wait = agent.Wait{Min: 50 * time.Millisecond, Max: time.Second}
	return cfg
}

// start runs an agent until the test ends (or stop is called) and waits
// for its first complete render.
func (e *env) start(cfg agent.Config) (a *agent.Agent, stop func()) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := agent.New(ctx, cfg, testenv.Logger(e.t), nil)
	if err != nil {
		e.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	stop = func() { cancel(); <-done }
	e.t.Cleanup(stop)
	testenv.WaitFor(e.t, 5*time.Second, a.Ready)
	return a, stop
}

func read(t testing.TB, name string) string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return string(data)
}

// countingCommand is a reload command that appends a line to a file, and
// a function that counts the lines.
func countingCommand(t *testing.T, dir string) (agent.Action, func() int) {
	log := filepath.Join(dir, "reloads")
	return agent.Action{Command: []string{"/bin/sh", "-c", "echo reloaded >> " + log}}, func() int {
		return strings.Count(read(t, log), "\n")
	}
}

const dbEnv = `DB_USER={{ secret "replicated/mongo/user" }}
DB_PASSWORD={{ secret "/app/message-processor/replicated/mongo/password" }}
`

// A DBA's change reaches the rendered file through replication and the
// agent's watch, and the reload runs once for it; the file is written
// atomically with the mode asked for.
func TestAgentRendersAndFollows(t *testing.T) {
	e := newEnv(t)
	out := filepath.Join(e.dir, "secrets", "db.env")
	cmd, reloads := countingCommand(t, e.dir)
	tree := filepath.Join(e.dir, "tree.txt")
	cfg := e.config([]agent.Template{
		{Destination: out, Contents: dbEnv, Mode: "0640"},
		{Destination: tree, Contents: `{{ range $k, $v := tree "replicated/mongo" }}{{ $k }}={{ $v | upper }};{{ end }}@{{ revision }}`},
	}, cmd)
	a, _ := e.start(cfg)
	if got := read(t, out); got != "DB_USER=mp-user\nDB_PASSWORD=s3cret-1\n" {
		t.Fatalf("db.env = %q", got)
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("db.env mode = %v, %v", st.Mode(), err)
	}
	if got := read(t, tree); !strings.HasPrefix(got, "password=S3CRET-1;user=MP-USER;@") || !strings.HasSuffix(got, "@"+strconv.FormatInt(a.Revision(), 10)) {
		t.Fatalf("tree.txt = %q (revision %d)", got, a.Revision())
	}
	if n := reloads(); n != 1 {
		t.Fatalf("%d reloads after the first render, want 1", n)
	}

	e.put("/dba/mp/mongo/password", "s3cret-2")
	testenv.WaitFor(t, 5*time.Second, func() bool { return strings.Contains(read(t, out), "s3cret-2") })
	testenv.WaitFor(t, 5*time.Second, func() bool { return reloads() == 2 })
	time.Sleep(200 * time.Millisecond)
	if n := reloads(); n != 2 {
		t.Fatalf("%d reloads after one change, want 2", n)
	}

	// A write that changes nothing in the files reloads nothing.
	e.put("/app/message-processor/config/unrelated", "x")
	time.Sleep(300 * time.Millisecond)
	if n := reloads(); n != 2 {
		t.Fatalf("a change no template reads caused a reload (%d)", n)
	}

	metrics := scrape(t, a)
	for _, want := range []string{`graft_agent_renders_total{outcome="written"}`, `graft_agent_reloads_total{kind="command",outcome="ok"} 2`, "graft_agent_applied_revision", "graft_agent_render_lag_seconds_count"} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("metrics lack %s:\n%s", want, metrics)
		}
	}
	if strings.Contains(metrics, "s3cret") {
		t.Fatal("a value appears in the metrics")
	}
}

// A template that reads a missing key fails alone: its previous file stays,
// the other template goes on updating, and it renders once the key exists.
func TestAgentMissingKeyFailsOneTemplate(t *testing.T) {
	e := newEnv(t)
	good, bad := filepath.Join(e.dir, "good"), filepath.Join(e.dir, "bad")
	if err := os.WriteFile(bad, []byte("previous"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := e.config([]agent.Template{
		{Destination: good, Contents: `{{ secret "replicated/mongo/password" }}`},
		{Destination: bad, Contents: `{{ secret "replicated/mongo/port" }}`},
	})
	a, logs := startLogged(t, cfg)
	testenv.WaitFor(t, 5*time.Second, func() bool { return read(t, good) == "s3cret-1" })
	failed := "template " + bad + ": key /app/message-processor/replicated/mongo/port does not exist"
	testenv.WaitFor(t, 5*time.Second, func() bool { return strings.Contains(logs.String(), failed) })
	if a.Ready() {
		t.Fatal("ready with a template that does not render")
	}
	if got := read(t, bad); got != "previous" {
		t.Fatalf("the failing template's file = %q, want the previous content", got)
	}
	e.put("/dba/mp/mongo/password", "s3cret-2")
	testenv.WaitFor(t, 5*time.Second, func() bool { return read(t, good) == "s3cret-2" })
	e.put("/dba/mp/mongo/port", "27017")
	testenv.WaitFor(t, 5*time.Second, func() bool { return read(t, bad) == "27017" })
	testenv.WaitFor(t, time.Second, a.Ready)
	if strings.Contains(logs.String(), "s3cret") {
		t.Fatalf("a value appears in the log:\n%s", logs.String())
	}
}

// An agent restarted with unchanged values writes nothing and reloads
// nothing.
func TestAgentRestartWritesNothing(t *testing.T) {
	e := newEnv(t)
	out := filepath.Join(e.dir, "db.env")
	cmd, reloads := countingCommand(t, e.dir)
	cfg := e.config([]agent.Template{{Destination: out, Contents: dbEnv}}, cmd)
	_, stop := e.start(cfg)
	stop()
	st1, _ := os.Stat(out)
	time.Sleep(20 * time.Millisecond)
	e.start(cfg)
	st2, _ := os.Stat(out)
	if !st1.ModTime().Equal(st2.ModTime()) {
		t.Fatal("the restarted agent rewrote an unchanged file")
	}
	if n := reloads(); n != 1 {
		t.Fatalf("%d reloads across a restart with unchanged values, want 1", n)
	}
}

// 100 changes within 200 ms cause one render and one reload.
func TestAgentDebounces(t *testing.T) {
	e := newEnv(t)
	out := filepath.Join(e.dir, "burst")
	cmd, reloads := countingCommand(t, e.dir)
	cfg := e.config([]agent.Template{{Destination: out, Contents: `{{ secret "config/n" }}`}}, cmd)
	cfg.Wait = agent.Wait{Min: 500 * time.Millisecond, Max: 5 * time.Second}
	e.put("/app/message-processor/config/n", "0")
	e.start(cfg)
	start := time.Now()
	for i := 1; i <= 100; i++ {
		e.put("/app/message-processor/config/n", strconv.Itoa(i))
	}
	t.Logf("100 writes took %s", time.Since(start))
	testenv.WaitFor(t, 10*time.Second, func() bool { return read(t, out) == "100" })
	time.Sleep(700 * time.Millisecond)
	if n := reloads(); n != 2 { // the first render's, and the burst's
		t.Fatalf("%d reloads, want 2: one for the first render and one for the burst", n)
	}
}

// A newer revision cuts a health wait short: with the application
// unhealthy after one change and a health timeout of 30 s, the next change
// is rendered and reloaded within moments, and the agent reports the
// newer revision healthy once the application is; meanwhile it never
// reports the unverified revision.
func TestAgentNewerRevisionCutsAHealthWaitShort(t *testing.T) {
	e := newEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	out := filepath.Join(e.dir, "db.env")
	cmd, reloads := countingCommand(t, e.dir)
	cfg := e.config([]agent.Template{{Destination: out, Contents: dbEnv}}, cmd)
	cfg.Health = agent.Health{TCP: addr, Timeout: 30 * time.Second}
	a, _ := e.start(cfg)
	first := a.Revision()

	ln.Close() // the application stops answering
	e.put("/dba/mp/mongo/password", "s3cret-2")
	testenv.WaitFor(t, 5*time.Second, func() bool { return reloads() == 2 })
	time.Sleep(300 * time.Millisecond) // in the health wait now
	if a.Revision() != first {
		t.Fatalf("the revision the health check has not passed for counts as applied (%d, before %d)", a.Revision(), first)
	}
	if ln, err = net.Listen("tcp", addr); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	began := time.Now()
	e.put("/dba/mp/mongo/password", "s3cret-3")
	testenv.WaitFor(t, 5*time.Second, func() bool { return strings.Contains(read(t, out), "s3cret-3") && reloads() == 3 })
	var rep sdk.AgentReport
	testenv.WaitFor(t, 5*time.Second, func() bool {
		reps, err := e.root.ListAgents(t.Context(), "message-processor")
		if err != nil || len(reps) != 1 {
			return false
		}
		rep = reps[0]
		return rep.Revision == a.Revision() && rep.Revision > first
	})
	if !rep.Healthy {
		t.Fatalf("report after the newer revision: %+v", rep)
	}
	if waited := time.Since(began); waited > 10*time.Second {
		t.Fatalf("the newer revision waited %s for the health wait of the older one", waited)
	}
}

// A signal reload makes a running application re-read its file; an HTTP
// reload and an HTTP health check run after it.
func TestAgentSignalAndHTTPReload(t *testing.T) {
	e := newEnv(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	conf, pidfile, served := filepath.Join(e.dir, "app.conf"), filepath.Join(e.dir, "app.pid"), filepath.Join(e.dir, "served")
	app := startApp(t, exe, pidfile, conf, served)
	defer app()
	testenv.WaitFor(t, 5*time.Second, func() bool { return read(t, pidfile) != "" })

	var posts, probes atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/-/reload":
			if r.Method == http.MethodPost {
				posts.Add(1)
			}
		case "/healthz":
			probes.Add(1)
		}
	}))
	defer srv.Close()
	cfg := e.config([]agent.Template{{Destination: conf, Contents: `password={{ secret "replicated/mongo/password" }}`}},
		agent.Action{Signal: &agent.SignalAction{Pidfile: pidfile, Signal: "SIGHUP"}},
		agent.Action{HTTP: &agent.HTTPAction{URL: srv.URL + "/-/reload"}})
	cfg.Health = agent.Health{HTTP: srv.URL + "/healthz", Timeout: 5 * time.Second}
	e.start(cfg)
	testenv.WaitFor(t, 5*time.Second, func() bool { return read(t, served) == "password=s3cret-1" })
	e.put("/dba/mp/mongo/password", "s3cret-2")
	testenv.WaitFor(t, 5*time.Second, func() bool { return read(t, served) == "password=s3cret-2" })
	testenv.WaitFor(t, 5*time.Second, func() bool { return posts.Load() == 2 && probes.Load() >= 2 })
}

// startApp starts this test binary as the example application.
func startApp(t *testing.T, exe string, args ...string) (stop func()) {
	t.Helper()
	p, err := os.StartProcess(exe, append([]string{exe}, args...), &os.ProcAttr{
		Env:   append(os.Environ(), "GRAFT_AGENT_TEST_APP=1"),
		Files: []*os.File{nil, os.Stderr, os.Stderr},
	})
	if err != nil {
		t.Fatal(err)
	}
	return func() { p.Kill(); p.Wait() }
}

// --once renders and exits, non-zero if a template failed; --dry-run says
// which files would change and which keys they read, never the values.
func TestAgentOnceAndDryRun(t *testing.T) {
	e := newEnv(t)
	out := filepath.Join(e.dir, "db.env")
	cfg := e.config([]agent.Template{{Destination: out, Contents: dbEnv}})
	cfg.DryRun = true
	var report strings.Builder
	a, err := agent.New(t.Context(), cfg, testenv.Logger(t), &report)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := "write  " + out + " (reads /app/message-processor/replicated/mongo/password, /app/message-processor/replicated/mongo/user)\n"
	if !strings.HasPrefix(report.String(), want) || strings.Contains(report.String(), "s3cret") {
		t.Fatalf("dry run reported %q, want it to start %q and hold no value", report.String(), want)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a dry run wrote the file")
	}

	cfg.DryRun, cfg.Once = false, true
	a, _ = agent.New(t.Context(), cfg, testenv.Logger(t), nil)
	if err := a.Run(t.Context()); err != nil || read(t, out) != "DB_USER=mp-user\nDB_PASSWORD=s3cret-1\n" {
		t.Fatalf("once: %v, file %q", err, read(t, out))
	}
	cfg.Templates = append(cfg.Templates, agent.Template{Destination: out + ".2", Contents: `{{ secret "nope" }}`})
	a, _ = agent.New(t.Context(), cfg, testenv.Logger(t), nil)
	if err := a.Run(t.Context()); !errors.Is(err, agent.ErrTemplates) {
		t.Fatalf("once with a failing template: %v, want ErrTemplates", err)
	}
}

// The agent keeps its files and follows again after graftd restarts: a
// change made after the restart is rendered, and nothing is reloaded twice.
func TestAgentResumesAfterGraftdRestarts(t *testing.T) {
	e := newEnv(t)
	out := filepath.Join(e.dir, "db.env")
	cmd, reloads := countingCommand(t, e.dir)
	e.start(e.config([]agent.Template{{Destination: out, Contents: dbEnv}}, cmd))
	e.g.Restart(t)
	if got := read(t, out); !strings.Contains(got, "s3cret-1") {
		t.Fatalf("the file while graftd restarted = %q", got)
	}
	e.put("/dba/mp/mongo/password", "s3cret-3")
	testenv.WaitFor(t, 10*time.Second, func() bool { return strings.Contains(read(t, out), "s3cret-3") })
	time.Sleep(300 * time.Millisecond)
	if n := reloads(); n != 2 {
		t.Fatalf("%d reloads, want 2 (the first render and the change)", n)
	}
}

// An agent cut off from graftd for longer than etcd keeps history (the
// revision it would resume from is compacted) reads a new snapshot when it
// is back, and renders and reloads what changed meanwhile, once.
func TestAgentReadsANewSnapshotAfterCompaction(t *testing.T) {
	// A buffer of one change: the agent's revision falls out of graftd's
	// memory, so its resume goes to etcd, which compacted it.
	e := newEnv(t, graftdtest.WithConfig(func(c *graftd.Config) { c.EmbeddedListen, c.WatchBufferEvents = true, 1 }))
	out := filepath.Join(e.dir, "db.env")
	cmd, reloads := countingCommand(t, e.dir)
	link := testenv.StartProxy(t, e.g.Addr)
	cfg := e.config([]agent.Template{{Destination: out, Contents: dbEnv}}, cmd)
	cfg.Server = link.Addr()
	a, logs := startLogged(t, cfg)
	testenv.WaitFor(t, 5*time.Second, a.Ready)
	before := a.Revision()

	link.Cut()
	e.put("/dba/mp/mongo/password", "s3cret-2")
	var copied *sdk.Entry
	testenv.WaitFor(t, 5*time.Second, func() bool {
		got, err := e.root.Get(t.Context(), "/app/message-processor/replicated/mongo/password")
		copied = got
		return err == nil && string(got.Value) == "s3cret-2"
	})
	etcd := testenv.Client(t, e.g.Daemon.EtcdEndpoints()[0])
	if _, err := etcd.Compact(t.Context(), copied.Revision); err != nil {
		t.Fatal(err)
	}
	link.Restore()

	testenv.WaitFor(t, 10*time.Second, func() bool {
		return strings.Contains(read(t, out), "s3cret-2") && a.Revision() >= copied.Revision
	})
	if a.Revision() < copied.Revision || a.Revision() <= before {
		t.Fatalf("applied revision %d, want at least %d", a.Revision(), copied.Revision)
	}
	if !strings.Contains(logs.String(), "compacted; reading a new snapshot") {
		t.Fatalf("no new snapshot after the compaction:\n%s", logs)
	}
	time.Sleep(300 * time.Millisecond)
	if n := reloads(); n != 2 {
		t.Fatalf("%d reloads, want 2 (the first render and the change)", n)
	}
}

// Edits to a template's source file are picked up.
func TestAgentPicksUpTemplateEdits(t *testing.T) {
	e := newEnv(t)
	src, out := filepath.Join(e.dir, "config.json.tmpl"), filepath.Join(e.dir, "config.json")
	if err := os.WriteFile(src, []byte(`{"user": "{{ secret "replicated/mongo/user" }}"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	e.start(e.config([]agent.Template{{Destination: out, Source: src}}))
	if got := read(t, out); got != `{"user": "mp-user"}` {
		t.Fatalf("config.json = %q", got)
	}
	time.Sleep(10 * time.Millisecond) // a later modification time
	if err := os.WriteFile(src, []byte(`{"db_user": "{{ secret "replicated/mongo/user" }}"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() bool { return read(t, out) == `{"db_user": "mp-user"}` })
}

// BenchmarkSourceWriteToFile measures a DBA's write in /dba → replicated
// → file rendered by one agent (no debounce): p50 and p99 over the run.
func BenchmarkSourceWriteToFile(b *testing.B) {
	e := newEnv(b)
	out := filepath.Join(e.dir, "pw")
	cfg := e.config([]agent.Template{{Destination: out, Contents: `{{ secret "replicated/mongo/password" }}`}})
	cfg.Wait = agent.Wait{}
	e.start(cfg)
	var lat []time.Duration
	n := 0
	for b.Loop() {
		n++
		want := "v" + strconv.Itoa(n)
		start := time.Now()
		e.put("/dba/mp/mongo/password", want)
		for read(e.t, out) != want {
			time.Sleep(50 * time.Microsecond)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// runExec runs an agent that runs the exec test application, and returns
// the agent's signal channel and its result.
func (e *env) runExec(out string, extraEnv map[string]string) (chan os.Signal, <-chan error) {
	e.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		e.t.Fatal(err)
	}
	env := map[string]string{"DB_PASSWORD": `{{ secret "replicated/mongo/password" }}`, "GRAFT_AGENT_TEST_EXEC": "1"}
	for k, v := range extraEnv {
		env[k] = v
	}
	cfg := e.config(nil)
	cfg.Exec = &agent.Exec{Command: []string{exe, out}, Env: env, RestartOnChange: true, StopTimeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(cancel)
	a, err := agent.New(ctx, cfg, testenv.Logger(e.t), nil)
	if err != nil {
		e.t.Fatal(err)
	}
	sigs := make(chan os.Signal, 1)
	a.ForwardSignals(sigs)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	return sigs, done
}

// exec runs the application after the first complete render, with the
// values in its environment; restarts it (stop signal first) with the new
// environment when a value changes; forwards signals; and exits with the
// application's exit code when it exits on its own.
func TestAgentExecRestartsWithTheNewEnvironment(t *testing.T) {
	e := newEnv(t)
	out := filepath.Join(e.dir, "app.log")
	sigs, done := e.runExec(out, nil)
	testenv.WaitFor(t, 5*time.Second, func() bool { return strings.Contains(read(t, out), " s3cret-1\n") })
	first := strings.Fields(read(t, out))[1]
	e.put("/dba/mp/mongo/password", "s3cret-2")
	testenv.WaitFor(t, 5*time.Second, func() bool { return strings.Contains(read(t, out), " s3cret-2\n") })
	log := read(t, out)
	if !strings.Contains(log, first+" got terminated\n") || strings.Index(log, first+" got terminated") > strings.Index(log, " s3cret-2") {
		t.Fatalf("the first process was not stopped before the second started:\n%s", log)
	}
	sigs <- syscall.SIGHUP
	testenv.WaitFor(t, 5*time.Second, func() bool { return strings.Contains(read(t, out), "got hangup") })
	sigs <- syscall.SIGTERM
	select {
	case err := <-done:
		var exit *agent.ExitError
		if !errors.As(err, &exit) || exit.Code != 0 {
			t.Fatalf("the agent after its application exited on SIGTERM: %v, want exit status 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not exit with its application")
	}
}

func TestAgentExecExitsWithTheApplicationsCode(t *testing.T) {
	e := newEnv(t)
	_, done := e.runExec(filepath.Join(e.dir, "app.log"), map[string]string{"GRAFT_TEST_EXIT": "7"})
	select {
	case err := <-done:
		var exit *agent.ExitError
		if !errors.As(err, &exit) || exit.Code != 7 {
			t.Fatalf("Run = %v, want the application's exit status 7", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not exit with its application")
	}
}

// An agent whose token graftd refuses reads its token file again: once a
// valid token is there (provisioned late, or rotated), it connects with it.
func TestAgentPicksUpANewTokenFile(t *testing.T) {
	e := newEnv(t)
	out := filepath.Join(e.dir, "db.env")
	cfg := e.config([]agent.Template{{Destination: out, Contents: dbEnv}})
	if err := os.WriteFile(cfg.TokenFile, []byte("graft_not-a-valid-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := agent.New(ctx, cfg, testenv.Logger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(300 * time.Millisecond)
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("rendered with a token graftd refuses")
	}
	if err := os.WriteFile(cfg.TokenFile, []byte(e.token), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, func() bool { return strings.Contains(read(t, out), "s3cret-1") })
}

// A replicated copy carries its source's commit time, which the agent's
// lag metric measures from (commitTime), so that it covers replication.
func TestReplicatedCopyCarriesTheSourceCommitTime(t *testing.T) {
	e := newEnv(t)
	tree, err := e.root.ReadTree(t.Context(), "/app/message-processor/replicated/mongo")
	if err != nil || len(tree.Entries) != 2 {
		t.Fatalf("read the copies: %+v, %v", tree, err)
	}
	src, err := e.root.Get(t.Context(), "/dba/mp/mongo/password")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range tree.Entries {
		if c.Path == "/app/message-processor/replicated/mongo/password" {
			if c.Origin == nil || !c.Origin.SourceTime.Equal(src.Time) || !c.Time.After(c.Origin.SourceTime) {
				t.Fatalf("copy origin %+v, copy time %s; want the source's commit time %s", c.Origin, c.Time, src.Time)
			}
		}
	}
}
