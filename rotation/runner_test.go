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
