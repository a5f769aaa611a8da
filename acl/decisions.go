package acl

import (
	"strings"
	"sync"
	"sync/atomic"
)

// Bounds of the decisions one Authorizer remembers. 10,000 idle agents,
// each asking about its tree and a few keys every few seconds, ask some
// tens of thousands of (principal, action, path) triples, at a few hundred
// bytes an entry, so the count bounds the cache in use. The bytes bound a caller that asks about many long paths (an
// entry of a 1 KiB path and name holds them twice, in key and reason).
const (
	maxCachedDecisions = 100_000
	maxCachedBytes     = 64 << 20
	// entryOverhead is roughly what an entry costs beyond its strings:
	// the map's node, the boxed Decision and the string headers.
	entryOverhead = 200
)

// decisionKey is everything a decision depends on besides the policies:
// the principal's name (for {name} and bindings) and the roles its
// credential grants, the action and the path. The rest of a Principal
// (method, accessor, expiry) never changes a decision.
type decisionKey struct {
	name   string
	roles  string // the roles joined by roleSep
	nroles int
	act    Action
	path   string
}

// roleSep joins roles in a key. Role names never hold it (see
// roleProblem), and keyOf refuses roles that do, so that two lists of
// roles can never make one key.
const roleSep = "\x00"

// keyOf returns the cache key of a decision, and false when the inputs
// cannot be keyed unambiguously (a role holding roleSep).
func keyOf(p Principal, act Action, path string) (decisionKey, bool) {
	k := decisionKey{name: p.Name, nroles: len(p.Roles), act: act, path: path}
	switch len(p.Roles) {
	case 0:
	case 1:
		// One role needs no separator, and costs no allocation.
		k.roles = p.Roles[0]
	default:
		k.roles = strings.Join(p.Roles, roleSep)
		if strings.Count(k.roles, roleSep) != len(p.Roles)-1 {
			return decisionKey{}, false
		}
	}
	return k, true
}

// decisionCache remembers an Authorizer's decisions. It needs no
// invalidation: an Authorizer's policies never change, and the Engine
// builds a new Authorizer, with an empty cache, when any does.
//
// It keeps two generations of at most half the bounds each. New decisions
// go into the current one; when it is full it becomes the previous one
// and the one before is dropped. A decision found in the previous
// generation is copied into the current one, so those asked about
// regularly survive and a working set of up to the bound stays cached,
// where dropping everything at the bound would empty the cache of a
// working set near it again and again.
type decisionCache struct {
	// limit and limitBytes bound each generation.
	limit, limitBytes int64
	cur               atomic.Pointer[generation]
	prev              atomic.Pointer[generation]
	// rotate serialises rotations, so that no more than two generations
	// are ever reachable; they are rare.
	rotate sync.Mutex
}

type generation struct {
	m sync.Map // decisionKey → Decision
	// n and bytes count insertions, not distinct keys (two callers may
	// insert the same one), so they overstate the size, never understate.
	n, bytes atomic.Int64
}

// newDecisionCache returns a cache holding at most entries decisions of
// at most bytes together (as entrySize counts).
func newDecisionCache(entries, bytes int) *decisionCache {
	c := &decisionCache{limit: int64(entries / 2), limitBytes: int64(bytes / 2)}
	c.cur.Store(&generation{})
	return c
}

// load returns the decision cached for k.
func (c *decisionCache) load(k decisionKey) (Decision, bool) {
	if v, ok := c.cur.Load().m.Load(k); ok {
		return v.(Decision), true
	}
	prev := c.prev.Load()
	if prev == nil {
		return Decision{}, false
	}
	v, ok := prev.m.Load(k)
	if !ok {
		return Decision{}, false
	}
	d := v.(Decision)
	c.store(k, d) // still in use: keep it past the next rotation
	return d, true
}

// store caches d for k.
func (c *decisionCache) store(k decisionKey, d Decision) {
	// The key may hold substrings of a larger request; keep only its own
	// bytes.
	k.name, k.roles, k.path = strings.Clone(k.name), strings.Clone(k.roles), strings.Clone(k.path)
	size := entrySize(k, d)
	if size > c.limitBytes {
		return // it would never fit
	}
	for {
		g := c.cur.Load()
		if g.n.Add(1) <= c.limit && g.bytes.Add(size) <= c.limitBytes {
			g.m.Store(k, d)
			return
		}
		c.rotate.Lock()
		if c.cur.Load() == g {
			c.prev.Store(g)
			c.cur.Store(&generation{})
		}
		c.rotate.Unlock()
	}
}

// entrySize estimates the bytes an entry holds.
func entrySize(k decisionKey, d Decision) int64 {
	return int64(entryOverhead + len(k.name) + len(k.roles) + len(k.act) + len(k.path) +
		len(d.Role) + len(d.Effect) + len(d.Rule) + len(d.Pattern) + len(d.Reason))
}
