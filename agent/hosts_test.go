package agent_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/testenv"
)

// Two agents with the default settings run side by side on one host (a
// rotator and an app agent, or two applications): the HTTP endpoints are
// off unless asked for, so neither takes a port the other needs.
func TestTwoAgentsOnOneHostStartByDefault(t *testing.T) {
	e := newEnv(t)
	for _, id := range []string{"one", "two"} {
		cfg := e.config([]agent.Template{{Destination: filepath.Join(e.dir, id), Contents: `{{ secret "replicated/mongo/password" }}`}})
		cfg.Listen = agent.DefaultConfig().Listen
		cfg.ID = id
		ctx, cancel := context.WithCancel(context.Background())
		a, err := agent.New(ctx, cfg, testenv.Logger(t), nil)
		if err != nil {
			cancel()
			t.Fatalf("agent %s with the default settings: %v", id, err)
		}
		if a.Addr() != "" {
			t.Errorf("agent %s serves HTTP on %s without listen:", id, a.Addr())
		}
		done := make(chan struct{})
		go func() { defer close(done); a.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		testenv.WaitFor(t, 5*time.Second, a.Ready)
	}
}
