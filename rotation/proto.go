package rotation

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// The one translation between the API and these types, for graftd and
// the agent alike.

// SpecFromProto returns the spec p describes; an absent retire grace is
// DefaultRetireGrace.
func SpecFromProto(p *graftv1.RotationSpec) Spec {
	grace := DefaultRetireGrace
	if p.GetRetireGrace() != nil {
		grace = p.GetRetireGrace().AsDuration()
	}
	return Spec{
		Name:             p.GetName(),
		Driver:           p.GetDriver(),
		Admin:            p.GetAdmin(),
		Target:           p.GetTarget(),
		Users:            p.GetUsers(),
		Group:            p.GetGroup(),
		Consumers:        p.GetConsumers(),
		RolloutTimeout:   p.GetRolloutTimeout().AsDuration(),
		RetireGrace:      grace,
		Every:            p.GetEvery().AsDuration(),
		StepTimeout:      p.GetStepTimeout().AsDuration(),
		PasswordLength:   int(p.GetPasswordLength()),
		PasswordAlphabet: p.GetPasswordAlphabet(),
		Creator:          p.GetCreator(),
		Created:          fromTime(p.GetCreated()),
	}
}

// Proto returns the API form of the spec.
func (s Spec) Proto() *graftv1.RotationSpec {
	return &graftv1.RotationSpec{
		Name:             s.Name,
		Driver:           s.Driver,
		Admin:            s.Admin,
		Target:           s.Target,
		Users:            s.Users,
		Group:            s.Group,
		Consumers:        s.Consumers,
		RolloutTimeout:   durationpb.New(s.RolloutTimeout),
		RetireGrace:      durationpb.New(s.RetireGrace),
		Every:            durationpb.New(s.Every),
		StepTimeout:      durationpb.New(s.StepTimeout),
		PasswordLength:   int32(s.PasswordLength),
		PasswordAlphabet: s.PasswordAlphabet,
		Creator:          s.Creator,
		Created:          toTime(s.Created),
	}
}

// View is a state as graftd shows it: with the claim's holder, when the
// next run is due, whether it is overdue or stalled, and its version.
type View struct {
	State
	Holder  string
	NextDue time.Time
	Overdue bool
	Stalled bool
	Version int64
}

// NewView derives what a state shows at now.
func NewView(spec Spec, st State, holder string, version int64, now time.Time) View {
	return View{
		State:   st,
		Holder:  holder,
		NextDue: NextDue(spec, st),
		Overdue: Overdue(spec, st, now),
		Stalled: Stalled(spec, st, now),
		Version: version,
	}
}

// StateFromProto returns the state p holds and the version it names.
func StateFromProto(p *graftv1.RotationState) View {
	st := State{
		Run:               p.GetRun(),
		Phase:             Phase(p.GetPhase()),
		ActiveUser:        p.GetActiveUser(),
		NewUser:           p.GetNewUser(),
		PublishedRevision: p.GetPublishedRevision(),
		RollbackRevision:  p.GetRollbackRevision(),
		Rotator:           p.GetRotator(),
		RetireAt:          fromTime(p.GetRetireAt()),
		Reason:            p.GetReason(),
		Requested:         fromTime(p.GetRequested()),
		RequestedBy:       p.GetRequestedBy(),
		RunStarted:        fromTime(p.GetRunStarted()),
		RunFinished:       fromTime(p.GetRunFinished()),
		LastSuccess:       fromTime(p.GetLastSuccess()),
		Paused:            p.GetPaused(),
		Acked:             p.GetAcked(),
	}
	st.Steps = stepsFromProto(p.GetSteps())
	return View{State: st, Holder: p.GetHolder(), NextDue: fromTime(p.GetNextDue()), Overdue: p.GetOverdue(), Stalled: p.GetStalled(), Version: p.GetVersion()}
}

