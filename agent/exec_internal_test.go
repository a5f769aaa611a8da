package agent

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
)

// testSupervisor returns a supervisor of e, stopped when the test ends.
func testSupervisor(t *testing.T, e Exec) *supervisor {
	t.Helper()
	s := newSupervisor(supervisorConfig{Exec: e, Log: testenv.Logger(t)})
	t.Cleanup(s.close)
	return s
}

// appView is a tree of one value, the application's password.
func appView(revision int64, password string) *view {
	values := map[string][]byte{}
	if password != "" {
		values["/app/a/pw"] = []byte(password)
	}
	return &view{root: "/app/a", values: values, revision: revision}
}

// The supervisor starts the application only with a complete render and
// its environment, leaves it alone while nothing it uses changes, and on
// a change stops it before it starts the next: one application runs at a
// time. An environment that fails to render keeps the running one.
func TestSupervisorRestartKeepsOneChild(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "app.log")
	s := testSupervisor(t, Exec{Command: []string{exe, out}, RestartOnChange: true, StopTimeout: 5 * time.Second,
		Env: map[string]string{"DB_PASSWORD": `{{ secret "pw" }}`, "GRAFT_AGENT_TEST_EXEC": "1"}})

	steps := []struct {
		name          string
		view          *view
		complete      bool
		wantRestarted bool
		wantStarts    int
	}{
		{"incomplete render", appView(1, "one"), false, false, 0},
		{"env fails before the first start", appView(2, ""), true, false, 0},
		{"first complete render", appView(3, "one"), true, true, 1},
		{"same environment", appView(4, "one"), true, false, 1},
		{"env fails while it runs", appView(5, ""), true, false, 1},
		{"new password", appView(6, "two"), true, true, 2},
	}
	var pids []int
	for _, st := range steps {
		if got := s.supervise(st.view, st.complete, false); got != st.wantRestarted {
			t.Fatalf("%s: supervise = %v, want %v", st.name, got, st.wantRestarted)
		}
		if got := s.running(); got != (st.wantStarts > 0) {
			t.Fatalf("%s: running = %v, want %v", st.name, got, st.wantStarts > 0)
		}
		if st.wantRestarted {
			s.mu.Lock()
			pids = append(pids, s.child.cmd.Process.Pid)
			s.mu.Unlock()
			pw := strings.TrimPrefix(s.env[0], "DB_PASSWORD=")
			testenv.WaitFor(t, 5*time.Second, func() bool { return strings.Contains(readFile(out), " "+pw+"\n") })
		}
		if got := strings.Count(readFile(out), "start "); got != st.wantStarts {
			t.Fatalf("%s: %d starts, want %d:\n%s", st.name, got, st.wantStarts, readFile(out))
		}
	}
	log := readFile(out)
	first, second := strconv.Itoa(pids[0]), strconv.Itoa(pids[1])
	stopped, started := strings.Index(log, first+" got terminated\n"), strings.Index(log, "start "+second+" two\n")
	if stopped < 0 || stopped > started {
		t.Fatalf("the first application (%s) was not stopped before the second (%s) started:\n%s", first, second, log)
	}
	if alive(pids[0]) || !alive(pids[1]) {
		t.Fatalf("alive: first %v, second %v; want only the second", alive(pids[0]), alive(pids[1]))
	}
	select {
	case <-s.done():
		t.Fatal("done is closed while the application runs")
	default:
	}
}

// An application that ignores its stop signal gets it, is killed after the
// stop timeout, and what it started goes with it.
func TestSupervisorStopKillsAfterTheTimeout(t *testing.T) {
	dir := t.TempDir()
	log, bg, pid := filepath.Join(dir, "log"), filepath.Join(dir, "bg"), filepath.Join(dir, "pid")
	// The shell notes its stop signal and carries on; its background
	// process ignores the signal altogether.
	script := `trap 'echo term >> ` + log + `' TERM
(trap '' TERM; exec sleep 1000) &
echo $! > ` + bg + `
echo $$ > ` + pid + `
while :; do sleep 0.05; done`
	const timeout = 300 * time.Millisecond
	s := testSupervisor(t, Exec{Command: []string{"/bin/sh", "-c", script}, StopTimeout: timeout})
	if err := s.start(nil, 1); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() bool { return strings.HasSuffix(readFile(pid), "\n") })
	bgPid, err := strconv.Atoi(strings.TrimSpace(readFile(bg)))
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	c := s.child
	s.mu.Unlock()

	stopped := make(chan time.Duration, 1)
	start := time.Now()
	go func() { s.stop(); stopped <- time.Since(start) }()
	var took time.Duration
	select {
	case took = <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("stop did not return: the application was not killed")
	}
	if took < timeout {
		t.Errorf("stop returned after %s, before the stop timeout %s", took, timeout)
	}
	if !strings.Contains(readFile(log), "term") {
		t.Error("the application never got its stop signal")
	}
	if got := exitCode(c); got != 128+int(syscall.SIGKILL) {
		t.Errorf("exit status %d, want %d (killed)", got, 128+int(syscall.SIGKILL))
	}
	if s.running() {
		t.Error("still running after stop")
	}
	testenv.WaitFor(t, 5*time.Second, func() bool { return !alive(bgPid) })
}

// Forwarded signals go to the application; before it runs, SIGTERM or
// SIGINT stops the agent and SIGHUP does not.
func TestSupervisorForwardsSignals(t *testing.T) {
	out := filepath.Join(t.TempDir(), "app.log")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := testSupervisor(t, Exec{Command: []string{exe, out}, StopTimeout: 5 * time.Second})
	sigs := make(chan os.Signal) // unbuffered: a send returns once forward has the signal
	s.signals = sigs
	stops := make(chan struct{}, 3)
	forward := func() (stop func()) {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { defer close(done); s.forward(ctx, func() { stops <- struct{}{} }) }()
		// forward handles the signal it has before it sees ctx end.
		return func() { cancel(); <-done }
	}
	stopForward := forward()

	for _, st := range []struct {
		sig       os.Signal
		wantStops int
	}{{syscall.SIGHUP, 0}, {syscall.SIGTERM, 1}, {syscall.SIGINT, 1}} {
		sigs <- st.sig
		sigs <- syscall.SIGHUP // handled once the one before is
		if got := len(stops); got != st.wantStops {
			t.Errorf("%s before the application runs: the agent stopped %d times, want %d", st.sig, got, st.wantStops)
		}
		for len(stops) > 0 {
			<-stops
		}
	}

	// The last SIGHUP is handled before the application starts: it would
	// kill it before it catches the signal.
	stopForward()
	if err := s.start([]string{"GRAFT_AGENT_TEST_EXEC=1"}, 1); err != nil {
		t.Fatal(err)
	}
	defer forward()()
	testenv.WaitFor(t, 5*time.Second, func() bool { return strings.Contains(readFile(out), "start ") })
	sigs <- syscall.SIGHUP
	testenv.WaitFor(t, 5*time.Second, func() bool { return strings.Contains(readFile(out), "got hangup") })
	sigs <- syscall.SIGTERM
	select {
	case <-s.done():
	case <-time.After(5 * time.Second):
		t.Fatal("the application did not exit on the forwarded SIGTERM")
	}
	if exit := s.exited(); exit.Code != 0 || len(stops) != 0 {
		t.Errorf("exit %d and %d agent stops, want 0 and 0: the signal is the application's", exit.Code, len(stops))
	}
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// alive reports whether process pid runs (a zombie does not).
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, after, _ := strings.Cut(string(stat), ") ")
	return !strings.HasPrefix(after, "Z")
}
