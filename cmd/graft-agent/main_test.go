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
`))
	if err == nil {
		t.Fatal("a bad configuration was accepted")
	}
	for _, want := range []string{
		`app "a/b"`, "token_file: give the file", "destination \"relative.txt\" must be an absolute path",
		"give exactly one of contents and source", `mode "999"`, "signal.pidfile is required", `signal "SIGFOO"`,
		`http.url "ftp://x"`, "reload[1]: give exactly one of signal, http, command, docker and kubernetes", `reload[2]: kubernetes.deployment "Message_Processor"`, "health: give one of",
		"wait: want 0 <= min <= max", `listen "0.0.0.0:7431": want a loopback`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the problems lack %q:\n%v", want, err)
		}
	}
}
