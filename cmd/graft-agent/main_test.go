package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/graft-sh/graft/internal/testenv"
)

// graft-agent links the SDK, never graftd: no server package, no etcd and
// no NATS.
func TestAgentLinksNoServer(t *testing.T) { testenv.LinksNoServer(t, "graft-agent") }

func runAgent(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := newRootCmd(&stdout, &stderr)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return stdout.String() + stderr.String(), err
}

// A configuration file with unknown keys is refused naming them; one with
// several mistakes reports all of them at once.
func TestAgentConfigProblems(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	_, err := runAgent(t, "--config", write("unknown.yaml", "app: mp\ntoken_file: /t\ntemplats: []\n"))
	if err == nil || !strings.Contains(err.Error(), "field templats not found") {
		t.Fatalf("unknown key: %v", err)
	}
	_, err = runAgent(t, "--config", write("bad.yaml", `app: "a/b"
templates:
  - destination: relative.txt
    contents: x
    source: y.tmpl
    mode: "999"
reload:
  - signal: {signal: SIGFOO}
  - http: {url: ftp://x}
    command: [x]
  - kubernetes: {deployment: Message_Processor, namespace: prod, timeout: 2m}
health: {http: "http://x", tcp: "x:1"}
wait: {min: 10s, max: 1s}
listen: 0.0.0.0:7431
dbcred: {grace: -1s}
`))
	if err == nil {
		t.Fatal("a bad configuration was accepted")
	}
	for _, want := range []string{
		`app "a/b"`, "token_file: give the file", "destination \"relative.txt\" must be an absolute path",
		"give exactly one of contents and source", `mode "999"`, "signal.pidfile is required", `signal "SIGFOO"`,
		`http.url "ftp://x"`, "reload[1]: give exactly one of signal, http, command, docker and kubernetes", `reload[2]: kubernetes.deployment "Message_Processor"`, "health: give one of",
		"wait: want 0 <= min <= max", `listen "0.0.0.0:7431": want a loopback`, "dbcred.grace -1s: want 0 to 24h0m0s",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the problems lack %q:\n%v", want, err)
		}
	}
}

// An unknown key, the other mistakes and every template's syntax error
// (contents, a source file, exec.env) come in one error, before any
// render.
func TestAgentConfigReportsEveryProblemAtOnce(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bad.tmpl"), []byte(`{{ if }}`), 0o600); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "agent.yaml")
	text := `app: mp
token_file: /t
templats: []
templates:
  - destination: /tmp/graft-test/a
    contents: '{{ secret "x" '
  - destination: /tmp/graft-test/b
    source: bad.tmpl
  - destination: /tmp/graft-test/c
    contents: '{{ nosuchfunc "x" }}'
  - destination: relative
    contents: ok
exec:
  command: [/bin/true]
  env: {PW: '{{ end }}'}
wait: {min: 10s, max: 1s}
`
	if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := runAgent(t, "--config", config)
	if err == nil {
		t.Fatal("a bad configuration was accepted")
	}
	for _, want := range []string{
		"field templats not found",
		"templates[0] (/tmp/graft-test/a): template: /tmp/graft-test/a:1: unclosed action",
		"templates[1] (/tmp/graft-test/b): template: /tmp/graft-test/b:1: missing value for if",
		`templates[2] (/tmp/graft-test/c): template: /tmp/graft-test/c:1: function "nosuchfunc" not defined`,
		`destination "relative" must be an absolute path`,
		"exec.env.PW: template: exec.env.PW:1: unexpected {{end}}",
		"wait: want 0 <= min <= max",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the problems lack %q:\n%v", want, err)
		}
	}
}
