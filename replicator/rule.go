package replicator

import (
	"crypto/rand"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/store"
)

// Rule is a replication rule: the source path and every path below it
// appear at the same relative paths under each destination.
type Rule struct {
	ID     string `json:"id"`
	Source string `json:"source"`
	// Destinations are concrete paths: those given, and what Patterns
	// stand for in every application known.
	Destinations []string `json:"destinations"`
	// Patterns are the pattern destinations given (/app/+/...).
	Patterns []string  `json:"patterns,omitempty"`
	OnDelete string    `json:"on_delete"`
	Author   string    `json:"author"`
	Created  time.Time `json:"created"`
}

// What a source deletion does to its copies.
const (
	OnDeleteDelete = "delete"
	OnDeleteRetain = "retain"
)

// DefaultDestinationPattern is where destinations may lie unless configured
// otherwise: the `replicated` subtree of an application.
const DefaultDestinationPattern = "/app/+/replicated/**"

// NewRuleID returns a fresh rule id such as r-5kq2m7xw3a.
func NewRuleID() string {
	const alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
	b := make([]byte, 10)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "r-" + string(b)
}

// Overlap reports whether a and b are the same path or one lies below the
// other, segment by segment: /app/a overlaps /app/a/x, not /app/a-x.
func Overlap(a, b string) bool { return store.Under(a, b) || store.Under(b, a) }

// Covers reports whether p is the rule's source or lies below it.
func (r Rule) Covers(p string) bool { return store.Under(p, r.Source) }

// Map returns where source path p appears under destination dest.
func (r Rule) Map(p, dest string) (string, bool) {
	if !r.Covers(p) {
		return "", false
	}
	return dest + strings.TrimPrefix(p, r.Source), true
}

func invalid(format string, args ...any) error {
	return &RuleError{Msg: fmt.Sprintf(format, args...)}
}

func conflict(rule string, others []string, format string, args ...any) error {
	return &RuleError{Rule: rule, Others: others, Msg: fmt.Sprintf(format, args...), conflict: true}
}

// Validator checks new rules.
type Validator struct {
	patterns []acl.Pattern
}

// NewValidator returns a Validator allowing destinations that match one of
// patterns (default DefaultDestinationPattern).
func NewValidator(patterns []string) (*Validator, error) {
	if len(patterns) == 0 {
		patterns = []string{DefaultDestinationPattern}
	}
	v := &Validator{}
	for _, s := range patterns {
		if strings.Contains(s, "{") {
			return nil, fmt.Errorf("destination pattern %q: {name} templates are for policies; use + for one segment", s)
		}
		p, err := acl.ParsePattern(s)
		if err != nil {
			return nil, fmt.Errorf("destination pattern %q: %w", s, err)
		}
		v.patterns = append(v.patterns, p)
	}
	return v, nil
}

func (v *Validator) allowed(dest string) bool {
	for _, p := range v.patterns {
		if p.Match(dest, acl.Principal{}) {
			return true
		}
	}
	return false
}

func (v *Validator) patternList() string {
	s := make([]string, len(v.patterns))
	for i, p := range v.patterns {
		s[i] = p.String()
	}
	return strings.Join(s, " or ")
}

