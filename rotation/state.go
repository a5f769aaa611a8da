package rotation

import (
	"fmt"
	"slices"
	"time"
)

// Phase is where a rotation's current or last run stands.
type Phase string

// The phases.
const (
	PhaseIdle        Phase = "idle"
	PhaseRequested   Phase = "requested"
	PhaseRunning     Phase = "running"
	PhaseRollingBack Phase = "rolling-back"
	PhaseDone        Phase = "done"
	PhaseFailed      Phase = "failed"
)

// InProgress reports whether a run is under way (asked for, running or
// rolling back).
func (p Phase) InProgress() bool {
	return p == PhaseRequested || p == PhaseRunning || p == PhaseRollingBack
}

// The steps of a run, in order, and of a rollback.
const (
	StepKey             = "key"
	StepTest            = "test"
	StepPublish         = "publish"
	StepRollout         = "rollout"
	StepRetire          = "retire"
	StepRollbackPublish = "rollback-publish"
	StepRollbackRollout = "rollback-rollout"
	StepRollbackDisable = "rollback-disable"
)

// The order of the steps of a run and of a rollback: Check holds a
// rotator to it, and the Runner follows it (nextStep): the one place
// it is written.
var (
	runSteps      = []string{StepKey, StepTest, StepPublish, StepRollout, StepRetire}
	rollbackSteps = []string{StepRollbackPublish, StepRollbackRollout, StepRollbackDisable}
)

// nextStep returns the step that comes after step in its run or
// rollback, or "" when step is the last one (or not a step).
func nextStep(step string) string {
	for _, steps := range [][]string{runSteps, rollbackSteps} {
		if i := slices.Index(steps, step); i >= 0 && i+1 < len(steps) {
			return steps[i+1]
		}
	}
	return ""
}

