package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/sdk"
)

const (
	rotAdmin  = "/dba/passpack/admin/postgres"
	rotTarget = "/dba/passpack/services/message-processor/postgres"
	rotName   = "message-processor-pg"
	// rotDSN is what the admin DSN holds; no output may show it.
	rotDSN = "postgres://admin:adm1n-s3cret@db:5432/postgres"
)

func rotCreateArgs(extra ...string) []string {
	return append([]string{"rotation", "create", rotName, "--driver", "postgres", "--admin", rotAdmin, "--target", rotTarget,
		"--users", "message-processor-blue,message-processor-green", "--consumers", "app:message-processor"}, extra...)
}

// mustContain fails unless out holds every one of want.
func mustContain(t *testing.T, what, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, out)
		}
	}
	if strings.Contains(out, "adm1n-s3cret") {
		t.Errorf("%s shows the admin DSN's password:\n%s", what, out)
	}
}

// line returns the line of out that starts with prefix.
func line(t *testing.T, out, prefix string) string {
	t.Helper()
	for l := range strings.Lines(out) {
		if strings.HasPrefix(l, prefix) {
			return strings.TrimRight(l, "\n")
		}
	}
	t.Fatalf("no line %q in:\n%s", prefix, out)
	return ""
}

// Creating a rotation: refused until the admin DSN is stored, refused
// with flags missing or wrong (each named), then stored with its
// defaults and shown by create, ls, status and history before any run.
func TestRotationCreate(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))

	// Flags missing: each is named, with an example to copy.
	got := c.fails("rotation", "create", rotName, "--driver", "postgres", "--target", rotTarget)
	mustContain(t, "create without --admin, --users, --consumers", got,
		"rotation create message-processor-pg: missing --admin, --users, --consumers; for example: graft rotation create message-processor-pg --driver postgres --admin /dba/passpack/admin/postgres")
	if got := c.fails("rotation", "create"); got != "graft: rotation create: missing NAME (usage: graft rotation create NAME --driver postgres|mysql --admin PATH --target PATH --users A,B --consumers app:X[,app:Y] [flags])\n" {
		t.Errorf("create without a name: %q", got)
	}

	// The DSN is not there yet: the refusal says to put it, and where.
	got = c.fails(rotCreateArgs()...)
	mustContain(t, "create without the admin DSN", got, "the admin DSN "+rotAdmin+"/dsn", "put it first", "graft put "+rotAdmin+"/dsn")
	// For MariaDB the example is go-sql-driver/mysql's form.
	got = c.fails("rotation", "create", rotName, "--driver", "mysql", "--admin", rotAdmin, "--target", rotTarget,
		"--users", "message-processor-blue,message-processor-green", "--consumers", "app:message-processor")
	mustContain(t, "create --driver mysql without the admin DSN", got, "graft put "+rotAdmin+"/dsn 'admin:...@tcp(db:3306)/?tls=true'")

	c.put(rotAdmin+"/dsn", rotDSN)

	// Bad flags are refused by graftd's validation, every problem at once.
	got = c.fails("rotation", "create", rotName, "--driver", "oracle", "--admin", rotAdmin, "--target", rotTarget,
		"--users", "message-processor-blue", "--consumers", "message-processor")
	mustContain(t, "create with one user", got, "users: 1 given: want two users", `driver "oracle"`, `consumer "message-processor": want app:<name>`)
	got = c.fails(rotCreateArgs("--every", "10s")...)
	mustContain(t, "create --every 10s", got, "every 10s: want 0 (only when asked) or at least 1m")
	got = c.fails("rotation", "create", rotName, "--driver", "postgres", "--admin", rotTarget+"/admin", "--target", rotTarget,
		"--users", "a,b", "--group", "g", "--consumers", "app:x")
	mustContain(t, "create with the admin inside the target", got, "overlap")
	if r := c.run("rotation", "ls"); r.code != 0 || r.stdout != "" || r.stderr != "no rotations\n" {
		t.Fatalf("ls after only refused creates: %+v", r)
	}

	out := c.ok(rotCreateArgs("--every", "24h", "--retire-grace", "90s")...)
	mustContain(t, "create", out,
		"rotation:        message-processor-pg\n",
		"driver:          postgres\n",
		"admin:           /dba/passpack/admin/postgres/dsn\n",
		"target:          /dba/passpack/services/message-processor/postgres (keys user, password)\n",
		"users:           message-processor-blue, message-processor-green\n",
		"group:           message-processor\n", // the users' common prefix
		"consumers:       app:message-processor\n",
		"runs:            every 24h\n",
		"timings:         rollout timeout 10m, retire grace 1m30s, step timeout 2m\n",
		"created:         ", " by root\n",
		"graft rotation run message-processor-pg")

	// A second one of the same name, or over the same target, is refused.
	mustContain(t, "create twice", c.fails(rotCreateArgs()...), "rotation message-processor-pg exists")

	// ls: one row, never run, next due a day after creation.
	ls := c.ok("rotation", "ls")
	lines := strings.Split(strings.TrimSpace(ls), "\n")
	if len(lines) != 2 || !regexp.MustCompile(`^NAME +DRIVER +TARGET +PHASE +ACTIVE +LAST-SUCCESS +NEXT-DUE +FLAGS$`).MatchString(lines[0]) {
		t.Fatalf("rotation ls:\n%s", ls)
	}
	row := regexp.MustCompile(`^message-processor-pg +postgres +/dba/passpack/services/message-processor/postgres +idle +- +- +(\S+) +-$`).FindStringSubmatch(lines[1])
	if row == nil {
		t.Fatalf("rotation ls row %q", lines[1])
	}
	var views []rotationView
	decode(t, c.ok("rotation", "ls", "-o", "json"), &views)
	if len(views) != 1 {
		t.Fatalf("ls -o json: %d rotations", len(views))
	}
	v := views[0]
	created, err := time.Parse(time.RFC3339Nano, v.Spec.Created)
	if err != nil {
		t.Fatalf("created %q: %v", v.Spec.Created, err)
	}
	if want := created.Add(24 * time.Hour).UTC().Format(time.RFC3339); row[1] != want || v.State.NextDue == "" {
		t.Errorf("next due %s (json %q), want a day after creation, %s", row[1], v.State.NextDue, want)
	}
	if v.Spec.Every != "24h" || v.Spec.RetireGrace != "1m30s" || v.Spec.RolloutTimeout != "10m" || v.Spec.Group != "message-processor" ||
		v.State.Phase != "idle" || v.State.Run != 0 || v.State.Paused || v.State.Stalled || v.State.Overdue || len(v.State.Steps) != 0 || v.State.Acked == nil {
		t.Errorf("ls -o json: %+v", v)
	}
	mustContain(t, "ls -o yaml", c.ok("rotation", "ls", "-o", "yaml"), "name: message-processor-pg\n", "phase: idle\n", "every: 24h\n")

	st := c.ok("rotation", "status", rotName)
	mustContain(t, "status of a rotation never run", st,
		"target:          "+rotTarget,
		"phase:           idle (never run)\n",
		"run:             - (none yet)\n",
		"active user:     -\n",
		"new user:        -\n",
		"steps:           none\n",
		"consumers acked: -\n",
		"last success:    never\n",
		"next due:        "+row[1]+"\n",
		"overdue:         no\n",
		"stalled:         no\n",
		"holder:          - (no rotator holds it)\n",
		"paused:          no\n")
	if strings.Contains(st, "reason:") || strings.Contains(strings.ToLower(st), "password:") {
		t.Errorf("status of a rotation never run shows a reason or a password:\n%s", st)
	}
	if r := c.run("rotation", "history", rotName); r.code != 0 || r.stdout != "" || r.stderr != "rotation message-processor-pg has no finished runs\n" {
		t.Errorf("history of a rotation never run: %+v", r)
	}
	if got := c.ok("rotation", "history", rotName, "-o", "json"); got != "[]\n" {
		t.Errorf("history -o json of a rotation never run = %q", got)
	}
	mustContain(t, "history --limit 0", c.fails("rotation", "history", rotName, "--limit", "0"), "--limit 0: want 1 to 1000")
	mustContain(t, "status of a rotation that does not exist", c.fails("rotation", "status", "nope"), "rotation nope: not found", "graft rotation ls")
}

