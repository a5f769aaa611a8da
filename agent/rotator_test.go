package agent_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/dbproc"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/pgtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/sdk"
)

const (
	rotAdmin  = "/dba/passpack/admin/postgres"
	rotTarget = "/dba/passpack/services/mp/postgres"
	rotName   = "mp-pg"
	blue      = "mp-blue"
	green     = "mp-green"
)

// rotationRig is a real PostgreSQL, a graftd, a consumer agent for app mp
// whose health check logs in with the credential it rendered, and a DBA
// identity that owns the target.
type rotationRig struct {
	t     *testing.T
	pg    *pgtest.Server
	g     *graftdtest.Graftd
	dba   *sdk.Client
	dbaTF string // the DBA's token file, for rotators
	file  string // the consumer's rendered credential
	// reject, when set, makes the consumer's health check fail for that
	// user.
	reject atomic.Value
}

func newRotationRig(t *testing.T) *rotationRig {
	t.Helper()
	pg := pgtest.Start(t)
	return newRotationRigOn(t, pg, graftdtest.Start(t))
}

// newRotationRigOn is the rig on PostgreSQL pg and graftd g.
func newRotationRigOn(t *testing.T, pg *pgtest.Server, g *graftdtest.Graftd) *rotationRig {
	t.Helper()
	r := &rotationRig{t: t, pg: pg, g: g}
	r.reject.Store("")
	r.pg.CreateDatabase(t, "mp", r.pg.Superuser)
	ctx := t.Context()
	dir := t.TempDir()
	var dbaToken string
	r.dbaTF, dbaToken = r.g.TokenFile(t, "user:dora", "dba")
	appTF, _ := r.g.TokenFile(t, "app:mp", "app")
	var err error
	if r.dba, err = sdk.New(ctx, sdk.Config{Addr: r.g.Addr, Token: dbaToken}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.dba.Close() })
	if _, err := r.dba.Put(ctx, rotAdmin+"/dsn", []byte(r.pg.DSN)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.dba.Share(ctx, rotTarget, []string{"/app/mp/replicated/postgres"}, sdk.ShareOptions{}); err != nil {
		t.Fatal(err)
	}

	r.file = filepath.Join(dir, "mp.env")
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		user, password := r.rendered()
		if user == "" || user == r.reject.Load().(string) {
			http.Error(w, "refusing "+user, http.StatusServiceUnavailable)
			return
		}
		if err := r.login(req.Context(), user, password); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(health.Close)
	cfg := agent.DefaultConfig()
	cfg.Server, cfg.TokenFile, cfg.App, cfg.Listen = r.g.Addr, appTF, "mp", "off"
	cfg.Templates = []agent.Template{{Destination: r.file, Contents: "user={{ secret \"replicated/postgres/user\" }}\npassword={{ secret \"replicated/postgres/password\" }}\n"}}
	cfg.Health = agent.Health{HTTP: health.URL, Timeout: 2 * time.Second}
	cfg.Wait = agent.Wait{Min: 10 * time.Millisecond, Max: 100 * time.Millisecond}
	startLogged(t, cfg)
	return r
}

// rendered is the credential in the consumer's file.
func (r *rotationRig) rendered() (user, password string) {
	data, _ := os.ReadFile(r.file)
	for line := range strings.Lines(string(data)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch k {
		case "user":
			user = v
		case "password":
			password = v
		}
	}
	return user, password
}

func (r *rotationRig) login(ctx context.Context, user, password string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, r.pg.URL(user, password, "mp"))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	return c.Ping(ctx)
}

// rotator starts a rotator agent with the DBA's identity.
func (r *rotationRig) rotator(id string, hook func(string, rotation.Boundary)) *testenv.Buffer {
	cfg := agent.DefaultConfig()
	cfg.Server, cfg.TokenFile, cfg.ID, cfg.Listen = r.g.Addr, r.dbaTF, id, "off"
	cfg.Rotations = agent.Rotations{All: true}
	cfg.RotationClaimTTL = 2 * time.Second
	cfg.RotationHook = hook
	_, logs := startLogged(r.t, cfg)
	return logs
}

