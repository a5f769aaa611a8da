package acl

import (
	"fmt"
	"slices"
	"strings"

	"github.com/casbin/casbin/v2"
	"github.com/casbin/casbin/v2/model"

	"github.com/graft-sh/graft/store"
)

// casbinModel is the access model. A request carries the principal's name
// (for {name} templates), its effective roles, the action and the path; a
// policy line is one (role, action, pattern, effect) of a rule. Deny lines
// win over allow lines and no match means deny. The matcher compares the
// action first because that string comparison rejects most lines cheaply.
const casbinModel = `
[request_definition]
r = name, roles, act, path

[policy_definition]
p = role, act, pattern, eft

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = r.act == p.act && hasRole(r.roles, p.role) && pathMatch(r.path, p.pattern, r.name)
`

// Decision is the outcome of an access check and why.
type Decision struct {
	Allowed bool
	// Role, Effect, Rule and Pattern describe the rule that decided, if
	// one did: Rule as "allow [read list] /app/{name}/**" and Pattern the
	// pattern in it that matched.
	Role    string
	Effect  string
	Rule    string
	Pattern string
	// Reason explains the decision in a sentence, for operators (graft
	// policy check) and logs. It may name the principal's roles; show a
	// denied caller the error from Err instead.
	Reason string
}

// DeniedError is a refusal, as the caller may see it. It wraps
// ErrPermissionDenied.
type DeniedError struct {
	Principal string
	Action    Action
	Path      string
	// Reason names the deny rule that refused, or is empty when no rule
	// allowed the action: a caller learns which rule stopped it, never
	// which roles or rules exist otherwise.
	Reason string
}

