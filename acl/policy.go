package acl

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Action is something a principal does to a path.
type Action string

// Actions.
const (
	ActionRead   Action = "read"
	ActionList   Action = "list"
	ActionWrite  Action = "write"
	ActionDelete Action = "delete"
	// ActionShare allows using a path as a replication source.
	ActionShare Action = "share"
	// ActionAdmin covers tokens, policies and the keyring; it is checked
	// against the path "/".
	ActionAdmin  Action = "admin"
	ActionRotate Action = "rotate"
	ActionIssue  Action = "issue"
	// ActionReport allows a graft-agent to report what it runs for the
	// application whose tree it is checked on (/app/<name>), which
	// rotations count as acknowledgements.
	ActionReport Action = "report"
)

// Actions returns every action, in the order the documentation lists them.
func Actions() []Action {
	return []Action{ActionRead, ActionList, ActionWrite, ActionDelete, ActionShare, ActionAdmin, ActionRotate, ActionIssue, ActionReport}
}

// ParseAction returns the action named s.
func ParseAction(s string) (Action, error) {
	if a := Action(s); a.valid() {
		return a, nil
	}
	return "", fmt.Errorf("unknown action %q; actions are %s", s, actionList())
}

func (a Action) valid() bool {
	switch a {
	case ActionRead, ActionList, ActionWrite, ActionDelete, ActionShare, ActionAdmin, ActionRotate, ActionIssue, ActionReport:
		return true
	}
	return false
}

func actionList() string {
	names := make([]string, 0, len(Actions()))
	for _, a := range Actions() {
		names = append(names, string(a))
	}
	return strings.Join(names, ", ")
}

// Rule effects.
const (
	EffectAllow = "allow"
	EffectDeny  = "deny"
)

// Policy is one role's rules. Deny rules win over allow rules, across every
// role a principal holds; an action no rule allows is denied.
type Policy struct {
	// Role names the role, as tokens grant it.
	Role        string
	Description string
	// Principals hold the role without a credential that says so, such
	// as identities from client certificates.
	Principals []string
	Rules      []PolicyRule
}

// PolicyRule is one rule of a policy: it allows or denies actions on paths.
type PolicyRule struct {
	// Effect is EffectAllow or EffectDeny.
	Effect  string
	Actions []Action
	// Paths are patterns (see ParsePattern).
	Paths []string
}

// String renders the rule as explanations show it:
// "allow [read list] /app/{name}/**".
func (r PolicyRule) String() string {
	return ruleString(r.Effect, r.Actions, strings.Join(r.Paths, " "))
}

func ruleString(effect string, actions []Action, paths string) string {
	names := make([]string, len(actions))
	for i, a := range actions {
		names[i] = string(a)
	}
	return fmt.Sprintf("%s [%s] %s", effect, strings.Join(names, " "), paths)
}

// Role names: short, lowercase, usable in a URL and a file name.
var roleName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// PolicyError is one problem in a policy's YAML, at a line. It wraps
// ErrInvalidPolicy.
type PolicyError struct {
	Line    int
	Problem string
}

func (e *PolicyError) Error() string {
	if e.Line == 0 {
		return e.Problem
	}
	return fmt.Sprintf("line %d: %s", e.Line, e.Problem)
}

func (e *PolicyError) Unwrap() error { return ErrInvalidPolicy }

// ParsePolicy parses and validates one policy written as YAML:
//
//	role: dba
//	description: Database team owns /dba
//	principals: [user:alice]
//	rules:
//	  - allow: [read, list, write, delete, share]
//	    paths: [/dba/**]
//	  - deny: [write]
//	    paths: [/dba/frozen/**]
//
// Unknown keys are rejected. Every problem is reported, each as a
// *PolicyError naming its line, joined into one error.
func ParsePolicy(data []byte) (Policy, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return Policy{}, &PolicyError{Line: 1, Problem: "empty policy; it needs at least a role and rules"}
		}
		return Policy{}, yamlError(data, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return Policy{}, &PolicyError{Line: extra.Line, Problem: "a second YAML document; write one policy at a time"}
	} else if !errors.Is(err, io.EOF) {
		return Policy{}, yamlError(data, err)
	}
	if len(doc.Content) == 0 {
		return Policy{}, &PolicyError{Line: 1, Problem: "empty policy; it needs at least a role and rules"}
	}
	var pp policyParser
	p := pp.policy(doc.Content[0])
	if len(pp.problems) > 0 {
		return Policy{}, errors.Join(pp.problems...)
	}
	return p, nil
}

// yamlError turns a YAML syntax error into a PolicyError. The most common
// one, a {name} template inside a [flow, list], gets a line and a fix.
func yamlError(data []byte, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if _, err := fmt.Sscanf(msg, "line %d:", &line); err == nil {
		_, msg, _ = strings.Cut(msg, ": ")
	}
	for i, text := range strings.Split(string(data), "\n") {
		open := strings.IndexByte(text, '[')
		if open >= 0 && strings.Contains(text[open:], nameTemplate) && !strings.ContainsAny(text[open:], `'"`) {
			return &PolicyError{Line: i + 1, Problem: fmt.Sprintf("%s: quote patterns with {name} inside [...], as in ['/app/{name}/**']", msg)}
		}
	}
	return &PolicyError{Line: line, Problem: "invalid YAML: " + msg}
}

