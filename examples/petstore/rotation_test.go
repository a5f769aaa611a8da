package main

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/sdk"
)

// The seed's demo as a test: three petstores, each under its own
// graft-agent, serve a poller while a rotator runs 20 blue/green
// rotations of their database credential back to back, on PostgreSQL
// and on MariaDB. No request may fail, and after each rotation the
// retired user must be unable to log in. It reports the rotation wall
// time, from `rotation run` to done, the retire grace excluded
// (docs/PERFORMANCE.md).
func TestTwentyRotationsUnderPoller(t *testing.T) {
	const rotations = 20
	forEachEmptyDB(t, func(t *testing.T, db testDB) {
		r := newRotationRig(t, db, nil, 10*time.Second)
		var took []time.Duration
		for range rotations {
			oldUser, oldPassword := r.published()
			began := time.Now()
			rot := r.run()
			took = append(took, time.Since(began)-rotationGrace)
			if rot.State.Phase != rotation.PhaseDone {
				t.Fatalf("run %d: %s: %s", rot.State.Run, rot.State.Phase, rot.State.Reason)
			}
			if rot.State.ActiveUser == oldUser {
				t.Fatalf("run %d kept %s active", rot.State.Run, oldUser)
			}
			if len(rot.State.Acked) != len(r.petstores) {
				t.Fatalf("run %d: acked %v: want the %d agents", rot.State.Run, rot.State.Acked, len(r.petstores))
			}
			r.refused(oldUser, oldPassword)
			r.waitOK(5)
		}
		r.check()
		slices.Sort(took)
		t.Logf("%s: rotation wall time over %d runs with %d consumers, grace excluded: p50 %s, p90 %s, max %s (%s)",
			db.driver(), len(took), len(r.petstores), took[len(took)/2].Round(time.Millisecond), took[len(took)*9/10].Round(time.Millisecond),
			took[len(took)-1].Round(time.Millisecond), durations(took))
	})
}

// A consumer whose health check fails with the new credential rolls the
// rotation back, and no request fails: petstore cannot log in as the new
// user (the DBA's firewall, say, lets the rotator's login test through
// but not the application's), so it keeps its connection as the old one
// and its /healthz reports the new settings unused; the rotator
// republishes the old credential, disables the new user and marks the
// run failed with the reason. The next run, with the fault gone,
// completes.
func TestRotationRollsBackUnderPoller(t *testing.T) {
	forEachEmptyDB(t, func(t *testing.T, db testDB) {
		armed := make(chan struct{}, 1)
		locked := make(chan struct{})
		resume := make(chan struct{})
		// Between the login test and the publication, the new user is
		// locked out: the test's goroutine does it (a hook may not fail
		// the test) while the rotator waits.
		hook := func(_ string, b rotation.Boundary) {
			if b.String() != "publish/begun" {
				return
			}
			select {
			case <-armed:
			default:
				return
			}
			locked <- struct{}{}
			<-resume
		}
		r := newRotationRig(t, db, hook, 3*time.Second)
		oldUser, oldPassword := r.published()
		newUser := "petstore_blue"
		if oldUser == newUser {
			newUser = "petstore_green"
		}
		armed <- struct{}{}
		n := r.start()
		select {
		case <-locked:
		case <-time.After(time.Minute):
			t.Fatal("the run did not reach publish/begun within a minute")
		}
		db.lockOut(t, newUser)
		close(resume)
		rot := r.wait(n)
		if rot.State.Phase != rotation.PhaseFailed || !strings.Contains(rot.State.Reason, "is unhealthy with revision") {
			t.Fatalf("run %d: %s (%s): want failed for an unhealthy consumer", rot.State.Run, rot.State.Phase, rot.State.Reason)
		}
		t.Logf("run %d failed as it should: %s", rot.State.Run, rot.State.Reason)
		if rot.State.ActiveUser != oldUser {
			t.Fatalf("after the rollback %q is active: want %s", rot.State.ActiveUser, oldUser)
		}
		if u, pw := r.published(); u != oldUser || pw != oldPassword {
			t.Fatalf("after the rollback the target holds user %s (the password the old one: %v): want the old credential", u, pw == oldPassword)
		}
		if err := r.logIn(oldUser, oldPassword); err != nil {
			t.Fatalf("after the rollback the old user cannot log in: %v", err)
		}
		client := &http.Client{Timeout: 5 * time.Second}
		for _, p := range r.petstores {
			testenv.WaitFor(t, 30*time.Second, func() bool {
				status, _, err := request(client, http.MethodGet, p.url+"/healthz", "")
				return err == nil && status == http.StatusOK
			})
		}
		r.waitOK(5)

		// The fault gone, the next run re-keys the same user and completes.
		rot = r.run()
		if rot.State.Phase != rotation.PhaseDone || rot.State.ActiveUser != newUser {
			t.Fatalf("the run after the rollback: %s, %s active (%s): want done with %s", rot.State.Phase, rot.State.ActiveUser, rot.State.Reason, newUser)
		}
		r.refused(oldUser, oldPassword)
		r.waitOK(5)
		r.check()
	})
}