func (r *rotationRig) create(mod func(*rotation.Spec)) {
	r.t.Helper()
	spec := rotation.Spec{Name: rotName, Driver: rotation.DriverPostgres, Admin: rotAdmin, Target: rotTarget,
		Users: []string{blue, green}, Consumers: []string{"app:mp"}, RolloutTimeout: 30 * time.Second, RetireGrace: 50 * time.Millisecond}
	if mod != nil {
		mod(&spec)
	}
	if _, err := r.dba.CreateRotation(r.t.Context(), spec); err != nil {
		r.t.Fatal(err)
	}
}

// run asks for a run and waits for its end.
func (r *rotationRig) run(timeout time.Duration) sdk.Rotation {
	r.t.Helper()
	ctx := r.t.Context()
	start, err := r.dba.RunRotation(ctx, rotName)
	if err != nil {
		r.t.Fatal(err)
	}
	var rot sdk.Rotation
	testenv.WaitFor(r.t, timeout, func() bool {
		rot, err = r.dba.GetRotation(ctx, rotName)
		return err == nil && rot.State.Run > start.State.Run && !rot.State.Phase.InProgress()
	})
	return rot
}

func (r *rotationRig) target() (user, password string) {
	r.t.Helper()
	for _, k := range []string{"user", "password"} {
		e, err := r.dba.Get(r.t.Context(), rotTarget+"/"+k)
		if err != nil {
			r.t.Fatal(err)
		}
		if k == "user" {
			user = string(e.Value)
		} else {
			password = string(e.Value)
		}
	}
	return user, password
}

