package acl

import (
	"errors"
	"strings"
	"testing"

	"github.com/graft-sh/graft/store"
)

func TestParsePattern(t *testing.T) {
	valid := []string{
		"/", "/**", "/dba/**", "/dba", "/app/+/config", "/app/{name}/**", "/app/{name}",
		"/+", "/+/+/**", "/a.b/c_d/e-f/G9", "/app/{name}/+/{name}",
	}
	for _, s := range valid {
		p, err := ParsePattern(s)
		if err != nil {
			t.Errorf("ParsePattern(%q) = %v, want ok", s, err)
			continue
		}
		if got := p.String(); got != s {
			t.Errorf("ParsePattern(%q).String() = %q", s, got)
		}
	}

	invalid := []struct{ in, want string }{
		{"", "empty"},
		{"dba/**", "must start with /"},
		{"/dba/", "must not end with /"},
		{"/dba//x", "empty segment"},
		{"/dba/**/x", "** must be the last segment"},
		{"/**/**", "** must be the last segment"},
		{"/dba/x**", `segment "x**": ** must be a whole segment`},
		{"/dba/*", `"*" is not a wildcard`},
		{"/dba/a*b", `character "*" in segment "a*b"`},
		{"/app/x{name}", `segment "x{name}": {name} must be a whole segment`},
		{"/app/{user}", "the only template is {name}"},
		{"/app/{name", "the only template is {name}"},
		{"/app/a+", `segment "a+": + must be a whole segment`},
		{"/app/..", `segment ".." is not allowed`},
		{"/app/./x", `segment "." is not allowed`},
		{"/app/é", `character "é"`},
		{"/app/a b", `character " "`},
		{"/" + strings.Repeat("a", store.MaxSegmentBytes+1), "segment longer than"},
		{strings.Repeat("/a", store.MaxPathDepth+1), "deeper than"},
		{"/" + strings.Repeat("a/", store.MaxPathLength/2) + "a", "longer than"},
	}
	for _, tt := range invalid {
		_, err := ParsePattern(tt.in)
		if err == nil {
			t.Errorf("ParsePattern(%q) = ok, want error containing %q", tt.in, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParsePattern(%q) = %q, want it to contain %q", tt.in, err, tt.want)
		}
		if !errors.Is(err, ErrInvalidPattern) {
			t.Errorf("ParsePattern(%q) error %v does not wrap ErrInvalidPattern", tt.in, err)
		}
	}
}

func TestPatternMatch(t *testing.T) {
	mp := Principal{Name: "app:message-processor"}
	tests := []struct {
		pattern   string
		path      string
		principal Principal
		want      bool
	}{
		{"/**", "/", mp, true},
		{"/**", "/anything/at/all", mp, true},
		{"/", "/", mp, true},
		{"/", "/a", mp, false},
		{"/dba/**", "/dba", mp, true},
		{"/dba/**", "/dba/x", mp, true},
		{"/dba/**", "/dba/x/y/z", mp, true},
		{"/dba/**", "/", mp, false},
		// Prefix confusion: segments, not strings.
		{"/dba/**", "/dba-evil/x", mp, false},
		{"/dba/**", "/dbax", mp, false},
		{"/dba/**", "/db", mp, false},
		{"/dba", "/dba/x", mp, false},
		{"/dba", "/dba", mp, true},
		// Case matters: paths are case-sensitive keys.
		{"/app/**", "/App/x", mp, false},
		{"/App/**", "/app/x", mp, false},
		{"/dba/**", "/DBA/x", mp, false},
		// One segment.
		{"/app/+/config", "/app/x/config", mp, true},
		{"/app/+/config", "/app/config", mp, false},
		{"/app/+/config", "/app/x/y/config", mp, false},
		{"/app/+/config", "/app/x/config/y", mp, false},
		{"/app/+", "/app", mp, false},
		{"/+", "/", mp, false},
		// The principal template.
		{"/app/{name}/**", "/app/message-processor", mp, true},
		{"/app/{name}/**", "/app/message-processor/config/db", mp, true},
		{"/app/{name}/**", "/app/message-processor-evil/x", mp, false},
		{"/app/{name}/**", "/app/message/x", mp, false},
		{"/app/{name}/**", "/app/other/x", mp, false},
		{"/app/{name}/**", "/app/Message-Processor/x", mp, false},
		{"/app/{name}/**", "/app/app:message-processor/x", mp, false},
		{"/app/{name}/x", "/app/message-processor/x", mp, true},
		{"/app/{name}/{name}", "/app/message-processor/message-processor", mp, true},
		{"/app/{name}/{name}", "/app/message-processor/other", mp, false},
		// {name} is what follows the first ":", or the whole name.
		{"/app/{name}/**", "/app/billing/x", Principal{Name: "billing"}, true},
		{"/app/{name}/**", "/app/b:c/x", Principal{Name: "app:b:c"}, false},
		// {name} abuse: a name that is not one segment matches nothing.
		{"/app/{name}/**", "/app/x/y/z", Principal{Name: "app:x/y"}, false},
		{"/app/{name}/**", "/app/x/y", Principal{Name: "app:x/y"}, false},
		{"/app/{name}/**", "/dba/x", Principal{Name: "app:../../dba"}, false},
		{"/app/{name}/**", "/app/../x", Principal{Name: "app:.."}, false},
		{"/app/{name}/**", "/app/./x", Principal{Name: "app:."}, false},
		{"/app/{name}/**", "/app", Principal{Name: "app:"}, false},
		{"/app/{name}/**", "/app/x", Principal{Name: "app:"}, false},
		{"/app/{name}/**", "/app/x", Principal{}, false},
		{"/app/{name}/**", "/app/**/x", Principal{Name: "app:**"}, false},
		{"/app/{name}/**", "/app/+/x", Principal{Name: "app:+"}, false},
		{"/app/{name}/**", "/app/{name}/x", Principal{Name: "app:{name}"}, false},
		{"/app/{name}/**", "/app/ x", Principal{Name: "app: x"}, false},
		// A literal never matches a wildcard-looking path segment.
		{"/app/x", "/app/+", mp, false},
		// Non-canonical paths match nothing.
		{"/**", "", mp, false},
		{"/**", "dba", mp, false},
	}
	for _, tt := range tests {
		p, err := ParsePattern(tt.pattern)
		if err != nil {
			t.Fatalf("ParsePattern(%q): %v", tt.pattern, err)
		}
		if got := p.Match(tt.path, tt.principal); got != tt.want {
			t.Errorf("%q.Match(%q, %q) = %v, want %v", tt.pattern, tt.path, tt.principal.Name, got, tt.want)
		}
	}
}

func TestZeroPatternMatchesNothing(t *testing.T) {
	var p Pattern
	for _, path := range []string{"/", "/a", ""} {
		if p.Match(path, Principal{Name: "app:a"}) {
			t.Errorf("zero Pattern matches %q", path)
		}
	}
}

// refValidPattern and refMatch are a reference written independently of
// Pattern, the obvious way: split into segments and recurse. The fuzz test
// holds the real matcher to it.
func refValidPattern(s string) bool {
	if s == "/" {
		return true
	}
	if !strings.HasPrefix(s, "/") {
		return false
	}
	segs := strings.Split(s[1:], "/")
	if len(segs) > store.MaxPathDepth+1 || len(s) > store.MaxPathLength {
		return false
	}
	literals := 0
	for i, seg := range segs {
		switch seg {
		case "**":
			if i != len(segs)-1 {
				return false
			}
			continue
		case "+", "{name}":
		default:
			if _, err := store.ParsePath("/" + seg); err != nil {
				return false
			}
		}
		literals++
	}
	return literals <= store.MaxPathDepth
}

func refMatch(pattern, path, principal string) bool {
	split := func(s string) []string {
		if s == "/" {
			return nil
		}
		return strings.Split(strings.TrimPrefix(s, "/"), "/")
	}
	name := principal
	if i := strings.Index(principal, ":"); i >= 0 {
		name = principal[i+1:]
	}
	_, err := store.ParsePath("/" + name)
	nameOK := err == nil && !strings.Contains(name, "/")
	ps, xs := split(pattern), split(path)
	var match func(ps, xs []string) bool
	match = func(ps, xs []string) bool {
		if len(ps) == 0 {
			return len(xs) == 0
		}
		switch ps[0] {
		case "**":
			return match(ps[1:], xs) || len(xs) > 0 && match(ps, xs[1:])
		case "+":
			return len(xs) > 0 && match(ps[1:], xs[1:])
		case "{name}":
			return nameOK && len(xs) > 0 && xs[0] == name && match(ps[1:], xs[1:])
		}
		return len(xs) > 0 && xs[0] == ps[0] && match(ps[1:], xs[1:])
	}
	return match(ps, xs)
}

func FuzzPatternMatch(f *testing.F) {
	seeds := []struct{ pattern, path, principal string }{
		{"/**", "/", "app:a"},
		{"/dba/**", "/dba", "user:alice"},
		{"/dba/**", "/dba-evil/x", "user:alice"},
		{"/dba/**", "/dbax", "user:alice"},
		{"/app/{name}/**", "/app/message-processor/config/db", "app:message-processor"},
		{"/app/{name}/**", "/app/message-processor-evil/x", "app:message-processor"},
		{"/app/{name}/**", "/app/x/y", "app:x/y"},
		{"/app/{name}/**", "/dba/x", "app:../dba"},
		{"/app/{name}/replicated/**", "/app/a/replicated/x", "a"},
		{"/app/+/config", "/app/x/config", ""},
		{"/app/+/+/**", "/app/x", "app:x"},
		{"/App/**", "/app/x", "app:x"},
		{"/a/**/b", "/a/x/b", "app:x"},
		{"/a/{name}{name}", "/a/xx", "app:x"},
		{"/", "/", "root"},
	}
	for _, s := range seeds {
		f.Add(s.pattern, s.path, s.principal)
	}
	f.Fuzz(func(t *testing.T, pattern, path, principal string) {
		p, err := ParsePattern(pattern)
		if (err == nil) != refValidPattern(pattern) {
			t.Fatalf("ParsePattern(%q) error = %v, but the reference says valid = %v", pattern, err, refValidPattern(pattern))
		}
		pr := Principal{Name: principal}
		if err != nil {
			if p.Match(path, pr) {
				t.Fatalf("the zero Pattern from a failed parse matches %q", path)
			}
			return
		}
		got := p.Match(path, pr) // must not panic, canonical or not
		if _, err := store.ParsePrefix(path); err != nil {
			return // Match is defined on canonical paths only
		}
		if want := refMatch(pattern, path, principal); got != want {
			t.Fatalf("%q.Match(%q, %q) = %v, reference says %v", pattern, path, principal, got, want)
		}
	})
}

func BenchmarkPatternMatch(b *testing.B) {
	p, err := ParsePattern("/app/{name}/replicated/**")
	if err != nil {
		b.Fatal(err)
	}
	pr := Principal{Name: "app:message-processor"}
	for b.Loop() {
		p.Match("/app/message-processor/replicated/mongo/password", pr)
	}
}

func TestPatternMatchesBelow(t *testing.T) {
	mp := Principal{Name: "app:mp"}
	tests := []struct {
		pattern, prefix string
		want            bool
	}{
		{"/dba/**", "/", true},
		{"/dba/**", "/dba", true},
		{"/dba/**", "/dba/x/y", true},
		{"/dba/**", "/app", false},
		{"/dba/**", "/dba-evil", false},
		{"/app/{name}/**", "/app", true},
		{"/app/{name}/**", "/app/mp/x", true},
		{"/app/{name}/**", "/app/other", false},
		{"/app/+/config", "/app", true},
		{"/app/+/config", "/app/x/config", true},
		{"/app/+/config", "/app/x/config/deeper", false},
		{"/app/+/config", "/app/x/other", false},
		{"/x", "/x", true},
		{"/x", "/x/y", false},
		{"/", "/", true},
		{"/", "/x", false},
	}
	for _, tt := range tests {
		p, err := ParsePattern(tt.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.MatchesBelow(tt.prefix, mp); got != tt.want {
			t.Errorf("%s.MatchesBelow(%s) = %v, want %v", tt.pattern, tt.prefix, got, tt.want)
		}
	}
}