const (
	rotationTarget = "/dba/passpack/services/petstore/db"
	rotationAdmin  = "/dba/passpack/admin/db"
	rotationName   = "petstore"
	rotationGrace  = 100 * time.Millisecond
)

// rotationEnv is petstore's settings template for db, from the
// replicated copy of the rotation's target.
func rotationEnv(db testDB) string {
	return "DB_DRIVER=" + db.driver() + "\n" + strings.ReplaceAll(petstoreEnv, "replicated/postgres/", "replicated/db/")
}

// rotationRig is graftd, a rotator with the DBA's identity, and three
// petstores, each under its own graft-agent and served by a poller, on db
// after the rotation's first run.
type rotationRig struct {
	t         *testing.T
	db        testDB
	dba       *sdk.Client
	petstores []*process
	pollers   []*poller
}

// newRotator starts graftd, the DBA's rotator agent and the rotation of
// petstore's credential on db with the retire grace given, and runs its
// first run (which creates both users and publishes one). It returns the
// rig without consumers, graftd, and petstore's token file.
func newRotator(t *testing.T, db testDB, hook func(string, rotation.Boundary), grace time.Duration) (*rotationRig, *graftdtest.Graftd, string) {
	t.Helper()
	g := graftdtest.Start(t)
	ctx := t.Context()
	dbaFile, dbaToken := g.TokenFile(t, "user:dora", "dba")
	appFile, _ := g.TokenFile(t, "app:petstore", "app")
	dba, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: dbaToken})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dba.Close() })
	r := &rotationRig{t: t, db: db, dba: dba}
	host, port := db.hostPort()
	for k, v := range map[string]string{rotationAdmin + "/dsn": db.adminDSN(), rotationTarget + "/host": host,
		rotationTarget + "/port": strconv.Itoa(port), rotationTarget + "/database": "petstore"} {
		if _, err := dba.Put(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := dba.Share(ctx, rotationTarget, []string{"/app/petstore/replicated/db"}, sdk.ShareOptions{}); err != nil {
		t.Fatal(err)
	}
	rcfg := agent.DefaultConfig()
	rcfg.Server, rcfg.TokenFile, rcfg.Listen, rcfg.ID = g.Addr, dbaFile, "off", "rotator"
	rcfg.Rotations = agent.Rotations{All: true}
	rcfg.RotationHook = hook
	startAgent(t, rcfg)
	if _, err := dba.CreateRotation(ctx, rotation.Spec{Name: rotationName, Driver: db.rotationDriver(), Admin: rotationAdmin,
		Target: rotationTarget, Users: []string{"petstore_blue", "petstore_green"}, Group: group,
		Consumers: []string{"app:petstore"}, RolloutTimeout: time.Minute, RetireGrace: grace}); err != nil {
		t.Fatal(err)
	}
	if rot := r.run(); rot.State.Phase != rotation.PhaseDone {
		t.Fatalf("the first run: %s: %s", rot.State.Phase, rot.State.Reason)
	}
	return r, g, appFile
}

// newRotationRig sets the rig up; hook is the rotator's, health the
// timeout of the consumers' health checks.
func newRotationRig(t *testing.T, db testDB, hook func(string, rotation.Boundary), health time.Duration) *rotationRig {
	t.Helper()
	r, g, appFile := newRotator(t, db, hook, rotationGrace)
	dir := t.TempDir()
	first, _ := r.published()

	// Three consumers: a petstore and its agent each.
	for i := range 3 {
		conf := filepath.Join(dir, fmt.Sprintf("petstore-%d.env", i))
		cfg := agent.DefaultConfig()
		cfg.Server, cfg.TokenFile, cfg.App, cfg.ID = g.Addr, appFile, "petstore", fmt.Sprintf("petstore-%d", i)
		cfg.Templates = []agent.Template{{Destination: conf, Contents: rotationEnv(db)}}
		cfg.Wait = agent.Wait{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond}
		once := cfg
		once.Once, once.Listen = true, "off"
		runAgent(t, once)
		p := startPetstore(t, nil, "--config", conf, "--schema-owner", group)
		p.waitLog("connected to database as user "+first, 1)
		cfg.Listen = "off"
		cfg.Reload = []agent.Action{{Signal: &agent.SignalAction{Pidfile: p.pidfile, Signal: "SIGHUP"}}}
		cfg.Health = agent.Health{HTTP: p.url + "/healthz", Timeout: health}
		a := startAgent(t, cfg)
		testenv.WaitFor(t, 10*time.Second, a.Ready)
		r.petstores = append(r.petstores, p)
		r.pollers = append(r.pollers, startPoller(t, p.url))
	}
	r.waitOK(20)
	return r
}

// start asks for a run and returns the run number it will have.
func (r *rotationRig) start() int64 {
	r.t.Helper()
	rot, err := r.dba.RunRotation(r.t.Context(), rotationName)
	if err != nil {
		r.t.Fatal(err)
	}
	return rot.State.Run + 1
}

// wait waits for run n to end.
func (r *rotationRig) wait(n int64) sdk.Rotation {
	r.t.Helper()
	var rot sdk.Rotation
	testenv.WaitFor(r.t, 2*time.Minute, func() bool {
		var err error
		rot, err = r.dba.GetRotation(r.t.Context(), rotationName)
		return err == nil && rot.State.Run >= n && !rot.State.Phase.InProgress()
	})
	return rot
}

// run runs the rotation once, from `rotation run` to its end.
func (r *rotationRig) run() sdk.Rotation {
	r.t.Helper()
	return r.wait(r.start())
}

// published is the credential at the target.
func (r *rotationRig) published() (user, password string) {
	r.t.Helper()
	return r.value("user"), r.value("password")
}

func (r *rotationRig) value(key string) string {
	r.t.Helper()
	v, err := r.dba.Get(r.t.Context(), rotationTarget+"/"+key)
	if err != nil {
		r.t.Fatal(err)
	}
	return string(v.Value)
}

func (r *rotationRig) logIn(user, password string) error {
	ctx, cancel := context.WithTimeout(r.t.Context(), 5*time.Second)
	defer cancel()
	return r.db.logIn(ctx, user, password)
}

// refused checks that user, retired, can no longer log in.
func (r *rotationRig) refused(user, password string) {
	r.t.Helper()
	if err := r.logIn(user, password); err == nil {
		r.t.Fatalf("the retired user %s still logs in", user)
	}
}

// waitOK waits until every poller has had n more requests succeed.
func (r *rotationRig) waitOK(n int64) {
	r.t.Helper()
	for _, p := range r.pollers {
		p.waitOK(r.t, n)
	}
}

// check stops the pollers and fails the test if a request failed.
func (r *rotationRig) check() {
	r.t.Helper()
	for _, p := range r.pollers {
		p.check(r.t)
	}
}

func durations(ds []time.Duration) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.Round(10*time.Millisecond).String())
	}
	return strings.Join(s, " ")
}
