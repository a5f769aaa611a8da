package rotation

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/internal/retry"
)

// Control is graftd as the rotator holding a rotation's claim sees it.
// Advance persists a state made from the version it names, and returns
// the stored one; an error that Conflict recognises means the claim or
// the state moved on, and the caller must claim and read again.
type Control interface {
	Advance(ctx context.Context, name string, next View, secrets *Secrets) (View, error)
}

// Values are the values of the owner's tree, read and written with the
// rotator's identity.
type Values interface {
	// ReadTree returns the values below path, by their path relative to
	// it, and the revision read at; a path with nothing below is an
	// empty map.
	ReadTree(ctx context.Context, path string) (map[string][]byte, int64, error)
	// PutTree writes values below path in one transaction and returns
	// its revision.
	PutTree(ctx context.Context, path string, values map[string][]byte) (int64, error)
	// Rollout says where revision rev of path has rolled out.
	Rollout(ctx context.Context, path string, rev int64) (Rollout, error)
}

// Rollout is where a revision of the target has rolled out.
type Rollout struct {
	// Consumers are the agents that read the value or a copy of it.
	Consumers []Consumer
	// Unreached are the copies replication has not brought the revision
	// to yet, with why.
	Unreached []string
}

// Consumer is one agent reading the value or a copy.
type Consumer struct {
	App, ID string
	// OK: it runs the revision (or a newer one), rendered and healthy.
	OK bool
	// Unhealthy: it runs the revision but failed its health check.
	Unhealthy bool
	Reason    string
	// Revision is the store revision the agent rendered from, and Since
	// the one graftd first stored its agent process's report at: an ack
	// counts only at or past the published revision (graftd has also
	// checked that the agent reported before the publish or read the
	// published copy).
	Revision, Since int64
	// BrokerOnly: it uses the credential only through graft-agent's
	// broker, which logs new connections in with the revision it runs;
	// OldSessions are the sessions it still has open as other users.
	BrokerOnly  bool
	OldSessions int
}

// Opener connects to a database as its admin: driver is a Spec's Driver.
type Opener func(ctx context.Context, driver, dsn string) (dbcred.Driver, error)

// Boundary is a point of a run a test can stop a rotator at: after a
// step's start was persisted, after its side effect, after its end was
// persisted.
type Boundary struct {
	Step string
	At   string // "begun", "applied", "finished"
}

func (b Boundary) String() string { return b.Step + "/" + b.At }

// RunnerConfig configures a Runner.
type RunnerConfig struct {
	Control Control
	Values  Values
	Open    Opener
	// Conflict recognises Control's errors that mean: claim again.
	Conflict func(error) bool
	Logger   *slog.Logger
	// Poll is how often a rollout is looked at (default 250ms).
	Poll time.Duration
	// Hook, for tests, is called at every boundary of a run.
	Hook func(name string, b Boundary)
	// Observe, if set, is told each step's duration and each run's end.
	Observe func(name, step string, d time.Duration)
	Ended   func(name string, st State)
	Now     func() time.Time
}

// Runner drives rotations' runs from their persisted state: each step is
// persisted when it begins, its side effect is done (again, harmlessly,
// after a crash), and it is persisted when it ends.
type Runner struct {
	cfg RunnerConfig
}

// NewRunner returns a Runner.
func NewRunner(cfg RunnerConfig) *Runner {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 250 * time.Millisecond
	}
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return time.Now().UTC() }
	}
	if cfg.Conflict == nil {
		cfg.Conflict = func(error) bool { return false }
	}
	return &Runner{cfg: cfg}
}

// ErrClaimLost ends Run when graftd refuses a step because the claim or
// the state moved on: claim the rotation again and start over from what
// graftd holds.
var ErrClaimLost = errors.New("the rotation's claim or state moved on")

// run is one Runner.Run: a rotation as it advances.
type run struct {
	*Runner
	spec    Spec
	view    View
	secrets *Secrets
	drv     dbcred.Driver
	// dsn is the admin DSN drv was opened with: every error of a step
	// is scrubbed of its password before it is logged or stored.
	dsn string
	log *slog.Logger
	// lastDetail is the detail last persisted for the step in progress,
	// so a repeated error is stored once.
	lastDetail string
}

