package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/sdk"
)

type rotationSpecView struct {
	Name             string   `json:"name"`
	Driver           string   `json:"driver"`
	Admin            string   `json:"admin"`
	Target           string   `json:"target"`
	Users            []string `json:"users"`
	Group            string   `json:"group"`
	Consumers        []string `json:"consumers"`
	RolloutTimeout   string   `json:"rollout_timeout"`
	RetireGrace      string   `json:"retire_grace"`
	Every            string   `json:"every,omitempty"`
	StepTimeout      string   `json:"step_timeout"`
	PasswordLength   int      `json:"password_length,omitempty"`
	PasswordAlphabet string   `json:"password_alphabet,omitempty"`
	Creator          string   `json:"creator"`
	Created          string   `json:"created"`
}

type stepView struct {
	Name     string `json:"name"`
	Started  string `json:"started"`
	Finished string `json:"finished,omitempty"`
	Detail   string `json:"detail,omitempty"`
}

type rotationStateView struct {
	Phase             string     `json:"phase"`
	Run               int64      `json:"run"`
	ActiveUser        string     `json:"active_user,omitempty"`
	NewUser           string     `json:"new_user,omitempty"`
	Steps             []stepView `json:"steps"`
	PublishedRevision int64      `json:"published_revision,omitempty"`
	RollbackRevision  int64      `json:"rollback_revision,omitempty"`
	RetireAt          string     `json:"retire_at,omitempty"`
	Acked             []string   `json:"acked"`
	Reason            string     `json:"reason,omitempty"`
	Requested         string     `json:"requested,omitempty"`
	RequestedBy       string     `json:"requested_by,omitempty"`
	RunStarted        string     `json:"run_started,omitempty"`
	RunFinished       string     `json:"run_finished,omitempty"`
	LastSuccess       string     `json:"last_success,omitempty"`
	NextDue           string     `json:"next_due,omitempty"`
	Overdue           bool       `json:"overdue"`
	Stalled           bool       `json:"stalled"`
	Paused            bool       `json:"paused"`
	Holder            string     `json:"holder,omitempty"`
	// Rotator is the rotator that last advanced the state.
	Rotator string `json:"rotator,omitempty"`
}

type rotationView struct {
	Spec  rotationSpecView  `json:"spec"`
	State rotationStateView `json:"state"`
}

type runView struct {
	Run         int64      `json:"run"`
	Outcome     string     `json:"outcome"`
	Reason      string     `json:"reason,omitempty"`
	NewUser     string     `json:"new_user"`
	ActiveUser  string     `json:"active_user"`
	Started     string     `json:"started"`
	Finished    string     `json:"finished"`
	Took        string     `json:"took,omitempty"`
	RequestedBy string     `json:"requested_by,omitempty"`
	Holder      string     `json:"holder,omitempty"`
	Steps       []stepView `json:"steps"`
}

func viewSteps(steps []rotation.Step) []stepView {
	out := make([]stepView, 0, len(steps))
	for _, s := range steps {
		out = append(out, stepView{Name: s.Name, Started: jsonTime(s.Started), Finished: jsonTime(s.Finished), Detail: s.Detail})
	}
	return out
}

func viewRotation(r sdk.Rotation) rotationView {
	s, st := r.Spec, r.State
	v := rotationView{
		Spec: rotationSpecView{
			Name: s.Name, Driver: s.Driver, Admin: s.Admin, Target: s.Target,
			Users: nonNil(s.Users), Group: s.Group, Consumers: nonNil(s.Consumers),
			RolloutTimeout: human(s.RolloutTimeout), RetireGrace: human(s.RetireGrace), StepTimeout: human(s.StepTimeout),
			PasswordLength: s.PasswordLength, PasswordAlphabet: s.PasswordAlphabet,
			Creator: s.Creator, Created: jsonTime(s.Created),
		},
		State: rotationStateView{
			Phase: string(st.Phase), Run: st.Run, ActiveUser: st.ActiveUser, NewUser: st.NewUser,
			Steps: viewSteps(st.Steps), PublishedRevision: st.PublishedRevision, RollbackRevision: st.RollbackRevision,
			RetireAt: jsonTime(st.RetireAt), Acked: nonNil(st.Acked), Reason: st.Reason,
			Requested: jsonTime(st.Requested), RequestedBy: st.RequestedBy,
			RunStarted: jsonTime(st.RunStarted), RunFinished: jsonTime(st.RunFinished), LastSuccess: jsonTime(st.LastSuccess),
			NextDue: jsonTime(st.NextDue), Overdue: st.Overdue, Stalled: st.Stalled, Paused: st.Paused, Holder: st.Holder, Rotator: st.Rotator,
		},
	}
	if s.Every > 0 {
		v.Spec.Every = human(s.Every)
	}
	return v
}

