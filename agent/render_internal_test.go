package agent

import (
	"errors"
	"testing"
)

// A template is parsed once and rendered fresh each time: each render sees
// its own view and records only what it read.
func TestTemplatesParsedOnceRenderedFresh(t *testing.T) {
	ts := &templates{}
	text := `{{ secret "x" }}-{{ revision }}`
	v1 := &view{root: "/app/a", values: map[string][]byte{"/app/a/x": []byte("1")}, revision: 1, parsed: ts}
	out, d, err := v1.render("f", text)
	if err != nil || string(out) != "1-1" || !d.paths["/app/a/x"] {
		t.Fatalf("first render = %q, %+v, %v", out, d, err)
	}
	first := ts.byName["f"]
	v2 := &view{root: "/app/a", values: map[string][]byte{"/app/a/x": []byte("2")}, revision: 2, parsed: ts}
	if out, _, err := v2.render("f", text); err != nil || string(out) != "2-2" {
		t.Fatalf("second render = %q, %v; want the second view's value and revision", out, err)
	}
	if ts.byName["f"] != first {
		t.Error("the same text was parsed again")
	}
	// A missing key fails this render only, and its deps are its own.
	v3 := &view{root: "/app/a", values: map[string][]byte{}, revision: 3, parsed: ts}
	_, d3, err := v3.render("f", text)
	var missing *MissingKeyError
	if !errors.As(err, &missing) || !d3.paths["/app/a/x"] || len(d3.paths) != 1 {
		t.Fatalf("render without the key = %v, deps %+v", err, d3)
	}
	// New text, new parse.
	if out, _, err := v2.render("f", `{{ secret "x" }}!`); err != nil || string(out) != "2!" || ts.byName["f"] == first {
		t.Fatalf("edited template = %q, %v; want it parsed again", out, err)
	}
	// A syntax error is not kept: the template parses once it is fixed.
	if _, _, err := v2.render("g", `{{ secret "x" `); err == nil {
		t.Fatal("a syntax error rendered")
	}
	if _, ok := ts.byName["g"]; ok {
		t.Error("a template that does not parse was kept")
	}
}
