package agent_test

import (
	"context"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/pgtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/sdk"
)

// rotatorProcess is a rotator agent as a process of its own, which kills
// itself with SIGKILL at the boundary killAt ("" never): the crash the
// matrix below injects.
func rotatorProcess(server, tokenFile, id, killAt string) {
	cfg := agent.DefaultConfig()
	cfg.Server, cfg.TokenFile, cfg.ID, cfg.Listen = server, tokenFile, id, "off"
	cfg.Rotations = agent.Rotations{All: true}
	cfg.RotationClaimTTL = 2 * time.Second
	cfg.RotationHook = func(_ string, b rotation.Boundary) {
		if b.String() == killAt {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	a, err := agent.New(ctx, cfg, nil, nil)
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(2)
	}
	a.Run(ctx)
}

type rotatorProc struct {
	cmd  *exec.Cmd
	done chan error
	out  *testenv.Buffer
}

func (r *rotationRig) rotatorProc(id, killAt string) *rotatorProc {
	r.t.Helper()
	p := &rotatorProc{done: make(chan error, 1), out: &testenv.Buffer{}}
	p.cmd = exec.Command(os.Args[0], r.g.Addr, r.dbaTF, id, killAt)
	p.cmd.Env = append(os.Environ(), "GRAFT_AGENT_TEST_ROTATOR=1")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	r.t.Cleanup(func() { p.cmd.Process.Kill(); <-p.done })
	return p
}

// stop ends the rotator as SIGTERM does, which gives its claims up.
func (p *rotatorProc) stop(t *testing.T) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("the rotator did not stop on SIGTERM:\n%s", p.out)
	}
	p.done <- nil // for the cleanup
}

// checker logs in with the credential the consumer has rendered, without
// pause, and counts the times it could not.
type checker struct {
	mu       sync.Mutex
	checks   int
	failures []string
	stop     func()
	done     chan struct{}
}