func viewRun(r rotation.Run) runView {
	return runView{
		Run: r.Run, Outcome: string(r.Outcome), Reason: r.Reason, NewUser: r.NewUser, ActiveUser: r.ActiveUser,
		Started: jsonTime(r.Started), Finished: jsonTime(r.Finished), Took: took(r.Started, r.Finished),
		RequestedBy: r.RequestedBy, Holder: r.Holder, Steps: viewSteps(r.Steps),
	}
}

// human is a duration as a person writes it, and as the flags take it
// back: 10m, 1m30s, 24h, 1h30m, 250ms (not 10m0s or 24h0m0s).
func human(d time.Duration) string {
	if d == 0 {
		return "0s"
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// took is how long from start to end, rounded for a person: to the
// millisecond under a second, to the second after. "" when either is
// unknown.
func took(start, end time.Time) string {
	if start.IsZero() || end.IsZero() || end.Before(start) {
		return ""
	}
	d := end.Sub(start)
	if d < time.Second {
		return human(d.Round(time.Millisecond))
	}
	return human(d.Round(time.Second))
}

// flagsText is the paused, overdue and stalled flags of a state, for a
// table cell.
func flagsText(st rotation.View) string {
	var f []string
	if st.Paused {
		f = append(f, "paused")
	}
	if st.Overdue {
		f = append(f, "overdue")
	}
	if st.Stalled {
		f = append(f, "stalled")
	}
	return dash(strings.Join(f, ","))
}

// writeSpec writes what a rotation rotates, and how, as create and status
// show it.
func writeSpec(b *strings.Builder, s rotation.Spec) {
	fmt.Fprintf(b, "rotation:        %s\ndriver:          %s\nadmin:           %s/%s\ntarget:          %s (keys %s, %s)\n",
		s.Name, s.Driver, s.Admin, rotation.KeyDSN, s.Target, rotation.KeyUser, rotation.KeyPassword)
	fmt.Fprintf(b, "users:           %s\ngroup:           %s\nconsumers:       %s\n", strings.Join(s.Users, ", "), s.Group, strings.Join(s.Consumers, ", "))
	every := "only when asked"
	if s.Every > 0 {
		every = "every " + human(s.Every)
	}
	fmt.Fprintf(b, "runs:            %s\ntimings:         rollout timeout %s, retire grace %s, step timeout %s\n",
		every, human(s.RolloutTimeout), human(s.RetireGrace), human(s.StepTimeout))
	if s.PasswordLength > 0 || s.PasswordAlphabet != "" {
		length, alphabet := "32", "A-Z a-z 0-9"
		if s.PasswordLength > 0 {
			length = fmt.Sprint(s.PasswordLength)
		}
		if s.PasswordAlphabet != "" {
			alphabet = fmt.Sprintf("%q", s.PasswordAlphabet)
		}
		fmt.Fprintf(b, "passwords:       %s characters of %s\n", length, alphabet)
	}
	fmt.Fprintf(b, "created:         %s by %s\n", tableTime(s.Created), s.Creator)
}

// writeState writes where a rotation's runs stand, as status shows it.
func writeState(b *strings.Builder, st rotation.View) {
	phase := string(st.Phase)
	switch st.Phase {
	case rotation.PhaseIdle:
		phase += " (never run)"
	case rotation.PhaseRequested:
		phase += fmt.Sprintf(" (run %d asked for by %s at %s)", st.Run+1, dash(st.RequestedBy), tableTime(st.Requested))
	}
	run := "- (none yet)"
	if st.Run > 0 {
		run = fmt.Sprint(st.Run)
	}
	fmt.Fprintf(b, "phase:           %s\nrun:             %s\n", phase, run)
	fmt.Fprintf(b, "active user:     %s\nnew user:        %s\n", dash(st.ActiveUser), dash(st.NewUser))
	if !st.RunStarted.IsZero() {
		fmt.Fprintf(b, "run started:     %s\n", tableTime(st.RunStarted))
	}
	if !st.RunFinished.IsZero() && !st.Phase.InProgress() {
		fmt.Fprintf(b, "run finished:    %s (took %s)\n", tableTime(st.RunFinished), dash(took(st.RunStarted, st.RunFinished)))
	}
	if st.PublishedRevision != 0 {
		fmt.Fprintf(b, "published:       revision %d\n", st.PublishedRevision)
	}
	if st.RollbackRevision != 0 {
		fmt.Fprintf(b, "rolled back:     revision %d\n", st.RollbackRevision)
	}
	if !st.RetireAt.IsZero() {
		fmt.Fprintf(b, "retire at:       %s\n", tableTime(st.RetireAt))
	}
	if len(st.Steps) == 0 {
		fmt.Fprintf(b, "steps:           none\n")
	} else {
		fmt.Fprintf(b, "steps of run %d:\n", st.Run)
		tab := newTable(b, "  STEP", "STARTED", "FINISHED", "TOOK", "DETAIL")
		for _, s := range st.Steps {
			finished, d := "running", "-"
			if s.Done() {
				finished, d = tableTime(s.Finished), dash(took(s.Started, s.Finished))
			}
			tab.row("  "+s.Name, tableTime(s.Started), finished, d, dash(s.Detail))
		}
		tab.flush()
	}
	fmt.Fprintf(b, "consumers acked: %s\n", dash(strings.Join(st.Acked, ", ")))
	last := "never"
	if !st.LastSuccess.IsZero() {
		last = tableTime(st.LastSuccess)
	}
	next := "- (runs only when asked)"
	if !st.NextDue.IsZero() {
		next = tableTime(st.NextDue)
	}
	fmt.Fprintf(b, "last success:    %s\nnext due:        %s\n", last, next)
	yes := map[bool]string{true: "yes", false: "no"}
	overdue := yes[st.Overdue]
	if st.Overdue {
		overdue += " (no success for more than two periods)"
	}
	stalled := yes[st.Stalled]
	if st.Stalled {
		stalled += " (" + stalledHint(st) + ")"
	}
	fmt.Fprintf(b, "overdue:         %s\nstalled:         %s\n", overdue, stalled)
	holder := "- (no rotator holds it)"
	if st.Holder != "" {
		holder = st.Holder
	}
	paused := yes[st.Paused]
	if st.Paused {
		paused += " (no new runs until `graft rotation resume`)"
	}
	fmt.Fprintf(b, "holder:          %s\n", holder)
	if st.Rotator != "" && st.Rotator != st.Holder {
		fmt.Fprintf(b, "last rotator:    %s\n", st.Rotator)
	}
	fmt.Fprintf(b, "paused:          %s\n", paused)
	if st.Reason != "" {
		fmt.Fprintf(b, "reason:          %s\n", st.Reason)
	}
}

// noRotatorHint is what a run no rotator has claimed most likely lacks:
// status and run --wait both say it.
const noRotatorHint = "is a graft-agent with rotations: in its configuration running, with the owner's identity?"

// stalledHint says what a stalled run most likely lacks.
func stalledHint(st rotation.View) string {
	if st.Holder == "" {
		return "no rotator runs it: " + noRotatorHint
	}
	return fmt.Sprintf("its step has outlived its timeout; see the logs of rotator %s", st.Holder)
}

// emitRotation shows a rotation's spec and state.
func (a *app) emitRotation(r sdk.Rotation) error {
	return a.Emit(viewRotation(r), func(w io.Writer) error {
		var b strings.Builder
		writeSpec(&b, r.Spec)
		writeState(&b, r.State)
		_, err := io.WriteString(w, b.String())
		return err
	})
}
