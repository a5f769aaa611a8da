package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Exec makes the agent run the application itself: it starts Command once
// the first complete render is done, with Env (each value a template)
// added to the agent's environment, forwards SIGTERM, SIGINT and SIGHUP
// to it, restarts it with the new environment when a value it uses
// changes (RestartOnChange), and exits with its exit code when it exits
// on its own.
type Exec struct {
	Command         []string          `yaml:"command"`
	Env             map[string]string `yaml:"env"`
	RestartOnChange bool              `yaml:"restart_on_change"`
	// StopSignal stops it (default SIGTERM); after StopTimeout (default
	// 30s) it is killed.
	StopSignal  string        `yaml:"stop_signal"`
	StopTimeout time.Duration `yaml:"stop_timeout"`
}

const defaultStopTimeout = 30 * time.Second

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (e *Exec) validate(add func(string, ...any)) {
	if len(e.Command) == 0 || e.Command[0] == "" {
		add("exec.command: give the program and its arguments as a list")
	}
	for _, k := range slices.Sorted(maps.Keys(e.Env)) {
		if !envNameRE.MatchString(k) {
			add("exec.env: %q is not an environment variable name", k)
		}
		if err := parseTemplate("exec.env."+k, e.Env[k]); err != nil {
			add("exec.env.%s: %v", k, err)
		}
	}
	if _, err := parseSignal(e.StopSignal); err != nil {
		add("exec.stop_signal %q: %v", e.StopSignal, err)
	}
	if e.StopTimeout < 0 {
		add("exec.stop_timeout must not be negative")
	}
}

// ExitError is Run's error when the application run by exec exited on its
// own: graft-agent exits with the same code.
type ExitError struct{ Code int }

func (e *ExitError) Error() string {
	return fmt.Sprintf("the application exited with status %d", e.Code)
}

// supervisor runs the application for exec, as Vault Agent's exec
// server does: it owns the child process, the environment it runs with,
// the spawner that forks it, and the forwarding of graft-agent's signals
// to it.
//
// It has no Run of its own: the child's life follows the render loop,
// which starts it after the first complete render, restarts it when its
// environment or a file changes, and stops it on its way out (close), all
// from the loop's goroutine, so that a restart and the final stop never
// race. Only the signal forwarder (forward) runs as a task beside the
// loop; mu guards the child against it.
type supervisor struct {
	exec        Exec
	log         *slog.Logger
	stopSignal  syscall.Signal
	stopTimeout time.Duration
	// signals are graft-agent's, for the application (ForwardSignals);
	// nil: none are forwarded.
	signals <-chan os.Signal
	spawner spawner

	mu    sync.Mutex
	child *child

	// Only the render loop uses these.
	env []string // the environment the child runs with
}

// supervisorConfig is what a supervisor needs: exec's configuration (valid)
// and a logger.
type supervisorConfig struct {
	Exec Exec
	Log  *slog.Logger
}

// newSupervisor returns a supervisor that runs nothing yet.
func newSupervisor(cfg supervisorConfig) *supervisor {
	sig, _ := parseSignal(cfg.Exec.StopSignal)
	if cfg.Exec.StopSignal == "" {
		sig = syscall.SIGTERM
	}
	timeout := cfg.Exec.StopTimeout
	if timeout <= 0 {
		timeout = defaultStopTimeout
	}
	return &supervisor{exec: cfg.Exec, log: cfg.Log, stopSignal: sig, stopTimeout: timeout}
}

// child is the running application.
type child struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// renderEnv renders exec.env from v; the names are sorted. A failure
// keeps the environment the application runs with.
func (s *supervisor) renderEnv(v *view) ([]string, error) {
	names := make([]string, 0, len(s.exec.Env))
	for k := range s.exec.Env {
		names = append(names, k)
	}
	slices.Sort(names)
	var env []string
	var errs []error
	for _, k := range names {
		out, _, err := v.render("exec.env."+k, s.exec.Env[k])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		env = append(env, k+"="+string(out))
	}
	return env, errors.Join(errs...)
}