// Two runs: the first creates the group, blue and the first credential;
// the second re-keys green, rolls it out to the consumer, and retires
// blue after the grace (which the first run, with no one to retire, does
// not wait). What blue created stays usable by green.
func TestRotatorAlternatesUsers(t *testing.T) {
	const grace = 2 * time.Second
	r := newRotationRig(t)
	r.rotator("rotator-1", nil)
	r.create(func(s *rotation.Spec) { s.RetireGrace = grace })

	rot := r.run(60 * time.Second)
	if rot.State.Phase != rotation.PhaseDone || rot.State.ActiveUser != blue {
		t.Fatalf("run 1: %s active %q (%s): want done with %s", rot.State.Phase, rot.State.ActiveUser, rot.State.Reason, blue)
	}
	user, pw := r.target()
	if user != blue {
		t.Fatalf("target user %q, want %s", user, blue)
	}
	testenv.WaitFor(t, 10*time.Second, func() bool { u, p := r.rendered(); return u == blue && p == pw })
	bluePW := pw
	ctx := t.Context()
	// The DBA grants to the group; both users act as it.
	r.pg.Exec(t, "mp", "GRANT ALL ON SCHEMA public TO mp")
	c, err := pgx.Connect(ctx, r.pg.URL(blue, bluePW, "mp"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "CREATE TABLE pets (id serial PRIMARY KEY, name text); INSERT INTO pets (name) VALUES ('Rex')"); err != nil {
		t.Fatalf("blue creates a table: %v", err)
	}
	c.Close(ctx)

	rot = r.run(60 * time.Second)
	if rot.State.Phase != rotation.PhaseDone || rot.State.ActiveUser != green {
		t.Fatalf("run 2: %s active %q (%s): want done with %s", rot.State.Phase, rot.State.ActiveUser, rot.State.Reason, green)
	}
	if len(rot.State.Acked) != 1 || !strings.HasPrefix(rot.State.Acked[0], "mp/") {
		t.Errorf("acked %v: want the consumer's agent", rot.State.Acked)
	}
	user, greenPW := r.target()
	if user != green || greenPW == bluePW {
		t.Fatalf("target %q: want %s with a new password", user, green)
	}
	if err := r.login(ctx, blue, bluePW); err == nil {
		t.Fatal("blue still logs in after it was retired")
	}
	c, err = pgx.Connect(ctx, r.pg.URL(green, greenPW, "mp"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "INSERT INTO pets (name) VALUES ('Fido'); ALTER TABLE pets ADD COLUMN born date; UPDATE pets SET born = now()"); err != nil {
		t.Fatalf("green uses the table blue created: %v", err)
	}
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pets").Scan(&n); err != nil || n != 2 {
		t.Fatalf("green reads %d pets (%v), want 2", n, err)
	}
	runs, err := r.dba.RotationHistory(ctx, rotName, 0)
	if err != nil || len(runs) != 2 || runs[0].Run != 2 || runs[0].Outcome != rotation.PhaseDone {
		t.Fatalf("history %+v, %v: want runs 2 and 1, done", runs, err)
	}
	for _, s := range runs[0].Steps {
		if !s.Done() {
			t.Errorf("step %s of run 2 did not finish", s.Name)
		}
	}
	// The grace runs from the end of the rollout to the retirement.
	retired := func(run rotation.Run) time.Duration {
		var rolledOut time.Time
		for _, s := range run.Steps {
			switch s.Name {
			case rotation.StepRollout:
				rolledOut = s.Finished
			case rotation.StepRetire:
				return s.Finished.Sub(rolledOut)
			}
		}
		t.Fatalf("run %d has no retire step", run.Run)
		return 0
	}
	if d := retired(runs[1]); d >= grace {
		t.Errorf("run 1 retired %s after its rollout: it waited the grace with no one to retire", d)
	}
	if d := retired(runs[0]); d < grace {
		t.Errorf("run 2 retired blue %s after its rollout: less than the %s grace", d, grace)
	}
}

// A consumer whose health check fails with the new credential rolls the
// run back: the old credential is published again, the consumer returns
// to it, and the new user can no longer log in.
func TestRotatorRollsBackWhenAConsumerIsUnhealthy(t *testing.T) {
	r := newRotationRig(t)
	r.rotator("rotator-1", nil)
	r.create(nil)
	if rot := r.run(60 * time.Second); rot.State.Phase != rotation.PhaseDone {
		t.Fatalf("run 1: %s (%s)", rot.State.Phase, rot.State.Reason)
	}
	_, bluePW := r.target()
	r.reject.Store(green)
	rot := r.run(60 * time.Second)
	if rot.State.Phase != rotation.PhaseFailed || !strings.Contains(rot.State.Reason, "unhealthy") {
		t.Fatalf("run 2: %s (%s): want failed because the consumer was unhealthy", rot.State.Phase, rot.State.Reason)
	}
	if rot.State.ActiveUser != blue {
		t.Fatalf("active user %q after the rollback, want %s", rot.State.ActiveUser, blue)
	}
	var names []string
	for _, s := range rot.State.Steps {
		names = append(names, s.Name)
	}
	if got := strings.Join(names, ","); got != "key,test,publish,rollout,rollback-publish,rollback-rollout,rollback-disable" {
		t.Fatalf("steps %s", got)
	}
	if u, p := r.target(); u != blue || p != bluePW {
		t.Fatalf("target holds %q after the rollback, want %s with its password", u, blue)
	}
	testenv.WaitFor(t, 10*time.Second, func() bool { u, _ := r.rendered(); return u == blue })
	if err := r.login(t.Context(), blue, bluePW); err != nil {
		t.Fatalf("blue cannot log in after the rollback: %v", err)
	}
	if s, ok := rot.State.Step(rotation.StepRollbackDisable); !ok || !s.Done() {
		t.Fatal("the new user was not disabled")
	}
	var canLogin bool
	r.pg.Connect(t, "postgres").QueryRow(t.Context(), "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", green).Scan(&canLogin)
	if canLogin {
		t.Fatal("green can still log in after the rollback")
	}
	// The next run tries green again, and succeeds once it is healthy.
	r.reject.Store("")
	if rot := r.run(60 * time.Second); rot.State.Phase != rotation.PhaseDone || rot.State.ActiveUser != green {
		t.Fatalf("run 3: %s active %q (%s)", rot.State.Phase, rot.State.ActiveUser, rot.State.Reason)
	}
}

// An admin DSN whose password holds an unescaped @ (pgx took its rest for
// the host and looked it up): the rotator's step detail, as graftd stores
// and shows it, and the rotator's log hold no piece of the password, and
// say how to fix the DSN.
func TestRotatorKeepsAMalformedDSNsPasswordOut(t *testing.T) {
	g := graftdtest.Start(t)
	ctx := t.Context()
	tf, token := g.TokenFile(t, "user:dora", "dba")
	dba, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dba.Close() })
	if _, err := dba.Put(ctx, rotAdmin+"/dsn", []byte("postgres://admin:Zq9ab@Kx7cd@127.0.0.1:5999/postgres")); err != nil {
		t.Fatal(err)
	}
	if _, err := dba.CreateRotation(ctx, rotation.Spec{Name: rotName, Driver: rotation.DriverPostgres, Admin: rotAdmin, Target: rotTarget,
		Users: []string{blue, green}, Consumers: []string{"app:mp"}}); err != nil {
		t.Fatal(err)
	}
	cfg := agent.DefaultConfig()
	cfg.Server, cfg.TokenFile, cfg.ID, cfg.Listen = g.Addr, tf, "rotator", "off"
	cfg.Rotations = agent.Rotations{All: true}
	_, logs := startLogged(t, cfg)
	if _, err := dba.RunRotation(ctx, rotName); err != nil {
		t.Fatal(err)
	}
	var detail string
	testenv.WaitFor(t, 15*time.Second, func() bool {
		rot, err := dba.GetRotation(ctx, rotName)
		if err != nil {
			return false
		}
		if s, ok := rot.State.Last(); ok {
			detail = s.Detail
		}
		return detail != ""
	})
	for what, text := range map[string]string{"the step's detail": detail, "the rotator's log": logs.String()} {
		if strings.Contains(text, "Zq9ab") || strings.Contains(text, "Kx7cd") {
			t.Errorf("%s holds a piece of the DSN's password:\n%s", what, text)
		}
	}
	if !strings.Contains(detail, "percent-encode") {
		t.Errorf("the step's detail %q does not say to percent-encode the password", detail)
	}
}

