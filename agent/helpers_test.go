package agent_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/testenv"
)

func slogTo(w *testenv.Buffer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// startLogged runs an agent until the test ends, keeping its log, and
// does not wait for its first render.
func startLogged(t *testing.T, cfg agent.Config) (*agent.Agent, *testenv.Buffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &testenv.Buffer{}
	a, err := agent.New(ctx, cfg, slogTo(logs), nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return a, logs
}