// policyParser walks the YAML tree, collecting every problem with its line.
type policyParser struct {
	problems []error
}

func (pp *policyParser) problem(n *yaml.Node, format string, args ...any) {
	pp.problems = append(pp.problems, &PolicyError{Line: n.Line, Problem: fmt.Sprintf(format, args...)})
}

// fields returns the values of a mapping by key, reporting keys that are
// unknown, repeated or not plain strings.
func (pp *policyParser) fields(n *yaml.Node, what string, keys ...string) map[string]*yaml.Node {
	if n.Kind != yaml.MappingNode {
		pp.problem(n, "%s must be a mapping of %s", what, strings.Join(keys, ", "))
		return nil
	}
	out := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch {
		case k.Kind != yaml.ScalarNode || !slices.Contains(keys, k.Value):
			pp.problem(k, "unknown key %q in %s; keys are %s", k.Value, what, strings.Join(keys, ", "))
		case out[k.Value] != nil:
			pp.problem(k, "key %q repeated", k.Value)
		default:
			out[k.Value] = v
		}
	}
	return out
}

// scalar returns a string value; null is "".
func (pp *policyParser) scalar(n *yaml.Node, what string) (string, bool) {
	switch {
	case n.Kind == yaml.AliasNode:
		pp.problem(n, "%s: YAML aliases are not allowed in a policy", what)
	case n.Kind != yaml.ScalarNode:
		pp.problem(n, "%s must be a string", what)
	case n.Tag == "!!null":
		return "", true
	default:
		return n.Value, true
	}
	return "", false
}

// list returns the scalar items of a sequence; null is empty.
func (pp *policyParser) list(n *yaml.Node, what string) []*yaml.Node {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		pp.problem(n, "%s must be a list, as in [a, b]", what)
		return nil
	}
	items := make([]*yaml.Node, 0, len(n.Content))
	for _, item := range n.Content {
		if _, ok := pp.scalar(item, what+" item"); ok {
			items = append(items, item)
		}
	}
	return items
}

