package agent_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/graft-sh/graft/agent"
)

// A template's mode applies to its file on every render, also when the
// bytes are already there: a file left 0666 with the right content, and
// a file whose template's mode changed from 0644 to 0600, end up as asked.
func TestAgentAppliesModeToUnchangedFiles(t *testing.T) {
	e := newEnv(t)
	out := filepath.Join(e.dir, "password")
	if err := os.WriteFile(out, []byte("s3cret-1"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(out, 0o666); err != nil {
		t.Fatal(err)
	}
	mode := func() os.FileMode {
		t.Helper()
		st, err := os.Stat(out)
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode().Perm()
	}
	tmpl := agent.Template{Destination: out, Contents: `{{ secret "replicated/mongo/password" }}`}
	_, stop := e.start(e.config([]agent.Template{tmpl}))
	if got := mode(); got != 0o600 {
		t.Fatalf("a 0666 file with the right bytes is %v after a render, want 0600 (the default mode)", got)
	}
	stop()

	tmpl.Mode = "0644"
	_, stop = e.start(e.config([]agent.Template{tmpl}))
	stop()
	if got := mode(); got != 0o644 {
		t.Fatalf("mode %v after mode: 0644, want 0644", got)
	}
	tmpl.Mode = "0600"
	e.start(e.config([]agent.Template{tmpl}))
	if got := mode(); got != 0o600 {
		t.Fatalf("mode %v after the template's mode changed from 0644 to 0600, want 0600", got)
	}
}