// Check returns nil if r may join existing, or a *RuleError naming the
// first problem and what to do about it.
func (v *Validator) Check(existing []Rule, r Rule) error {
	if _, err := store.ParsePath(r.Source); err != nil {
		return invalid("source %s: %v", r.Source, err)
	}
	if len(r.Destinations) == 0 && len(r.Patterns) == 0 {
		return invalid("rule for %s has no destination: give one or more with --to", r.Source)
	}
	if err := v.checkPatterns(existing, r); err != nil {
		return err
	}
	switch r.OnDelete {
	case "", OnDeleteDelete, OnDeleteRetain:
	default:
		return invalid("on-delete %q: want %q or %q", r.OnDelete, OnDeleteDelete, OnDeleteRetain)
	}
	// Overlaps are found through maps of paths and of their ancestors, not
	// pair by pair: a rule may have a hundred thousand destinations.
	seen := make(map[string]bool, len(r.Destinations))
	below := map[string]string{} // ancestor of an earlier destination → that destination
	for _, d := range r.Destinations {
		if _, err := store.ParsePath(d); err != nil {
			return invalid("destination %s: %v", d, err)
		}
		if seen[d] {
			return invalid("destination %s is given twice", d)
		}
		for _, a := range ancestors(d)[1:] {
			if seen[a] {
				return invalid("destinations %s and %s overlap: a path can have only one source", a, d)
			}
		}
		if e, ok := below[d]; ok {
			return invalid("destinations %s and %s overlap: a path can have only one source", e, d)
		}
		seen[d] = true
		for _, a := range ancestors(d)[1:] {
			if _, ok := below[a]; !ok {
				below[a] = d
			}
		}
		if !v.allowed(d) {
			return invalid("destination %s is not a replication destination: destinations must match %s (a `replicated` subtree of an application)", d, v.patternList())
		}
		if Overlap(r.Source, d) {
			return invalid("source %s and destination %s overlap: a rule cannot copy a tree into itself", r.Source, d)
		}
	}
	type owner struct {
		rule *Rule
		dest string
	}
	taken := map[string]owner{}      // existing destinations
	takenBelow := map[string]owner{} // ancestors of existing destinations
	for i := range existing {
		x := &existing[i]
		for _, xd := range x.Destinations {
			taken[xd] = owner{x, xd}
			for _, a := range ancestors(xd)[1:] {
				if _, ok := takenBelow[a]; !ok {
					takenBelow[a] = owner{x, xd}
				}
			}
		}
	}
	for _, d := range r.Destinations {
		o, ok := takenBelow[d]
		for _, a := range ancestors(d) {
			if t, hit := taken[a]; hit {
				o, ok = t, true
				break
			}
		}
		if ok {
			x := o.rule
			return conflict(x.ID, []string{o.dest, x.Source}, "destination %s overlaps destination %s of rule %s (source %s): a destination belongs to one rule; unshare %s first or choose another destination", d, o.dest, x.ID, x.Source, x.ID)
		}
	}
	if chain := cycle(existing, r); chain != nil {
		return conflict("", chain, "rule would make a cycle: %s; a value must not be copied back into its own source", strings.Join(chain, " → "))
	}
	return nil
}

// checkPatterns checks a rule's pattern destinations as a whole, for
// every application there is or will be: their shape, that they are
// replication destinations, and that none overlaps the source, another
// destination of the rule, or any destination or pattern of another rule.
// r.Destinations are the concrete destinations given, not yet what the
// patterns stand for (those follow from the checked patterns).
func (v *Validator) checkPatterns(existing []Rule, r Rule) error {
	if len(r.Patterns) == 0 && !patternsIn(existing) {
		return nil
	}
	for i, p := range r.Patterns {
		if err := checkPattern(p); err != nil {
			return err
		}
		if !v.allowed(expand(p, "x")) {
			return invalid("destination %s is not a replication destination: destinations must match %s (a `replicated` subtree of an application)", p, v.patternList())
		}
		if overlapWild(r.Source, p) {
			return invalid("source %s and destination %s overlap: a rule cannot copy a tree into itself", r.Source, p)
		}
		for _, q := range r.Patterns[:i] {
			if overlapWild(p, q) {
				return invalid("destinations %s and %s overlap: a path can have only one source", q, p)
			}
		}
		for _, d := range r.Destinations {
			if overlapWild(p, d) {
				return invalid("destinations %s and %s overlap: the pattern already stands for every application, and a path can have only one source", p, d)
			}
		}
	}
	for i := range existing {
		x := &existing[i]
		for _, p := range r.Patterns {
			for _, xd := range append(slices.Clip(x.Patterns), x.Destinations...) {
				if overlapWild(p, xd) {
					return conflict(x.ID, []string{xd, x.Source}, "destination %s overlaps destination %s of rule %s (source %s): a destination belongs to one rule; unshare %s first or choose another destination", p, xd, x.ID, x.Source, x.ID)
				}
			}
		}
		for _, xp := range x.Patterns {
			for _, d := range r.Destinations {
				if overlapWild(xp, d) {
					return conflict(x.ID, []string{xp, x.Source}, "destination %s overlaps destination %s of rule %s (source %s), which stands for every application: a destination belongs to one rule; unshare %s first or choose another destination", d, xp, x.ID, x.Source, x.ID)
				}
			}
		}
	}
	return nil
}