// start runs the application with env added to the agent's environment;
// revision is the one it starts for, for the log.
//
// The application runs in a process group of its own, so that its stop
// signal and the final SIGKILL reach the processes it started too, and
// with SIGKILL as its parent-death signal, so that an agent that is
// killed (kill -9, the OOM killer) leaves no orphan behind for the next
// agent to run a second copy beside (on Linux: childAttr). The kernel
// sends that signal when the thread that forked the child exits, not the
// process: the fork happens on the spawner's thread, locked for the
// agent's life.
func (s *supervisor) start(env []string, revision int64) error {
	cmd := exec.Command(s.exec.Command[0], s.exec.Command[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = childAttr()
	if err := s.spawner.start(cmd); err != nil {
		return fmt.Errorf("exec %s: %w", s.exec.Command[0], err)
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	s.mu.Lock()
	s.child = c
	s.mu.Unlock()
	s.log.Info("application started", "command", s.exec.Command[0], "pid", cmd.Process.Pid, "revision", revision)
	return nil
}

// stop ends the application: its stop signal, then SIGKILL after the stop
// timeout.
func (s *supervisor) stop() {
	s.mu.Lock()
	c := s.child
	s.child = nil
	s.mu.Unlock()
	if c == nil {
		return
	}
	c.signalGroup(s.stopSignal)
	select {
	case <-c.done:
	case <-time.After(s.stopTimeout):
		s.log.Warn("the application did not stop in time; killing it", "pid", c.cmd.Process.Pid, "stop_timeout", s.stopTimeout)
		c.signalGroup(syscall.SIGKILL)
		<-c.done
	}
	// What the application started and left behind goes with it.
	c.signalGroup(syscall.SIGKILL)
}

// close stops the application, then ends the spawner: nothing starts
// after it. The render loop calls it on its way out.
func (s *supervisor) close() {
	s.stop()
	s.spawner.close()
}

// running reports whether the application runs.
func (s *supervisor) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.child != nil
}

// done is closed when the running application exits: nil, which never
// delivers, while none runs or for an agent without exec (s nil), so that
// the render loop can select on it either way.
func (s *supervisor) done() <-chan struct{} {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.child == nil {
		return nil
	}
	return s.child.done
}

// exited forgets the application once done is closed, and returns its
// exit status as the agent's.
func (s *supervisor) exited() *ExitError {
	s.mu.Lock()
	c := s.child
	s.child = nil
	s.mu.Unlock()
	code := exitCode(c)
	s.log.Info("the application exited; so does the agent", "status", code)
	return &ExitError{Code: code}
}

// signalGroup sends sig to the application's process group: the
// application and every process it started that stayed in its group.
func (c *child) signalGroup(sig syscall.Signal) {
	if err := syscall.Kill(-c.cmd.Process.Pid, sig); err != nil {
		c.cmd.Process.Signal(sig)
	}
}

// spawner starts processes from one goroutine locked to its OS thread for
// the agent's life: a child's parent-death signal fires when the thread
// that forked it exits, and the Go runtime may end other threads.
type spawner struct {
	requests chan spawnRequest
	once     sync.Once
}

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

// start starts cmd on the spawner's thread.
func (s *spawner) start(cmd *exec.Cmd) error {
	s.once.Do(func() {
		s.requests = make(chan spawnRequest)
		go func() {
			// Never unlocked: the thread exits with the agent, and only
			// then do the children get their parent-death signal.
			runtime.LockOSThread()
			for r := range s.requests {
				r.done <- r.cmd.Start()
			}
		}()
	})
	r := spawnRequest{cmd: cmd, done: make(chan error, 1)}
	s.requests <- r
	return <-r.done
}

// close ends the spawner's goroutine, and its thread, once the
// application has stopped; nothing spawns after it.
func (s *spawner) close() {
	s.once.Do(func() {})
	if s.requests != nil {
		close(s.requests)
	}
}

func isSyscallSignal(sig os.Signal) bool {
	_, ok := sig.(syscall.Signal)
	return ok
}

// exitCode is the code the application exited with.
func exitCode(c *child) int {
	var exit *exec.ExitError
	if errors.As(c.err, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return exit.ExitCode()
	}
	if c.err != nil {
		return 1
	}
	return 0
}

// supervise brings the application in line with v, the tree as the
// render loop has it: it starts it after the first complete render
// (complete), and restarts it when its environment changed (or, with
// files, when a file changed) and RestartOnChange is set. It reports
// whether it (re)started it.
func (s *supervisor) supervise(v *view, complete, filesChanged bool) bool {
	env, err := s.renderEnv(v)
	if err != nil {
		s.log.Error("exec.env failed; the application keeps its environment", "revision", v.revision, "err", err)
		if !s.running() {
			return false
		}
	}
	envChanged := err == nil && strings.Join(env, "\x00") != strings.Join(s.env, "\x00")
	switch {
	case !s.running():
		if !complete || err != nil {
			return false // exec waits for the first complete render
		}
	case (envChanged || filesChanged) && s.exec.RestartOnChange:
		s.log.Info("restarting the application for the new values", "revision", v.revision)
		s.stop()
	default:
		return false
	}
	if err := s.start(env, v.revision); err != nil {
		s.log.Error("cannot start the application", "err", err)
		return false
	}
	s.env = env
	return true
}

// forward passes the signals graft-agent receives to the application; a
// SIGTERM or SIGINT before it runs stops the agent (stopAgent).
func (s *supervisor) forward(ctx context.Context, stopAgent func()) {
	for {
		var sig os.Signal
		select {
		case <-ctx.Done():
			return
		case sg, ok := <-s.signals:
			if !ok {
				return
			}
			sig = sg
		}
		s.mu.Lock()
		c := s.child
		s.mu.Unlock()
		switch {
		case c != nil && sig != syscall.SIGHUP && isSyscallSignal(sig):
			// A terminal would have sent SIGINT to the whole foreground
			// group; the application's group is its own now.
			c.signalGroup(sig.(syscall.Signal))
		case c != nil:
			c.cmd.Process.Signal(sig)
		case sig != syscall.SIGHUP:
			stopAgent()
		}
	}
}
