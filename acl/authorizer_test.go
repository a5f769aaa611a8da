package acl

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

func newAuthorizer(t testing.TB, policies []Policy) *Authorizer {
	t.Helper()
	a, err := NewAuthorizer(policies)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func mustPolicy(t testing.TB, yaml string) Policy {
	t.Helper()
	p, err := ParsePolicy([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Personas of the default policies.
var (
	dbaUser   = Principal{Name: "user:dora", Roles: []string{"dba"}}
	msgProc   = Principal{Name: "app:message-processor", Roles: []string{"app"}}
	otherApp  = Principal{Name: "app:other", Roles: []string{"app"}}
	operator  = Principal{Name: "user:olga", Roles: []string{"admin"}}
	nobody    = Principal{Name: "user:nobody"}
	rootUser  = Principal{Name: RootPrincipal}
	evilApp   = Principal{Name: "app:message-processor/../../dba", Roles: []string{"app"}}
	rolesOnly = Principal{Name: "app:", Roles: []string{"app"}}
)

func TestDecideDefaultPolicies(t *testing.T) {
	a := newAuthorizer(t, DefaultPolicies())
	const (
		secret     = "/app/message-processor/replicated/mongo/password"
		config     = "/app/message-processor/config/x"
		dbaSecret  = "/dba/passpack/services/message-processor/postgres/password"
		otherApps  = "/app/other/config/x"
		evilSuffix = "/app/message-processor-evil/x"
	)
	all := Actions()
	tests := []struct {
		who     Principal
		path    string
		allowed []Action // every other action is denied
	}{
		// A DBA owns /dba and nothing else.
		{dbaUser, dbaSecret, []Action{ActionRead, ActionList, ActionWrite, ActionDelete, ActionShare, ActionRotate, ActionIssue}},
		{dbaUser, "/dba", []Action{ActionRead, ActionList, ActionWrite, ActionDelete, ActionShare, ActionRotate, ActionIssue}},
		{dbaUser, config, nil},
		{dbaUser, secret, nil},
		{dbaUser, "/app/message-processor", nil},
		{dbaUser, "/dba-evil/x", nil},
		{dbaUser, "/dbax", nil},
		{dbaUser, "/DBA/x", nil},
		{dbaUser, "/", nil},

		// An application owns its tree, except what is replicated into it,
		// and issues dynamic credentials only from roles shared into it.
		{msgProc, config, []Action{ActionRead, ActionList, ActionWrite, ActionDelete, ActionReport}},
		{msgProc, "/app/message-processor", []Action{ActionRead, ActionList, ActionWrite, ActionDelete, ActionReport}},
		{msgProc, secret, []Action{ActionRead, ActionList, ActionReport, ActionIssue}},
		{msgProc, "/app/message-processor/replicated", []Action{ActionRead, ActionList, ActionReport, ActionIssue}},
		{msgProc, dbaSecret, nil},
		{msgProc, "/dba", nil},
		{msgProc, otherApps, nil},
		{msgProc, evilSuffix, nil},
		{msgProc, "/app/message-processor-evil", nil},
		{msgProc, "/app", nil},
		{msgProc, "/", nil},
		// Case and normalisation tricks.
		{msgProc, "/APP/message-processor/x", nil},
		{msgProc, "/app/Message-Processor/x", nil},
		{msgProc, "/app/message-processor/../../dba/x", nil},
		{msgProc, "/app/message-processor/./x", nil},
		{msgProc, "/app//message-processor/x", nil},
		{msgProc, "/app/message-processor/x/", nil},
		{msgProc, "app/message-processor/x", nil},
		{msgProc, "/app/message-processor%2Fx", nil},
		{msgProc, "/app/message-processor/x\x00", nil},
		{msgProc, "", nil},
		{otherApp, otherApps, []Action{ActionRead, ActionList, ActionWrite, ActionDelete, ActionReport}},
		{otherApp, config, nil},

		// Names that are not one segment fill no template.
		{evilApp, dbaSecret, nil},
		{evilApp, "/app/message-processor/x", nil},
		{rolesOnly, "/app", nil},
		{rolesOnly, "/app/x", nil},

		// Admins may do everything; so may root, with no roles at all.
		{operator, dbaSecret, all},
		{operator, secret, all},
		{operator, "/", all},
		{rootUser, secret, all},
		{rootUser, "/", all},

		// No roles, no access.
		{nobody, dbaSecret, nil},
		{nobody, config, nil},
		{nobody, "/", nil},
	}
	for _, tt := range tests {
		for _, act := range all {
			want := slices.Contains(tt.allowed, act)
			d := a.Decide(tt.who, act, tt.path)
			if d.Allowed != want {
				t.Errorf("%s %s %q: allowed = %v, want %v (%s)", tt.who.Name, act, tt.path, d.Allowed, want, d.Reason)
			}
			if err := d.Err(tt.who, act, tt.path); (err == nil) != want {
				t.Errorf("%s %s %q: Err = %v, want allowed = %v", tt.who.Name, act, tt.path, err, want)
			}
		}
	}
}

func TestDecideExplains(t *testing.T) {
	a := newAuthorizer(t, DefaultPolicies())
	tests := []struct {
		who  Principal
		act  Action
		path string
		want Decision
	}{
		{dbaUser, ActionShare, "/dba/x", Decision{
			Allowed: true, Role: "dba", Effect: "allow", Pattern: "/dba/**",
			Rule:   "allow [read list write delete share rotate issue] /dba/**",
			Reason: "allowed by role dba: allow [read list write delete share rotate issue] /dba/**",
		}},
		{msgProc, ActionWrite, "/app/message-processor/replicated/mongo/password", Decision{
			Role: "app", Effect: "deny", Pattern: "/app/{name}/replicated/**",
			Rule:   "deny [write delete] /app/{name}/replicated/**",
			Reason: "denied by role app: deny [write delete] /app/{name}/replicated/**",
		}},
		{msgProc, ActionRead, "/dba/y", Decision{
			Reason: "no rule allows app:message-processor to read /dba/y (roles: app); no match means deny",
		}},
		{nobody, ActionList, "/dba", Decision{
			Reason: "no rule allows user:nobody to list /dba (roles: none); no match means deny",
		}},
		{rootUser, ActionAdmin, "/", Decision{Allowed: true, Reason: "root"}},
		{msgProc, "reed", "/app/message-processor/x", Decision{
			Reason: `unknown action "reed"; actions are read, list, write, delete, share, admin, rotate, issue, report; no match means deny`,
		}},
		{msgProc, ActionRead, "/app/message-processor/../x", Decision{
			Reason: `invalid path: segment ".." is not allowed; no rule applies to a path that is not canonical`,
		}},
	}
	for _, tt := range tests {
		if got := a.Decide(tt.who, tt.act, tt.path); got != tt.want {
			t.Errorf("Decide(%s, %s, %s) =\n %+v\nwant\n %+v", tt.who.Name, tt.act, tt.path, got, tt.want)
		}
	}
}

func TestDeniedError(t *testing.T) {
	a := newAuthorizer(t, DefaultPolicies())
	tests := []struct {
		who  Principal
		act  Action
		path string
		want string
	}{
		// A deny rule is named, so the caller knows what stopped it.
		{msgProc, ActionWrite, "/app/message-processor/replicated/db", "permission denied: app:message-processor may not write /app/message-processor/replicated/db: denied by role app: deny [write delete] /app/{name}/replicated/**"},
		// No match says nothing about which roles or rules exist.
		{msgProc, ActionRead, "/dba/x", "permission denied: app:message-processor may not read /dba/x"},
		{nobody, ActionAdmin, "/", "permission denied: user:nobody may not admin /"},
	}
	for _, tt := range tests {
		err := a.Decide(tt.who, tt.act, tt.path).Err(tt.who, tt.act, tt.path)
		if err == nil {
			t.Fatalf("Decide(%s, %s, %s) allowed", tt.who.Name, tt.act, tt.path)
		}
		if got := err.Error(); got != tt.want {
			t.Errorf("error =\n %q\nwant\n %q", got, tt.want)
		}
		if !errors.Is(err, ErrPermissionDenied) {
			t.Errorf("%v does not wrap ErrPermissionDenied", err)
		}
		var de *DeniedError
		if !errors.As(err, &de) || de.Principal != tt.who.Name || de.Action != tt.act || de.Path != tt.path {
			t.Errorf("errors.As(%v) = %+v", err, de)
		}
	}
	if err := a.Decide(msgProc, ActionRead, "/app/message-processor/x").Err(msgProc, ActionRead, "/app/message-processor/x"); err != nil {
		t.Errorf("Err of an allowed decision = %v", err)
	}
}

func TestPrincipalBindings(t *testing.T) {
	policies := append(DefaultPolicies(), mustPolicy(t, `role: auditor
principals: [user:alice, app:message-processor]
rules:
  - allow: [read, list]
    paths: [/audit/**]
`))
	// alice's certificate carries no roles; the dba role binds her too.
	for i := range policies {
		if policies[i].Role == "dba" {
			policies[i].Principals = []string{"user:alice"}
		}
	}
	a := newAuthorizer(t, policies)
	alice := Principal{Name: "user:alice", Method: "certificate"}
	tests := []struct {
		who  Principal
		act  Action
		path string
		want bool
	}{
		{alice, ActionRead, "/audit/2024", true},
		{alice, ActionWrite, "/audit/2024", false},
		{alice, ActionWrite, "/dba/x", true},
		{alice, ActionRead, "/app/x", false},
		// Bindings add to the roles a credential grants.
		{msgProc, ActionRead, "/audit/x", true},
		{msgProc, ActionRead, "/app/message-processor/x", true},
		{Principal{Name: "user:bob"}, ActionRead, "/audit/x", false},
		// Names must match exactly.
		{Principal{Name: "user:Alice"}, ActionRead, "/audit/x", false},
		{Principal{Name: "user:alice "}, ActionRead, "/audit/x", false},
	}
	for _, tt := range tests {
		if d := a.Decide(tt.who, tt.act, tt.path); d.Allowed != tt.want {
			t.Errorf("%s %s %s: allowed = %v, want %v (%s)", tt.who.Name, tt.act, tt.path, d.Allowed, tt.want, d.Reason)
		}
	}
	d := a.Decide(Principal{Name: "user:alice"}, ActionRead, "/app/x")
	if want := "no rule allows user:alice to read /app/x (roles: auditor, dba); no match means deny"; d.Reason != want {
		t.Errorf("reason = %q, want %q", d.Reason, want)
	}
}

func TestDenyOverridesAllowAcrossRoles(t *testing.T) {
	author := mustPolicy(t, "role: author\nrules:\n  - allow: [read, write]\n    paths: [/shared/**]\n")
	freezer := mustPolicy(t, "role: freezer\nrules:\n  - deny: [write]\n    paths: [/shared/frozen/**]\n  - allow: [list]\n    paths: [/shared/**]\n")
	a := newAuthorizer(t, []Policy{author, freezer})
	both := Principal{Name: "user:x", Roles: []string{"author", "freezer"}}
	authorOnly := Principal{Name: "user:y", Roles: []string{"author"}}
	tests := []struct {
		who    Principal
		act    Action
		path   string
		want   bool
		reason string
	}{
		{both, ActionWrite, "/shared/frozen/x", false, "denied by role freezer: deny [write] /shared/frozen/**"},
		{both, ActionWrite, "/shared/frozen", false, "denied by role freezer: deny [write] /shared/frozen/**"},
		{both, ActionWrite, "/shared/x", true, "allowed by role author: allow [read write] /shared/**"},
		{both, ActionRead, "/shared/frozen/x", true, "allowed by role author: allow [read write] /shared/**"},
		{both, ActionList, "/shared/frozen/x", true, "allowed by role freezer: allow [list] /shared/**"},
		{authorOnly, ActionWrite, "/shared/frozen/x", true, "allowed by role author: allow [read write] /shared/**"},
		{authorOnly, ActionList, "/shared/x", false, "no rule allows user:y to list /shared/x (roles: author); no match means deny"},
	}
	for _, tt := range tests {
		d := a.Decide(tt.who, tt.act, tt.path)
		if d.Allowed != tt.want || d.Reason != tt.reason {
			t.Errorf("%v %s %s = %v %q, want %v %q", tt.who.Roles, tt.act, tt.path, d.Allowed, d.Reason, tt.want, tt.reason)
		}
	}
}

// TestShardingMatchesOneEnforcer holds the per-role enforcers to the
// model's plain meaning: one casbin enforcer over every line, whose matcher
// picks the roles with hasRole.
func TestShardingMatchesOneEnforcer(t *testing.T) {
	policies := append(DefaultPolicies(),
		mustPolicy(t, "role: author\nprincipals: [user:alice]\nrules:\n  - allow: [read, write, share]\n    paths: [/shared/**, '/app/{name}/+/x']\n"),
		mustPolicy(t, "role: freezer\nrules:\n  - deny: [write, delete]\n    paths: [/shared/frozen/**, /dba/frozen/**]\n  - allow: [list]\n    paths: [/shared/**]\n"),
	)
	a := newAuthorizer(t, policies)
	var lines [][]string
	for _, p := range a.Policies() {
		l, err := a.byRole[p.Role].GetPolicy()
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l...)
	}
	one, err := a.newEnforcer(lines)
	if err != nil {
		t.Fatal(err)
	}
	var principals []Principal
	for _, roles := range [][]string{nil, {"app"}, {"dba"}, {"admin"}, {"author"}, {"freezer"}, {"author", "freezer"}, {"dba", "freezer"}, {"app", "dba", "freezer"}, {"nope"}} {
		for _, name := range []string{"app:message-processor", "user:alice", "app:x/y"} {
			principals = append(principals, Principal{Name: name, Roles: roles})
		}
	}
	paths := []string{"/", "/dba", "/dba/x", "/dba/frozen/x", "/dba-evil", "/shared", "/shared/frozen", "/shared/frozen/y",
		"/app/message-processor", "/app/message-processor/replicated/db", "/app/message-processor/q/x", "/app/alice/q/x", "/app/other/x"}
	checked := 0
	for _, p := range principals {
		for _, act := range Actions() {
			for _, path := range paths {
				d := a.Decide(p, act, path)
				ok, line, err := one.EnforceEx(p.Name, a.roles(p), string(act), path)
				if err != nil {
					t.Fatal(err)
				}
				var want []string
				if d.Role != "" {
					want = []string{d.Role, string(act), d.Pattern, d.Effect}
				}
				if ok != d.Allowed || !slices.Equal(line, want) {
					t.Errorf("%s %v %s %s: sharded %v %v, one enforcer %v %v", p.Name, p.Roles, act, path, d.Allowed, want, ok, line)
				}
				checked++
			}
		}
	}
	t.Logf("%d requests agree", checked)
}

func TestDecideWithoutPolicies(t *testing.T) {
	a := newAuthorizer(t, nil)
	// casbin evaluates the matcher once with empty policy values when it
	// has no lines; empty roles and actions must not make that match.
	for _, who := range []Principal{operator, msgProc, {Name: "", Roles: []string{""}}, {Name: "x", Roles: []string{"admin", ""}}} {
		for _, act := range append(Actions(), "") {
			for _, path := range []string{"/", "/x", ""} {
				if d := a.Decide(who, act, path); d.Allowed {
					t.Errorf("%q %q %q allowed with no policies: %s", who.Name, act, path, d.Reason)
				}
			}
		}
	}
	if d := a.Decide(rootUser, ActionAdmin, "/"); !d.Allowed {
		t.Error("root denied with no policies")
	}
	if got := a.Policies(); len(got) != 0 {
		t.Errorf("Policies() = %v", got)
	}
}

func TestNewAuthorizerRejectsInvalidPolicies(t *testing.T) {
	good := PolicyRule{Effect: EffectAllow, Actions: []Action{ActionRead}, Paths: []string{"/x"}}
	tests := []struct {
		name   string
		policy []Policy
		want   string
	}{
		{"root role", []Policy{{Role: "root", Rules: []PolicyRule{good}}}, `role "root" is reserved`},
		{"bad action", []Policy{{Role: "r", Rules: []PolicyRule{{Effect: EffectAllow, Actions: []Action{"all"}, Paths: []string{"/x"}}}}}, `unknown action "all"`},
		{"bad pattern", []Policy{{Role: "r", Rules: []PolicyRule{{Effect: EffectAllow, Actions: []Action{ActionRead}, Paths: []string{"/x/**/y"}}}}}, "** must be the last segment"},
		{"bad effect", []Policy{{Role: "r", Rules: []PolicyRule{{Effect: "permit", Actions: []Action{ActionRead}, Paths: []string{"/x"}}}}}, `effect "permit"`},
		{"no rules", []Policy{{Role: "r"}}, "no rules"},
		{"bad principal", []Policy{{Role: "r", Principals: []string{"root"}, Rules: []PolicyRule{good}}}, "principal root"},
		{"role twice", []Policy{{Role: "r", Rules: []PolicyRule{good}}, {Role: "r", Rules: []PolicyRule{good}}}, `role "r" has two policies`},
	}
	for _, tt := range tests {
		_, err := NewAuthorizer(tt.policy)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("%s: NewAuthorizer error = %v, want one containing %q and wrapping ErrInvalidPolicy", tt.name, err, tt.want)
		}
	}
}

func TestPoliciesSortedAndCopied(t *testing.T) {
	a := newAuthorizer(t, DefaultPolicies())
	got := a.Policies()
	var roles []string
	for _, p := range got {
		roles = append(roles, p.Role)
	}
	if want := []string{"admin", "app", "dba"}; !slices.Equal(roles, want) {
		t.Errorf("Policies() roles = %v, want %v", roles, want)
	}
	got[1].Rules[1].Effect = EffectAllow // the app role's deny rule
	if d := a.Decide(msgProc, ActionWrite, "/app/message-processor/replicated/x"); d.Allowed {
		t.Error("changing the result of Policies() changed the authorizer")
	}
}

func TestDefaultPolicyYAML(t *testing.T) {
	byRole := DefaultPolicyYAML()
	policies := DefaultPolicies()
	if len(byRole) != len(policies) {
		t.Fatalf("%d YAML documents, %d policies", len(byRole), len(policies))
	}
	for _, p := range policies {
		if _, ok := byRole[p.Role]; !ok {
			t.Errorf("policy %s has no YAML under its role", p.Role)
		}
		if p.Description == "" {
			t.Errorf("policy %s has no description", p.Role)
		}
	}
	admin := policies[0]
	if admin.Role != "admin" || !slices.Equal(admin.Rules[0].Actions, Actions()) {
		t.Errorf("the admin policy does not allow every action: %+v", admin)
	}
}

func TestDecideConcurrently(t *testing.T) {
	a := newAuthorizer(t, DefaultPolicies())
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			who := Principal{Name: fmt.Sprintf("app:a%d", i), Roles: []string{"app"}}
			for j := range 200 {
				own := fmt.Sprintf("/app/a%d/k%d", i, j)
				if !a.Decide(who, ActionWrite, own).Allowed {
					t.Errorf("%s denied writing %s", who.Name, own)
					return
				}
				if a.Decide(who, ActionRead, fmt.Sprintf("/app/a%d/k%d", i+1, j)).Allowed {
					t.Errorf("%s allowed to read another app's key", who.Name)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkDecide decides with the default policies and 200 more roles,
// each shaped like app, so casbin has about 1,200 policy lines to scan:
// cached (an agent's report, asking what it asked 5 s before), first
// (asked for the first time: casbin, and the decision cached), and
// uncached (casbin alone, as before the cache).
func BenchmarkDecide(b *testing.B) {
	policies := DefaultPolicies()
	for i := range 200 {
		policies = append(policies, mustPolicy(b, fmt.Sprintf(`role: team-%03d
rules:
  - allow: [read, list, write, delete]
    paths: [/team-%03d/**]
  - deny: [write, delete]
    paths: [/team-%03d/frozen/**]
  - allow: [read, list]
    paths: ['/app/{name}/team-%03d/**']
`, i, i, i, i)))
	}
	a := newAuthorizer(b, policies)
	cases := []struct {
		name string
		who  Principal
		act  Action
		path string
		want bool
	}{
		{"app-allowed", msgProc, ActionRead, "/app/message-processor/config/db", true},
		{"app-denied", msgProc, ActionWrite, "/app/message-processor/replicated/mongo/password", false},
		{"no-match", msgProc, ActionRead, "/dba/passpack/x", false},
	}
	for _, c := range cases {
		if got := a.Decide(c.who, c.act, c.path).Allowed; got != c.want {
			b.Fatalf("%s: allowed = %v, want %v", c.name, got, c.want)
		}
		b.Run("cached/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				a.Decide(c.who, c.act, c.path)
			}
		})
		b.Run("first/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				a.decisions = newDecisionCache(maxCachedDecisions, maxCachedBytes)
				a.Decide(c.who, c.act, c.path)
			}
		})
		b.Run("uncached/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				a.enforce(c.who, c.act, c.path)
			}
		})
	}
}

