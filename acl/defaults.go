package acl

import (
	"fmt"
	"maps"
	"slices"
)

// The default policies, as an operator would write them: `graftd --dev`
// and `graft policy init` install them, and they are the examples the
// documentation points to. Patterns with {name} are quoted because YAML
// reads braces inside [...] as a mapping.
const (
	adminPolicyYAML = `role: admin
description: Operators. Every action on every path, including tokens, policies and the keyring.
rules:
  - allow: [read, list, write, delete, share, admin, rotate, issue, report]
    paths: [/**]
`
	dbaPolicyYAML = `role: dba
description: The database team owns /dba, shares values from it with applications, rotates the database credentials in it and issues from its dynamic-credential roles.
rules:
  - allow: [read, list, write, delete, share, rotate, issue]
    paths: [/dba/**]
`
	appPolicyYAML = `role: app
description: >-
  Every application, as app:<name>, reads and writes its own tree /app/<name>,
  and its graft-agents report what they run there.
  Values under /app/<name>/replicated are copies that only the replicator
  writes; the application changes them by asking their owner. It issues
  dynamic database credentials from the roles shared into it there.
rules:
  - allow: [read, list, write, delete, report]
    paths: ['/app/{name}/**']
  - allow: [issue]
    paths: ['/app/{name}/replicated/**']
  - deny: [write, delete]
    paths: ['/app/{name}/replicated/**']
`
)

// DefaultPolicyYAML returns the YAML of the default policies, by role.
func DefaultPolicyYAML() map[string][]byte {
	return map[string][]byte{
		"admin": []byte(adminPolicyYAML),
		"dba":   []byte(dbaPolicyYAML),
		"app":   []byte(appPolicyYAML),
	}
}

// DefaultPolicies returns the default policies, sorted by role: admin
// (everything), dba (its own /dba tree) and app (each application its own
// /app/<name> tree, except the replicated values in it).
func DefaultPolicies() []Policy {
	byRole := DefaultPolicyYAML()
	policies := make([]Policy, 0, len(byRole))
	for _, role := range slices.Sorted(maps.Keys(byRole)) {
		p, err := ParsePolicy(byRole[role])
		if err != nil {
			// The YAML above is constant and tested.
			panic(fmt.Sprintf("acl: default policy %s does not parse: %v", role, err))
		}
		policies = append(policies, p)
	}
	return policies
}
