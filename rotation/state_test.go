package rotation_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/rotation"
)

func spec() rotation.Spec {
	s := rotation.Spec{Name: "mp", Driver: rotation.DriverPostgres, Admin: "/dba/admin", Target: "/dba/mp",
		Users: []string{"mp-blue", "mp-green"}, Consumers: []string{"app:mp"}, Created: time.Unix(0, 0)}
	s.Normalize()
	return s
}

// Check is what keeps a rotator, buggy or not, to the state machine.
func TestCheck(t *testing.T) {
	now := time.Unix(1000, 0)
	sp := spec()
	step := func(name string, done bool) rotation.Step {
		s := rotation.Step{Name: name, Started: now}
		if done {
			s.Finished = now
		}
		return s
	}
	requested := rotation.State{Run: 1, Phase: rotation.PhaseRequested, ActiveUser: "mp-blue"}
	running := rotation.State{Run: 2, Phase: rotation.PhaseRunning, ActiveUser: "mp-blue", NewUser: "mp-green",
		Steps: []rotation.Step{step(rotation.StepKey, true)}}
	idle := rotation.State{Run: 1, Phase: rotation.PhaseDone, ActiveUser: "mp-blue", RunStarted: now}
	for _, c := range []struct {
		name      string
		old, next rotation.State
		secrets   bool
		want      string // "" allowed
	}{
		{"start a run asked for", requested, rotation.State{Run: 2, Phase: rotation.PhaseRunning, ActiveUser: "mp-blue", NewUser: "mp-green", Steps: []rotation.Step{step(rotation.StepKey, false)}}, true, ""},
		{"re-key the active user", requested, rotation.State{Run: 2, Phase: rotation.PhaseRunning, ActiveUser: "mp-blue", NewUser: "mp-blue", Steps: []rotation.Step{step(rotation.StepKey, false)}}, true, "must re-key mp-green"},
		{"start without passwords", requested, rotation.State{Run: 2, Phase: rotation.PhaseRunning, ActiveUser: "mp-blue", NewUser: "mp-green", Steps: []rotation.Step{step(rotation.StepKey, false)}}, false, "needs its new password"},
		{"start when not due", idle, rotation.State{Run: 2, Phase: rotation.PhaseRunning, ActiveUser: "mp-blue", NewUser: "mp-green", Steps: []rotation.Step{step(rotation.StepKey, false)}}, true, "only when asked for or due"},
		{"new passwords mid-run", running, withSteps(running, step(rotation.StepKey, true), step(rotation.StepTest, false)), true, "chosen once"},
		{"next step", running, withSteps(running, step(rotation.StepKey, true), step(rotation.StepTest, false)), false, ""},
		{"skip a step", running, withSteps(running, step(rotation.StepKey, true), step(rotation.StepPublish, false)), false, "cannot follow"},
		{"remove a step", running, withSteps(running), false, "never removed"},
		{"done too early", running, func() rotation.State { s := running; s.Phase, s.ActiveUser = rotation.PhaseDone, "mp-green"; return s }(), false, "only after its retire step"},
		{"roll back without a reason", running, func() rotation.State {
			s := withSteps(running, step(rotation.StepKey, true), step(rotation.StepRollbackDisable, false))
			s.Phase = rotation.PhaseRollingBack
			return s
		}(), false, "needs its reason"},
		{"roll back", running, func() rotation.State {
			s := withSteps(running, step(rotation.StepKey, true), step(rotation.StepRollbackDisable, false))
			s.Phase, s.Reason = rotation.PhaseRollingBack, "login test failed"
			return s
		}(), false, ""},
		{"change the new user", running, func() rotation.State { s := running; s.NewUser = "mp-blue"; return s }(), false, "does not change"},
		{"skip a run number", running, func() rotation.State { s := running; s.Run = 4; return s }(), false, "one after another"},
	} {
		err := rotation.Check(sp, c.old, c.next, c.secrets, now)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, rotation.ErrInvalid)):
			t.Errorf("%s: %v, want an ErrInvalid saying %q", c.name, err, c.want)
		}
	}
}

func withSteps(s rotation.State, steps ...rotation.Step) rotation.State {
	s.Steps = steps
	return s
}

func TestSpecValidate(t *testing.T) {
	bad := rotation.Spec{Name: "Bad_Name", Driver: "oracle", Admin: "/dba/x", Target: "/dba/x/y", Users: []string{"u"}, Every: time.Second}
	bad.Normalize()
	err := bad.Validate(func(string) error { return nil })
	for _, want := range []string{"name", "driver \"oracle\"", "overlap", "users: 1 given", "consumers: none", "every 1s"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("validate: %v: want it to say %q", err, want)
		}
	}
	if s := spec(); s.Group != "mp" || s.Validate(func(string) error { return nil }) != nil {
		t.Errorf("spec: group %q, %v", s.Group, s.Validate(func(string) error { return nil }))
	}
}
