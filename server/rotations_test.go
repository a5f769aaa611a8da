package server_test

import (
	"errors"
	"testing"
	"time"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/sdk"
)

// A rotation claim belongs to the principal that took it. Its holder
// string (host/pid) is shown by `graft rotation status` to anyone who may
// list the rotation, so another DBA who sends it must get no claim and no
// passwords, and may neither advance nor release it, until it expires;
// then it is theirs to take.
func TestRotationClaimBelongsToItsPrincipal(t *testing.T) {
	g := graftdtest.Start(t)
	ctx := t.Context()
	dial := func(principal string) *sdk.Client {
		t.Helper()
		_, token := g.TokenFile(t, principal, "dba")
		c, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: token})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := dial("user:dba-a"), dial("user:dba-b")
	const (
		name     = "mp-pg"
		holder   = "rotator-host/4242"
		password = "n3w-pw-of-dba-a"
		ttl      = 2 * time.Second
	)
	admin := "/dba/admin/postgres"
	if _, err := graftdtest.Dial(t, g.Addr).KV.Put(withToken(g.Token), &graftv1.PutRequest{Path: admin + "/dsn", Value: []byte("postgres://admin:x@db/postgres")}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateRotation(ctx, rotation.Spec{Name: name, Driver: rotation.DriverPostgres, Admin: admin,
		Target: "/dba/services/mp/postgres", Users: []string{"mp-blue", "mp-green"}, Consumers: []string{"app:mp"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RunRotation(ctx, name); err != nil {
		t.Fatal(err)
	}
	cl, err := a.ClaimRotation(ctx, name, holder, ttl)
	if err != nil || !cl.Held {
		t.Fatalf("dba-a's claim: %+v, %v", cl, err)
	}
	next := cl.Rotation.State
	next.Run, next.Phase, next.NewUser, next.RunStarted = next.Run+1, rotation.PhaseRunning, "mp-blue", time.Now().UTC()
	next.Steps = []rotation.Step{{Name: rotation.StepKey, Started: time.Now().UTC()}}
	rot, err := a.AdvanceRotation(ctx, name, holder, next, &rotation.Secrets{NewPassword: password})
	if err != nil {
		t.Fatal(err)
	}
	if got := rot.State.Holder; got != holder {
		t.Fatalf("status shows holder %q, want %q (the string dba-b copies)", got, holder)
	}

	// dba-b sends the holder string while dba-a's claim is live.
	got, err := b.ClaimRotation(ctx, name, holder, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if got.Held || got.Secrets != nil {
		t.Fatalf("dba-b claiming with dba-a's holder string: held %v, secrets %+v; want no claim and no passwords", got.Held, got.Secrets)
	}
	step := rot.State
	step.Steps = append([]rotation.Step(nil), step.Steps...)
	step.Steps[0].Finished, step.Steps[0].Detail = time.Now().UTC(), "re-keyed mp-blue"
	if _, err := b.AdvanceRotation(ctx, name, holder, step, nil); !errors.Is(err, sdk.ErrFailedPrecondition) {
		t.Fatalf("dba-b advancing dba-a's claim: %v, want %v", err, sdk.ErrFailedPrecondition)
	}
	if err := b.ReleaseRotation(ctx, name, holder); err != nil {
		t.Fatal(err)
	}
	// dba-a still holds it: dba-b's release left it alone.
	if cl, err := a.ClaimRotation(ctx, name, holder, ttl); err != nil || !cl.Held || cl.Secrets == nil || cl.Secrets.NewPassword != password {
		t.Fatalf("dba-a renewing after dba-b's release: held %v, secrets %v, %v; want still held with the run's passwords", cl.Held, cl.Secrets != nil, err)
	}

	// Once dba-a's claim has expired, dba-b takes it over (and may then
	// finish or roll back the run).
	deadline := time.Now().Add(3 * ttl)
	for {
		got, err = b.ClaimRotation(ctx, name, holder, ttl)
		if err != nil {
			t.Fatal(err)
		}
		if got.Held {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dba-b could not take the claim %s after dba-a stopped renewing it", 3*ttl)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got.Secrets == nil || got.Secrets.NewPassword != password {
		t.Fatalf("dba-b after expiry: secrets %+v, want the run's", got.Secrets)
	}
	if _, err := b.AdvanceRotation(ctx, name, holder, step, nil); err != nil {
		t.Fatalf("dba-b advancing its own claim: %v", err)
	}
	// And now dba-a, with the same string, is the one refused.
	if cl, err := a.ClaimRotation(ctx, name, holder, ttl); err != nil || cl.Held || cl.Secrets != nil {
		t.Fatalf("dba-a claiming dba-b's claim: held %v, secrets %v, %v; want no claim", cl.Held, cl.Secrets != nil, err)
	}
}