// Run drives the rotation from view until no run is in progress and none
// is due, and returns the state reached. secrets are the passwords of a
// run in progress, from the claim.
func (r *Runner) Run(ctx context.Context, spec Spec, view View, secrets *Secrets) (View, error) {
	x := &run{Runner: r, spec: spec, view: view, secrets: secrets, log: r.cfg.Logger.With("rotation", spec.Name)}
	defer func() {
		if x.drv != nil {
			x.drv.Close()
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return x.view, err
		}
		var err error
		switch x.view.Phase {
		case PhaseRunning, PhaseRollingBack:
			err = x.step(ctx)
		default:
			if !Due(spec, x.view.State, r.cfg.Now()) {
				return x.view, nil
			}
			err = x.start(ctx)
		}
		if err != nil {
			return x.view, err
		}
	}
}

func (x *run) now() time.Time { return x.cfg.Now() }

func (x *run) hook(step, at string) {
	if x.cfg.Hook != nil {
		x.cfg.Hook(x.spec.Name, Boundary{Step: step, At: at})
	}
}

// persist stores next, retrying while graftd is unreachable.
func (x *run) persist(ctx context.Context, next State, secrets *Secrets) error {
	v := x.view
	v.State = next
	for attempt := 0; ; attempt++ {
		got, err := x.cfg.Control.Advance(ctx, x.spec.Name, v, secrets)
		if err == nil {
			x.view = got
			if secrets != nil {
				x.secrets = secrets
			}
			return nil
		}
		if x.cfg.Conflict(err) {
			return fmt.Errorf("%w: %w", ErrClaimLost, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if attempt%10 == 0 {
			x.log.Warn("could not store a step of the rotation; retrying", "run", next.Run, "phase", next.Phase, "err", err)
		}
		if err := retry.Sleep(ctx, retry.Backoff(100*time.Millisecond, 3200*time.Millisecond, attempt)); err != nil {
			return err
		}
	}
}

// start begins a run: it reads the credential the consumers have now,
// chooses the new password, and persists both with the key step.
func (x *run) start(ctx context.Context) error {
	cur, _, err := x.cfg.Values.ReadTree(ctx, x.spec.Target)
	if err != nil {
		return x.retryLater(ctx, "read the target", err)
	}
	st := x.view.State
	next := st
	next.Run, next.Steps, next.Reason = st.Run+1, nil, ""
	next.PublishedRevision, next.RollbackRevision, next.RetireAt, next.Acked = 0, 0, time.Time{}, nil
	next.RunStarted, next.RunFinished = x.now(), time.Time{}
	next.NewUser = newUser(x.spec, st.ActiveUser)
	user := string(cur[KeyUser])
	if reason := x.foreign(st.ActiveUser, user, cur); reason != "" {
		next.Phase, next.Reason, next.RunFinished = PhaseFailed, reason, x.now()
		x.log.Error("rotation cannot begin", "run", next.Run, "reason", reason)
		if err := x.persist(ctx, next, nil); err != nil {
			return err
		}
		x.ended()
		return nil
	}
	password, err := x.spec.Policy().Password()
	if err != nil {
		return err
	}
	next.Phase = PhaseRunning
	next.Steps = []Step{{Name: StepKey, Started: x.now()}}
	secrets := &Secrets{NewPassword: password, PreviousPassword: string(cur[KeyPassword])}
	x.log.Info("rotation run begins", "run", next.Run, "user", next.NewUser, "active", st.ActiveUser, "requested_by", st.RequestedBy)
	if err := x.persist(ctx, next, secrets); err != nil {
		return err
	}
	x.hook(StepKey, "begun")
	return nil
}

// foreign says why the target's credential is not the one this rotation
// last published, so a run must not begin: its rollback would republish
// a password it does not know.
func (x *run) foreign(active, user string, cur map[string][]byte) string {
	switch {
	case active == "" && user == "":
		return ""
	case active == "":
		return fmt.Sprintf("the target %s already holds user %s, which this rotation did not publish: rotate it under graft from an empty target, or delete %s/%s and %s/%s first", x.spec.Target, user, x.spec.Target, KeyUser, x.spec.Target, KeyPassword)
	case user != active:
		return fmt.Sprintf("the target %s holds user %q, but this rotation's active user is %s: someone else wrote it; put the active user's credential back, then run again", x.spec.Target, user, active)
	case len(cur[KeyPassword]) == 0:
		return fmt.Sprintf("the target %s has no %s: put the active user's password back, then run again", x.spec.Target, KeyPassword)
	}
	return ""
}

// retryLater waits a little after an error reading or writing the
// store, so a Run loop that meets it again does not spin.
func (x *run) retryLater(ctx context.Context, what string, err error) error {
	if x.cfg.Conflict(err) {
		return fmt.Errorf("%w: %w", ErrClaimLost, err)
	}
	x.log.Warn("rotation: could not "+what+"; retrying", "err", err)
	return retry.Sleep(ctx, time.Second)
}

// step makes progress on the run in progress: it does the side effect of
// the step that began, or begins the next one.
func (x *run) step(ctx context.Context) error {
	last, ok := x.view.Last()
	if !ok {
		return x.fail(ctx, "the run has no steps: it was stored by another version of graft")
	}
	if last.Done() {
		return x.begin(ctx, nextStep(last.Name))
	}
	deadline := last.Started.Add(StepTimeout(x.spec, last.Name))
	if !x.now().Before(deadline) {
		return x.timedOut(ctx, last)
	}
	sctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	out, err := x.apply(sctx, last.Name)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	err, out.verdict = x.scrub(err), x.scrubText(out.verdict)
	switch {
	case out.verdict != "":
		return x.rollback(ctx, out.verdict)
	case errors.Is(err, errWait):
		return nil
	case err != nil && x.cfg.Conflict(err):
		return fmt.Errorf("%w: %w", ErrClaimLost, err)
	case err != nil:
		if sctx.Err() != nil {
			return x.timedOut(ctx, withDetail(last, err.Error()))
		}
		return x.note(ctx, last, err)
	}
	x.hook(last.Name, "applied")
	return x.finish(ctx, last, out)
}

// scrub removes what may be the admin DSN's password, or a piece of it,
// from err: a driver that split a malformed DSN wrongly quotes the rest
// of the password as a host or a database, and a step's error is stored
// in graftd, audited and shown.
func (x *run) scrub(err error) error {
	if err == nil || x.dsn == "" {
		return err
	}
	return dbcred.ScrubDSN(err, x.dsn)
}

func (x *run) scrubText(s string) string {
	if s == "" || x.dsn == "" {
		return s
	}
	return dbcred.ScrubDSN(errors.New(s), x.dsn).Error()
}

// errWait says the step's side effect is not done yet and the step goes
// on (the grace before a retire).
var errWait = errors.New("not yet")

func withDetail(s Step, d string) Step { s.Detail = d; return s }

// note keeps the error of a step's attempt in its detail, so
// `graft rotation status` shows why it is taking long, then waits before
// the next attempt.
func (x *run) note(ctx context.Context, last Step, err error) error {
	msg := err.Error()
	x.log.Warn("rotation step failed; retrying until its timeout", "step", last.Name, "err", msg)
	if msg != x.lastDetail {
		next := x.view.State
		next.Steps = append([]Step(nil), next.Steps...)
		next.Steps[len(next.Steps)-1].Detail = msg
		if err := x.persist(ctx, next, nil); err != nil {
			return err
		}
		x.lastDetail = msg
	}
	return retry.Sleep(ctx, time.Second)
}

// begin persists the start of the next step, or the end of the run.
func (x *run) begin(ctx context.Context, name string) error {
	next := x.view.State
	if name == "" {
		next.RunFinished = x.now()
		if next.Phase == PhaseRunning {
			next.Phase, next.ActiveUser, next.LastSuccess = PhaseDone, next.NewUser, x.now()
			x.log.Info("rotation run done", "run", next.Run, "active", next.ActiveUser, "took", next.RunFinished.Sub(next.RunStarted))
		} else {
			next.Phase = PhaseFailed
			x.log.Error("rotation run rolled back", "run", next.Run, "active", next.ActiveUser, "reason", next.Reason)
		}
		if err := x.persist(ctx, next, nil); err != nil {
			return err
		}
		x.ended()
		return nil
	}
	next.Steps = append(append([]Step(nil), next.Steps...), Step{Name: name, Started: x.now()})
	if err := x.persist(ctx, next, nil); err != nil {
		return err
	}
	x.lastDetail = ""
	x.hook(name, "begun")
	return nil
}

func (x *run) ended() {
	if x.cfg.Ended != nil {
		x.cfg.Ended(x.spec.Name, x.view.State)
	}
}

// finish persists the end of the step in progress, with what its side
// effect came to. A publish's revision is stored in the same write as the
// step's end, so a run resumed after a crash reads it from the state.
func (x *run) finish(ctx context.Context, last Step, out outcome) error {
	next := x.view.State
	next.Steps = append([]Step(nil), next.Steps...)
	s := &next.Steps[len(next.Steps)-1]
	s.Finished, s.Detail = x.now(), out.detail
	switch last.Name {
	case StepPublish:
		next.PublishedRevision = out.revision
	case StepRollout:
		next.RetireAt = x.now().Add(x.spec.RetireGrace)
		next.Acked = out.acked
	case StepRollbackPublish:
		next.RollbackRevision = out.revision
	}
	if err := x.persist(ctx, next, nil); err != nil {
		return err
	}
	if x.cfg.Observe != nil {
		x.cfg.Observe(x.spec.Name, last.Name, s.Finished.Sub(last.Started))
	}
	x.hook(last.Name, "finished")
	return nil
}

// timedOut handles a step that outlived its timeout: a run rolls back, a
// rollback fails.
func (x *run) timedOut(ctx context.Context, last Step) error {
	reason := fmt.Sprintf("step %s did not finish within %s", last.Name, StepTimeout(x.spec, last.Name))
	switch {
	case last.Detail == "":
	case x.view.Reason != "" && strings.Contains(x.view.Reason, last.Detail):
		// A rollback's rollout that waits for the agents the run's
		// rollout waited for: the reason says what they were once.
		reason += " either, waiting for the same"
	default:
		reason += ": " + last.Detail
	}
	if x.view.Phase == PhaseRunning {
		return x.rollback(ctx, reason)
	}
	if last.Name == StepRollbackRollout {
		reason += fmt.Sprintf("; %s stays able to log in, because not every consumer confirmed the old credential", x.view.NewUser)
	}
	return x.fail(ctx, reason)
}

// fail ends the run as failed, with reason, at once.
func (x *run) fail(ctx context.Context, reason string) error {
	next := x.view.State
	if next.Reason != "" && next.Reason != reason {
		reason = next.Reason + "; then " + reason
	}
	next.Phase, next.Reason, next.RunFinished = PhaseFailed, reason, x.now()
	if last, ok := next.Last(); ok && last.Name == StepRetire && next.PublishedRevision != 0 {
		// The consumers run the new user: it stays the active one.
		next.ActiveUser = next.NewUser
	}
	x.log.Error("rotation run failed", "run", next.Run, "reason", reason)
	if err := x.persist(ctx, next, nil); err != nil {
		return err
	}
	x.ended()
	return nil
}

// rollback turns the run into a rollback: republish the old credential
// when something was published, then disable the new user.
func (x *run) rollback(ctx context.Context, reason string) error {
	st := x.view.State
	last, _ := st.Last()
	if last.Name == StepRetire {
		// The rollout completed: the consumers run the new user, so
		// going back would break them. The old user just stays.
		return x.fail(ctx, reason+fmt.Sprintf("; %s stays active and %s was not retired", st.NewUser, st.ActiveUser))
	}
	if st.Phase == PhaseRollingBack {
		return x.fail(ctx, reason)
	}
	_, published := st.Step(StepPublish)
	if published && st.ActiveUser == "" && st.PublishedRevision != 0 {
		// The first run has nothing to go back to: what it published
		// stays, and its user becomes the active one.
		next := st
		next.Phase, next.ActiveUser, next.RunFinished = PhaseFailed, st.NewUser, x.now()
		next.Reason = reason + "; the first credential stays published (there is none to go back to)"
		x.log.Error("rotation run failed", "run", next.Run, "reason", next.Reason)
		if err := x.persist(ctx, next, nil); err != nil {
			return err
		}
		x.ended()
		return nil
	}
	next := st
	next.Reason = reason
	first := StepRollbackDisable
	if published && st.ActiveUser != "" {
		first = StepRollbackPublish
	}
	return x.persistRollback(ctx, next, first)
}

func (x *run) persistRollback(ctx context.Context, next State, first string) error {
	next.Phase = PhaseRollingBack
	next.Steps = append(append([]Step(nil), next.Steps...), Step{Name: first, Started: x.now()})
	x.log.Warn("rotation rolls back", "run", next.Run, "reason", next.Reason)
	if err := x.persist(ctx, next, nil); err != nil {
		return err
	}
	// The rollback's first step shows its own detail, even one the
	// run's last step had.
	x.lastDetail = ""
	x.hook(first, "begun")
	return nil
}

// outcome is what a step's side effect came to.
type outcome struct {
	// detail says it for a human: `graft rotation status` shows it.
	detail string
	// verdict, when set, is a reason to roll back at once; the step
	// does not finish.
	verdict string
	// revision is the store revision a publish wrote, or found already
	// holding what it would write.
	revision int64
	// acked are the agents a rollout saw run the revision.
	acked []string
}

func stepDone(detail string) outcome    { return outcome{detail: detail} }
func rollBackFor(reason string) outcome { return outcome{verdict: reason} }
func publishedAt(rev int64) outcome {
	return outcome{detail: fmt.Sprintf("revision %d", rev), revision: rev}
}

// apply does the side effect of step and says what it came to. Every
// side effect may run again after a crash and comes to the same.
func (x *run) apply(ctx context.Context, step string) (outcome, error) {
	if x.secrets == nil {
		return rollBackFor("the run's passwords are gone (sealed with a key no longer in graftd's keyring?)"), nil
	}
	switch step {
	case StepKey:
		drv, err := x.driver(ctx)
		if err != nil {
			return outcome{}, err
		}
		if err := drv.EnsureGroup(ctx, x.spec.Group); err != nil {
			return outcome{}, err
		}
		if err := drv.SetPassword(ctx, x.view.NewUser, x.spec.Group, x.secrets.NewPassword); err != nil {
			return outcome{}, err
		}
		return stepDone("re-keyed " + x.view.NewUser), nil
	case StepTest:
		drv, err := x.driver(ctx)
		if err != nil {
			return outcome{}, err
		}
		if err := drv.Test(ctx, x.view.NewUser, x.spec.Group, x.secrets.NewPassword); errors.Is(err, dbcred.ErrLogin) {
			return rollBackFor("login test of " + x.view.NewUser + " failed: " + err.Error()), nil
		} else if err != nil {
			return outcome{}, err
		}
		return stepDone(x.view.NewUser + " logs in as " + x.spec.Group), nil
	case StepPublish:
		rev, err := x.publish(ctx, x.view.NewUser, x.secrets.NewPassword)
		if err != nil {
			return outcome{}, err
		}
		return publishedAt(rev), nil
	case StepRollout:
		if x.view.ActiveUser == "" {
			// The first credential replaces none: no consumer can run
			// without it yet, and there is no old user to protect.
			return stepDone("the first credential: no old user to retire, so no consumer to wait for"), nil
		}
		return x.rollout(ctx, x.view.PublishedRevision, true)
	case StepRetire:
		return x.retire(ctx)
	case StepRollbackPublish:
		rev, err := x.publish(ctx, x.view.ActiveUser, x.secrets.PreviousPassword)
		if err != nil {
			return outcome{}, err
		}
		return publishedAt(rev), nil
	case StepRollbackRollout:
		return x.rollout(ctx, x.view.RollbackRevision, false)
	case StepRollbackDisable:
		drv, err := x.driver(ctx)
		if err != nil {
			return outcome{}, err
		}
		if err := drv.Retire(ctx, x.view.NewUser); err != nil {
			return outcome{}, err
		}
		return stepDone(x.view.NewUser + " can no longer log in"), nil
	}
	return outcome{}, fmt.Errorf("step %q is not one this graft-agent knows: upgrade it", step)
}

// driver connects to the database with the admin DSN from the owner's
// tree, once per Run.
func (x *run) driver(ctx context.Context) (dbcred.Driver, error) {
	if x.drv != nil {
		return x.drv, nil
	}
	vals, _, err := x.cfg.Values.ReadTree(ctx, x.spec.Admin)
	if err != nil {
		return nil, fmt.Errorf("read the admin DSN below %s: %w", x.spec.Admin, err)
	}
	dsn := string(vals[KeyDSN])
	if dsn == "" {
		return nil, fmt.Errorf("%s/%s is missing: put the admin DSN there", x.spec.Admin, KeyDSN)
	}
	x.dsn = dsn
	drv, err := x.cfg.Open(ctx, x.spec.Driver, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect to the database as its admin: %w", err)
	}
	x.drv = drv
	return drv, nil
}

// publish writes user and password at the target in one transaction,
// unless they are there already (a resumed step), and returns the
// revision that holds them.
func (x *run) publish(ctx context.Context, user, password string) (int64, error) {
	cur, rev, err := x.cfg.Values.ReadTree(ctx, x.spec.Target)
	if err != nil {
		return 0, err
	}
	if string(cur[KeyUser]) == user && bytes.Equal(cur[KeyPassword], []byte(password)) && rev > 0 {
		return rev, nil
	}
	return x.cfg.Values.PutTree(ctx, x.spec.Target, map[string][]byte{KeyUser: []byte(user), KeyPassword: []byte(password)})
}

// rollout waits, one look per Poll, until every agent of every consumer
// application runs revision rev healthy and replication has reached
// every copy. verdicts says an unhealthy consumer is a reason to roll
// back (in a run; in a rollback it is waited out).
func (x *run) rollout(ctx context.Context, rev int64, verdicts bool) (outcome, error) {
	path := x.spec.Target + "/" + KeyPassword
	for {
		ro, err := x.cfg.Values.Rollout(ctx, path, rev)
		if err != nil {
			return outcome{}, err
		}
		done, acked, why := x.judge(ro, rev)
		if verdicts {
			for _, c := range ro.Consumers {
				if c.Unhealthy && x.ours(c.App) {
					return rollBackFor(fmt.Sprintf("consumer %s/%s is unhealthy with revision %d: %s", c.App, c.ID, rev, c.Reason)), nil
				}
			}
		}
		if done {
			agents := fmt.Sprintf("%d agents run", len(acked))
			if len(acked) == 1 {
				agents = "1 agent runs"
			}
			return outcome{detail: fmt.Sprintf("%s revision %d healthy: %s", agents, rev, strings.Join(acked, ", ")), acked: acked}, nil
		}
		if why != x.lastDetail && ctx.Err() == nil {
			// Shown by rotation status while the rollout goes on.
			next := x.view.State
			next.Steps = append([]Step(nil), next.Steps...)
			next.Steps[len(next.Steps)-1].Detail = why
			if err := x.persist(ctx, next, nil); err != nil {
				return outcome{}, err
			}
			x.lastDetail = why
		}
		if err := retry.Sleep(ctx, x.cfg.Poll); err != nil {
			// The step's timeout: why becomes its detail in the reason
			// (it says what is waited for already).
			return outcome{}, errors.New(why)
		}
	}
}

func (x *run) ours(app string) bool {
	for _, a := range x.spec.ConsumerApps() {
		if a == app {
			return true
		}
	}
	return false
}

// judge says whether a rollout of revision rev is complete for the spec's
// consumers: each consumer application has at least one agent, every
// agent of theirs is ok at rev or later, and replication reached every
// copy. Otherwise it says what is missing.
func (x *run) judge(ro Rollout, rev int64) (done bool, acked []string, why string) {
	var waiting []string
	seen := map[string]bool{}
	for _, c := range ro.Consumers {
		if !x.ours(c.App) {
			continue
		}
		seen[c.App] = true
		if c.OK && c.Revision < rev {
			// Not an acknowledgement of what this run published, whatever
			// a graftd that did not check says.
			c.OK, c.Reason = false, fmt.Sprintf("it reports revision %d, before %d was published", c.Revision, rev)
		}
		if c.OK {
			acked = append(acked, c.App+"/"+c.ID)
		} else {
			waiting = append(waiting, c.App+"/"+c.ID+" ("+c.Reason+")")
		}
	}
	for _, app := range x.spec.ConsumerApps() {
		if !seen[app] {
			waiting = append(waiting, "app:"+app+" (no agent of it reads the target: is it deployed, and does its template read the copy?)")
		}
	}
	waiting = append(waiting, ro.Unreached...)
	if len(waiting) == 0 {
		return true, acked, ""
	}
	return false, acked, fmt.Sprintf("%d acked, waiting for %s", len(acked), strings.Join(waiting, "; "))
}

// sessionsEnded reports whether every consumer of this rotation uses the
// credential only through a broker that has no session open as another
// user than the one it logs in with now.
func (x *run) sessionsEnded(ro Rollout) bool {
	seen := map[string]bool{}
	for _, c := range ro.Consumers {
		if !x.ours(c.App) {
			continue
		}
		if !c.OK || !c.BrokerOnly || c.OldSessions > 0 {
			return false
		}
		seen[c.App] = true
	}
	for _, app := range x.spec.ConsumerApps() {
		if !seen[app] {
			return false
		}
	}
	return len(seen) > 0
}

// retire waits out the grace, checks once more that every consumer runs
// the new credential, and retires the old user.
func (x *run) retire(ctx context.Context) (outcome, error) {
	old := x.view.ActiveUser
	if old == "" {
		// Nobody to retire, so no grace to give them.
		return stepDone("no old user yet: this was the first run"), nil
	}
	// The grace lets consumers end their sessions as the old user; a
	// consumer that uses the credential only through graft-agent's broker
	// says when it has none left, so once every consumer is such a one
	// with no old session open, the grace ends early.
	for wait := x.view.RetireAt.Sub(x.now()); wait > 0; wait = x.view.RetireAt.Sub(x.now()) {
		ro, err := x.cfg.Values.Rollout(ctx, x.spec.Target+"/"+KeyPassword, x.view.PublishedRevision)
		if err == nil && x.sessionsEnded(ro) {
			x.log.Info("every consumer logs in through its broker with the new user and has no session open as the old one: retiring it before the grace ends", "user", old)
			break
		}
		if err := retry.Sleep(ctx, min(wait, x.cfg.Poll)); err != nil {
			return outcome{}, err
		}
	}
	// Never retire a user a consumer still reports using: the rollout
	// must still be complete (an agent that appeared since runs the
	// target's current value, which is the new one).
	for {
		ro, err := x.cfg.Values.Rollout(ctx, x.spec.Target+"/"+KeyPassword, x.view.PublishedRevision)
		if err != nil {
			return outcome{}, err
		}
		done, _, why := x.judge(ro, x.view.PublishedRevision)
		if done {
			break
		}
		x.log.Info("holding the old user's retirement until every consumer runs the new one", "user", old, "waiting", why)
		if err := retry.Sleep(ctx, x.cfg.Poll); err != nil {
			return outcome{}, fmt.Errorf("not retiring %s: %s", old, why)
		}
	}
	drv, err := x.driver(ctx)
	if err != nil {
		return outcome{}, err
	}
	if err := drv.Retire(ctx, old); err != nil {
		return outcome{}, err
	}
	return stepDone("retired " + old), nil
}