func TestReachable(t *testing.T) {
	policies := append(DefaultPolicies(), mustPolicy(t, `role: reader
rules:
  - allow: [read]
    paths: ['/app/+/config/**', /shared/x, '/team/{name}/a/**', '/team/{name}/a-b/**', '/team/{name}/a/deep/**']
`))
	a := newAuthorizer(t, policies)
	reader := Principal{Name: "user:t", Roles: []string{"reader"}}
	tests := []struct {
		p      Principal
		act    Action
		prefix string
		want   []string
	}{
		{msgProc, ActionRead, "/", []string{"/app/message-processor"}},
		{msgProc, ActionRead, "/app", []string{"/app/message-processor"}},
		{msgProc, ActionRead, "/app/message-processor/db", []string{"/app/message-processor/db"}},
		{msgProc, ActionRead, "/app/other", nil},
		{msgProc, ActionRead, "/dba", nil},
		{dbaUser, ActionList, "/", []string{"/dba"}},
		{operator, ActionRead, "/app", []string{"/app"}},
		{rootUser, ActionRead, "/app", []string{"/app"}},
		{nobody, ActionRead, "/", nil},
		{evilApp, ActionRead, "/", nil},
		// A wildcard stops the stem: every app's tree may hold a config.
		{reader, ActionRead, "/", []string{"/app", "/shared/x", "/team/t/a", "/team/t/a-b"}},
		{reader, ActionRead, "/app/b", []string{"/app/b"}},
		{reader, ActionList, "/", nil},
	}
	for _, tt := range tests {
		if got := a.Reachable(tt.p, tt.act, tt.prefix); !slices.Equal(got, tt.want) {
			t.Errorf("Reachable(%s, %s, %s) = %q, want %q", tt.p.Name, tt.act, tt.prefix, got, tt.want)
		}
	}
}

// An agent's report needs the report action on its application's tree
// (issue 18: a matching name alone let a forged identity acknowledge).
func TestDefaultAppRoleReportsForItsOwnTreeOnly(t *testing.T) {
	a := newAuthorizer(t, DefaultPolicies())
	pet := Principal{Name: "app:pet", Roles: []string{"app"}}
	dba := Principal{Name: "user:dora", Roles: []string{"dba"}}
	tests := []struct {
		who  Principal
		path string
		want bool
	}{
		{pet, "/app/pet", true},
		{pet, "/app/pet/replicated/db/password", true},
		{pet, "/app/petstore", false},
		{pet, "/app/other", false},
		{dba, "/app/pet", false},
		{dba, "/dba/x", false},
	}
	for _, tt := range tests {
		if got := a.Decide(tt.who, ActionReport, tt.path).Allowed; got != tt.want {
			t.Errorf("%s report %s: allowed = %v, want %v", tt.who.Name, tt.path, got, tt.want)
		}
	}
}
