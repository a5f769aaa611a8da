package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/graftd"
	"github.com/graft-sh/graft/internal/graftdtest"
)

// eventually polls graft get PATH until it prints want ("" waits for a
// failure: the path is gone).
func (c *cli) eventually(path, want string) {
	c.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := c.run("get", path)
		if (want == "" && r.code != 0) || (want != "" && r.code == 0 && r.stdout == want) {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("get %s after 5s: exit %d, %q %q; want %q", path, r.code, r.stdout, r.stderr, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func shareID(t *testing.T, c *cli, args ...string) string {
	t.Helper()
	var v sharedView
	if err := json.Unmarshal([]byte(c.ok(append(append([]string{"share"}, args...), "-o", "json")...)), &v); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v.Rule.ID, "r-") {
		t.Fatalf("share printed rule %+v", v.Rule)
	}
	return v.Rule.ID
}

func TestShare(t *testing.T) {
	admin := newCLI(t, graftdtest.Start(t))
	admin.put("/dba/mp/mongo/password", "s3cret")
	admin.put("/dba/mp/mongo/user", "mp")

	// A prefix rule fills its destination before share returns.
	out := admin.ok("share", "/dba/mp/mongo", "--to", "/app/mp/replicated/mongo")
	if !strings.HasPrefix(out, "rule r-") || !strings.Contains(out, "/dba/mp/mongo → /app/mp/replicated/mongo (2 values copied)") {
		t.Fatalf("share printed %q", out)
	}
	if got := admin.ok("get", "/app/mp/replicated/mongo/password"); got != "s3cret" {
		t.Fatalf("destination right after share = %q", got)
	}
	// Later changes follow.
	admin.put("/dba/mp/mongo/password", "rotated")
	admin.eventually("/app/mp/replicated/mongo/password", "rotated")
	admin.put("/dba/mp/mongo/host", "db1")
	admin.eventually("/app/mp/replicated/mongo/host", "db1")

	// Fan-out of a single key.
	admin.put("/shared/dd/api-key", "k1")
	fan := shareID(t, admin, "/shared/dd/api-key", "--to", "/app/a/replicated/dd,/app/b/replicated/dd")
	admin.eventually("/app/b/replicated/dd", "k1")

	ls := admin.ok("rules", "ls")
	if !strings.HasPrefix(ls, "ID ") || strings.Count(ls, "\nr-") != 2 || !strings.Contains(ls, "/app/a/replicated/dd,/app/b/replicated/dd") {
		t.Fatalf("rules ls:\n%s", ls)
	}
	if got := admin.ok("rules", "ls", "--dest", "/app/b"); !strings.Contains(got, fan) || strings.Contains(got, "/dba/mp") {
		t.Fatalf("rules ls --dest /app/b:\n%s", got)
	}
	if got := admin.ok("rules", "get", fan); !strings.Contains(got, "source: /shared/dd/api-key\n") {
		t.Fatalf("rules get:\n%s", got)
	}

	st := admin.ok("status", "/app/mp/replicated/mongo/password")
	for _, want := range []string{"source:             /dba/mp/mongo/password\n", "in sync:            yes\n", "last copied:"} {
		if !strings.Contains(st, want) {
			t.Fatalf("status lacks %q:\n%s", want, st)
		}
	}
	if st := admin.ok("status", "/dba/mp/mongo/password"); !strings.Contains(st, "copied by:\n  /dba/mp/mongo → /app/mp/replicated/mongo") {
		t.Fatalf("status of a source:\n%s", st)
	}
	if st := admin.ok("status", "/dba/other"); st != "/dba/other takes no part in replication\n" {
		t.Fatalf("status of an unrelated path = %q", st)
	}

	// Only the replicator writes a destination.
	if got := admin.fails("put", "/app/mp/replicated/mongo/password", "mine"); !strings.Contains(got, "is replicated from /dba/mp/mongo by rule r-") || !strings.Contains(got, "change the source instead") {
		t.Fatalf("put into a destination: %q", got)
	}
	admin.fails("put", "/app/mp/replicated/mongo/new", "x")
	admin.put("/app/mp/replicated/mongo-evil", "x") // a sibling is not a destination

	// Deleting a shared source needs --force.
	if got := admin.fails("rm", "/dba/mp/mongo/host"); !strings.Contains(got, "it is replicated to /app/mp/replicated/mongo/host (rule r-") || !strings.Contains(got, "--force") {
		t.Fatalf("rm of a shared source: %q", got)
	}
	admin.ok("rm", "/dba/mp/mongo/host", "--force")
	admin.eventually("/app/mp/replicated/mongo/host", "")

	// Conflicts are refused, naming the other rule.
	if got := admin.fails("share", "/dba/mp/other", "--to", "/app/a/replicated/dd/x"); !strings.Contains(got, "overlaps destination /app/a/replicated/dd of rule "+fan) {
		t.Fatalf("overlapping destination: %q", got)
	}
	if got := admin.fails("share", "/dba/mp/x", "--to", "/dba/elsewhere"); !strings.Contains(got, "is not a replication destination") {
		t.Fatalf("destination outside replicated trees: %q", got)
	}
	admin.fails("share", "/dba/mp/x")

	// unshare prunes; --orphan keeps.
	if got := admin.ok("unshare", fan); got != "unshared "+fan+": deleted 2 copies\n" {
		t.Fatalf("unshare = %q", got)
	}
	admin.fails("get", "/app/a/replicated/dd")
	mongo := strings.Fields(strings.Split(admin.ok("rules", "ls", "--source", "/dba/mp"), "\n")[1])[0]
	admin.ok("unshare", mongo, "--orphan")
	if got := admin.ok("get", "/app/mp/replicated/mongo/password"); got != "rotated" {
		t.Fatalf("orphaned copy = %q", got)
	}
	admin.put("/app/mp/replicated/mongo/password", "now mine") // an ordinary value again
	admin.fails("rules", "get", mongo)
}

func TestShareNeedsTheShareAction(t *testing.T) {
	admin := newCLI(t, graftdtest.Start(t))
	admin.put("/dba/x/k", "v")
	token, _ := admin.createToken("--principal", "app:mp", "--role", "app")
	app := admin.as(token)
	if got := app.fails("share", "/dba/x", "--to", "/app/mp/replicated/x"); !strings.Contains(got, "permission denied: app:mp may not share /dba/x") {
		t.Fatalf("share by an app: %q", got)
	}
	shareID(t, admin, "/dba/x", "--to", "/app/mp/replicated/x")
	shareID(t, admin, "/dba/x/k", "--to", "/app/other/replicated/k")
	// The app sees the rule that writes its tree, not the other app's.
	ls := app.ok("rules", "ls")
	if !strings.Contains(ls, "/app/mp/replicated/x") || strings.Contains(ls, "/app/other") {
		t.Fatalf("rules ls by app:mp:\n%s", ls)
	}
	if got := app.ok("get", "/app/mp/replicated/x/k"); got != "v" {
		t.Fatalf("app reads its copy = %q", got)
	}
}

func TestShareRefusesCycles(t *testing.T) {
	g := graftdtest.Start(t, graftdtest.WithConfig(func(c *graftd.Config) {
		c.ReplicaDestinations = []string{"/app/+/replicated/**", "/shared/**"}
	}))
	admin := newCLI(t, g)
	// Chains are fine: /dba → /shared → /app.
	shareID(t, admin, "/dba/a", "--to", "/shared/a")
	shareID(t, admin, "/shared/a", "--to", "/app/x/replicated/a")
	admin.put("/dba/a/k", "v")
	admin.eventually("/app/x/replicated/a/k", "v")

	shareID(t, admin, "/shared/p", "--to", "/shared/q")
	shareID(t, admin, "/shared/q", "--to", "/shared/r")
	if got := admin.fails("share", "/shared/r", "--to", "/shared/p"); !strings.Contains(got, "rule would make a cycle: /shared/r → /shared/p") {
		t.Fatalf("closing a cycle: %q", got)
	}
	if got := admin.fails("share", "/shared/s", "--to", "/shared/s/t"); !strings.Contains(got, "a rule cannot copy a tree into itself") {
		t.Fatalf("copy into itself: %q", got)
	}
	if got := admin.fails("share", "/shared/z", "--to", "/shared/a/deeper"); !strings.Contains(got, "overlaps destination /shared/a of rule r-") {
		t.Fatalf("destination inside another rule's: %q", got)
	}
}

// A pattern destination copies to every application, including one whose
// token is created after the share: its copy is there when the token is
// printed.
func TestSharePattern(t *testing.T) {
	admin := newCLI(t, graftdtest.Start(t))
	admin.put("/shared/datadog/api-key", "dd")
	out := admin.ok("share", "/shared/datadog", "--to", "/app/+/replicated/datadog")
	if !strings.Contains(out, "/shared/datadog → /app/+/replicated/datadog (in 0 applications now) (0 values copied)") {
		t.Fatalf("share printed %q", out)
	}
	id := strings.TrimSuffix(strings.Fields(out)[1], ":")
	if r := admin.run("token", "create", "--principal", "app:billing", "--role", "app"); r.code != 0 {
		t.Fatalf("token create: %+v", r)
	}
	if got := admin.ok("get", "/app/billing/replicated/datadog/api-key"); got != "dd" {
		t.Fatalf("the new application's copy right after token create = %q", got)
	}
	got := admin.ok("rules", "get", id)
	for _, want := range []string{"patterns: /app/+/replicated/datadog (every application, including those that appear later)\n", "destinations: /app/billing/replicated/datadog\n"} {
		if !strings.Contains(got, want) {
			t.Fatalf("rules get lacks %q:\n%s", want, got)
		}
	}
	if got := admin.ok("rules", "ls", "--dest", "/app/not-yet"); !strings.Contains(got, id) || !strings.Contains(got, "(in 1 application now)") {
		t.Fatalf("rules ls --dest of an application the pattern will reach:\n%s", got)
	}
	if got := admin.ok("status", "/app/billing/replicated/datadog/api-key"); !strings.Contains(got, "in sync:            yes\n") {
		t.Fatalf("status of the new application's copy:\n%s", got)
	}
	if got := admin.fails("share", "/shared/x", "--to", "/app/later/replicated/datadog/x"); !strings.Contains(got, "overlaps destination /app/+/replicated/datadog of rule "+id) {
		t.Fatalf("share into the pattern: %q", got)
	}
	if got := admin.fails("share", "/shared/x", "--to", "/app/billing/+/x"); !strings.Contains(got, "a pattern destination is /app/+/<path>") {
		t.Fatalf("share to a malformed pattern: %q", got)
	}
}

// Sharing again what a rule shares answers with that rule and says so
// (the README's agent section repeats the replication section's share);
// a share that differs from it is still refused.
func TestShareRepeated(t *testing.T) {
	admin := newCLI(t, graftdtest.Start(t))
	admin.put("/dba/mp/mongo/password", "s3cret")
	first := shareID(t, admin, "/dba/mp/mongo", "--to", "/app/mp/replicated/mongo")
	out := admin.ok("share", "/dba/mp/mongo", "--to", "/app/mp/replicated/mongo")
	if want := "rule " + first + " already shares this: /dba/mp/mongo → /app/mp/replicated/mongo (1 value in place)\n"; out != want {
		t.Fatalf("the same share again printed %q, want %q", out, want)
	}
	var v sharedView
	if err := json.Unmarshal([]byte(admin.ok("share", "/dba/mp/mongo", "--to", "/app/mp/replicated/mongo", "-o", "json")), &v); err != nil {
		t.Fatal(err)
	}
	if v.Rule.ID != first || !v.Existing || v.Filled != 1 {
		t.Fatalf("the same share again, as JSON: %+v", v)
	}
	if got := admin.fails("share", "/dba/mp/mongo", "--to", "/app/mp/replicated/mongo", "--on-delete", "retain"); !strings.Contains(got, first) {
		t.Fatalf("a share that differs in --on-delete: %q, want a refusal naming %s", got, first)
	}
	if n := strings.Count(admin.ok("rules", "ls"), "\nr-"); n != 1 {
		t.Fatalf("%d rules after repeated shares, want 1", n)
	}
}

// After the first fill of a value older than its rule, status measures
// from the rule's creation and says so (it said "after the source
// changed"); after a change of the source, from that change.
func TestStatusSaysWhatTheLagCountsFrom(t *testing.T) {
	admin := newCLI(t, graftdtest.Start(t))
	admin.put("/dba/mp/mongo/password", "s3cret")
	admin.ok("share", "/dba/mp/mongo", "--to", "/app/mp/replicated/mongo")
	if st := admin.ok("status", "/app/mp/replicated/mongo/password"); !strings.Contains(st, " after the rule was created\n") {
		t.Fatalf("status after the first fill:\n%s", st)
	}
	var v statusView
	if err := json.Unmarshal([]byte(admin.ok("status", "/app/mp/replicated/mongo/password", "-o", "json")), &v); err != nil || v.LagFrom != "rule" {
		t.Fatalf("status -o json after the first fill: %+v, %v", v, err)
	}
	admin.put("/dba/mp/mongo/password", "rotated")
	admin.eventually("/app/mp/replicated/mongo/password", "rotated")
	if st := admin.ok("status", "/app/mp/replicated/mongo/password"); !strings.Contains(st, " after the source changed\n") {
		t.Fatalf("status after a change:\n%s", st)
	}
}
