package agent_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/testenv"
)

// Two agents of one application on one host report under ids of their
// own by default, each stable across its restarts: the host name and a
// hash of the configuration file's path.
func TestAgentDefaultIDsDifferPerAgentAndSurviveRestarts(t *testing.T) {
	e := newEnv(t)
	host, _ := os.Hostname()
	load := func(file string) agent.Config {
		t.Helper()
		cfg, err := agent.Flags(pflag.NewFlagSet("graft-agent", pflag.ContinueOnError))(file, func(string) (string, bool) { return "", false })
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	ids := map[string]string{}
	for _, name := range []string{"a", "b"} {
		dir := filepath.Join(e.dir, name)
		os.MkdirAll(dir, 0o755)
		file := filepath.Join(dir, "agent.yaml")
		text := "server: " + e.g.Addr + "\ntoken_file: " + e.tokenFile() + "\napp: message-processor\ntemplates:\n  - destination: " + filepath.Join(dir, "pw") + "\n    contents: '{{ secret \"replicated/mongo/password\" }}'\n"
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := load(file)
		_, stop := e.start(cfg)
		ids[name] = cfg.DefaultID(host)
		if !strings.HasPrefix(ids[name], host+"-") {
			t.Errorf("default id %q does not start with the host name %q", ids[name], host)
		}
		if name == "a" {
			stop()
			e.start(load(file)) // restarted
		}
		if again := load(file).DefaultID(host); again != ids[name] {
			t.Errorf("the default id changed across a restart: %s, then %s", ids[name], again)
		}
	}
	if ids["a"] == ids["b"] {
		t.Fatalf("two agents of one app on one host share the default id %s", ids["a"])
	}
	testenv.WaitFor(t, 5*time.Second, func() bool {
		reps, err := e.root.ListAgents(t.Context(), "message-processor")
		if err != nil || len(reps) != 2 {
			return false
		}
		return reps[0].ID != reps[1].ID && (reps[0].ID == ids["a"] || reps[0].ID == ids["b"]) && (reps[1].ID == ids["a"] || reps[1].ID == ids["b"])
	})
}
