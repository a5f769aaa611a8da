package agent_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/sdk"
)

// A rotation does not count a forged acknowledgement (issue 18): app:pet
// consumes the target but runs no agent, and whoever holds its token
// reports for it, first at revision 2^40 (refused), then at the store's
// revision before the publish, renewed throughout. The rollout waits for
// pet and rolls back; blue, which a real session may still use, is
// never retired.
func TestRotationCountsNoForgedAcknowledgement(t *testing.T) {
	r := newRotationRig(t)
	ctx := t.Context()
	r.rotator("rotator-1", nil)
	if _, _, err := r.dba.Share(ctx, rotTarget, []string{"/app/pet/replicated/postgres"}, sdk.ShareOptions{}); err != nil {
		t.Fatal(err)
	}
	r.create(func(s *rotation.Spec) {
		s.Consumers = []string{"app:mp", "app:pet"}
		s.RolloutTimeout = 4 * time.Second
	})
	if rot := r.run(60 * time.Second); rot.State.Phase != rotation.PhaseDone || rot.State.ActiveUser != blue {
		t.Fatalf("run 1: %s active %q (%s)", rot.State.Phase, rot.State.ActiveUser, rot.State.Reason)
	}
	_, bluePW := r.target()

	_, petToken := r.g.TokenFile(t, "app:pet", "app")
	pet, err := sdk.New(ctx, sdk.Config{Addr: r.g.Addr, Token: petToken})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pet.Close() })
	forged := sdk.AgentReport{ID: "forged", App: "pet", Host: "nowhere", Revision: 1 << 40, Healthy: true,
		Templates: []sdk.TemplateReport{{Destination: "/etc/pet/db.env", Keys: []string{"/app/pet/replicated/postgres/"}}}}
	if err := pet.Report(ctx, forged, 15*time.Second); status.Code(err) != codes.InvalidArgument {
		// Accepted, it is the attack of the issue: go on with it.
		t.Errorf("a report at revision 2^40: %v, want InvalidArgument", err)
	} else {
		e, err := pet.Get(ctx, "/app/pet/replicated/postgres/password")
		if err != nil {
			t.Fatal(err)
		}
		forged.Revision = e.Revision
		if err := pet.Report(ctx, forged, 15*time.Second); err != nil {
			t.Fatalf("a report at the copy's revision: %v", err)
		}
	}
	go func() {
		for ctx.Err() == nil {
			pet.Report(ctx, forged, 15*time.Second)
			time.Sleep(time.Second)
		}
	}()

	rot := r.run(90 * time.Second)
	if rot.State.Phase == rotation.PhaseDone || rot.State.ActiveUser != blue {
		t.Fatalf("run 2 with only a forged acknowledgement from pet: %s active %q (%s); want it rolled back, blue active", rot.State.Phase, rot.State.ActiveUser, rot.State.Reason)
	}
	if s, ok := rot.State.Step(rotation.StepRollout); !ok || !strings.Contains(s.Detail+rot.State.Reason, "pet/forged") {
		t.Errorf("the rollout does not say it waited for pet/forged: %+v (%s)", s, rot.State.Reason)
	}
	if _, ok := rot.State.Step(rotation.StepRetire); ok {
		t.Fatal("run 2 retired a user")
	}
	if err := r.login(ctx, blue, bluePW); err != nil {
		t.Fatalf("blue, which pet may still use, cannot log in: %v", err)
	}
}
