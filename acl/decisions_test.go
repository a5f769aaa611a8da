package acl

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// entries counts the decisions c holds, in both generations.
func (c *decisionCache) entries() int {
	n := 0
	count := func(any, any) bool { n++; return true }
	c.cur.Load().m.Range(count)
	if prev := c.prev.Load(); prev != nil {
		prev.m.Range(count)
	}
	return n
}

// A cached decision is the one casbin makes. The principals come in pairs
// that differ in one thing the decision depends on, so a key that left it
// out would hand one the other's decision.
func TestDecideCachedAsUncached(t *testing.T) {
	policies := append(DefaultPolicies(),
		mustPolicy(t, "role: author\nprincipals: [user:alice]\nrules:\n  - allow: [read, write]\n    paths: [/shared/**]\n"),
		mustPolicy(t, "role: freezer\nrules:\n  - deny: [write]\n    paths: [/shared/frozen/**]\n"),
	)
	a := newAuthorizer(t, policies)
	principals := []Principal{
		msgProc,
		{Name: "app:message-processo", Roles: []string{"app"}},
		{Name: "app:message-processor2", Roles: []string{"app"}},
		{Name: "app:message-processor", Roles: []string{"ap"}},
		{Name: "app:message-processor"},
		{Name: "app:message-processor", Roles: []string{"app", "dba"}},
		{Name: "app:message-processor", Roles: []string{"dba", "app"}},
		{Name: "app:message-processor", Roles: []string{"app\x00dba"}}, // one role no policy defines
		{Name: "app:message-processor", Roles: []string{"app\x00", "dba"}},
		{Name: "app:message-processor", Roles: []string{"app", "\x00dba"}},
		dbaUser, operator, nobody, otherApp, evilApp, rolesOnly,
		{Name: "user:alice"}, // bound to author by the policy
		{Name: "user:alicf"},
		{Name: "user:alice", Roles: []string{"freezer"}},
		{Name: "user:x", Roles: []string{"author", "freezer"}},
		{Name: "user:x", Roles: []string{"author"}},
	}
	paths := []string{"/", "/app", "/app/message-processor", "/app/message-processor/config/db",
		"/app/message-processor/replicated/mongo/password", "/app/message-processor2/x", "/app/other/x",
		"/dba", "/dba/x", "/shared/x", "/shared/frozen/x"}
	decide := func() map[string]Decision {
		got := map[string]Decision{}
		for _, p := range principals {
			for _, act := range Actions() {
				for _, path := range paths {
					got[fmt.Sprintf("%q %q %s %s", p.Name, p.Roles, act, path)] = a.Decide(p, act, path)
				}
			}
		}
		return got
	}
	first := decide()
	if a.decisions.entries() == 0 {
		t.Fatal("nothing was cached")
	}
	second := decide() // from the cache, every key in it already
	allowed := 0
	for _, p := range principals {
		for _, act := range Actions() {
			for _, path := range paths {
				k := fmt.Sprintf("%q %q %s %s", p.Name, p.Roles, act, path)
				want := a.enforce(p, act, path)
				if first[k] != want || second[k] != want {
					t.Errorf("%s: first %+v, cached %+v, want %+v", k, first[k], second[k], want)
				}
				if want.Allowed {
					allowed++
				}
			}
		}
	}
	if allowed == 0 || allowed == len(first) {
		t.Fatalf("%d of %d requests allowed: the table tells nothing", allowed, len(first))
	}
}

// Roles that only a separator would tell apart are not cached at all.
func TestKeyOfRefusesAmbiguousRoles(t *testing.T) {
	tests := []struct {
		roles []string
		ok    bool
	}{
		{nil, true},
		{[]string{"app"}, true},
		{[]string{"app\x00dba"}, true}, // one role: nothing to split
		{[]string{"app", "dba"}, true},
		{[]string{"app\x00", "dba"}, false},
		{[]string{"app", "\x00dba"}, false},
	}
	keys := map[decisionKey][]string{}
	for _, tt := range tests {
		k, ok := keyOf(Principal{Name: "app:x", Roles: tt.roles}, ActionRead, "/x")
		if ok != tt.ok {
			t.Errorf("keyOf roles %q: ok = %v, want %v", tt.roles, ok, tt.ok)
		}
		if !ok {
			continue
		}
		if other, dup := keys[k]; dup {
			t.Errorf("roles %q and %q make one key", other, tt.roles)
		}
		keys[k] = tt.roles
	}
}

func TestDecisionCacheBounded(t *testing.T) {
	key := func(i int) decisionKey {
		return decisionKey{name: "app:a", nroles: 1, roles: "app", act: ActionRead, path: fmt.Sprintf("/app/a/k%d", i)}
	}
	d := Decision{Reason: "no rule allows app:a to read it"}
	t.Run("entries", func(t *testing.T) {
		const bound = 10
		c := newDecisionCache(bound, 1<<20)
		for i := range 1000 {
			c.store(key(i), d)
			if n := c.entries(); n > bound {
				t.Fatalf("after %d insertions the cache holds %d entries, more than %d", i+1, n, bound)
			}
			// The latest is always there, and so is one asked about
			// all along, however much else came in.
			if _, ok := c.load(key(i)); !ok {
				t.Fatalf("entry %d, just stored, is missing", i)
			}
			if _, ok := c.load(key(0)); !ok {
				t.Fatalf("entry 0, asked about after each insertion, is gone after %d", i+1)
			}
		}
		if _, ok := c.load(key(500)); ok {
			t.Error("entry 500 survived 500 insertions into a cache of 10")
		}
	})
	t.Run("bytes", func(t *testing.T) {
		size := int(entrySize(key(100), d))
		bound := 8 * size
		c := newDecisionCache(1000, bound)
		for i := range 100 {
			c.store(key(100+i), d)
			if n := c.entries(); n*size > bound {
				t.Fatalf("after %d insertions the cache holds %d entries of %d bytes, more than %d bytes", i+1, n, size, bound)
			}
		}
		huge := key(0)
		huge.path = "/" + strings.Repeat("x", bound)
		c.store(huge, d)
		if _, ok := c.load(huge); ok {
			t.Error("an entry larger than the bound was cached")
		}
	})
}

// An Authorizer keeps to its cache's bound and decides right across
// rotations, concurrently.
func TestDecideWithFullCache(t *testing.T) {
	a := newAuthorizer(t, DefaultPolicies())
	const bound = 16
	a.decisions = newDecisionCache(bound, 1<<20)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			who := Principal{Name: fmt.Sprintf("app:a%d", i), Roles: []string{"app"}}
			for j := range 100 {
				own, other := fmt.Sprintf("/app/a%d/k%d", i, j%30), fmt.Sprintf("/app/a%d/k%d", i+1, j%30)
				if !a.Decide(who, ActionRead, own).Allowed {
					t.Errorf("%s denied reading %s", who.Name, own)
					return
				}
				if a.Decide(who, ActionRead, other).Allowed {
					t.Errorf("%s allowed to read %s", who.Name, other)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := a.decisions.entries(); n > bound {
		t.Errorf("the cache holds %d entries, more than %d", n, bound)
	}
}