// emptyList reports whether n is an empty list or null.
func emptyList(n *yaml.Node) bool {
	return n.Kind == yaml.SequenceNode && len(n.Content) == 0 || n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func (pp *policyParser) policy(n *yaml.Node) Policy {
	f := pp.fields(n, "a policy", "role", "description", "principals", "rules")
	if f == nil {
		return Policy{}
	}
	var p Policy
	if v := f["role"]; v == nil {
		pp.problem(n, "role is missing; name the role, as in role: dba")
	} else if s, ok := pp.scalar(v, "role"); ok {
		p.Role = s
		if problem := roleProblem(s); problem != "" {
			pp.problem(v, "%s", problem)
		}
	}
	if v := f["description"]; v != nil {
		p.Description, _ = pp.scalar(v, "description")
	}
	if v := f["principals"]; v != nil {
		for _, item := range pp.list(v, "principals") {
			switch problem := principalProblem(item.Value); {
			case problem != "":
				pp.problem(item, "%s", problem)
			case slices.Contains(p.Principals, item.Value):
				pp.problem(item, "principal %q listed twice", item.Value)
			default:
				p.Principals = append(p.Principals, item.Value)
			}
		}
	}
	if v := f["rules"]; v == nil || emptyList(v) {
		pp.problem(n, "no rules; a policy needs at least one allow or deny rule")
	} else if v.Kind != yaml.SequenceNode {
		pp.problem(v, "rules must be a list of rules, each with allow or deny and paths")
	} else {
		for _, r := range v.Content {
			p.Rules = append(p.Rules, pp.rule(r))
		}
	}
	return p
}

func (pp *policyParser) rule(n *yaml.Node) PolicyRule {
	f := pp.fields(n, "a rule", "allow", "deny", "paths")
	if f == nil {
		return PolicyRule{}
	}
	var r PolicyRule
	actions := f[EffectAllow]
	r.Effect = EffectAllow
	switch {
	case actions != nil && f[EffectDeny] != nil:
		pp.problem(n, "a rule has allow or deny, not both; write two rules")
	case f[EffectDeny] != nil:
		actions, r.Effect = f[EffectDeny], EffectDeny
	case actions == nil:
		pp.problem(n, "a rule needs allow: [actions] or deny: [actions]")
	}
	if actions != nil {
		items := pp.list(actions, r.Effect)
		if emptyList(actions) {
			pp.problem(actions, "%s lists no actions; actions are %s", r.Effect, actionList())
		}
		for _, item := range items {
			a, err := ParseAction(item.Value)
			switch {
			case err != nil:
				pp.problem(item, "%v", err)
			case slices.Contains(r.Actions, a):
				pp.problem(item, "action %q listed twice", a)
			default:
				r.Actions = append(r.Actions, a)
			}
		}
	}
	if paths := f["paths"]; paths == nil {
		pp.problem(n, "a rule needs paths: [patterns], as in paths: [/dba/**]")
	} else {
		items := pp.list(paths, "paths")
		if emptyList(paths) {
			pp.problem(paths, "paths lists no patterns")
		}
		for _, item := range items {
			_, err := ParsePattern(item.Value)
			switch {
			case err != nil:
				pp.problem(item, "%v", err)
			case slices.Contains(r.Paths, item.Value):
				pp.problem(item, "pattern %q listed twice", item.Value)
			default:
				r.Paths = append(r.Paths, item.Value)
			}
		}
	}
	return r
}

// roleProblem says what is wrong with a role name, or returns "".
func roleProblem(role string) string {
	switch {
	case role == "":
		return "role is empty; name the role, as in role: dba"
	case role == RootPrincipal:
		return `role "root" is reserved: root is a principal that may do everything, not a role`
	case !roleName.MatchString(role):
		return fmt.Sprintf("role %q: use 1 to 64 lowercase letters, digits, '_' and '-', starting with a letter or digit", role)
	}
	return ""
}

// principalProblem says what is wrong with a principal name bound to a
// role, or returns "".
func principalProblem(name string) string {
	kind, rest, ok := strings.Cut(name, ":")
	switch {
	case name == RootPrincipal:
		return "principal root needs no role: it may do everything"
	case !ok || kind == "" || rest == "":
		return fmt.Sprintf("principal %q: write <kind>:<name>, as in user:alice or app:billing", name)
	case !roleName.MatchString(kind):
		return fmt.Sprintf("principal %q: the kind before ':' uses lowercase letters, digits, '_' and '-'", name)
	case strings.IndexFunc(rest, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0:
		return fmt.Sprintf("principal %q: spaces and control characters are not allowed", name)
	case len(name) > 256:
		return fmt.Sprintf("principal %q is longer than 256 bytes", name)
	}
	return ""
}

// validate checks a policy built in code as ParsePolicy checks YAML,
// without lines.
func (p Policy) validate() error {
	var problems []error
	add := func(format string, args ...any) {
		problems = append(problems, &PolicyError{Problem: fmt.Sprintf(format, args...)})
	}
	if problem := roleProblem(p.Role); problem != "" {
		add("%s", problem)
	}
	for _, name := range p.Principals {
		if problem := principalProblem(name); problem != "" {
			add("%s", problem)
		}
	}
	if len(p.Rules) == 0 {
		add("role %s: no rules", p.Role)
	}
	for i, r := range p.Rules {
		if r.Effect != EffectAllow && r.Effect != EffectDeny {
			add("role %s rule %d: effect %q is neither allow nor deny", p.Role, i+1, r.Effect)
		}
		if len(r.Actions) == 0 || len(r.Paths) == 0 {
			add("role %s rule %d: needs actions and paths", p.Role, i+1)
		}
		for _, a := range r.Actions {
			if _, err := ParseAction(string(a)); err != nil {
				add("role %s rule %d: %v", p.Role, i+1, err)
			}
		}
		for _, s := range r.Paths {
			if _, err := ParsePattern(s); err != nil {
				add("role %s rule %d: %v", p.Role, i+1, err)
			}
		}
	}
	return errors.Join(problems...)
}

// YAML renders the policy in the canonical form ParsePolicy reads back.
func (p Policy) YAML() []byte {
	str := func(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }
	flow := func(items []string) *yaml.Node {
		n := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		for _, s := range items {
			n.Content = append(n.Content, str(s))
		}
		return n
	}
	doc := &yaml.Node{Kind: yaml.MappingNode}
	add := func(key string, v *yaml.Node) { doc.Content = append(doc.Content, str(key), v) }
	add("role", str(p.Role))
	if p.Description != "" {
		d := str(p.Description)
		// yaml.v3 writes multi-line strings as block scalars, which drop
		// leading newlines and edge spaces; quoting keeps every byte.
		if strings.ContainsAny(p.Description, "\n\r") || strings.TrimSpace(p.Description) != p.Description {
			d.Style = yaml.DoubleQuotedStyle
		}
		add("description", d)
	}
	if len(p.Principals) > 0 {
		add("principals", flow(p.Principals))
	}
	rules := &yaml.Node{Kind: yaml.SequenceNode}
	for _, r := range p.Rules {
		actions := make([]string, len(r.Actions))
		for i, a := range r.Actions {
			actions[i] = string(a)
		}
		rules.Content = append(rules.Content, &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
			str(r.Effect), flow(actions),
			str("paths"), flow(r.Paths),
		}})
	}
	add("rules", rules)
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	// Encoding a tree of string nodes into memory cannot fail.
	_ = enc.Encode(doc)
	_ = enc.Close()
	return b.Bytes()
}
