package agent

import (
	"context"
	"errors"
	"fmt"
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

// child is the running application.
type child struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// renderEnv renders exec.env from the current view; the names are sorted.
// A failure keeps the environment the application runs with.
func (a *Agent) renderEnv() ([]string, error) {
	names := make([]string, 0, len(a.cfg.Exec.Env))
	for k := range a.cfg.Exec.Env {
		names = append(names, k)
	}
	slices.Sort(names)
	d := newDeps()
	var env []string
	var errs []error
	v := a.view()
	for _, k := range names {
		out, kd, err := v.render("exec.env."+k, a.cfg.Exec.Env[k])
		d.add(kd)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		env = append(env, k+"="+string(out))
	}
	a.envDeps = d
	return env, errors.Join(errs...)
}

// start runs the application with env added to the agent's environment.
//
// The application runs in a process group of its own, so that its stop
// signal and the final SIGKILL reach the processes it started too, and
// with SIGKILL as its parent-death signal, so that an agent that is
// killed (kill -9, the OOM killer) leaves no orphan behind for the next
// agent to run a second copy beside. The kernel sends that signal when
// the thread that forked the child exits, not the process: the fork
// happens on the spawner's thread, locked for the agent's life.
func (a *Agent) start(env []string) error {
	cmd := exec.Command(a.cfg.Exec.Command[0], a.cfg.Exec.Command[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := a.spawn(cmd); err != nil {
		return fmt.Errorf("exec %s: %w", a.cfg.Exec.Command[0], err)
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	a.mu.Lock()
	a.child = c
	a.mu.Unlock()
	a.log.Info("application started", "command", a.cfg.Exec.Command[0], "pid", cmd.Process.Pid, "revision", a.revision)
	return nil
}

// stop ends the application: its stop signal, then SIGKILL after the stop
// timeout.
func (a *Agent) stop() {
	c := a.child
	if c == nil {
		return
	}
	a.mu.Lock()
	a.child = nil
	a.mu.Unlock()
	sig, _ := parseSignal(a.cfg.Exec.StopSignal)
	if a.cfg.Exec.StopSignal == "" {
		sig = syscall.SIGTERM
	}
	timeout := a.cfg.Exec.StopTimeout
	if timeout <= 0 {
		timeout = defaultStopTimeout
	}
	c.signalGroup(sig)
	select {
	case <-c.done:
	case <-time.After(timeout):
		a.log.Warn("the application did not stop in time; killing it", "pid", c.cmd.Process.Pid, "stop_timeout", timeout)
		c.signalGroup(syscall.SIGKILL)
		<-c.done
	}
	// What the application started and left behind goes with it.
	c.signalGroup(syscall.SIGKILL)
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

// spawn starts cmd on the spawner's thread.
func (a *Agent) spawn(cmd *exec.Cmd) error {
	a.spawner.once.Do(func() {
		a.spawner.requests = make(chan spawnRequest)
		go func() {
			// Never unlocked: the thread exits with the agent, and only
			// then do the children get their parent-death signal.
			runtime.LockOSThread()
			for r := range a.spawner.requests {
				r.done <- r.cmd.Start()
			}
		}()
	})
	r := spawnRequest{cmd: cmd, done: make(chan error, 1)}
	a.spawner.requests <- r
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

// childDone is closed when the running application exits (never, while
// none runs).
func (a *Agent) childDone() <-chan struct{} {
	if a.child == nil {
		return nil
	}
	return a.child.done
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

// superviseEnv brings the application in line with the current view: it
// starts it after the first complete render, and restarts it when its
// environment changed (or, with files, when a file changed) and
// RestartOnChange is set. It reports whether it (re)started it.
func (a *Agent) superviseEnv(complete, filesChanged bool) bool {
	if a.cfg.Exec == nil {
		return false
	}
	env, err := a.renderEnv()
	if err != nil {
		a.log.Error("exec.env failed; the application keeps its environment", "revision", a.revision, "err", err)
		if a.child == nil {
			return false
		}
	}
	envChanged := err == nil && strings.Join(env, "\x00") != strings.Join(a.childEnv, "\x00")
	switch {
	case a.child == nil:
		if !complete || err != nil {
			return false // exec waits for the first complete render
		}
	case (envChanged || filesChanged) && a.cfg.Exec.RestartOnChange:
		a.log.Info("restarting the application for the new values", "revision", a.revision)
		a.stop()
	default:
		return false
	}
	if err := a.start(env); err != nil {
		a.log.Error("cannot start the application", "err", err)
		return false
	}
	a.childEnv = env
	return true
}

// forward passes the signals graft-agent receives to the application; a
// SIGTERM or SIGINT before it runs stops the agent.
func (a *Agent) forward(ctx context.Context, signals <-chan os.Signal, cancel func()) {
	for {
		var sig os.Signal
		select {
		case <-ctx.Done():
			return
		case s, ok := <-signals:
			if !ok {
				return
			}
			sig = s
		}
		a.mu.Lock()
		c := a.child
		a.mu.Unlock()
		switch {
		case c != nil && sig != syscall.SIGHUP && isSyscallSignal(sig):
			// A terminal would have sent SIGINT to the whole foreground
			// group; the application's group is its own now.
			c.signalGroup(sig.(syscall.Signal))
		case c != nil:
			c.cmd.Process.Signal(sig)
		case sig != syscall.SIGHUP:
			cancel()
		}
	}
}
