package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/dbproc"
	"github.com/graft-sh/graft/internal/mysqltest"
	"github.com/graft-sh/graft/internal/pgtest"
	"github.com/graft-sh/graft/internal/testenv"
)

// TestMain doubles as petstore: with PETSTORE_TEST_MAIN=1 the test binary
// is petstore (built with the test's flags, -race included), so the tests
// run it as a real process without a separate build.
func TestMain(m *testing.M) {
	if os.Getenv("PETSTORE_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// The database of a blue/green rotation: petstore's tables belong to the
// group role petstore (NOLOGIN), which owns the database; its login users
// are members and so share the tables.
const group = "petstore"

var passwords = map[string]string{"petstore_blue": "blue-pw-1", "petstore_green": "green pw 'quoted'"}

func newDatabase(t *testing.T) *pgtest.Server {
	t.Helper()
	pg := newEmptyDatabase(t)
	for user, password := range passwords {
		pg.CreateUser(t, user, password, group)
	}
	return pg
}

// newEmptyDatabase is the database petstore, owned by the group (NOLOGIN),
// with neither user.
func newEmptyDatabase(t *testing.T) *pgtest.Server {
	t.Helper()
	pg := pgtest.Start(t)
	t.Logf("PostgreSQL started in %s", pg.StartTime)
	pg.Exec(t, "postgres", "CREATE ROLE "+group+" NOLOGIN")
	pg.CreateDatabase(t, "petstore", group)
	return pg
}

// process is a running petstore.
type process struct {
	t       *testing.T
	cmd     *exec.Cmd
	log     *testenv.Buffer
	url     string
	pidfile string
	exited  chan struct{}
}

var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

// startPetstore runs petstore with args (and --listen, --pidfile) until
// the test ends, and waits until it serves.
func startPetstore(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	pidfile := filepath.Join(t.TempDir(), "petstore.pid")
	hasListen := false
	for _, a := range args {
		hasListen = hasListen || strings.HasPrefix(a, "--listen")
	}
	if !hasListen {
		args = append(args, "--listen", "127.0.0.1:0")
	}
	cmd := petstoreCommand(t, env, append(args, "--pidfile", pidfile)...)
	p := &process{t: t, cmd: cmd, log: &testenv.Buffer{}, pidfile: pidfile, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.stop()
		// Under -race petstore is race-instrumented too; its reports go to its log.
		if strings.Contains(p.log.String(), "WARNING: DATA RACE") {
			t.Error("the race detector found a data race in petstore")
		}
		if t.Failed() {
			t.Logf("petstore's log, its last 60 lines:\n%s", dbproc.Tail(p.log.String(), 60))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for p.url == "" {
		if m := listeningRE.FindStringSubmatch(p.log.String()); m != nil {
			p.url = "http://" + m[1]
			break
		}
		select {
		case <-p.exited:
			t.Fatalf("petstore exited at start (%s):\n%s", cmd.ProcessState, p.log)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("petstore did not listen within 30s:\n%s", p.log)
		}
	}
	testenv.WaitFor(t, 5*time.Second, func() bool { _, err := os.Stat(pidfile); return err == nil })
	return p
}

// petstoreCommand is petstore (this test binary) with args and only the
// environment env; it is killed if the test binary dies.
func petstoreCommand(t *testing.T, env []string, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append([]string{"PETSTORE_TEST_MAIN=1"}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// stop sends SIGTERM and waits for petstore to exit.
func (p *process) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		p.t.Errorf("petstore did not stop within 15s of SIGTERM")
	}
}

// hup sends SIGHUP to the pid in the pidfile, as graft-agent's signal
// reload does.
func (p *process) hup() {
	p.t.Helper()
	var pid int
	data, err := os.ReadFile(p.pidfile)
	if err == nil {
		_, err = fmt.Sscan(string(data), &pid)
	}
	if err != nil {
		p.t.Fatalf("read the pidfile: %v", err)
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		p.t.Fatal(err)
	}
}

// waitLog waits until petstore's log has n lines containing s.
func (p *process) waitLog(s string, n int) {
	p.t.Helper()
	if !p.logSays(s, n, 20*time.Second) {
		p.t.Fatalf("petstore's log does not say %q (%d times) within 20s", s, n)
	}
}

// logSays waits up to within until petstore's log has n lines containing
// s, and says whether it has.
func (p *process) logSays(s string, n int, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for strings.Count(p.log.String(), s) < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// call sends a request and returns the status and body.
func (p *process) call(method, path, body string) (int, string) {
	p.t.Helper()
	status, resp, err := request(http.DefaultClient, method, p.url+path, body)
	if err != nil {
		p.t.Fatal(err)
	}
	return status, resp
}

func request(c *http.Client, method, url, body string) (int, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data), err
}

// poller sends POST /pet and GET /pets from a few workers until stopped,
// and counts the answers that are not 201 and 200.
type poller struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	failures   []string
	stop       func()
}

// Bounds of a poller, whatever the test does.
const (
	pollWorkers     = 4
	pollMaxRequests = 200_000
	pollMaxTime     = 2 * time.Minute
)

func startPoller(t *testing.T, url string) *poller {
	ctx, cancel := context.WithTimeout(context.Background(), pollMaxTime)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: pollWorkers}}
	p := &poller{}
	var wg sync.WaitGroup
	for w := range pollWorkers {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil && p.ok.Load()+p.failed.Load() < pollMaxRequests; i++ {
				status, body, err := request(client, http.MethodPost, url+"/pet", fmt.Sprintf(`{"name": "poller-%d-%d"}`, w, i))
				p.record(ctx, "POST /pet", http.StatusCreated, status, body, err)
				status, body, err = request(client, http.MethodGet, url+"/pets?limit=5", "")
				p.record(ctx, "GET /pets", http.StatusOK, status, body, err)
			}
		})
	}
	var once sync.Once
	p.stop = func() { once.Do(func() { cancel(); wg.Wait(); client.CloseIdleConnections() }) }
	t.Cleanup(p.stop)
	return p
}

