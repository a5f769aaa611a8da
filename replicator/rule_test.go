package replicator

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func rule(id, source string, dests ...string) Rule {
	return Rule{ID: id, Source: source, Destinations: dests}
}

func TestCheck(t *testing.T) {
	v, err := NewValidator([]string{DefaultDestinationPattern, "/shared/**"})
	if err != nil {
		t.Fatal(err)
	}
	existing := []Rule{
		rule("r-1", "/dba/mp", "/app/mp/replicated/mongo"),
		rule("r-2", "/shared/p", "/shared/q"),
		rule("r-3", "/shared/q", "/shared/r"),
	}
	tests := []struct {
		name     string
		r        Rule
		conflict bool   // ErrRuleConflict rather than ErrInvalidRule
		want     string // "" for allowed
	}{
		{"single key", rule("n", "/dba/mp/password", "/app/a/replicated/pw"), false, ""},
		{"fan-out", rule("n", "/shared/dd", "/app/a/replicated/dd", "/app/b/replicated/dd"), false, ""},
		{"chain into an existing source", rule("n", "/dba/x", "/shared/p/x"), false, ""},
		{"sibling with a shared name prefix", rule("n", "/dba/y", "/app/mp/replicated/mongo-evil"), false, ""},
		{"bad source", rule("n", "/dba/../x", "/app/a/replicated/x"), false, "source /dba/../x: invalid path"},
		{"root source", rule("n", "/", "/app/a/replicated/x"), false, "source /: invalid path"},
		{"no destination", rule("n", "/dba/x"), false, "has no destination"},
		{"bad on-delete", Rule{ID: "n", Source: "/dba/x", Destinations: []string{"/app/a/replicated/x"}, OnDelete: "keep"}, false, `on-delete "keep"`},
		{"destinations overlap each other", rule("n", "/dba/x", "/app/a/replicated/x", "/app/a/replicated/x/y"), false, "destinations /app/a/replicated/x and /app/a/replicated/x/y overlap"},
		{"a destination twice", rule("n", "/dba/x", "/app/a/replicated/x", "/app/a/replicated/x"), false, "destination /app/a/replicated/x is given twice"},
		{"outside the patterns", rule("n", "/dba/x", "/app/a/config/x"), false, "destination /app/a/config/x is not a replication destination: destinations must match /app/+/replicated/** or /shared/**"},
		{"into itself", rule("n", "/shared/s", "/shared/s/t"), false, "source /shared/s and destination /shared/s/t overlap"},
		{"inside another rule's destination", rule("n", "/dba/z", "/app/mp/replicated/mongo/z"), true, "destination /app/mp/replicated/mongo/z overlaps destination /app/mp/replicated/mongo of rule r-1 (source /dba/mp)"},
		{"above another rule's destination", rule("n", "/dba/z", "/app/mp/replicated"), true, "overlaps destination /app/mp/replicated/mongo of rule r-1"},
		{"cycle of three", rule("n", "/shared/r", "/shared/p"), true, "rule would make a cycle: /shared/r → /shared/p → /shared/q (r-2) → /shared/r (r-3) → /shared/r"},
		{"a destination named like a source is not that source", rule("n", "/shared/r/x", "/shared/q0"), false, ""},
	}
	for _, tt := range tests {
		err := v.Check(existing, tt.r)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v; want allowed", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: %v; want %q", tt.name, err, tt.want)
		case tt.want != "" && tt.conflict && (!errors.Is(err, ErrRuleConflict) || errors.Is(err, ErrInvalidRule)):
			t.Errorf("%s: %v is not a conflict", tt.name, err)
		case tt.want != "" && !tt.conflict && (!errors.Is(err, ErrInvalidRule) || errors.Is(err, ErrRuleConflict)):
			t.Errorf("%s: %v is not an invalid rule", tt.name, err)
		}
	}
}

func TestCycles(t *testing.T) {
	v, _ := NewValidator([]string{"/s/**"})
	// A rule feeding itself through one other.
	err := v.Check([]Rule{rule("r-1", "/s/b", "/s/a/in")}, rule("n", "/s/a", "/s/b"))
	if !errors.Is(err, ErrRuleConflict) || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("two-rule cycle: %v", err)
	}
	// Feeding a rule downstream is a chain, not a cycle.
	if err := v.Check([]Rule{rule("r-1", "/s/b", "/s/c")}, rule("n", "/s/a", "/s/b")); err != nil {
		t.Fatalf("chain: %v", err)
	}
}

func TestMap(t *testing.T) {
	r := rule("r", "/dba/mp", "/app/mp/replicated/db")
	for _, tt := range []struct{ p, want string }{
		{"/dba/mp", "/app/mp/replicated/db"},
		{"/dba/mp/password", "/app/mp/replicated/db/password"},
		{"/dba/mp/a/b", "/app/mp/replicated/db/a/b"},
		{"/dba/mp-evil/password", ""},
		{"/dba", ""},
	} {
		got, ok := r.Map(tt.p, r.Destinations[0])
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("Map(%s) = %q, %v; want %q", tt.p, got, ok, tt.want)
		}
	}
}

// The index answers like a scan of every rule.
func TestIndexMatchesAScan(t *testing.T) {
	segs := []string{"a", "b", "a-b", "c"}
	randPath := func() string {
		var b strings.Builder
		for range 1 + rand.IntN(4) {
			b.WriteString("/" + segs[rand.IntN(len(segs))])
		}
		return b.String()
	}
	var rules []Rule
	for i := range 50 {
		rules = append(rules, rule(fmt.Sprintf("r-%02d", i), randPath(), "/d"+randPath()))
	}
	ix := NewIndex(rules)
	ids := func(rs []Rule) []string {
		out := make([]string, 0, len(rs))
		for _, r := range rs {
			out = append(out, r.ID)
		}
		slices.Sort(out)
		return out
	}
	for range 2000 {
		p := randPath()
		var want []Rule
		for _, r := range rules {
			if r.Covers(p) {
				want = append(want, r)
			}
		}
		if got := ids(ix.BySource(p)); !slices.Equal(got, ids(want)) {
			t.Fatalf("BySource(%s) = %v, want %v", p, got, ids(want))
		}
	}
}

func BenchmarkBySource(b *testing.B) {
	var rules []Rule
	for i := range 10000 {
		rules = append(rules, rule(fmt.Sprintf("r-%05d", i), fmt.Sprintf("/dba/team-%d/svc-%d", i%100, i), fmt.Sprintf("/app/a%d/replicated/x", i)))
	}
	ix := NewIndex(rules)
	for b.Loop() {
		ix.BySource("/dba/team-7/svc-4507/mongo/password")
	}
}