// On a machine without PostgreSQL the rotator's tests skip, and with
// GRAFT_REQUIRE_PG=1 they fail.
func TestSkipsWithoutPostgreSQL(t *testing.T) {
	dbproc.CheckSkipsWithout(t, "^TestRotator", []string{"GRAFT_PG_BINDIR=/nonexistent"}, "GRAFT_REQUIRE_PG")
}

// One process that is both an application's agent and a rotator, whose
// token file is replaced (and the old token revoked) in the middle of a
// run: the rotator, the watch loop and the report all go on with the new
// token, and the run completes. Both parts reconnect from their own
// goroutine, so -race also checks that they share one connection safely.
func TestRotatorAndAppAgentSurviveANewTokenMidRun(t *testing.T) {
	r := newRotationRig(t)
	ctx := t.Context()
	tf, oldToken := r.g.TokenFile(t, "user:ops", "admin")
	_, newToken := r.g.TokenFile(t, "user:ops", "admin")
	root, err := sdk.New(ctx, sdk.Config{Addr: r.g.Addr, Token: r.g.Token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	if _, err := root.Put(ctx, "/app/ops/greeting", []byte("hello-1")); err != nil {
		t.Fatal(err)
	}
	var swapped atomic.Bool
	out := filepath.Join(t.TempDir(), "ops.txt")
	cfg := agent.DefaultConfig()
	cfg.Server, cfg.TokenFile, cfg.ID, cfg.App, cfg.Listen = r.g.Addr, tf, "ops-1", "ops", "off"
	cfg.Templates = []agent.Template{{Destination: out, Contents: `{{ secret "greeting" }}`}}
	cfg.Rotations = agent.Rotations{All: true}
	cfg.RotationClaimTTL = 2 * time.Second
	cfg.RotationHook = func(_ string, b rotation.Boundary) {
		if b.Step != rotation.StepTest || b.At != "begun" || !swapped.CompareAndSwap(false, true) {
			return
		}
		if err := os.WriteFile(tf, []byte(newToken+"\n"), 0o600); err != nil {
			t.Error(err)
		}
		if _, err := root.RevokeToken(context.Background(), oldToken); err != nil {
			t.Error(err)
		}
	}
	startLogged(t, cfg)
	testenv.WaitFor(t, 10*time.Second, func() bool { d, _ := os.ReadFile(out); return string(d) == "hello-1" })
	r.create(nil)

	rot := r.run(60 * time.Second)
	if !swapped.Load() {
		t.Fatal("the token was never replaced")
	}
	if rot.State.Phase != rotation.PhaseDone {
		t.Fatalf("run: %s (%s): want done after the token changed", rot.State.Phase, rot.State.Reason)
	}
	if _, err := root.Put(ctx, "/app/ops/greeting", []byte("hello-2")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 20*time.Second, func() bool { d, _ := os.ReadFile(out); return string(d) == "hello-2" })
}
