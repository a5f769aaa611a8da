package store

import "fmt"

// The key layout. Every key graft writes lives under Config.Prefix
// (default /graft/) and is named here; no other file builds one.
//
//	kv<path>               the current version of a value (record, sealed)
//	hist<path>@<rev>       a previous version, rev as 19 digits
//	owned<dest root>       the rule that owns a destination subtree
//	applied<dest path>     the source revision a destination was last written from
//	audit/hmac-key         the cluster's audit HMAC key, sealed
//	ping                   read (never written) to check for a quorum
//	<space><key>           a typed record (Records) in one of the spaces below
//	<election>/<lease>     a candidate in one of the elections below
//
// `@` cannot occur in a path, so the history of /a never mixes with that
// of /a/b; kv, hist, owned and applied are followed directly by the path,
// so each is one contiguous range per subtree.
const (
	kvBase       = "kv"
	histBase     = "hist"
	ownedBase    = "owned"
	appliedBase  = "applied"
	auditKeyBase = "audit/hmac-key"
	pingKey      = "ping"
)

// Space is a sub-prefix holding one kind of typed record. New domain
// state gets a Space here, not new methods on Store.
type Space string

// The record spaces, by owner.
const (
	// SpaceTokens holds acl token records by SHA-256 hash.
	SpaceTokens Space = "tokens/"
	// SpacePolicies holds acl policies by role.
	SpacePolicies Space = "acl/policies/"
	// SpaceRules holds replication rules by id, without their
	// destinations when they have many.
	SpaceRules Space = "rules/"
	// SpaceRuleDestinations holds the destinations of wide rules, in
	// chunks keyed <rule id>/<chunk number>.
	SpaceRuleDestinations Space = "ruledests/"
	// SpaceRuleApps holds what a rule with pattern destinations
	// (/app/+/...) added for each application that appeared after it was
	// created, keyed <rule id>/<app name>.
	SpaceRuleApps Space = "ruleapps/"
	// SpaceApps holds the applications graft knows, by name: an
	// application appears when an identity for app:<name> is created or
	// first authenticates.
	SpaceApps Space = "apps/"
	// SpaceAgents holds graft-agents' reports, keyed <app>/<agent id>,
	// each bound to a lease its agent renews by reporting.
	SpaceAgents Space = "agents/"
	// SpaceRotations holds blue/green rotations by name: spec, state,
	// and the sealed passwords of a run in progress.
	SpaceRotations Space = "rotations/"
	// SpaceRotationClaims holds, by rotation name, the lease-bound claim
	// of the rotator that runs it.
	SpaceRotationClaims Space = "rotationclaims/"
	// SpaceRotationRuns holds rotations' finished runs, keyed
	// <name>/<run, 19 digits>.
	SpaceRotationRuns Space = "rotationruns/"
	// SpaceParked holds, by source path, the last change the replicator
	// gave up on.
	SpaceParked Space = "parked"
	// SpaceRelay holds the relay's cursor (key "cursor"): the last
	// revision published as a change event.
	SpaceRelay Space = "relay/"
	// SpaceReconcile holds requests for a full reconcile pass (key
	// "request").
	SpaceReconcile Space = "reconcile/"
	// SpaceUnshares holds, by rule id, an unshare whose prune has not
	// finished: written before the rule is dropped, removed after.
	SpaceUnshares Space = "unshares/"
	// SpaceLeases holds dynamic-credential leases by id.
	SpaceLeases Space = "leases/"
	// SpaceLeaseDue indexes leases by when the reaper next looks at
	// them, keyed <unix nanoseconds, 19 digits>/<lease id>.
	SpaceLeaseDue Space = "leasedue/"
	// SpaceLeaseRoles indexes leases by role, keyed <role path>@<lease id>.
	SpaceLeaseRoles Space = "leaseroles/"
	// SpaceLeasePrincipals indexes leases by holder, keyed
	// <principal>|<role path>@<lease id>.
	SpaceLeasePrincipals Space = "leaseprincipals/"
	// SpaceLeaseReaper holds the reaper's switch (key "paused").
	SpaceLeaseReaper Space = "leasereaper/"
)

// Election is the prefix one leader election campaigns under.
type Election string

// The elections: jobs that must have one runner among graftd replicas.
const (
	ElectionRelay       Election = "relay/leader"
	ElectionReconciler  Election = "reconciler/leader"
	ElectionLeaseReaper Election = "leasereaper/leader"
)

func (s *Store) key(base, path string) string { return s.prefix + base + path }

func (s *Store) kvKey(path string) string { return s.key(kvBase, path) }

func (s *Store) histPrefix(path string) string { return s.key(histBase, path) + "@" }

func (s *Store) histKey(path string, rev int64) string {
	return fmt.Sprintf("%s%019d", s.histPrefix(path), rev)
}

func (s *Store) ownedKey(root string) string   { return s.key(ownedBase, root) }
func (s *Store) appliedKey(path string) string { return s.key(appliedBase, path) }
func (s *Store) spaceKey(sp Space, key string) string {
	return s.prefix + string(sp) + key
}
func (s *Store) electionKey(e Election) string { return s.prefix + string(e) }
