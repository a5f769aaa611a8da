package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/sdk"
)

// TestMain makes the test binary graft-agent itself when
// GRAFT_AGENT_TEST_MAIN is set, so that the exec tests run graft-agent's
// own main as a process they can kill -9; it is also graftdtest's graftd.
func TestMain(m *testing.M) {
	graftdtest.Main()
	if os.Getenv("GRAFT_AGENT_TEST_MAIN") != "" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// execAgent is a graft-agent process that runs an application with exec.
type execAgent struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it exited
}

// startExecAgent runs graft-agent with config as a process of its own.
func startExecAgent(t *testing.T, config string) *execAgent {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "--config", config)
	cmd.Env = append(os.Environ(), "GRAFT_AGENT_TEST_MAIN=1")
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	// An application left behind holds the output pipes open; Wait must
	// not wait for it.
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &execAgent{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-a.done
	})
	return a
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("graft-agent: %s", strings.TrimSpace(string(p)))
	return len(p), nil
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

// pids reads the pids the applications appended to file, and kills them
// all when the test ends, whatever it found.
func pids(t *testing.T, file string) []int {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []int
	for _, f := range strings.Fields(string(data)) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		out = append(out, n)
		t.Cleanup(func() { syscall.Kill(n, syscall.SIGKILL) })
	}
	return out
}

// execConfig writes the configuration of an agent of app:pet whose exec
// runs script with PW in its environment.
func execConfig(t *testing.T, g *graftdtest.Graftd, dir, script string) string {
	t.Helper()
	tokenFile, _ := g.TokenFile(t, "app:pet", "app")
	root, err := sdk.New(t.Context(), sdk.Config{Addr: g.Addr, Token: g.Token})
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if _, err := root.Put(t.Context(), "/app/pet/config/pw", []byte("pw-1")); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "agent.yaml")
	text := "server: " + g.Addr + "\ntoken_file: " + tokenFile + "\napp: pet\nid: pet-1\nlisten: \"off\"\n" +
		"exec:\n  command: [/bin/sh, -c, " + strconv.Quote(script) + "]\n  env: {PW: '{{ secret \"config/pw\" }}'}\n  stop_timeout: 5s\n"
	if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return config
}

// An application run with exec dies with its agent: after a kill -9 of
// graft-agent and a restart, exactly one copy of the application runs.
func TestExecApplicationDiesWithAKilledAgent(t *testing.T) {
	g := graftdtest.Start(t)
	dir := t.TempDir()
	started := filepath.Join(dir, "pids")
	config := execConfig(t, g, dir, "echo $$ >> "+started+"; exec sleep 1000")

	first := startExecAgent(t, config)
	testenv.WaitFor(t, 10*time.Second, func() bool { return len(pids(t, started)) == 1 })
	app := pids(t, started)[0]
	first.cmd.Process.Kill()
	<-first.done
	deadline := time.Now().Add(5 * time.Second)
	for alive(app) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(app) {
		t.Errorf("the application (pid %d) outlived its agent's kill -9", app)
	}

	second := startExecAgent(t, config)
	testenv.WaitFor(t, 10*time.Second, func() bool { return len(pids(t, started)) == 2 })
	var running []int
	for _, pid := range pids(t, started) {
		if alive(pid) {
			running = append(running, pid)
		}
	}
	if len(running) != 1 {
		t.Fatalf("%d copies of the application run after the agent was killed and restarted (pids %v), want 1", len(running), running)
	}
	second.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-second.done:
	case <-time.After(10 * time.Second):
		t.Fatal("graft-agent did not exit after SIGTERM")
	}
}

// The stop signal reaches the processes the application started, not the
// application alone: none is left behind when the agent stops.
func TestExecStopReachesTheApplicationsChildren(t *testing.T) {
	g := graftdtest.Start(t)
	dir := t.TempDir()
	started, kids := filepath.Join(dir, "pids"), filepath.Join(dir, "kids")
	config := execConfig(t, g, dir, "sleep 1000 & echo $! >> "+kids+"; echo $$ >> "+started+"; wait")
	a := startExecAgent(t, config)
	testenv.WaitFor(t, 10*time.Second, func() bool { return len(pids(t, started)) == 1 && len(pids(t, kids)) == 1 })
	kid := pids(t, kids)[0]
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		t.Fatal("graft-agent did not exit after SIGTERM")
	}
	testenv.WaitFor(t, 5*time.Second, func() bool { return !alive(kid) })
}