func (r *rotationRig) check() *checker {
	ctx, cancel := context.WithCancel(context.Background())
	c := &checker{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for ctx.Err() == nil {
			user, password := r.rendered()
			if user != "" {
				err := r.login(ctx, user, password)
				c.mu.Lock()
				c.checks++
				if err != nil && ctx.Err() == nil {
					c.failures = append(c.failures, user+": "+err.Error())
				}
				c.mu.Unlock()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return c
}

func (c *checker) end(t *testing.T) {
	c.stop()
	<-c.done
	if len(c.failures) > 0 {
		t.Errorf("the consumer's credential could not log in %d of %d times: %s", len(c.failures), c.checks, strings.Join(c.failures, "; "))
	}
	if c.checks == 0 {
		t.Error("the checker never logged in")
	}
}

// The crash matrix: a rotator is killed with SIGKILL at every boundary of
// a run — after each step's start is stored, after its side effect, after
// its end is stored — and a second rotator takes the claim over when it
// expires and completes the run. Throughout, the credential the consumer
// holds logs in, and every run publishes its credential exactly once (a
// resumed step does not re-key or publish again).
func TestRotatorCrashMatrix(t *testing.T) {
	r := newRotationRig(t)
	r.create(nil)
	// The first run creates the users; the crashes are in the runs after.
	first := r.rotatorProc("first", "")
	if rot := r.run(60 * time.Second); rot.State.Phase != rotation.PhaseDone {
		t.Fatalf("run 1: %s (%s)", rot.State.Phase, rot.State.Reason)
	}
	first.stop(t)
	chk := r.check()
	active := blue
	runs := 1
	for _, step := range []string{rotation.StepKey, rotation.StepTest, rotation.StepPublish, rotation.StepRollout, rotation.StepRetire} {
		for _, at := range []string{"begun", "applied", "finished"} {
			b := rotation.Boundary{Step: step, At: at}.String()
			victim := r.rotatorProc("victim", b)
			if _, err := r.dba.RunRotation(t.Context(), rotName); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-victim.done:
				victim.done <- err
				if !strings.Contains(err.Error(), "killed") {
					t.Fatalf("%s: the rotator ended with %v, not SIGKILL:\n%s", b, err, victim.out)
				}
			case <-time.After(60 * time.Second):
				t.Fatalf("%s: the rotator never reached the boundary:\n%s", b, victim.out)
			}
			heir := r.rotatorProc("heir", "")
			var rot = r.waitRun(int64(runs+1), 60*time.Second)
			heir.stop(t)
			runs++
			if rot.State.Phase != rotation.PhaseDone {
				t.Fatalf("%s: run %d ended %s: %s", b, rot.State.Run, rot.State.Phase, rot.State.Reason)
			}
			want := green
			if active == green {
				want = blue
			}
			if rot.State.ActiveUser != want {
				t.Fatalf("%s: active user %s after run %d, want %s", b, rot.State.ActiveUser, rot.State.Run, want)
			}
			active = want
			if rot.State.Rotator != "heir" {
				t.Errorf("%s: run %d was finished by %q, want the second rotator", b, rot.State.Run, rot.State.Rotator)
			}
			t.Logf("%s: run %d done by the second rotator in %s", b, rot.State.Run, rot.State.RunFinished.Sub(rot.State.RunStarted).Round(time.Millisecond))
		}
	}
	chk.end(t)
	hist, err := r.dba.History(t.Context(), rotTarget+"/password")
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != runs {
		t.Errorf("the target's password has %d versions after %d runs: want one publish per run", len(hist), runs)
	}
}

// waitRun waits until run n has ended.
func (r *rotationRig) waitRun(n int64, timeout time.Duration) sdk.Rotation {
	r.t.Helper()
	var rot sdk.Rotation
	testenv.WaitFor(r.t, timeout, func() bool {
		var err error
		rot, err = r.dba.GetRotation(r.t.Context(), rotName)
		return err == nil && rot.State.Run >= n && !rot.State.Phase.InProgress()
	})
	return rot
}

// graftd restarted in the middle of runs: while the rotator's step is
// begun and its side effect done, graftd goes away and comes back; the
// rotator stores the step once it is back, and the run completes.
func TestRotatorSurvivesAGraftdRestart(t *testing.T) {
	r := newRotationRig(t)
	r.create(nil)
	restartAt := map[string]bool{"publish/applied": true, "rollout/begun": true, "retire/applied": true}
	var mu sync.Mutex
	restarted := []string{}
	r.rotator("rotator-1", func(_ string, b rotation.Boundary) {
		mu.Lock()
		defer mu.Unlock()
		if restartAt[b.String()] {
			delete(restartAt, b.String())
			r.g.Restart(t)
			restarted = append(restarted, b.String())
		}
	})
	chk := r.check()
	for n := range 3 {
		if rot := r.run(90 * time.Second); rot.State.Phase != rotation.PhaseDone {
			t.Fatalf("run %d: %s (%s)", n+1, rot.State.Phase, rot.State.Reason)
		}
	}
	chk.end(t)
	mu.Lock()
	defer mu.Unlock()
	if len(restarted) != 3 {
		t.Fatalf("graftd was restarted at %v: want three boundaries", restarted)
	}
}

// graftd killed in the middle of runs: graftd is a process of its own,
// and at each boundary of a run's plan the rotator's hook kills it with
// SIGKILL — nothing saved, no lease or leadership given up, every
// connection dropped — and returns, so the rotator meets graftd gone;
// the test starts graftd again on the same data and address. Every run
// completes, and one that a consumer refuses rolls back to a credential
// that works. Throughout, the credential the consumer holds logs in, and
// every run draws and publishes its credential once.
func TestRotatorSurvivesAGraftdKill(t *testing.T) {
	pg := pgtest.Start(t)
	r := newRotationRigOn(t, pg, graftdtest.StartProcess(t))
	r.create(nil)
	runs := []struct {
		kill   []string
		reject bool // the consumer refuses the new user: the run rolls back
	}{
		{kill: []string{"key/begun", "test/finished", "publish/applied"}}, // the first run creates the users
		{kill: []string{"key/applied", "publish/begun", "rollout/begun", "retire/begun", "retire/applied"}},
		{kill: []string{"test/begun", "publish/finished", "rollout/applied", "rollout/finished", "retire/finished"}},
		{kill: []string{"rollback-publish/begun", "rollback-rollout/begun", "rollback-disable/applied"}, reject: true},
	}
	var (
		mu     sync.Mutex
		plan   map[string]bool // where the run in progress kills graftd yet
		begun  int             // runs begun: each draws its password once
		killed = make(chan string, 1)
	)
	logs := r.rotator("rotator-1", func(_ string, b rotation.Boundary) {
		mu.Lock()
		if b.String() == "key/begun" {
			begun++
		}
		kill := plan[b.String()]
		delete(plan, b.String())
		mu.Unlock()
		if !kill {
			return
		}
		if err := r.g.Kill(); err != nil {
			t.Error(err)
			return
		}
		killed <- b.String()
	})
	chk := r.check()
	ctx := t.Context()
	active, published := "", 0
	for n, run := range runs {
		mu.Lock()
		plan = map[string]bool{}
		for _, b := range run.kill {
			plan[b] = true
		}
		mu.Unlock()
		want := blue
		if active == blue {
			want = green
		}
		if run.reject {
			r.reject.Store(want)
		}
		var prevUser, prevPW string
		if active != "" {
			prevUser, prevPW = r.target()
		}
		start, err := r.dba.RunRotation(ctx, rotName)
		if err != nil {
			t.Fatal(err)
		}
		// Until the run ends, graftd is started again each time the hook
		// killed it.
		var rot sdk.Rotation
		kills := 0
		deadline := time.After(90 * time.Second)
		tick := time.NewTicker(20 * time.Millisecond)
		for ended := false; !ended; {
			select {
			case <-killed:
				kills++
				r.g.StartAgain(t)
			case <-tick.C:
				gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				rot, err = r.dba.GetRotation(gctx, rotName)
				cancel()
				ended = err == nil && rot.State.Run > start.State.Run && !rot.State.Phase.InProgress()
			case <-deadline:
				mu.Lock()
				left := plan
				mu.Unlock()
				t.Fatalf("run %d did not end within 90s (%v, last state %s; graftd not killed yet at %v); the rotator's log:\n%s", n+1, err, rot.State.Phase, left, logs)
			}
		}
		tick.Stop()
		mu.Lock()
		left := len(plan)
		mu.Unlock()
		if left > 0 || kills != len(run.kill) {
			t.Fatalf("run %d ended %s (%s) with graftd killed %d times; want at each of %v", rot.State.Run, rot.State.Phase, rot.State.Reason, kills, run.kill)
		}
		if rot.State.Run != start.State.Run+1 {
			t.Fatalf("run %d followed run %d", rot.State.Run, start.State.Run)
		}
		published++
		if run.reject {
			// The rollback publishes the old credential again, and the
			// consumer goes back to it.
			published++
			if rot.State.Phase != rotation.PhaseFailed || !strings.Contains(rot.State.Reason, "unhealthy") || rot.State.ActiveUser != active {
				t.Fatalf("run %d: %s active %q (%s): want rolled back to %s because the consumer was unhealthy", rot.State.Run, rot.State.Phase, rot.State.ActiveUser, rot.State.Reason, active)
			}
			if s, ok := rot.State.Step(rotation.StepRollbackDisable); !ok || !s.Done() {
				t.Fatalf("run %d: the new user was not disabled", rot.State.Run)
			}
			if u, p := r.target(); u != prevUser || p != prevPW {
				t.Fatalf("run %d: the target holds %s after the rollback, want %s with its password", rot.State.Run, u, prevUser)
			}
			testenv.WaitFor(t, 20*time.Second, func() bool { u, _ := r.rendered(); return u == active })
			if err := r.login(ctx, prevUser, prevPW); err != nil {
				t.Fatalf("run %d: %s cannot log in after the rollback: %v", rot.State.Run, prevUser, err)
			}
			var canLogin bool
			if err := pg.Connect(t, "postgres").QueryRow(ctx, "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", want).Scan(&canLogin); err != nil || canLogin {
				t.Fatalf("run %d: %s can log in after the rollback (%v)", rot.State.Run, want, err)
			}
			r.reject.Store("")
		} else {
			if rot.State.Phase != rotation.PhaseDone || rot.State.ActiveUser != want {
				t.Fatalf("run %d: %s active %q (%s): want done with %s", rot.State.Run, rot.State.Phase, rot.State.ActiveUser, rot.State.Reason, want)
			}
			active = want
		}
		t.Logf("run %d: %s with graftd killed at %v, in %s", rot.State.Run, rot.State.Phase, run.kill, rot.State.RunFinished.Sub(rot.State.RunStarted).Round(time.Millisecond))
	}
	chk.end(t)
	mu.Lock()
	defer mu.Unlock()
	if begun != len(runs) {
		t.Errorf("%d runs began %d times: a run that begins again draws a new password", len(runs), begun)
	}
	hist, err := r.dba.History(ctx, rotTarget+"/password")
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != published {
		t.Errorf("the target's password has %d versions after %d runs: want one publish per run and per rollback, %d", len(hist), len(runs), published)
	}
}