func patternsIn(rules []Rule) bool {
	for _, r := range rules {
		if len(r.Patterns) > 0 {
			return true
		}
	}
	return false
}

// feeds reports whether rule a writes into rule b's source: one of a's
// destinations, or what one of its patterns stands for in some
// application, overlaps b's source.
func feeds(a, b Rule) (string, bool) {
	for _, d := range a.Destinations {
		if Overlap(d, b.Source) {
			return d, true
		}
	}
	for _, p := range a.Patterns {
		if overlapWild(p, b.Source) {
			return p, true
		}
	}
	return "", false
}

// cycle returns the chain of paths that adding r closes into a loop, or
// nil: a depth-first search from r along "feeds" edges back to r.
func cycle(existing []Rule, r Rule) []string {
	all := append(slices.Clone(existing), r)
	seen := map[int]bool{}
	var path []string
	var visit func(i int) bool
	visit = func(i int) bool {
		for j, next := range all {
			d, ok := feeds(all[i], next)
			if !ok {
				continue
			}
			label := d
			if all[i].ID != "" && all[i].ID != r.ID {
				label += " (" + all[i].ID + ")"
			}
			path = append(path, label)
			if j == len(all)-1 {
				return true
			}
			if !seen[j] {
				seen[j] = true
				if visit(j) {
					return true
				}
			}
			path = path[:len(path)-1]
		}
		return false
	}
	if visit(len(all) - 1) {
		return append([]string{r.Source}, append(path, r.Source)...)
	}
	return nil
}

// Index finds rules by path.
type Index struct {
	rules    []Rule
	bySource map[string][]int
	byDest   map[string]int
}

// NewIndex indexes rules.
func NewIndex(rules []Rule) *Index {
	ix := &Index{rules: slices.Clone(rules), bySource: map[string][]int{}, byDest: map[string]int{}}
	slices.SortFunc(ix.rules, func(a, b Rule) int { return strings.Compare(a.ID, b.ID) })
	for i, r := range ix.rules {
		ix.bySource[r.Source] = append(ix.bySource[r.Source], i)
		for _, d := range r.Destinations {
			ix.byDest[d] = i
		}
	}
	return ix
}

// ancestors returns p and its ancestors, nearest first.
func ancestors(p string) []string {
	out := []string{p}
	for {
		i := strings.LastIndexByte(p, '/')
		if i <= 0 {
			return out
		}
		p = p[:i]
		out = append(out, p)
	}
}

// BySource returns the rules whose source is p or an ancestor of p.
func (ix *Index) BySource(p string) []Rule {
	var out []Rule
	for _, a := range ancestors(p) {
		for _, i := range ix.bySource[a] {
			out = append(out, ix.rules[i])
		}
	}
	return out
}

// ByDestination returns the rule owning p and the destination holding it.
func (ix *Index) ByDestination(p string) (Rule, string, bool) {
	for _, a := range ancestors(p) {
		if i, ok := ix.byDest[a]; ok {
			return ix.rules[i], a, true
		}
	}
	return Rule{}, "", false
}

// Rules returns every rule, by id.
func (ix *Index) Rules() []Rule { return slices.Clone(ix.rules) }

// Dependents returns the rules whose source overlaps p.
func (ix *Index) Dependents(p string) []Rule {
	var out []Rule
	for _, r := range ix.rules {
		if Overlap(p, r.Source) {
			out = append(out, r)
		}
	}
	return out
}
