package rotation_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/rotation"
)

// fakeControl stores every state a Runner advances to.
type fakeControl struct {
	mu     sync.Mutex
	states []rotation.State
}

func (c *fakeControl) Advance(_ context.Context, _ string, next rotation.View, _ *rotation.Secrets) (rotation.View, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.states = append(c.states, next.State)
	next.Version++
	return next, nil
}

func (c *fakeControl) stored() []rotation.State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]rotation.State(nil), c.states...)
}

// fakeValues is an owner's tree holding only the admin DSN.
type fakeValues struct{ admin, dsn string }

func (v fakeValues) ReadTree(_ context.Context, path string) (map[string][]byte, int64, error) {
	if path == v.admin {
		return map[string][]byte{rotation.KeyDSN: []byte(v.dsn)}, 5, nil
	}
	return map[string][]byte{}, 0, nil
}

func (v fakeValues) PutTree(context.Context, string, map[string][]byte) (int64, error) {
	return 0, errors.New("nothing is published in this test")
}

func (v fakeValues) Rollout(context.Context, string, int64) (rotation.Rollout, error) {
	return rotation.Rollout{}, nil
}

// A driver's error that quotes a piece of the admin DSN's password (as
// pgx's did for a password with an unescaped @, which it took for part of
// the host) reaches neither the steps' details nor the run's reason,
// which graftd stores, audits and shows, nor the rotator's log.
func TestRunnerKeepsTheDSNsPasswordOutOfItsErrors(t *testing.T) {
	const dsn = "postgres://admin:Zq9ab@Kx7cd@127.0.0.1:5999/postgres"
	open := func(context.Context, string, string) (dbcred.Driver, error) {
		return nil, errors.New("open admin connection: failed to connect to `user=admin database=postgres`: hostname resolving error: lookup Kx7cd@127.0.0.1: no such host")
	}
	spec := rotation.Spec{Name: "mp-pg", Driver: rotation.DriverPostgres, Admin: "/dba/admin/postgres", Target: "/dba/mp/postgres",
		Users: []string{"mp-blue", "mp-green"}, Group: "mp", Consumers: []string{"app:mp"}, StepTimeout: 300 * time.Millisecond}
	ctl := &fakeControl{}
	logs := &testenv.Buffer{}
	r := rotation.NewRunner(rotation.RunnerConfig{Control: ctl, Values: fakeValues{admin: spec.Admin, dsn: dsn}, Open: open,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	view, err := r.Run(ctx, spec, rotation.View{State: rotation.State{Phase: rotation.PhaseRequested}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if view.Phase != rotation.PhaseFailed {
		t.Fatalf("the run ended %s, want %s", view.Phase, rotation.PhaseFailed)
	}
	var texts []string
	for _, st := range ctl.stored() {
		texts = append(texts, st.Reason)
		for _, s := range st.Steps {
			texts = append(texts, s.Detail)
		}
	}
	texts = append(texts, logs.String())
	sawError := false
	for _, text := range texts {
		if strings.Contains(text, "Kx7cd") || strings.Contains(text, "Zq9ab") {
			t.Errorf("a stored text or the log holds a piece of the DSN's password: %q", text)
		}
		sawError = sawError || strings.Contains(text, "hostname resolving error: lookup [redacted]@127.0.0.1")
	}
	if !sawError {
		t.Errorf("no stored text says why the step failed: %q", texts)
	}
}

// okDriver does every side effect at once.
type okDriver struct{}

func (okDriver) EnsureGroup(context.Context, string) error                 { return nil }
func (okDriver) SetPassword(context.Context, string, string, string) error { return nil }
func (okDriver) Test(context.Context, string, string, string) error        { return nil }
func (okDriver) Retire(context.Context, string) error                      { return nil }
func (okDriver) Sessions(context.Context, string) (int, error)             { return 0, nil }
func (okDriver) Close() error                                              { return nil }

// treeValues is an owner's tree in memory; no agent reports a rollout.
type treeValues struct {
	mu   sync.Mutex
	rev  int64
	vals map[string]map[string][]byte
}

func (v *treeValues) ReadTree(_ context.Context, path string) (map[string][]byte, int64, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := map[string][]byte{}
	for k, val := range v.vals[path] {
		out[k] = val
	}
	return out, v.rev, nil
}

func (v *treeValues) PutTree(_ context.Context, path string, vals map[string][]byte) (int64, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.rev++
	v.vals[path] = vals
	return v.rev, nil
}

func (v *treeValues) Rollout(context.Context, string, int64) (rotation.Rollout, error) {
	return rotation.Rollout{}, nil
}

// A run whose consumer never reports rolls back, and its rollback's
// rollout times out too: the reason says what it waited for once, not
// once per step that waited for it.
func TestRollbackReasonSaysItOnce(t *testing.T) {
	view := runUnacked(t, "rb", 3, 300*time.Millisecond)
	if view.Phase != rotation.PhaseFailed {
		t.Fatalf("the run ended %s, want %s", view.Phase, rotation.PhaseFailed)
	}
	t.Logf("reason: %s", view.Reason)
	if n := strings.Count(view.Reason, "app:rb"); n != 1 {
		t.Errorf("the reason names app:rb %d times, want once: %q", n, view.Reason)
	}
	if strings.Contains(view.Reason, "waiting for 0 acked, waiting for") {
		t.Errorf("the reason stutters: %q", view.Reason)
	}
	for _, want := range []string{"step rollout did not finish within 300ms: ", "then step rollback-rollout did not finish within 300ms either, waiting for the same", "rb-green stays able to log in"} {
		if !strings.Contains(view.Reason, want) {
			t.Errorf("the reason does not say %q: %q", want, view.Reason)
		}
	}
}

// The revisions a run publishes at are stored with the steps that wrote
// them, as the store returned them: the rollout waits for the run's, the
// rollback's rollout for the old credential's.
func TestRunnerStoresTheRevisionsItPublished(t *testing.T) {
	view := runUnacked(t, "rv", 41, 200*time.Millisecond)
	if got, want := view.PublishedRevision, int64(42); got != want {
		t.Errorf("published revision = %d, want %d", got, want)
	}
	if got, want := view.RollbackRevision, int64(43); got != want {
		t.Errorf("rollback revision = %d, want %d", got, want)
	}
	for _, tt := range []struct {
		step string
		want string
	}{{rotation.StepPublish, "revision 42"}, {rotation.StepRollbackPublish, "revision 43"}} {
		if s, ok := view.Step(tt.step); !ok || s.Detail != tt.want {
			t.Errorf("step %s = %+v, want detail %q", tt.step, s, tt.want)
		}
	}
}

// runUnacked runs one run of rotation name-pg, whose active user is
// name-blue and whose consumer app:name never reports, on a tree at
// revision rev, to its end: its rollout times out, it rolls back, and its
// rollback's rollout times out too.
func runUnacked(t *testing.T, name string, rev int64, rolloutTimeout time.Duration) rotation.View {
	t.Helper()
	spec := rotation.Spec{Name: name + "-pg", Driver: rotation.DriverPostgres, Admin: "/dba/admin/postgres", Target: "/dba/" + name + "/postgres",
		Users: []string{name + "-blue", name + "-green"}, Group: name, Consumers: []string{"app:" + name},
		StepTimeout: 5 * time.Second, RolloutTimeout: rolloutTimeout}
	values := &treeValues{rev: rev, vals: map[string]map[string][]byte{
		spec.Admin:  {rotation.KeyDSN: []byte("postgres://admin:pw@db/postgres")},
		spec.Target: {rotation.KeyUser: []byte(name + "-blue"), rotation.KeyPassword: []byte("old-pw")},
	}}
	r := rotation.NewRunner(rotation.RunnerConfig{Control: &fakeControl{}, Values: values, Poll: 20 * time.Millisecond,
		Open:   func(context.Context, string, string) (dbcred.Driver, error) { return okDriver{}, nil },
		Logger: testenv.Logger(t)})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	start := rotation.View{State: rotation.State{Run: 1, Phase: rotation.PhaseRequested, ActiveUser: name + "-blue"}}
	view, err := r.Run(ctx, spec, start, nil)
	if err != nil {
		t.Fatal(err)
	}
	return view
}