// Proto returns the API form of the view.
func (v View) Proto() *graftv1.RotationState {
	return &graftv1.RotationState{
		Run:               v.Run,
		Phase:             string(v.Phase),
		Steps:             stepsProto(v.Steps),
		ActiveUser:        v.ActiveUser,
		NewUser:           v.NewUser,
		PublishedRevision: v.PublishedRevision,
		RollbackRevision:  v.RollbackRevision,
		Rotator:           v.Rotator,
		RetireAt:          toTime(v.RetireAt),
		Reason:            v.Reason,
		Requested:         toTime(v.Requested),
		RequestedBy:       v.RequestedBy,
		RunStarted:        toTime(v.RunStarted),
		RunFinished:       toTime(v.RunFinished),
		LastSuccess:       toTime(v.LastSuccess),
		Paused:            v.Paused,
		Acked:             v.Acked,
		Holder:            v.Holder,
		NextDue:           toTime(v.NextDue),
		Overdue:           v.Overdue,
		Stalled:           v.Stalled,
		Version:           v.Version,
	}
}

// SecretsFromProto returns the passwords p holds, or nil.
func SecretsFromProto(p *graftv1.RotationSecrets) *Secrets {
	if p == nil {
		return nil
	}
	return &Secrets{NewPassword: p.GetNewPassword(), PreviousPassword: p.GetPreviousPassword()}
}

// Proto returns the API form of the passwords.
func (s *Secrets) Proto() *graftv1.RotationSecrets {
	if s == nil {
		return nil
	}
	return &graftv1.RotationSecrets{NewPassword: s.NewPassword, PreviousPassword: s.PreviousPassword}
}

// Run is one finished run, as the history keeps it.
type Run struct {
	Run         int64     `json:"run"`
	Outcome     Phase     `json:"outcome"`
	Reason      string    `json:"reason,omitempty"`
	NewUser     string    `json:"newUser"`
	ActiveUser  string    `json:"activeUser"`
	Started     time.Time `json:"started"`
	Finished    time.Time `json:"finished"`
	Steps       []Step    `json:"steps"`
	RequestedBy string    `json:"requestedBy,omitempty"`
	Holder      string    `json:"holder,omitempty"`
}

// RunOf returns the history entry of a finished state.
func RunOf(st State) Run {
	return Run{
		Run: st.Run, Outcome: st.Phase, Reason: st.Reason, NewUser: st.NewUser, ActiveUser: st.ActiveUser,
		Started: st.RunStarted, Finished: st.RunFinished, Steps: st.Steps, RequestedBy: st.RequestedBy, Holder: st.Rotator,
	}
}

// Proto returns the API form of the run.
func (r Run) Proto() *graftv1.RotationRun {
	return &graftv1.RotationRun{
		Run: r.Run, Outcome: string(r.Outcome), Reason: r.Reason, NewUser: r.NewUser, ActiveUser: r.ActiveUser,
		Started: toTime(r.Started), Finished: toTime(r.Finished), Steps: stepsProto(r.Steps), RequestedBy: r.RequestedBy, Holder: r.Holder,
	}
}

// RunFromProto returns the run p describes.
func RunFromProto(p *graftv1.RotationRun) Run {
	return Run{
		Run: p.GetRun(), Outcome: Phase(p.GetOutcome()), Reason: p.GetReason(), NewUser: p.GetNewUser(), ActiveUser: p.GetActiveUser(),
		Started: fromTime(p.GetStarted()), Finished: fromTime(p.GetFinished()), Steps: stepsFromProto(p.GetSteps()), RequestedBy: p.GetRequestedBy(), Holder: p.GetHolder(),
	}
}

func stepsProto(steps []Step) []*graftv1.RotationStep {
	out := make([]*graftv1.RotationStep, len(steps))
	for i, s := range steps {
		out[i] = &graftv1.RotationStep{Name: s.Name, Started: toTime(s.Started), Finished: toTime(s.Finished), Detail: s.Detail}
	}
	return out
}

func stepsFromProto(steps []*graftv1.RotationStep) []Step {
	var out []Step
	for _, s := range steps {
		out = append(out, Step{Name: s.GetName(), Started: fromTime(s.GetStarted()), Finished: fromTime(s.GetFinished()), Detail: s.GetDetail()})
	}
	return out
}

func toTime(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func fromTime(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}
