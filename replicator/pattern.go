package replicator

import (
	"strings"

	"github.com/graft-sh/graft/store"
)

// Pattern destinations. A destination of the form /app/+/<rest> stands
// for /app/<name>/<rest> of every application graft knows, now and later:
// the rule copies to each application that exists when it is created, and
// to each one that appears afterwards (see Apps). The + is the application
// segment and nothing else; the rest is an ordinary path.

// appsRoot is the tree of applications; its children are their trees.
const appsRoot = "/app"

// wildcard is the segment of a pattern destination that stands for an
// application's name.
const wildcard = "+"

// isPattern reports whether dest is a pattern destination (has a + segment).
func isPattern(dest string) bool {
	return dest == wildcard || strings.HasPrefix(dest, wildcard+"/") ||
		strings.Contains(dest, "/"+wildcard+"/") || strings.HasSuffix(dest, "/"+wildcard)
}

// checkPattern returns nil if p is a well-formed pattern destination.
func checkPattern(p string) error {
	const shape = "a pattern destination is /app/+/<path>, with + standing for every application's name"
	rest, ok := strings.CutPrefix(p, appsRoot+"/"+wildcard+"/")
	if !ok || rest == "" {
		return invalid("destination %s: %s", store.ShortPath(p), shape)
	}
	if isPattern("/" + rest) {
		return invalid("destination %s: only the application segment may be +; %s", store.ShortPath(p), shape)
	}
	if _, err := store.ParsePath(expand(p, "x")); err != nil {
		return invalid("destination %s: %v", store.ShortPath(p), err)
	}
	return nil
}

// expand returns pattern p for application app.
func expand(p, app string) string {
	return appsRoot + "/" + app + strings.TrimPrefix(p, appsRoot+"/"+wildcard)
}

// overlapWild is Overlap where a + segment of either path matches any one
// segment: whether two paths, patterns or not, can name the same subtree
// (/app/+/r/x overlaps /app/a/r and /app/+/r/x/y, not /app/a/s).
func overlapWild(a, b string) bool {
	sa, sb := strings.Split(a, "/"), strings.Split(b, "/")
	if a == "/" || b == "/" {
		return true
	}
	for i := range min(len(sa), len(sb)) {
		if sa[i] != sb[i] && sa[i] != wildcard && sb[i] != wildcard {
			return false
		}
	}
	return true
}

// DestinationOverlaps reports whether p overlaps one of the rule's
// destinations, or what one of its patterns stands for in some
// application (known or not).
func (r Rule) DestinationOverlaps(p string) bool {
	for _, d := range r.Destinations {
		if Overlap(p, d) {
			return true
		}
	}
	for _, q := range r.Patterns {
		if overlapWild(p, q) {
			return true
		}
	}
	return false
}

// patternsOf splits destinations into concrete paths and patterns.
func patternsOf(dests []string) (concrete, patterns []string) {
	for _, d := range dests {
		if isPattern(d) {
			patterns = append(patterns, d)
		} else {
			concrete = append(concrete, d)
		}
	}
	return concrete, patterns
}

// For returns the destinations the rule's patterns stand for in app.
func (r Rule) For(app string) []string {
	out := make([]string, len(r.Patterns))
	for i, p := range r.Patterns {
		out[i] = expand(p, app)
	}
	return out
}
