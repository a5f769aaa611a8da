package replicator

import (
	"errors"
	"strings"
	"testing"
)

func patternRule(id, source string, dests ...string) Rule {
	concrete, patterns := patternsOf(dests)
	return Rule{ID: id, Source: source, Destinations: concrete, Patterns: patterns}
}

// A pattern destination is checked as a whole: for every application
// there is or will be.
func TestCheckPatterns(t *testing.T) {
	v, err := NewValidator(nil)
	if err != nil {
		t.Fatal(err)
	}
	existing := []Rule{
		patternRule("r-1", "/dba/mp", "/app/mp/replicated/mongo"),
		patternRule("r-2", "/shared/dd", "/app/+/replicated/datadog"),
	}
	tests := []struct {
		name     string
		r        Rule
		conflict bool
		want     string
	}{
		{"every application", patternRule("n", "/shared/x", "/app/+/replicated/x"), false, ""},
		{"pattern and a concrete destination elsewhere", patternRule("n", "/shared/x", "/app/+/replicated/x", "/app/a/replicated/y"), false, ""},
		{"two patterns side by side", patternRule("n", "/shared/x", "/app/+/replicated/x", "/app/+/replicated/y"), false, ""},
		{"+ outside the application segment", patternRule("n", "/shared/x", "/app/a/+/x"), false, "a pattern destination is /app/+/<path>"},
		{"+ twice", patternRule("n", "/shared/x", "/app/+/replicated/+"), false, "only the application segment may be +"},
		{"+ under another tree", patternRule("n", "/shared/x", "/shared/+/x"), false, "a pattern destination is /app/+/<path>"},
		{"the whole application", patternRule("n", "/shared/x", "/app/+"), false, "a pattern destination is /app/+/<path>"},
		{"not a replicated subtree", patternRule("n", "/shared/x", "/app/+/config/x"), false, "is not a replication destination"},
		{"bad path after the +", patternRule("n", "/shared/x", "/app/+/replicated/../x"), false, "invalid path"},
		{"patterns overlap each other", patternRule("n", "/shared/x", "/app/+/replicated/x", "/app/+/replicated/x/y"), false, "destinations /app/+/replicated/x and /app/+/replicated/x/y overlap"},
		{"a concrete destination inside the pattern", patternRule("n", "/shared/x", "/app/+/replicated/x", "/app/a/replicated/x/k"), false, "the pattern already stands for every application"},
		{"source inside what the pattern stands for", patternRule("n", "/app/a/replicated/x/in", "/app/+/replicated/x"), false, "a rule cannot copy a tree into itself"},
		{"pattern over another rule's destination", patternRule("n", "/shared/x", "/app/+/replicated/mongo/k"), true, "overlaps destination /app/mp/replicated/mongo of rule r-1"},
		{"pattern over another rule's pattern", patternRule("n", "/shared/x", "/app/+/replicated/datadog/k"), true, "overlaps destination /app/+/replicated/datadog of rule r-2"},
		{"concrete destination in another rule's pattern, app not yet known", patternRule("n", "/shared/x", "/app/new/replicated/datadog"), true, "overlaps destination /app/+/replicated/datadog of rule r-2 (source /shared/dd), which stands for every application"},
		{"beside another rule's pattern", patternRule("n", "/shared/x", "/app/new/replicated/datadog-eu"), false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := v.Check(existing, tt.r)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
			if got := errors.Is(err, ErrRuleConflict); got != tt.conflict {
				t.Fatalf("conflict = %v for %v", got, err)
			}
		})
	}
}

// A pattern that writes into another rule's source in some application
// closes a cycle like a concrete destination does.
func TestPatternCycle(t *testing.T) {
	v, err := NewValidator(nil)
	if err != nil {
		t.Fatal(err)
	}
	existing := []Rule{patternRule("r-1", "/app/b/replicated/y", "/app/s/replicated/in")}
	err = v.Check(existing, patternRule("n", "/app/s/replicated/in", "/app/+/replicated/y"))
	if err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("err = %v, want a cycle", err)
	}
}

func TestOverlapWild(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"/app/+/r/x", "/app/a/r", true},
		{"/app/+/r/x", "/app/a/r/x/y", true},
		{"/app/+/r/x", "/app/+/r/x/y", true},
		{"/app/+/r/x", "/app/a/s", false},
		{"/app/+/r/x", "/app/a/r/x-y", false},
		{"/app/a/r", "/app/b/r", false},
		{"/app/+/r", "/", true},
	} {
		if got := overlapWild(tt.a, tt.b); got != tt.want {
			t.Errorf("overlapWild(%s, %s) = %v", tt.a, tt.b, got)
		}
		if got := overlapWild(tt.b, tt.a); got != tt.want {
			t.Errorf("overlapWild(%s, %s) = %v", tt.b, tt.a, got)
		}
	}
}