// Pausing holds runs (the refusal says how to resume); a run asked for
// stays requested, since no rotator runs in this test, and --wait gives
// up with exit 3 saying so; rm refuses a requested rotation without
// --force.
func TestRotationRunPauseRm(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))
	c.put(rotAdmin+"/dsn", rotDSN)
	c.ok(rotCreateArgs()...)

	out := c.ok("rotation", "pause", rotName)
	mustContain(t, "pause", out, "rotation message-processor-pg paused", "graft rotation resume message-processor-pg")
	mustContain(t, "status when paused", c.ok("rotation", "status", rotName), "paused:          yes")
	if ls := c.ok("rotation", "ls"); !regexp.MustCompile(`\n` + rotName + ` .* idle +- +- +- +paused\n$`).MatchString(ls) {
		t.Errorf("ls of a paused rotation:\n%s", ls)
	}
	mustContain(t, "run while paused", c.fails("rotation", "run", rotName), "is paused", "graft rotation resume "+rotName)
	mustContain(t, "run --wait while paused", c.fails("rotation", "run", rotName, "--wait", "--timeout", "5s"), "is paused", "graft rotation resume")

	mustContain(t, "resume", c.ok("rotation", "resume", rotName), "rotation message-processor-pg resumed")
	mustContain(t, "status when resumed", c.ok("rotation", "status", rotName), "paused:          no\n")

	// Asked for; no rotator exists here, so it stays requested, --wait
	// says so once a rotator would have started it, and gives up after
	// its timeout with exit 3, naming why.
	defer func(d time.Duration) { unstartedAfter = d }(unstartedAfter)
	unstartedAfter = 500 * time.Millisecond
	began := time.Now()
	r := c.run("rotation", "run", rotName, "--wait", "--timeout", "1s")
	if r.code != exitNotRolledOut {
		t.Fatalf("run --wait with no rotator: %+v, want exit %d", r, exitNotRolledOut)
	}
	if took := time.Since(began); took < time.Second || took > 8*time.Second {
		t.Errorf("run --wait --timeout 1s returned after %s", took)
	}
	mustContain(t, "run --wait stdout", r.stdout, "rotation message-processor-pg: run 1 asked for\n",
		"  no rotator has started it after 500ms: is a graft-agent with rotations: in its configuration running, with the owner's identity?\n")
	mustContain(t, "run --wait stderr", r.stderr, "graft: rotation message-processor-pg: run 1 not finished after 1s (requested)",
		"no rotator has started it", "graft-agent with rotations:")

	st := c.ok("rotation", "status", rotName)
	mustContain(t, "status when requested", st, "phase:           requested (run 1 asked for by root at ", "run:             - (none yet)\n", "stalled:         no\n")
	var v rotationView
	decode(t, c.ok("rotation", "status", rotName, "-o", "json"), &v)
	if v.State.Phase != "requested" || v.State.RequestedBy != "root" || v.State.Requested == "" {
		t.Errorf("status -o json when requested: %+v", v.State)
	}
	if ls := c.ok("rotation", "ls"); !strings.Contains(line(t, ls, rotName), " requested ") {
		t.Errorf("ls when requested:\n%s", ls)
	}
	mustContain(t, "run when already requested", c.fails("rotation", "run", rotName), "is already requested", "graft rotation status "+rotName)

	mustContain(t, "rm while requested", c.fails("rotation", "rm", rotName), "is requested", "--force")
	c.ok("rotation", "status", rotName) // still there
	mustContain(t, "rm --force", c.ok("rotation", "rm", rotName, "--force"), "deleted rotation message-processor-pg")
	mustContain(t, "status after rm", c.fails("rotation", "status", rotName), "not found")
	if r := c.run("rotation", "ls"); r.stdout != "" || r.stderr != "no rotations\n" {
		t.Errorf("ls after rm: %+v", r)
	}
	// The admin DSN stays; a new rotation of the same name may be made.
	if got := c.ok("get", rotAdmin+"/dsn"); got != rotDSN {
		t.Errorf("admin DSN after rm = %q", got)
	}
	c.ok(rotCreateArgs()...)
}

