package acl

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/graft-sh/graft/store"
)

// Wildcards and the principal template a pattern segment may be.
const (
	wildOne      = "+"
	wildRest     = "**"
	nameTemplate = "{name}"
)

// PatternError says why a pattern does not parse. It wraps
// ErrInvalidPattern.
type PatternError struct {
	Pattern string
	Reason  string
}

func (e *PatternError) Error() string {
	return fmt.Sprintf("pattern %q: %s", e.Pattern, e.Reason)
}

func (e *PatternError) Unwrap() error { return ErrInvalidPattern }

type segmentKind uint8

const (
	segLiteral segmentKind = iota
	segOne                 // "+": exactly one segment
	segName                // "{name}": the principal's name
)

type patternSegment struct {
	kind    segmentKind
	literal string
}

// Pattern is a parsed path pattern such as /dba/**, /app/+/config or
// /app/{name}/**. It matches whole segments only, so /dba/** never matches
// /dba-evil/x. The zero Pattern matches nothing.
type Pattern struct {
	raw      string
	segments []patternSegment
	// rest is set by a trailing "**": any number of further segments,
	// including none.
	rest bool
	// templated is set when a segment is {name}; only then does a match
	// depend on the principal.
	templated bool
}

// ParsePattern parses a path pattern: a canonical path (see
// store.ParsePath) in which a whole segment may instead be "+" (exactly one
// segment), "{name}" (the principal's name) or, as the last segment only,
// "**" (zero or more segments). "/**" matches every path including the root
// "/", and "/" matches only the root.
func ParsePattern(s string) (Pattern, error) {
	bad := func(format string, args ...any) (Pattern, error) {
		return Pattern{}, &PatternError{Pattern: s, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case s == "":
		return bad("empty; patterns look like /dba/** or /app/{name}/**")
	case len(s) > store.MaxPathLength:
		return bad("longer than %d bytes", store.MaxPathLength)
	case s[0] != '/':
		return bad("must start with /")
	case s == "/":
		return Pattern{raw: s}, nil
	case s[len(s)-1] == '/':
		return bad("must not end with /; use /** to match a subtree")
	}
	p := Pattern{raw: s}
	rest := s[1:]
	for rest != "" {
		seg, after, _ := strings.Cut(rest, "/")
		rest = after
		if p.rest {
			return bad("** must be the last segment")
		}
		switch seg {
		case wildRest:
			p.rest = true
		case wildOne:
			p.segments = append(p.segments, patternSegment{kind: segOne})
		case nameTemplate:
			p.segments = append(p.segments, patternSegment{kind: segName})
			p.templated = true
		default:
			if reason := segmentProblem(seg); reason != "" {
				return bad("%s", reason)
			}
			p.segments = append(p.segments, patternSegment{kind: segLiteral, literal: seg})
		}
	}
	if n := len(p.segments); n > store.MaxPathDepth {
		return bad("deeper than %d segments", store.MaxPathDepth)
	}
	return p, nil
}

// segmentProblem says what is wrong with a literal pattern segment, or
// returns "" if it is a valid path segment.
func segmentProblem(seg string) string {
	switch {
	case seg == "":
		return "empty segment (doubled /)"
	case seg == "." || seg == "..":
		return fmt.Sprintf("segment %q is not allowed", seg)
	case seg == "*":
		return `"*" is not a wildcard; use + for exactly one segment or a final ** for any number`
	case strings.Contains(seg, wildRest):
		return fmt.Sprintf("segment %q: ** must be a whole segment", seg)
	case strings.Contains(seg, nameTemplate):
		return fmt.Sprintf("segment %q: {name} must be a whole segment", seg)
	case strings.ContainsAny(seg, "{}"):
		return fmt.Sprintf("segment %q: the only template is {name}", seg)
	case strings.Contains(seg, wildOne):
		return fmt.Sprintf("segment %q: + must be a whole segment", seg)
	case len(seg) > store.MaxSegmentBytes:
		return fmt.Sprintf("segment longer than %d bytes", store.MaxSegmentBytes)
	}
	for i := 0; i < len(seg); i++ {
		if !pathSegmentByte(seg[i]) {
			_, size := utf8.DecodeRuneInString(seg[i:])
			return fmt.Sprintf("character %q in segment %q is not allowed; use letters, digits, '.', '_' and '-', or a whole-segment +, ** or {name}", seg[i:i+size], seg)
		}
	}
	return ""
}

// String returns the pattern as written.
func (p Pattern) String() string { return p.raw }

// Match reports whether the canonical path (see store.ParsePrefix) matches
// the pattern for principal. A {name} segment matches the principal's name
// after its kind ("message-processor" for "app:message-processor"), and
// only if that name is itself a valid path segment: a name holding "/" or
// ".." can never stretch a template over several segments or climb out of
// one. Non-canonical paths match nothing.
func (p Pattern) Match(path string, principal Principal) bool {
	name, ok := p.prepare(path, principal)
	if !ok {
		return false
	}
	rest := path[1:] // "" for the root "/"
	for _, s := range p.segments {
		if rest == "" {
			return false
		}
		seg, after, _ := strings.Cut(rest, "/")
		switch s.kind {
		case segLiteral:
			if seg != s.literal {
				return false
			}
		case segName:
			if seg != name {
				return false
			}
		case segOne:
			if seg == "" {
				return false
			}
		}
		rest = after
	}
	return p.rest || rest == ""
}

// MatchesBelow reports whether some path at or below prefix (canonical)
// could match the pattern for principal: whether the pattern reaches into
// the subtree at all.
func (p Pattern) MatchesBelow(prefix string, principal Principal) bool {
	name, ok := p.prepare(prefix, principal)
	if !ok {
		return false
	}
	rest := prefix[1:]
	for _, s := range p.segments {
		if rest == "" {
			return true // the pattern goes on below the prefix
		}
		seg, after, _ := strings.Cut(rest, "/")
		switch {
		case s.kind == segLiteral && seg != s.literal, s.kind == segName && seg != name:
			return false
		}
		rest = after
	}
	// The pattern ends at or above the prefix's depth.
	return p.rest || rest == ""
}

// prepare checks that p can match path at all and returns the name a
// {name} segment stands for (see Match).
func (p Pattern) prepare(path string, principal Principal) (name string, ok bool) {
	if p.raw == "" || path == "" || path[0] != '/' {
		return "", false
	}
	if p.templated {
		name = templateName(principal.Name)
		if !isPathSegment(name) {
			return "", false
		}
	}
	return name, true
}

// templateName is the part of a principal's name that fills {name}: what
// follows the kind, or the whole name when it has none.
func templateName(principal string) string {
	if _, name, ok := strings.Cut(principal, ":"); ok {
		return name
	}
	return principal
}

// isPathSegment reports whether s is one valid path segment.
func isPathSegment(s string) bool {
	if s == "" || s == "." || s == ".." || len(s) > store.MaxSegmentBytes {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !pathSegmentByte(s[i]) {
			return false
		}
	}
	return true
}

// pathSegmentByte mirrors the store's path alphabet.
func pathSegmentByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

// Stem is the deepest path every match of the pattern lies at or below,
// for principal: its leading segments up to the first wildcard, with
// {name} filled in. ok is false when the pattern can match nothing for
// principal (a template whose name is not a path segment).
func (p Pattern) Stem(principal Principal) (stem string, ok bool) {
	name, ok := p.prepare("/", principal)
	if !ok {
		return "", false
	}
	var b strings.Builder
	for _, s := range p.segments {
		switch s.kind {
		case segLiteral:
			b.WriteString("/" + s.literal)
		case segName:
			b.WriteString("/" + name)
		default:
			return stemOrRoot(b.String()), true
		}
	}
	return stemOrRoot(b.String()), true
}

func stemOrRoot(s string) string {
	if s == "" {
		return "/"
	}
	return s
}