// Step is one step of a run. It is persisted when it begins (Finished
// zero) and again when its side effect is done, so a run resumed after a
// crash knows whether to do the side effect, which is idempotent, again.
type Step struct {
	Name     string    `json:"name"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	Detail   string    `json:"detail,omitempty"`
}

// Done reports whether the step's side effect is done.
func (s Step) Done() bool { return !s.Finished.IsZero() }

// State is a rotation's persisted state machine.
type State struct {
	Run               int64     `json:"run"`
	Phase             Phase     `json:"phase"`
	Steps             []Step    `json:"steps,omitempty"`
	ActiveUser        string    `json:"activeUser,omitempty"`
	NewUser           string    `json:"newUser,omitempty"`
	PublishedRevision int64     `json:"publishedRevision,omitempty"`
	RollbackRevision  int64     `json:"rollbackRevision,omitempty"`
	RetireAt          time.Time `json:"retireAt,omitzero"`
	Reason            string    `json:"reason,omitempty"`
	Requested         time.Time `json:"requested,omitzero"`
	RequestedBy       string    `json:"requestedBy,omitempty"`
	RunStarted        time.Time `json:"runStarted,omitzero"`
	RunFinished       time.Time `json:"runFinished,omitzero"`
	LastSuccess       time.Time `json:"lastSuccess,omitzero"`
	Paused            bool      `json:"paused,omitempty"`
	Acked             []string  `json:"acked,omitempty"`
	// Rotator is the rotator that last advanced the state.
	Rotator string `json:"rotator,omitempty"`
}

// Secrets are the passwords of a run in progress.
type Secrets struct {
	NewPassword      string `json:"newPassword"`
	PreviousPassword string `json:"previousPassword,omitempty"`
}

// Last returns the run's last step, if it has one.
func (s State) Last() (Step, bool) {
	if len(s.Steps) == 0 {
		return Step{}, false
	}
	return s.Steps[len(s.Steps)-1], true
}

// Step returns the run's step named name, if it has begun.
func (s State) Step(name string) (Step, bool) {
	for _, st := range s.Steps {
		if st.Name == name {
			return st, true
		}
	}
	return Step{}, false
}

// NextDue is when the next scheduled run is due: a period after the last
// run began (or, before any, after the rotation was created). Zero when
// the rotation runs only when asked.
func NextDue(spec Spec, st State) time.Time {
	if spec.Every == 0 {
		return time.Time{}
	}
	base := spec.Created
	if st.RunStarted.After(base) {
		base = st.RunStarted
	}
	return base.Add(spec.Every)
}

// Due reports whether a new run should begin at now: asked for, or
// scheduled and due, and not paused.
func Due(spec Spec, st State, now time.Time) bool {
	if st.Paused || st.Phase == PhaseRunning || st.Phase == PhaseRollingBack {
		return false
	}
	if st.Phase == PhaseRequested {
		return true
	}
	next := NextDue(spec, st)
	return !next.IsZero() && !now.Before(next)
}

// Overdue reports whether a scheduled rotation has not succeeded for more
// than two periods: its run is late by more than its period.
func Overdue(spec Spec, st State, now time.Time) bool {
	if spec.Every == 0 {
		return false
	}
	base := spec.Created
	if st.LastSuccess.After(base) {
		base = st.LastSuccess
	}
	return now.Sub(base) > 2*spec.Every
}

// StepTimeout is how long step may take: the rollout its timeout (a
// rollback's rollout too), the retire its grace and the step timeout,
// every other step the step timeout.
func StepTimeout(spec Spec, step string) time.Duration {
	switch step {
	case StepRollout, StepRollbackRollout:
		return spec.RolloutTimeout
	case StepRetire:
		return spec.RetireGrace + spec.StepTimeout
	}
	return spec.StepTimeout
}

// Stalled reports whether the run in progress has outlived its step's
// timeout (or, asked for, has not been started by a rotator within the
// step timeout): the sign that no rotator runs it.
func Stalled(spec Spec, st State, now time.Time) bool {
	switch st.Phase {
	case PhaseRequested:
		return now.Sub(st.Requested) > spec.StepTimeout
	case PhaseRunning, PhaseRollingBack:
		last, ok := st.Last()
		if !ok {
			return false
		}
		// The slack is for a rotator that is failing the step right now.
		return now.Sub(last.Started) > StepTimeout(spec, last.Name)+spec.StepTimeout
	}
	return false
}

// Check refuses a transition from old to next that the state machine does
// not allow, whoever asks for it: graftd holds every AdvanceRotation to
// it. withSecrets says the new state comes with new passwords, which only
// the first step of a run may set, so a user is never re-keyed twice in
// one run. The fields only graftd's own rpcs change (Paused, Requested,
// RequestedBy) are not compared: the caller copies them from old.
func Check(spec Spec, old, next State, withSecrets bool, now time.Time) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s run %d (%s) → run %d (%s): %s", ErrInvalid, spec.Name, old.Run, old.Phase, next.Run, next.Phase, fmt.Sprintf(format, args...))
	}
	starting := next.Run == old.Run+1
	switch {
	case starting:
		if !Due(spec, old, now) {
			return bad("a run may begin only when asked for or due, and not while paused or running")
		}
		if next.Phase == PhaseFailed && len(next.Steps) == 0 && !withSecrets && next.Reason != "" && next.ActiveUser == old.ActiveUser {
			// A run that cannot begin (the target holds someone else's
			// credential) fails before it touches anything.
			return nil
		}
		if next.Phase != PhaseRunning {
			return bad("a new run begins running")
		}
		if !withSecrets {
			return bad("a new run needs its new password")
		}
		if next.ActiveUser != old.ActiveUser {
			return bad("the active user changes only when a run is done")
		}
		if want := newUser(spec, old.ActiveUser); next.NewUser != want {
			return bad("the run must re-key %s, the user that is not active", want)
		}
		return checkSteps(bad, nil, next.Steps)
	case next.Run != old.Run:
		return bad("runs are numbered one after another")
	case withSecrets:
		return bad("the passwords of a run are chosen once, at its first step")
	case old.Phase != PhaseRunning && old.Phase != PhaseRollingBack:
		return bad("no run is in progress")
	case next.NewUser != old.NewUser:
		return bad("the user a run re-keys does not change")
	}
	if err := checkSteps(bad, old.Steps, next.Steps); err != nil {
		return err
	}
	switch next.Phase {
	case PhaseRunning:
		if old.Phase != PhaseRunning {
			return bad("a rollback does not turn back into a run")
		}
		if next.ActiveUser != old.ActiveUser {
			return bad("the active user changes only when a run is done")
		}
	case PhaseRollingBack:
		if next.ActiveUser != old.ActiveUser {
			return bad("a rollback keeps the active user")
		}
		if next.Reason == "" {
			return bad("a rollback needs its reason")
		}
	case PhaseDone:
		last, _ := next.Last()
		if old.Phase != PhaseRunning || last.Name != StepRetire || !last.Done() {
			return bad("a run is done only after its retire step")
		}
		if next.ActiveUser != next.NewUser {
			return bad("a done run makes its new user the active one")
		}
	case PhaseFailed:
		if next.Reason == "" {
			return bad("a failed run needs its reason")
		}
		// The first run has no old credential to go back to: what it
		// published stays, and its user becomes the active one. A run
		// that fails to retire the old user has rolled out the new one,
		// which stays active too.
		last, _ := next.Last()
		kept := next.ActiveUser == next.NewUser && next.PublishedRevision != 0 &&
			(old.ActiveUser == "" || (last.Name == StepRetire && old.Phase == PhaseRunning))
		if next.ActiveUser != old.ActiveUser && !kept {
			return bad("a failed run keeps the active user")
		}
	default:
		return bad("phase %q is not one a rotator sets", next.Phase)
	}
	return nil
}

// newUser is the user a run re-keys: the one that is not active.
func newUser(spec Spec, active string) string {
	if active == "" {
		return spec.Users[0]
	}
	return spec.Other(active)
}

// checkSteps holds next's steps to old's: the same steps, the last one
// perhaps finished since, then new steps in the order of a run, or of a
// rollback (which may begin after any step).
func checkSteps(bad func(string, ...any) error, old, next []Step) error {
	if len(next) < len(old) {
		return bad("steps are never removed")
	}
	for i, o := range old {
		n := next[i]
		if n.Name != o.Name || !n.Started.Equal(o.Started) {
			return bad("step %d (%s) was changed", i+1, o.Name)
		}
		if o.Done() && (!n.Finished.Equal(o.Finished) || n.Detail != o.Detail) {
			return bad("step %s was already finished", o.Name)
		}
	}
	prev := ""
	for i, n := range next {
		if i > 0 && !next[i-1].Done() && n.Name != StepRollbackPublish && n.Name != StepRollbackDisable {
			return bad("step %s began before %s finished", n.Name, next[i-1].Name)
		}
		if !follows(prev, n.Name) {
			return bad("step %s cannot follow %q", n.Name, prev)
		}
		prev = n.Name
	}
	return nil
}

// follows reports whether step may come right after prev ("" at the start
// of a run).
func follows(prev, step string) bool {
	ri, ni := slices.Index(runSteps, prev), slices.Index(runSteps, step)
	bi, nb := slices.Index(rollbackSteps, prev), slices.Index(rollbackSteps, step)
	switch {
	case prev == "":
		return step == StepKey
	case ni >= 0:
		return ri >= 0 && ni == ri+1
	case nb >= 0 && ri >= 0:
		// A rollback begins after any step of the run: from the publish
		// on, by republishing; before it, by disabling the new user.
		return nb == 0 || (nb == 2 && ri < slices.Index(runSteps, StepPublish))
	case nb >= 0:
		return nb > bi
	}
	return false
}
