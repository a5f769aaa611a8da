package acl_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

func policy(role, yaml string) acl.PolicyRecord {
	return acl.PolicyRecord{Role: role, YAML: yaml, Author: "test", Updated: time.Now()}
}

// The last policy that grants admin on / is neither removed nor weakened
// without force: that would leave nobody but root to manage tokens and
// policies.
func TestLastAdminPolicyIsGuarded(t *testing.T) {
	env := testenv.Start(t)
	ctx := context.Background()
	e, err := acl.NewEngine(acl.EngineConfig{Store: env.Store, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.InstallDefaults(ctx, "test", false); err != nil {
		t.Fatal(err)
	}
	var last *acl.LastAdminError
	err = e.Delete(ctx, "admin", false)
	if !errors.As(err, &last) || !errors.Is(err, acl.ErrLastAdmin) || !strings.Contains(err.Error(), "policy rm admin: it is the last policy that grants admin on /") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("removing the last admin policy: %v", err)
	}
	weak := policy("admin", "role: admin\nrules:\n  - allow: [read]\n    paths: [/**]\n")
	if err := e.Put(ctx, weak, false); !errors.Is(err, acl.ErrLastAdmin) || !strings.Contains(err.Error(), "policy put admin: it would take admin on / away") {
		t.Fatalf("weakening the last admin policy: %v", err)
	}
	if _, err := e.Get(ctx, "admin"); err != nil {
		t.Fatalf("the admin policy after two refusals: %v", err)
	}
	// Other policies come and go freely.
	if err := e.Delete(ctx, "dba", false); err != nil {
		t.Fatal(err)
	}
	// With a second role granting admin, the first may go.
	ops := policy("ops", "role: ops\nrules:\n  - allow: [admin]\n    paths: [/]\n")
	if err := e.Put(ctx, ops, false); err != nil {
		t.Fatal(err)
	}
	if err := e.Delete(ctx, "admin", false); err != nil {
		t.Fatalf("removing admin while ops grants it: %v", err)
	}
	if err := e.Delete(ctx, "ops", false); !errors.Is(err, acl.ErrLastAdmin) {
		t.Fatalf("removing ops, now the last: %v", err)
	}
	// force does it anyway; and a missing role is not found either way.
	if err := e.Delete(ctx, "ops", true); err != nil {
		t.Fatal(err)
	}
	for _, force := range []bool{false, true} {
		if err := e.Delete(ctx, "ops", force); !errors.Is(err, store.ErrNotFound) || err.Error() != "delete policy ops: not found" {
			t.Fatalf("deleting a missing policy (force %v): %v", force, err)
		}
	}
	// With no policy granting admin, nothing is guarded.
	if err := e.Put(ctx, weak, false); err != nil {
		t.Fatal(err)
	}
}

// A policy change takes effect at once, although the decision it changes
// was cached: the Engine's new Authorizer starts with an empty cache.
func TestPolicyChangeOverridesCachedDecisions(t *testing.T) {
	env := testenv.Start(t)
	ctx := context.Background()
	e, err := acl.NewEngine(acl.EngineConfig{Store: env.Store, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	put := func(yaml string) {
		t.Helper()
		if err := e.Put(ctx, policy("reader", yaml), true); err != nil {
			t.Fatal(err)
		}
		if err := e.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	who := acl.Principal{Name: "user:rita", Roles: []string{"reader"}}
	const path = "/shared/x"
	put("role: reader\nrules:\n  - allow: [read]\n    paths: [/shared/**]\n")
	granted := e.Authorizer()
	for range 2 { // the second from the cache
		if d := e.Decide(who, acl.ActionRead, path); !d.Allowed {
			t.Fatalf("read %s before the revocation: %s", path, d.Reason)
		}
	}
	put("role: reader\nrules:\n  - allow: [list]\n    paths: [/shared/**]\n")
	if e.Authorizer() == granted {
		t.Fatal("the policy change did not install a new authorizer")
	}
	if d := e.Decide(who, acl.ActionRead, path); d.Allowed {
		t.Errorf("read %s allowed after the policy revoked it: %s", path, d.Reason)
	}
	if d := e.Decide(who, acl.ActionList, path); !d.Allowed {
		t.Errorf("list %s denied after the policy granted it: %s", path, d.Reason)
	}
	// The old authorizer, still held by a request in flight, keeps its
	// policies and its cache.
	if d := granted.Decide(who, acl.ActionRead, path); !d.Allowed {
		t.Errorf("the replaced authorizer changed its decision: %s", d.Reason)
	}
}