func (p *poller) record(ctx context.Context, what string, want, status int, body string, err error) {
	if ctx.Err() != nil && err != nil {
		return // stopped, not failed
	}
	if err == nil && status == want {
		p.ok.Add(1)
		return
	}
	p.failed.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.failures) < 10 {
		p.failures = append(p.failures, fmt.Sprintf("%s: %d %s %v", what, status, strings.TrimSpace(body), err))
	}
}

// waitOK waits until the poller has n more successful requests.
func (p *poller) waitOK(t *testing.T, n int64) {
	t.Helper()
	target := p.ok.Load() + n
	testenv.WaitFor(t, 30*time.Second, func() bool { return p.ok.Load() >= target })
}

// check stops the poller and fails the test if any request failed.
func (p *poller) check(t *testing.T) {
	t.Helper()
	p.stop()
	t.Logf("poller: %d requests succeeded, %d failed", p.ok.Load(), p.failed.Load())
	if n := p.failed.Load(); n > 0 {
		t.Errorf("%d requests failed; the first:\n%s", n, strings.Join(p.failures, "\n"))
	}
}

func decode[T any](t *testing.T, body string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return v
}

// On a machine with neither PostgreSQL nor MariaDB every test skips or
// passes without them (none fails because a subtest skipped), and each
// GRAFT_REQUIRE_* makes them fail.
func TestSkipsWithoutDatabases(t *testing.T) {
	hide := []string{"GRAFT_PG_BINDIR=/nonexistent", mysqltest.BinDirEnv + "=/nonexistent"}
	dbproc.CheckSkipsWithout(t, ".", hide, "GRAFT_REQUIRE_PG")
	dbproc.CheckSkipsWithout(t, ".", hide, "GRAFT_REQUIRE_MYSQL")
}