// run without --wait answers at once with the run number; -o json holds
// the rotation as graftd stored it.
func TestRotationRunNoWait(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))
	c.put(rotAdmin+"/dsn", rotDSN)
	c.ok(rotCreateArgs()...)
	var v rotationView
	if err := json.Unmarshal([]byte(c.ok("rotation", "run", rotName, "-o", "json")), &v); err != nil {
		t.Fatal(err)
	}
	if v.Spec.Name != rotName || v.State.Phase != "requested" {
		t.Fatalf("run -o json: %+v", v)
	}
	mustContain(t, "rm while requested", c.fails("rotation", "rm", rotName), "--force")
}

// scriptedRotator stands in for a rotator: it claims the rotation and
// stores the states given, each through AdvanceRotation, so graftd holds
// every one to the state machine as it would a real rotator's.
type scriptedRotator struct {
	t   *testing.T
	c   *sdk.Client
	cur rotation.View
}

func newScriptedRotator(t *testing.T, g *graftdtest.Graftd) *scriptedRotator {
	c, err := sdk.New(t.Context(), sdk.Config{Addr: g.Addr, Token: g.Token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// Holding the claim before any run is asked for, as a rotator that
	// runs does.
	if _, err := c.ClaimRotation(t.Context(), rotName, "test-rotator", 0); err != nil {
		t.Fatal(err)
	}
	return &scriptedRotator{t: t, c: c}
}

// awaitRequested claims the rotation until a run is asked for.
func (s *scriptedRotator) awaitRequested() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		cl, err := s.c.ClaimRotation(s.t.Context(), rotName, "test-rotator", 0)
		if err != nil {
			return err
		}
		if cl.Rotation.State.Phase == rotation.PhaseRequested {
			s.cur = cl.Rotation.State
			return nil
		}
		if time.Now().After(deadline) {
			return errTimeout
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var errTimeout = errorString("no run was asked for within 10s")

type errorString string

func (e errorString) Error() string { return string(e) }

// step changes the state with f, stores it and leaves it for longer than
// run --wait takes to look again.
func (s *scriptedRotator) step(secrets *rotation.Secrets, f func(st *rotation.State)) error {
	next := s.cur
	next.Steps = append([]rotation.Step(nil), s.cur.Steps...)
	f(&next.State)
	r, err := s.c.AdvanceRotation(s.t.Context(), rotName, "test-rotator", next, secrets)
	if err != nil {
		return err
	}
	s.cur = r.State
	time.Sleep(3 * rotationPoll / 2)
	return nil
}

func now() time.Time { return time.Now().UTC() }

func begin(st *rotation.State, name string) {
	st.Steps = append(st.Steps, rotation.Step{Name: name, Started: now()})
}

func finish(st *rotation.State, detail string) {
	st.Steps[len(st.Steps)-1].Finished, st.Steps[len(st.Steps)-1].Detail = now(), detail
}

// succeed runs a whole run along its steps, with a rollout that reports
// its progress before it finishes.
func (s *scriptedRotator) succeed() error {
	if err := s.awaitRequested(); err != nil {
		return err
	}
	user := "message-processor-blue"
	for _, f := range []func(st *rotation.State){
		func(st *rotation.State) {
			st.Run, st.Phase, st.NewUser, st.RunStarted, st.Steps, st.Reason = st.Run+1, rotation.PhaseRunning, user, now(), nil, ""
			begin(st, rotation.StepKey)
		},
		func(st *rotation.State) { finish(st, "re-keyed "+user); begin(st, rotation.StepTest) },
		func(st *rotation.State) { finish(st, "logged in as "+user); begin(st, rotation.StepPublish) },
		func(st *rotation.State) {
			st.PublishedRevision = 7
			finish(st, "revision 7")
			begin(st, rotation.StepRollout)
		},
		func(st *rotation.State) { st.Steps[len(st.Steps)-1].Detail = "0 of 1 consumers on revision 7" },
		func(st *rotation.State) {
			st.Acked = []string{"message-processor/mp-1"}
			finish(st, "1 of 1 consumers on revision 7")
			begin(st, rotation.StepRetire)
		},
		func(st *rotation.State) {
			finish(st, "retired no one (first run)")
			st.Phase, st.ActiveUser, st.RunFinished, st.LastSuccess = rotation.PhaseDone, user, now(), now()
		},
	} {
		var secrets *rotation.Secrets
		if s.cur.Phase == rotation.PhaseRequested {
			secrets = &rotation.Secrets{NewPassword: "n3w-pw-never-shown"}
		}
		if err := s.step(secrets, f); err != nil {
			return err
		}
	}
	return nil
}

// fail runs a run whose test fails, and rolls it back.
func (s *scriptedRotator) fail() error {
	if err := s.awaitRequested(); err != nil {
		return err
	}
	user := "message-processor-green"
	reason := "test: login as message-processor-green: password authentication failed"
	for _, f := range []func(st *rotation.State){
		func(st *rotation.State) {
			st.Run, st.Phase, st.NewUser, st.RunStarted, st.Steps, st.Acked, st.PublishedRevision = st.Run+1, rotation.PhaseRunning, user, now(), nil, nil, 0
			begin(st, rotation.StepKey)
		},
		func(st *rotation.State) { finish(st, "re-keyed "+user); begin(st, rotation.StepTest) },
		func(st *rotation.State) {
			st.Phase, st.Reason = rotation.PhaseRollingBack, reason
			begin(st, rotation.StepRollbackDisable)
		},
		func(st *rotation.State) {
			finish(st, user+" can no longer log in")
			st.Phase, st.RunFinished = rotation.PhaseFailed, now()
		},
	} {
		var secrets *rotation.Secrets
		if s.cur.Phase == rotation.PhaseRequested {
			secrets = &rotation.Secrets{NewPassword: "n3w-pw-never-shown", PreviousPassword: "0ld-pw-never-shown"}
		}
		if err := s.step(secrets, f); err != nil {
			return err
		}
	}
	return nil
}

// run --wait follows a run step by step and exits 0 when it is done, 1
// with the reason when it failed; history, status and ls then show both
// runs, and no password anywhere.
func TestRotationRunWaitFollowsTheRun(t *testing.T) {
	g := graftdtest.Start(t)
	c := newCLI(t, g)
	c.put(rotAdmin+"/dsn", rotDSN)
	c.ok(rotCreateArgs()...)
	rot := newScriptedRotator(t, g)

	done := make(chan error, 1)
	go func() { done <- rot.succeed() }()
	out := c.ok("rotation", "run", rotName, "--wait", "--timeout", "30s")
	if err := <-done; err != nil {
		t.Fatalf("scripted rotator: %v", err)
	}
	if strings.Contains(out, "no rotator") {
		t.Errorf("run --wait warned of no rotator while one ran it:\n%s", out)
	}
	mustContain(t, "run --wait of a run that succeeds", out,
		"rotation message-processor-pg: run 1 asked for\n",
		" key started\n",
		" key finished in ", ": re-keyed message-processor-blue\n",
		" test finished in ", " publish finished in ", ": revision 7\n",
		" rollout started\n", " rollout: 0 of 1 consumers on revision 7\n",
		" rollout finished in ", ": 1 of 1 consumers on revision 7\n",
		" retire finished in ",
		"rotation message-processor-pg: run 1 done in ", ": message-processor-blue is active\n")
	// Each change is one line: the rollout's progress shows once.
	if n := strings.Count(out, "0 of 1 consumers"); n != 1 {
		t.Errorf("the rollout's progress shows %d times:\n%s", n, out)
	}
	if i, j := strings.Index(out, " key started"), strings.Index(out, " retire finished"); i < 0 || j < i {
		t.Errorf("steps out of order:\n%s", out)
	}

	go func() { done <- rot.fail() }()
	r := c.run("rotation", "run", rotName, "--wait", "--timeout", "30s")
	if err := <-done; err != nil {
		t.Fatalf("scripted rotator: %v", err)
	}
	if r.code != 1 {
		t.Fatalf("run --wait of a run that fails: %+v, want exit 1", r)
	}
	mustContain(t, "run --wait of a run that fails", r.stdout, "run 2 asked for", " test started\n",
		"  rolling back: test: login as message-processor-green: password authentication failed\n",
		" rollback-disable finished in ", ": message-processor-green can no longer log in\n")
	if i, j := strings.Index(r.stdout, "  rolling back: "), strings.Index(r.stdout, " rollback-disable started"); i < 0 || j < i {
		t.Errorf("\"rolling back\" does not come before the rollback's steps:\n%s", r.stdout)
	}
	if r.stderr != "graft: rotation message-processor-pg: run 2 failed: test: login as message-processor-green: password authentication failed (active user message-processor-blue; see `graft rotation history message-processor-pg`)\n" {
		t.Errorf("run --wait of a failed run: stderr %q", r.stderr)
	}

	hist := c.ok("rotation", "history", rotName)
	lines := strings.Split(strings.TrimSpace(hist), "\n")
	if len(lines) != 3 || !regexp.MustCompile(`^RUN +OUTCOME +NEW-USER +ACTIVE-USER +STARTED +TOOK +REASON$`).MatchString(lines[0]) ||
		!regexp.MustCompile(`^2 +failed +message-processor-green +message-processor-blue +\S+ +\d\S*s +test: login as message-processor-green: password authentication failed$`).MatchString(lines[1]) ||
		!regexp.MustCompile(`^1 +done +message-processor-blue +message-processor-blue +\S+ +\d\S*s +-$`).MatchString(lines[2]) {
		t.Errorf("history, newest first:\n%s", hist)
	}
	var runs []runView
	decode(t, c.ok("rotation", "history", rotName, "--limit", "1", "-o", "json"), &runs)
	if len(runs) != 1 || runs[0].Run != 2 || len(runs[0].Steps) != 3 || runs[0].Steps[2].Name != rotation.StepRollbackDisable || runs[0].Holder != "test-rotator" {
		t.Errorf("history --limit 1 -o json: %+v", runs)
	}

	st := c.ok("rotation", "status", rotName)
	mustContain(t, "status after a failed run", st,
		"phase:           failed\n", "run:             2\n",
		"active user:     message-processor-blue\n", "new user:        message-processor-green\n",
		"steps of run 2:\n", "  key ", "  test ", " running ", "  rollback-disable ",
		"holder:          test-rotator\n",
		"reason:          test: login as message-processor-green: password authentication failed\n")
	if regexp.MustCompile(`last success: +never`).MatchString(st) {
		t.Errorf("status after a done run says it never succeeded:\n%s", st)
	}
	ls := c.ok("rotation", "ls")
	if !regexp.MustCompile(`\n` + rotName + ` +postgres +\S+ +failed +message-processor-blue +\d{4}-\S+Z +- +-\n$`).MatchString(ls) {
		t.Errorf("ls after the runs:\n%s", ls)
	}
	// The rotator gone, status still says who ran the run last.
	if err := rot.c.ReleaseRotation(t.Context(), rotName, "test-rotator"); err != nil {
		t.Fatal(err)
	}
	mustContain(t, "status once no rotator holds it", c.ok("rotation", "status", rotName),
		"holder:          - (no rotator holds it)\n", "last rotator:    test-rotator\n")
	var v rotationView
	decode(t, c.ok("rotation", "status", rotName, "-o", "json"), &v)
	if v.State.Holder != "" || v.State.Rotator != "test-rotator" {
		t.Errorf("status -o json once released: holder %q, rotator %q", v.State.Holder, v.State.Rotator)
	}
	for _, args := range [][]string{{"rotation", "status", rotName, "-o", "json"}, {"rotation", "ls", "-o", "yaml"}, {"rotation", "history", rotName, "-o", "json"}} {
		if out := c.ok(args...); strings.Contains(out, "never-shown") {
			t.Errorf("graft %v shows a password:\n%s", args, out)
		}
	}
}

func TestHuman(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 10 * time.Minute: "10m", 90 * time.Second: "1m30s", 24 * time.Hour: "24h",
		90 * time.Minute: "1h30m", time.Hour + time.Second: "1h0m1s", 250 * time.Millisecond: "250ms", 60 * time.Second: "1m",
	} {
		if got := human(d); got != want {
			t.Errorf("human(%s) = %q, want %q", d, got, want)
		}
		if back, err := time.ParseDuration(human(d)); err != nil || back != d {
			t.Errorf("human(%s) = %q does not parse back: %s, %v", d, human(d), back, err)
		}
	}
}

// One look may find a run already rolled back, or a rollback failed too:
// "rolling back" still comes before the rollback's steps, once, with the
// reason the rollback had (the run's end says what followed).
func TestRunProgressRollingBackComesFirst(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	step := func(name, detail string, done bool) rotation.Step {
		s := rotation.Step{Name: name, Started: at, Detail: detail}
		if done {
			s.Finished = at.Add(time.Second)
		}
		return s
	}
	var b strings.Builder
	p := &runProgress{w: &b, run: 2}
	p.show(rotation.View{State: rotation.State{Run: 2, Phase: rotation.PhaseRunning, Steps: []rotation.Step{step(rotation.StepKey, "", false)}}})
	p.show(rotation.View{State: rotation.State{Run: 2, Phase: rotation.PhaseFailed,
		Reason: "step rollout did not finish within 1m: waiting for app:rb; then step rollback-rollout did not finish within 1m either, waiting for the same",
		Steps: []rotation.Step{step(rotation.StepKey, "re-keyed g", true), step(rotation.StepTest, "", true), step(rotation.StepPublish, "revision 7", true),
			step(rotation.StepRollout, "", true), step(rotation.StepRollbackPublish, "revision 8", true), step(rotation.StepRollbackRollout, "", false)}}})
	out := b.String()
	i, j := strings.Index(out, "  rolling back: step rollout did not finish within 1m: waiting for app:rb\n"), strings.Index(out, " rollback-publish finished")
	if i < 0 || j < i || strings.Count(out, "rolling back") != 1 || strings.Contains(out, "; then") {
		t.Errorf("progress:\n%s\nwant one \"rolling back\" with the rollback's reason, before the rollback's steps", out)
	}
	if k := strings.Index(out, " rollout finished"); k < 0 || k > i {
		t.Errorf("the run's own steps do not come before \"rolling back\":\n%s", out)
	}
}
