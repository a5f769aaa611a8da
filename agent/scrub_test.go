package agent_test

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/testenv"
)

// apiKey is the value the failing templates read; no part of it may reach
// the agent's log or its report.
const apiKey = "B-API-KEY-SECRET"

// leaks returns the forms of apiKey (or of a fragment of it) that text
// carries: the value, its quoted, escaped, hex and base64 forms, and any
// run of 5 or more of its characters.
func leaks(text string) []string {
	var found []string
	forms := []string{apiKey, strconv.Quote(apiKey), fmt.Sprintf("%q", []byte(apiKey)), hex.EncodeToString([]byte(apiKey)),
		base64.StdEncoding.EncodeToString([]byte(apiKey)), fmt.Sprint([]byte(apiKey)), fmt.Sprint([]rune(apiKey))}
	for _, f := range forms {
		if strings.Contains(text, f) {
			found = append(found, f)
		}
	}
	for i := 0; i+5 <= len(apiKey); i++ {
		if frag := apiKey[i : i+5]; strings.Contains(text, frag) {
			found = append(found, frag)
		}
	}
	return found
}

// A template that fails on a value (ranging over it, indexing it, calling
// a function with it, failing with it) says where and how it failed, never
// with the value: not in the log and not in the report graftd stores. A
// key whose name the template computed from a value is not named either.
func TestAgentTemplateErrorsCarryNoValue(t *testing.T) {
	e := newEnv(t)
	e.put("/app/message-processor/config/apikey", apiKey)
	shapes := map[string]string{
		"range":      `{{ range secret "config/apikey" }}x{{ end }}`,
		"range-var":  `{{ $k := secret "config/apikey" }}{{ range $k }}x{{ end }}`,
		"index":      `{{ index (secret "config/apikey") 99 }}`,
		"index-map":  `{{ index (dict "a" (secret "config/apikey")) "a" "b" }}`,
		"printf":     `{{ printf "%d" (secret "config/apikey") | atoi | div 0 }}`,
		"atoi-split": `{{ (split "-" (secret "config/apikey"))._9 }}`,
		"sprig":      `{{ secret "config/apikey" | b64dec | fromJson | toJson }}{{ secret "config/apikey" | mustFromJson }}`,
		"regex":      `{{ mustRegexMatch (printf "(%s" (secret "config/apikey")) "x" }}`,
		"semver":     `{{ semver (secret "config/apikey") }}`,
		"fail":       `{{ fail (printf "bad key %s" (secret "config/apikey")) }}`,
		"duration":   `{{ mustDateModify (secret "config/apikey") now }}`,
		"toDate":     `{{ mustToDate "2006" (secret "config/apikey") }}`,
		"if-eq":      `{{ if eq (secret "config/apikey") 3 }}x{{ end }}`,
		"call":       `{{ call (secret "config/apikey") }}`,
		"field":      `{{ (secret "config/apikey").Foo }}`,
		"indirect":   `{{ secret (secret "config/apikey") }}`,
		"outside":    `{{ secret (printf "/%s" (secret "config/apikey")) }}`,
		"tree":       `{{ tree (secret "config/apikey") | toJson }}{{ secret "config/nope" }}`,
	}
	var templates []agent.Template
	for name, text := range shapes {
		templates = append(templates, agent.Template{Destination: filepath.Join(e.dir, name), Contents: text})
	}
	// A name the template computed that exists in the tree is a name like
	// any other: it is reported, so that rollout status counts the agent.
	computed := filepath.Join(e.dir, "computed")
	templates = append(templates, agent.Template{Destination: computed, Contents: `{{ secret (printf "replicated/mongo/%s" "password") }}`})
	cfg := e.config(templates)
	_, logs := startLogged(t, cfg)
	var report string
	failedAll := func() bool {
		reps, err := e.root.ListAgents(t.Context(), "message-processor")
		if err != nil || len(reps) != 1 {
			return false
		}
		failed := 0
		var b strings.Builder
		for _, tr := range reps[0].Templates {
			if tr.Error != "" {
				failed++
			}
			fmt.Fprintf(&b, "%s: %s %q\n", tr.Destination, tr.Error, tr.Keys)
		}
		b.WriteString(reps[0].Reason)
		report = b.String()
		return failed == len(shapes)
	}
	for deadline := time.Now().Add(10 * time.Second); !failedAll(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not every template failed:\n%s", report)
		}
	}
	if want := computed + `:  ["/app/message-processor/replicated/mongo/password"]`; !strings.Contains(report, want) {
		t.Errorf("the report lacks %s:\n%s", want, report)
	}
	for name := range shapes {
		if !strings.Contains(report, filepath.Join(e.dir, name)+": template "+filepath.Join(e.dir, name)) {
			t.Errorf("the report does not say where %s failed:\n%s", name, report)
		}
	}
	testenv.WaitFor(t, 5*time.Second, func() bool { return strings.Count(logs.String(), "template failed") >= len(shapes) })
	if l := leaks(report); len(l) > 0 {
		t.Errorf("the report carries the value (%q):\n%s", l, report)
	}
	if l := leaks(logs.String()); len(l) > 0 {
		t.Errorf("the log carries the value (%q):\n%s", l, logs.String())
	}
	t.Logf("report:\n%s", report)
}