func (e *DeniedError) Error() string {
	msg := fmt.Sprintf("permission denied: %s may not %s %s", e.Principal, e.Action, e.Path)
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

func (e *DeniedError) Unwrap() error { return ErrPermissionDenied }

// Err returns nil if d allows, and otherwise the *DeniedError to return to
// principal p for act on path.
func (d Decision) Err(p Principal, act Action, path string) error {
	if d.Allowed {
		return nil
	}
	e := &DeniedError{Principal: p.Name, Action: act, Path: path}
	if d.Effect == EffectDeny {
		e.Reason = d.Reason
	}
	return e
}

// ruleKey finds the rule behind a casbin policy line, for explanations.
type ruleKey struct {
	role, act, pattern, effect string
}

// Authorizer decides access with a fixed set of policies, through casbin.
// It is safe for concurrent use; when policies change, build a new one.
//
// casbin evaluates the matcher on every policy line of an enforcer for
// every request, and allocates per line, so one enforcer over all roles
// would cost time in proportion to every rule of every role (about 1.7ms a
// decision with 200 roles). The Authorizer keeps one enforcer per role
// instead, all of the same model, and asks only the caller's: deny-overrides
// across them is a loop (a deny line in any role wins, else the first
// allow). That is the answer one enforcer over all lines gives, which a
// test holds it to; the model keeps hasRole so that it stays true.
type Authorizer struct {
	policies []Policy
	byRole   map[string]*casbin.Enforcer
	// patterns holds every pattern parsed once, so that the matcher, run
	// for each policy line on every decision, never parses.
	patterns map[string]Pattern
	// bindings maps principal names to the roles policies bind them to.
	bindings map[string][]string
	rules    map[ruleKey]string
	// decisions remembers decisions already made: agents ask the same
	// few questions every few seconds, and casbin answers each in
	// microseconds. It is never invalidated, for the policies above
	// never change.
	decisions *decisionCache
}

// NewAuthorizer validates policies, one per role, and returns an
// Authorizer enforcing them. With no policies only root is allowed
// anything.
func NewAuthorizer(policies []Policy) (*Authorizer, error) {
	a := &Authorizer{
		policies:  clonePolicies(policies),
		byRole:    map[string]*casbin.Enforcer{},
		patterns:  map[string]Pattern{},
		bindings:  map[string][]string{},
		rules:     map[ruleKey]string{},
		decisions: newDecisionCache(maxCachedDecisions, maxCachedBytes),
	}
	slices.SortFunc(a.policies, func(x, y Policy) int { return strings.Compare(x.Role, y.Role) })
	for i, p := range a.policies {
		if err := p.validate(); err != nil {
			return nil, fmt.Errorf("policy %q: %w", p.Role, err)
		}
		if i > 0 && a.policies[i-1].Role == p.Role {
			return nil, fmt.Errorf("%w: role %q has two policies", ErrInvalidPolicy, p.Role)
		}
		for _, name := range p.Principals {
			a.bindings[name] = append(a.bindings[name], p.Role)
		}
		e, err := a.newEnforcer(a.lines(p))
		if err != nil {
			return nil, fmt.Errorf("policy %q: %w", p.Role, err)
		}
		a.byRole[p.Role] = e
	}
	return a, nil
}

// lines turns a policy into casbin policy lines, one per action and
// pattern of each rule, parsing each pattern once and remembering the rule
// behind each line.
func (a *Authorizer) lines(p Policy) [][]string {
	var lines [][]string
	for _, r := range p.Rules {
		for _, s := range r.Paths {
			if _, ok := a.patterns[s]; !ok {
				a.patterns[s], _ = ParsePattern(s) // validated by the caller
			}
			for _, act := range r.Actions {
				k := ruleKey{role: p.Role, act: string(act), pattern: s, effect: r.Effect}
				if _, dup := a.rules[k]; dup {
					continue // casbin refuses duplicate lines; the first rule explains
				}
				a.rules[k] = ruleString(r.Effect, r.Actions, s)
				lines = append(lines, []string{p.Role, string(act), s, r.Effect})
			}
		}
	}
	return lines
}

// newEnforcer returns a casbin enforcer of the model holding lines.
func (a *Authorizer) newEnforcer(lines [][]string) (*casbin.Enforcer, error) {
	m, err := model.NewModelFromString(casbinModel)
	if err != nil {
		return nil, fmt.Errorf("build casbin model: %w", err)
	}
	e, err := casbin.NewEnforcer(m)
	if err != nil {
		return nil, fmt.Errorf("build casbin enforcer: %w", err)
	}
	e.AddFunction("hasRole", hasRole)
	e.AddFunction("pathMatch", a.pathMatch)
	if len(lines) > 0 {
		if _, err := e.AddPolicies(lines); err != nil {
			return nil, fmt.Errorf("load policy lines into casbin: %w", err)
		}
	}
	return e, nil
}

// hasRole is the matcher's hasRole(r.roles, p.role).
func hasRole(args ...any) (any, error) {
	if len(args) != 2 {
		return false, fmt.Errorf("hasRole: want 2 arguments, got %d", len(args))
	}
	roles, _ := args[0].([]string)
	role, _ := args[1].(string)
	return role != "" && slices.Contains(roles, role), nil
}

// pathMatch is the matcher's pathMatch(r.path, p.pattern, r.name).
func (a *Authorizer) pathMatch(args ...any) (any, error) {
	if len(args) != 3 {
		return false, fmt.Errorf("pathMatch: want 3 arguments, got %d", len(args))
	}
	path, _ := args[0].(string)
	pattern, _ := args[1].(string)
	name, _ := args[2].(string)
	// Only patterns of loaded rules are known: anything else (casbin
	// evaluates the matcher once with empty policy values when it has no
	// lines at all) matches nothing.
	p, ok := a.patterns[pattern]
	return ok && p.Match(path, Principal{Name: name}), nil
}

// Decide decides whether p may do act on path and explains why. Root may
// do everything. Otherwise a deny rule of any of p's roles wins, then an
// allow rule; with neither, the answer is no. A path that is not canonical
// is denied. Decisions are cached, except root's and those of invalid
// requests, which cost nothing to make.
func (a *Authorizer) Decide(p Principal, act Action, path string) Decision {
	if p.IsRoot() {
		return Decision{Allowed: true, Reason: "root"}
	}
	if !act.valid() {
		_, err := ParseAction(string(act))
		return Decision{Reason: err.Error() + "; no match means deny"}
	}
	if _, err := store.ParsePrefix(path); err != nil {
		return Decision{Reason: err.Error() + "; no rule applies to a path that is not canonical"}
	}
	k, ok := keyOf(p, act, path)
	if !ok {
		return a.enforce(p, act, path)
	}
	if d, ok := a.decisions.load(k); ok {
		return d
	}
	d := a.enforce(p, act, path)
	a.decisions.store(k, d)
	return d
}

// enforce decides a valid request through the casbin enforcers of p's
// roles, uncached.
func (a *Authorizer) enforce(p Principal, act Action, path string) Decision {
	roles := a.roles(p)
	var allow []string // the line of the first allow, in role order
	for _, role := range roles {
		e := a.byRole[role]
		if e == nil {
			continue // a role no policy defines grants nothing
		}
		ok, line, err := e.EnforceEx(p.Name, roles, string(act), path)
		switch {
		case err != nil:
			// Fail closed: a matcher error must never turn into access.
			return Decision{Reason: fmt.Sprintf("authorization failed: %v; denying", err)}
		case len(line) != 4 && ok:
			// The effect allows only through a matching line, which
			// casbin names; anything else is a bug, so deny.
			return Decision{Reason: "authorization failed: allowed without a rule; denying"}
		case len(line) != 4:
			// No line of this role matched.
		case !ok:
			return a.explain(false, line)
		case allow == nil:
			allow = line
		}
	}
	if allow != nil {
		return a.explain(true, allow)
	}
	shown := "none"
	if len(roles) > 0 {
		shown = strings.Join(roles, ", ")
	}
	return Decision{Reason: fmt.Sprintf("no rule allows %s to %s %s (roles: %s); no match means deny", p.Name, act, path, shown)}
}

// MayBelow reports whether p may do act on some path at or below prefix:
// whether an allow rule of one of its roles reaches into the subtree. It
// weighs no deny rule, so a yes means "perhaps, path by path", for
// requests decided item by item; a no is certain. Root may always.
func (a *Authorizer) MayBelow(p Principal, act Action, prefix string) bool {
	if p.IsRoot() {
		return true
	}
	if _, err := store.ParsePrefix(prefix); err != nil || !act.valid() {
		return false
	}
	return len(a.allowedBelow(p, act, prefix, true)) > 0
}

// allowedBelow returns the patterns of p's allow rules for act that reach
// at or below prefix; the first one alone when first is set.
func (a *Authorizer) allowedBelow(p Principal, act Action, prefix string, first bool) []Pattern {
	var out []Pattern
	roles := a.roles(p)
	for _, pol := range a.policies {
		if !slices.Contains(roles, pol.Role) {
			continue
		}
		for _, r := range pol.Rules {
			if r.Effect != EffectAllow || !slices.Contains(r.Actions, act) {
				continue
			}
			for _, raw := range r.Paths {
				if pat, ok := a.patterns[raw]; ok && pat.MatchesBelow(prefix, p) {
					if out = append(out, pat); first {
						return out
					}
				}
			}
		}
	}
	return out
}

// Reachable returns the subtrees at or below prefix in which p may do act
// somewhere: for each allow rule of p's roles, the deepest path its
// pattern's matches share ({name} filled in, up to the first wildcard),
// narrowed to prefix; none of them below another. A read of prefix need
// only read these, and decrypt nothing else, before it is decided path by
// path. Like MayBelow it weighs no deny rule. Root reaches all of prefix.
func (a *Authorizer) Reachable(p Principal, act Action, prefix string) []string {
	if p.IsRoot() {
		return []string{prefix}
	}
	if _, err := store.ParsePrefix(prefix); err != nil || !act.valid() {
		return nil
	}
	var roots []string
	for _, pat := range a.allowedBelow(p, act, prefix, false) {
		stem, ok := pat.Stem(p)
		switch {
		case !ok:
		case store.Under(stem, prefix):
			roots = append(roots, stem)
		case store.Under(prefix, stem):
			roots = append(roots, prefix)
		}
	}
	return outermost(roots)
}

// outermost sorts roots and drops those at or below another.
func outermost(roots []string) []string {
	// Shorter first, so that a root comes before anything below it.
	slices.SortFunc(roots, func(x, y string) int {
		if len(x) != len(y) {
			return len(x) - len(y)
		}
		return strings.Compare(x, y)
	})
	var out []string
	for _, r := range roots {
		if !slices.ContainsFunc(out, func(o string) bool { return store.Under(r, o) }) {
			out = append(out, r)
		}
	}
	slices.Sort(out)
	return out
}

// explain builds the decision made by one casbin policy line.
func (a *Authorizer) explain(allowed bool, line []string) Decision {
	role, act, pattern, effect := line[0], line[1], line[2], line[3]
	d := Decision{
		Allowed: allowed,
		Role:    role,
		Effect:  effect,
		Rule:    a.rules[ruleKey{role: role, act: act, pattern: pattern, effect: effect}],
		Pattern: pattern,
	}
	verb := "allowed"
	if !allowed {
		verb = "denied"
	}
	d.Reason = fmt.Sprintf("%s by role %s: %s", verb, role, d.Rule)
	return d
}

// roles returns p's effective roles, sorted and without repeats: those
// its credential grants and those policies bind to its name.
func (a *Authorizer) roles(p Principal) []string {
	roles := slices.Concat(p.Roles, a.bindings[p.Name])
	slices.Sort(roles)
	roles = slices.Compact(roles)
	if len(roles) > 0 && roles[0] == "" {
		roles = roles[1:]
	}
	return roles
}

// Policies returns the policies in force, sorted by role.
func (a *Authorizer) Policies() []Policy { return clonePolicies(a.policies) }

func clonePolicies(policies []Policy) []Policy {
	out := make([]Policy, len(policies))
	for i, p := range policies {
		p.Principals = slices.Clone(p.Principals)
		p.Rules = slices.Clone(p.Rules)
		for j, r := range p.Rules {
			p.Rules[j].Actions = slices.Clone(r.Actions)
			p.Rules[j].Paths = slices.Clone(r.Paths)
		}
		out[i] = p
	}
	return out
}
